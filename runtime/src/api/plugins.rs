//! `/v1/plugins`: upload (validate, store by digest, activate), list, get, change settings,
//! activate, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sluice_store::{PluginInfo, PluginLimits, PluginSettings, PluginVersion};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Deployer, Reader, Scope};
use super::error::{ApiError, ApiResult, Common, problems};
use super::extract::{Body, BodyLimit, Json, Path, Query};
use crate::config::Config;
use crate::node::PluginLoadError;

/// Plugin names: 1–64 of `[a-z0-9_-]`, starting with a letter or digit.
pub(crate) fn check_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid plugin name `{name}`: use 1-64 characters of a-z, 0-9, `-` and `_`"
        )))
    }
}

/// Memory caps below this cannot even instantiate a Rust guest (its stack alone is 1 MiB), so
/// every job of the plugin would fail.
const MIN_MEMORY_MB: u64 = 2;

/// MiB to bytes; an absurd value saturates (and then fails the maximum check) instead of
/// wrapping round to a small one.
fn mib(mb: u64) -> u64 {
    mb.saturating_mul(1 << 20)
}

/// Settings given as query parameters of an upload.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadParams {
    /// Attempt timeout of the plugin's jobs, in ms (default: the server's).
    #[param(minimum = 1)]
    timeout_ms: Option<u64>,
    /// Memory cap of an instance, in MiB (at most the server's `engine.max_memory_mb`).
    #[param(minimum = 2)]
    memory_mb: Option<u64>,
    /// Attempts allowed for its jobs.
    #[param(minimum = 1)]
    max_attempts: Option<u32>,
    /// Most of its jobs running at once, across nodes.
    #[param(minimum = 1)]
    concurrency: Option<u32>,
    /// Comma-separated model aliases it may call (default: any).
    allowed_models: Option<String>,
}

impl UploadParams {
    fn settings(&self) -> PluginSettings {
        PluginSettings {
            timeout_ms: self.timeout_ms,
            memory_limit_bytes: self.memory_mb.map(mib),
            max_attempts: self.max_attempts,
            concurrency: self.concurrency,
            allowed_models: self.allowed_models.as_ref().map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            limits: Default::default(),
            extra: Default::default(),
        }
    }
}

/// Body of `PATCH /v1/plugins/{name}`: a JSON merge patch (RFC 7396) of the active version's
/// settings. An absent field keeps its value; `null` resets it to the server default.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsPatch {
    /// Attempt timeout of jobs submitted from now on, in ms.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1)]
    timeout_ms: Option<Option<u64>>,
    /// Memory cap of an instance, in MiB (at most the server's `engine.max_memory_mb`).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 2)]
    memory_mb: Option<Option<u64>>,
    /// Attempts allowed for jobs submitted from now on.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    max_attempts: Option<Option<u32>>,
    /// Most of the plugin's jobs running at once, across nodes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    concurrency: Option<Option<u32>>,
    /// Model aliases or `provider/model` names it may call (`null`: any).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    allowed_models: Option<Option<Vec<String>>>,
    /// Tighter limits on what one attempt may send the host (`max_events`,
    /// `max_event_bytes`, `max_output_bytes`, `max_model_calls`, `max_chat_batch`,
    /// `max_cost_per_report_micros`, `max_reported_cost_micros`, `max_hostcall_bytes`); each
    /// only lowers the server's `[engine.limits]` (`null`: the server's).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    limits: Option<Option<PluginLimits>>,
}

impl BodyLimit for SettingsPatch {}

/// A field that is present (possibly `null`): `Some(value)`. Absent fields get `None` from
/// `#[serde(default)]`, which is how a merge patch tells "keep" from "reset".
fn present<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

