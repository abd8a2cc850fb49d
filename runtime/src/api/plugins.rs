//! `/v1/plugins`: upload (validate, store by digest, activate), list, get, activate, delete.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{PluginInfo, PluginSettings, PluginVersion};

use super::AppState;
use super::auth::{Principal, Scope};
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Json, Path, Query};
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

/// Settings given as query parameters of an upload.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadParams {
    timeout_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_attempts: Option<u32>,
    concurrency: Option<u32>,
    /// Comma-separated model aliases.
    allowed_models: Option<String>,
}

impl UploadParams {
    fn settings(&self) -> PluginSettings {
        PluginSettings {
            timeout_ms: self.timeout_ms,
            memory_limit_bytes: self.memory_mb.map(|m| m << 20),
            max_attempts: self.max_attempts,
            concurrency: self.concurrency,
            allowed_models: self.allowed_models.as_ref().map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }),
            extra: Default::default(),
        }
    }
}

fn version_view(v: &PluginVersion) -> Value {
    json!({
        "version": v.version,
        "digest": v.digest,
        "settings": v.settings,
        "created_at": v.created_at,
    })
}

fn plugin_view(p: &PluginInfo) -> Value {
    json!({
        "name": p.name,
        "active_version": p.active_version,
        "active_digest": p.active().map(|v| v.digest.clone()),
        "versions": p.versions.iter().map(version_view).collect::<Vec<_>>(),
        "links": { "self": format!("/v1/plugins/{}", p.name), "jobs": format!("/v1/plugins/{}/jobs", p.name) },
    })
}

/// `PUT /v1/plugins/{name}`
pub(crate) async fn upload(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(params): Query<UploadParams>,
    Body(bytes): Body,
) -> ApiResult<Response> {
    principal.require(Scope::Deploy)?;
    check_name(&name)?;
    let size = bytes.len();
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
    let settings = params.settings();
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
            axum::Json(upload_view(&name, v, size, true)),
        )
            .into_response());
    }
    let v = store
        .create_plugin_version(&principal.tenant, &name, &digest, &settings, true)
        .await?;
    metrics::counter!("sluice_plugin_uploads_total").increment(1);
    Ok((
        StatusCode::CREATED,
        axum::Json(upload_view(&name, &v, size, false)),
    )
        .into_response())
}

fn upload_view(name: &str, v: &PluginVersion, size: usize, existing: bool) -> Value {
    json!({
        "name": name,
        "version": v.version,
        "digest": v.digest,
        "size": size,
        "active": true,
        "existing": existing,
        "settings": v.settings,
        "created_at": v.created_at,
        "links": { "self": format!("/v1/plugins/{name}"), "jobs": format!("/v1/plugins/{name}/jobs") },
    })
}

/// `GET /v1/plugins`
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let plugins = st.node.store.list_plugins(&principal.tenant).await?;
    Ok(axum::Json(
        json!({ "items": plugins.iter().map(plugin_view).collect::<Vec<_>>() }),
    ))
}

async fn find(st: &AppState, tenant: &str, name: &str) -> ApiResult<PluginInfo> {
    st.node
        .store
        .get_plugin(tenant, name)
        .await?
        .ok_or_else(|| ApiError::not_found("plugin", name))
}

/// `GET /v1/plugins/{name}`
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    Ok(axum::Json(plugin_view(
        &find(&st, &principal.tenant, &name).await?,
    )))
}

/// Body of `POST /v1/plugins/{name}/activate`: a version number or a digest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActivateRequest {
    version: Option<i64>,
    digest: Option<String>,
}

/// `POST /v1/plugins/{name}/activate`
pub(crate) async fn activate(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Json(req): Json<ActivateRequest>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Deploy)?;
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
    Ok(axum::Json(plugin_view(&info)))
}

/// `DELETE /v1/plugins/{name}`
pub(crate) async fn delete(
    State(st): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require(Scope::Deploy)?;
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