impl SettingsPatch {
    /// `base` with this patch applied.
    fn apply(self, mut base: PluginSettings) -> PluginSettings {
        if let Some(v) = self.timeout_ms {
            base.timeout_ms = v;
        }
        if let Some(v) = self.memory_mb {
            base.memory_limit_bytes = v.map(mib);
        }
        if let Some(v) = self.max_attempts {
            base.max_attempts = v;
        }
        if let Some(v) = self.concurrency {
            base.concurrency = v;
        }
        if let Some(v) = self.allowed_models {
            base.allowed_models =
                v.map(|names| names.into_iter().map(|n| n.trim().to_string()).collect());
        }
        if let Some(v) = self.limits {
            base.limits = v.unwrap_or_default();
        }
        base
    }
}

/// Reject settings no job could run with (422), whichever way they were given.
fn check_settings(s: &PluginSettings, config: &Config) -> ApiResult<()> {
    let max_memory_mb = config.engine.max_memory_mb as u64;
    let limits = &config.server.limits;
    let invalid = |field: &str, detail: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-settings",
            "Invalid plugin settings",
            detail,
        )
        .with("field", field)
    };
    if s.timeout_ms == Some(0) {
        return Err(invalid(
            "timeout_ms",
            "`timeout_ms` must be at least 1".into(),
        ));
    }
    if let Some(ms) = s.timeout_ms
        && ms > limits.max_timeout_ms
    {
        return Err(invalid(
            "timeout_ms",
            format!(
                "`timeout_ms` may be at most {} (the server's `server.limits.max_timeout_ms`)",
                limits.max_timeout_ms
            ),
        )
        .with("limit", limits.max_timeout_ms));
    }
    if let Some(bytes) = s.memory_limit_bytes
        && !(mib(MIN_MEMORY_MB)..=mib(max_memory_mb)).contains(&bytes)
    {
        return Err(invalid(
            "memory_mb",
            format!(
                "`memory_mb` must be between {MIN_MEMORY_MB} and {max_memory_mb} (the server's `engine.max_memory_mb`)"
            ),
        ));
    }
    if s.max_attempts == Some(0) {
        return Err(invalid(
            "max_attempts",
            "`max_attempts` must be at least 1".into(),
        ));
    }
    if let Some(n) = s.max_attempts
        && n > limits.max_attempts
    {
        return Err(invalid(
            "max_attempts",
            format!(
                "`max_attempts` may be at most {} (the server's `server.limits.max_attempts`)",
                limits.max_attempts
            ),
        )
        .with("limit", limits.max_attempts));
    }
    if s.concurrency == Some(0) {
        return Err(invalid(
            "concurrency",
            "`concurrency` must be at least 1".into(),
        ));
    }
    if let Some(models) = &s.allowed_models
        && models.iter().any(|m| m.is_empty())
    {
        return Err(invalid(
            "allowed_models",
            "`allowed_models` must not contain empty names".into(),
        ));
    }
    Ok(())
}

/// A plugin version's settings; an absent field means the server's default.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SettingsView {
    /// Attempt timeout of its jobs, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    /// Memory cap of an instance, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_limit_bytes: Option<u64>,
    /// Attempts allowed for its jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// Most of its jobs running at once, across nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    /// Model aliases or `provider/model` names it may call (absent: any).
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_models: Option<Vec<String>>,
    /// Its own tighter limits on what one attempt may send the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    limits: Option<PluginLimits>,
    /// Stored settings this server does not know, shown as they are.
    #[serde(flatten)]
    #[schema(ignore)]
    extra: Map<String, Value>,
}

impl From<&PluginSettings> for SettingsView {
    fn from(s: &PluginSettings) -> Self {
        // No `..`: a new setting must be added here (and so to the document) to compile.
        let PluginSettings {
            timeout_ms,
            memory_limit_bytes,
            max_attempts,
            concurrency,
            allowed_models,
            limits,
            extra,
        } = s.clone();
        SettingsView {
            timeout_ms,
            memory_limit_bytes,
            max_attempts,
            concurrency,
            allowed_models,
            limits: (!limits.is_empty()).then_some(limits),
            extra,
        }
    }
}

/// One version of a plugin.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct VersionView {
    /// Version number, from 1.
    version: i64,
    /// Component digest (`sha256:<hex>`).
    digest: String,
    /// Its settings.
    settings: SettingsView,
    /// Created at.
    created_at: DateTime<Utc>,
}

impl From<&PluginVersion> for VersionView {
    fn from(v: &PluginVersion) -> Self {
        VersionView {
            version: v.version,
            digest: v.digest.clone(),
            settings: (&v.settings).into(),
            created_at: v.created_at,
        }
    }
}

/// Where to go from a plugin.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PluginLinks {
    /// The plugin.
    #[serde(rename = "self")]
    this: String,
    /// Submit jobs here.
    jobs: String,
}

impl PluginLinks {
    fn new(name: &str) -> Self {
        PluginLinks {
            this: format!("/v1/plugins/{name}"),
            jobs: format!("/v1/plugins/{name}/jobs"),
        }
    }
}

/// A plugin with every version, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PluginView {
    /// Name.
    name: String,
    /// The version new jobs run.
    active_version: Option<i64>,
    /// The active version's digest.
    active_digest: Option<String>,
    /// Every version, oldest first.
    versions: Vec<VersionView>,
    /// Links.
    links: PluginLinks,
}

impl From<&PluginInfo> for PluginView {
    fn from(p: &PluginInfo) -> Self {
        PluginView {
            name: p.name.clone(),
            active_version: p.active_version,
            active_digest: p.active().map(|v| v.digest.clone()),
            versions: p.versions.iter().map(VersionView::from).collect(),
            links: PluginLinks::new(&p.name),
        }
    }
}

/// The tenant's plugins.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PluginList {
    /// Plugins, by name.
    items: Vec<PluginView>,
}

/// The version an upload or a settings change made (or found) and activated.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeployedVersion {
    /// Plugin name.
    name: String,
    /// Version number.
    version: i64,
    /// Component digest (`sha256:<hex>`).
    digest: String,
    /// Component size in bytes (uploads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<usize>,
    /// Always true: new jobs run this version.
    active: bool,
    /// True when nothing changed: an identical version already existed.
    existing: bool,
    /// Its settings.
    settings: SettingsView,
    /// Created at.
    created_at: DateTime<Utc>,
    /// Links.
    links: PluginLinks,
}

impl DeployedVersion {
    fn new(name: &str, v: &PluginVersion, size: Option<usize>, existing: bool) -> Self {
        DeployedVersion {
            name: name.to_string(),
            version: v.version,
            digest: v.digest.clone(),
            size,
            active: true,
            existing,
            settings: (&v.settings).into(),
            created_at: v.created_at,
            links: PluginLinks::new(name),
        }
    }
}

// The body of an upload, named for the OpenAPI document only.
/// A WebAssembly component of world `sluice:plugin/plugin`.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub(crate) struct WasmComponent(Vec<u8>);

/// The plugin name in the path.
const NAME: &str = "Plugin name: 1-64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit";

problems!(UploadErrors, Common::key(Scope::Deploy).writes(), {
    400 => "Bad name or query",
    413 => "Larger than `server.max_body_bytes`",
    422 => "Not a valid component (`kind` says why) or invalid settings",
});

/// Upload a component and make it the active version.
///
/// The component is validated and precompiled before anything is stored: a rejected upload
/// leaves nothing behind. Identical bytes and settings answer 200 with the existing version.
#[utoipa::path(
    put,
    path = "/v1/plugins/{name}",
    operation_id = "upload_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = NAME), UploadParams),
    request_body(content = inline(WasmComponent), content_type = "application/wasm"),
    responses(
        (status = 201, description = "A new version, now active", body = DeployedVersion),
        (status = 200, description = "Identical bytes and settings: the existing version, active again", body = DeployedVersion),
        UploadErrors,
    )
)]
pub(crate) async fn upload(
    State(st): State<AppState>,
    principal: Deployer,
    Path(name): Path<String>,
    Query(params): Query<UploadParams>,
    Body(bytes): Body,
) -> ApiResult<Response> {
    check_name(&name)?;
    let settings = params.settings();
    check_settings(&settings, &st.node.config)?;
    let size = bytes.len();
    // An import the engine does not link would fail every job at instantiation: say which
    // and why now (the engine's own message names only the import).
    if let Some((import, why)) = crate::plugin_build::component_imports(&bytes)
        .into_iter()
        .find_map(|i| crate::plugin_build::unlinked_import_reason(&i).map(|why| (i, why)))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-component",
            "Invalid component",
            format!("the component imports `{import}`, which Sluice does not provide: {why}"),
        )
        .with("kind", "unlinked_import")
        .with("import", import));
    }
    // Validate and precompile before anything is stored: a rejected upload leaves nothing.
    let plugin = st
        .node
        .plugins
        .load(bytes.to_vec())
        .await
        .map_err(|e| match e {
            PluginLoadError::Load(e) if e.kind() != "internal" => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-component",
                "Invalid component",
                e.to_string(),
            )
            .with("kind", e.kind()),
            other => ApiError::internal(other),
        })?;
    let digest = st.node.store.put_component(&bytes).await?;
    debug_assert_eq!(digest, plugin.digest());
    let store = &st.node.store;
    // Identical bytes and settings: the existing version, made active again.
    if let Some(info) = store.get_plugin(&principal.tenant, &name).await?
        && let Some(v) = info
            .versions
            .iter()
            .rev()
            .find(|v| v.digest == digest && v.settings == settings)
    {
        if info.active_version != Some(v.version) {
            store
                .activate_plugin_version(&principal.tenant, &name, v.version)
                .await?;
        }
        return Ok((
            StatusCode::OK,
            axum::Json(DeployedVersion::new(&name, v, Some(size), true)),
        )
            .into_response());
    }
    let v = store
        .create_plugin_version(&principal.tenant, &name, &digest, &settings, true)
        .await?;
    metrics::counter!("sluice_plugin_uploads_total").increment(1);
    Ok((
        StatusCode::CREATED,
        axum::Json(DeployedVersion::new(&name, &v, Some(size), false)),
    )
        .into_response())
}

problems!(ListErrors, Common::key(Scope::Read));

/// List the tenant's plugins.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    operation_id = "list_plugins",
    tag = "plugins",
    responses(
        (status = 200, description = "Plugins", body = PluginList),
        ListErrors,
    )
)]
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Reader,
) -> ApiResult<axum::Json<PluginList>> {
    let plugins = st.node.store.list_plugins(&principal.tenant).await?;
    Ok(axum::Json(PluginList {
        items: plugins.iter().map(PluginView::from).collect(),
    }))
}

async fn find(st: &AppState, tenant: &str, name: &str) -> ApiResult<PluginInfo> {
    st.node
        .store
        .get_plugin(tenant, name)
        .await?
        .ok_or_else(|| ApiError::not_found("plugin", name))
}

problems!(GetErrors, Common::key(Scope::Read), {
    404 => "No such plugin for this tenant",
});

/// A plugin with its versions.
#[utoipa::path(
    get,
    path = "/v1/plugins/{name}",
    operation_id = "get_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 200, description = "The plugin", body = PluginView),
        GetErrors,
    )
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Reader,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<PluginView>> {
    Ok(axum::Json(PluginView::from(
        &find(&st, &principal.tenant, &name).await?,
    )))
}

problems!(PatchSettingsErrors, Common::key(Scope::Deploy).writes(), {
    400 => "Malformed JSON",
    404 => "No such plugin for this tenant",
    409 => "The plugin has no active version",
    415 => "Not `application/json`",
    422 => "Unknown field, wrong type, or a value no job could run with",
});

/// Change the active version's settings.
///
/// Merges the body into the active version's settings and makes a new version with the same
/// component and the merged settings, now active: jobs submitted from now on use them, jobs
/// already accepted keep theirs, and `activate` rolls back. A patch that changes nothing makes
/// no version (`existing: true`).
#[utoipa::path(
    patch,
    path = "/v1/plugins/{name}",
    operation_id = "patch_plugin_settings",
    tag = "plugins",
    params(("name" = String, Path, description = NAME)),
    request_body(content = SettingsPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The new active version (or the unchanged one)", body = DeployedVersion),
        PatchSettingsErrors,
    )
)]
pub(crate) async fn patch_settings(
    State(st): State<AppState>,
    principal: Deployer,
    Path(name): Path<String>,
    Json(patch): Json<SettingsPatch>,
) -> ApiResult<axum::Json<DeployedVersion>> {
    let info = find(&st, &principal.tenant, &name).await?;
    let active = info.active().ok_or_else(|| {
        ApiError::conflict(
            "no-active-version",
            format!("plugin `{name}` has no active version; activate one first"),
        )
    })?;
    let settings = patch.apply(active.settings.clone());
    check_settings(&settings, &st.node.config)?;
    if settings == active.settings {
        return Ok(axum::Json(DeployedVersion::new(&name, active, None, true)));
    }
    // A new version rather than an edit: versions are immutable, so jobs already accepted keep
    // the settings they were accepted with, nodes' per-version settings caches stay correct,
    // and `activate` can roll the change back.
    let v = st
        .node
        .store
        .create_plugin_version(&principal.tenant, &name, &active.digest, &settings, true)
        .await?;
    metrics::counter!("sluice_plugin_settings_changes_total").increment(1);
    Ok(axum::Json(DeployedVersion::new(&name, &v, None, false)))
}

/// Body of `POST /v1/plugins/{name}/activate`: exactly one of a version number or a digest.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActivateRequest {
    /// A version number of this plugin.
    version: Option<i64>,
    /// A component digest (`sha256:<hex>`): its newest version.
    digest: Option<String>,
}

impl BodyLimit for ActivateRequest {}

problems!(ActivateErrors, Common::key(Scope::Deploy).writes(), {
    400 => "Neither or both of `version` and `digest`, or malformed JSON",
    404 => "No such plugin or version for this tenant",
    422 => "Unknown field or wrong type",
});

/// Roll back or forward to a version or digest.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/activate",
    operation_id = "activate_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = NAME)),
    request_body(content = ActivateRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The plugin, with the new active version", body = PluginView),
        ActivateErrors,
    )
)]
pub(crate) async fn activate(
    State(st): State<AppState>,
    principal: Deployer,
    Path(name): Path<String>,
    Json(req): Json<ActivateRequest>,
) -> ApiResult<axum::Json<PluginView>> {
    let info = find(&st, &principal.tenant, &name).await?;
    let version = match (req.version, req.digest.as_deref()) {
        (Some(v), None) => info
            .versions
            .iter()
            .find(|pv| pv.version == v)
            .ok_or_else(|| ApiError::not_found("plugin version", format!("{name}@{v}")))?,
        (None, Some(d)) => info
            .versions
            .iter()
            .rev()
            .find(|pv| pv.digest == d)
            .ok_or_else(|| ApiError::not_found("plugin version", format!("{name}@{d}")))?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `version` or `digest`",
            ));
        }
    };
    st.node
        .store
        .activate_plugin_version(&principal.tenant, &name, version.version)
        .await?;
    let info = find(&st, &principal.tenant, &name).await?;
    Ok(axum::Json(PluginView::from(&info)))
}

problems!(DeleteErrors, Common::key(Scope::Deploy).writes(), {
    404 => "No such plugin for this tenant",
});

/// Delete a plugin and its versions (accepted jobs keep their component).
#[utoipa::path(
    delete,
    path = "/v1/plugins/{name}",
    operation_id = "delete_plugin",
    tag = "plugins",
    params(("name" = String, Path, description = NAME)),
    responses(
        (status = 204, description = "Deleted"),
        DeleteErrors,
    )
)]
pub(crate) async fn delete(
    State(st): State<AppState>,
    principal: Deployer,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if st
        .node
        .store
        .delete_plugin(&principal.tenant, &name)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("plugin", name))
    }
}
