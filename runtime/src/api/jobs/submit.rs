//! `POST /v1/plugins/{name}/jobs` (one job, optionally waiting for it) and
//! `POST /v1/plugins/{name}/jobs/batch` (up to `server.limits.max_batch_jobs`, all or none).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{NewJob, StoreError};
use sluice_types::Tags;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::bounds::{
    check_idempotency_key, check_max_attempts, check_tags, idempotency_key, parse_run_at,
    parse_wait,
};
use super::events::wait_terminal;
use super::views::{JobLinks, JobStatusView, JobView};
use super::{AppState, PLUGIN};
use crate::api::auth::{Invoker, Scope};
use crate::api::error::{ApiError, ApiResult, Common, problems};
use crate::api::extract::{BodyLimit, Json, Path, Query};
use crate::config::Config;

/// Body of a job submission.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    /// The handler's input (any JSON).
    #[serde(default)]
    #[schema(value_type = Value)]
    input: Value,
    /// Attribution tags (`user`, `feature`, …): usage is grouped by them, jobs listed by them.
    /// At most `server.limits.max_tags` (32) tags; keys of 1 to 64 bytes, values of at most
    /// 256 (`max_tag_key_bytes`, `max_tag_value_bytes`); no NUL or control characters.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    tags: Tags,
    /// Higher runs first.
    #[serde(default)]
    priority: i32,
    /// Run no earlier than this RFC 3339 time.
    #[schema(format = DateTime)]
    run_at: Option<String>,
    /// Attempt timeout in ms (default: the plugin's, then the server's); at most
    /// `server.limits.max_timeout_ms` (1 hour by default).
    #[schema(minimum = 1)]
    timeout_ms: Option<u64>,
    /// Attempts allowed (default: the plugin's, then the server's); at most
    /// `server.limits.max_attempts` (100 by default).
    #[schema(minimum = 1)]
    max_attempts: Option<u32>,
    /// Where to POST the signed outcome.
    webhook: Option<WebhookSpec>,
}

impl BodyLimit for SubmitRequest {
    /// The input's limit and room for the rest of the submission.
    fn body_limit(config: &Config) -> (usize, &'static str) {
        (
            config
                .server
                .max_input_bytes
                .saturating_add(config.server.limits.submit_overhead_bytes),
            "server.max_input_bytes + server.limits.submit_overhead_bytes",
        )
    }
}

/// A webhook for a job's outcome.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookSpec {
    /// An `http(s)` URL; private and link-local addresses are refused outside dev mode.
    url: String,
}

/// Query of a submission.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SubmitParams {
    /// Wait up to this long for the job to finish and answer with it: `30s`, `500ms`, `2m` or
    /// plain seconds, at most 60s.
    wait: Option<String>,
}

/// A submission as the store takes it, once every bound is checked.
fn new_job(
    st: &AppState,
    tenant: &str,
    plugin: &str,
    req: SubmitRequest,
    key: Option<String>,
) -> ApiResult<NewJob> {
    let limits = &st.node.config.server.limits;
    let run_at = req.run_at.as_deref().map(parse_run_at).transpose()?;
    check_max_attempts(req.max_attempts, limits)?;
    match req.timeout_ms {
        Some(0) => {
            return Err(ApiError::bad_field(
                "timeout_ms",
                "`timeout_ms` must be at least 1",
            ));
        }
        Some(n) if n > limits.max_timeout_ms => {
            return Err(ApiError::limit_exceeded(
                "timeout_ms",
                limits.max_timeout_ms,
                format!(
                    "`timeout_ms` may be at most {} (`server.limits.max_timeout_ms`)",
                    limits.max_timeout_ms
                ),
            ));
        }
        _ => {}
    }
    check_tags(&req.tags, limits)?;
    let webhook_url = match req.webhook {
        Some(w) => {
            crate::webhooks::check_target(&st.node.config, &w.url).map_err(|reason| {
                ApiError::bad_request(format!("webhook url rejected: {reason}"))
                    .with("webhook_url", w.url.clone())
            })?;
            Some(w.url)
        }
        None => None,
    };
    Ok(NewJob {
        tenant: tenant.to_string(),
        plugin: plugin.to_string(),
        input: req.input,
        priority: req.priority,
        run_at,
        timeout_ms: req.timeout_ms,
        max_attempts: req.max_attempts,
        tags: req.tags,
        idempotency_key: key,
        webhook_url,
    })
}

/// The answer to a submission that did not wait for the result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Submitted {
    /// Job id.
    id: Uuid,
    /// Its status now (`queued`, `scheduled`, … or later for an existing job).
    status: JobStatusView,
    /// True when the idempotency key named an existing job (nothing was inserted).
    existing: bool,
    /// Links.
    links: JobLinks,
}

/// The 200 answer of a submission: with `?wait=`, the finished job; otherwise the existing job
/// an idempotency key named.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum SubmitAnswer {
    /// The finished job (`?wait=`).
    Finished(Box<JobView>),
    /// Accepted, or found by its idempotency key.
    Submitted(Submitted),
}

problems!(SubmitErrors, Common::key(Scope::Invoke).writes(), {
    400 => "Malformed JSON, bad `run_at`, `wait`, webhook URL or key",
    404 => "No such plugin (or no active version) for this tenant",
    409 => "The idempotency key names a job with another body",
    413 => "Body or input too large",
    415 => "Not `application/json`",
    422 => "Unknown field or wrong type, or past a server limit (`limit-exceeded`: tags, `timeout_ms`, `max_attempts`; `field` and `limit` say which)",
});

/// Submit a job.
///
/// 202 once the job is durably queued. With `?wait=`, answers with the finished job instead
/// (200) if it finishes in time. The same `Idempotency-Key` and body answer 200 with the same
/// job; the same key with another body is a 409.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    params(
        ("name" = String, Path, description = PLUGIN),
        SubmitParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the submission idempotent for the server's retention window"),
    ),
    request_body(content = SubmitRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted and durable", body = Submitted,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 200, description = "The finished job (`?wait=`), or the existing job this idempotency key names",
            body = SubmitAnswer),
        SubmitErrors,
    )
)]
pub(crate) async fn submit(
    State(st): State<AppState>,
    principal: Invoker,
    Path(plugin): Path<String>,
    Query(params): Query<SubmitParams>,
    headers: HeaderMap,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<Response> {
    let wait = params.wait.as_deref().map(parse_wait).transpose()?;
    let key = idempotency_key(&headers, &st.node.config.server.limits)?;
    let job = new_job(&st, &principal.tenant, &plugin, req, key)?;
    // Subscribe before the job exists, so its terminal event cannot slip past.
    let events = wait.map(|_| st.node.events.subscribe());
    let enqueued = st
        .node
        .store
        .enqueue(job)
        .await
        .map_err(plugin_not_found(&plugin))?;
    metrics::counter!("sluice_jobs_submitted_total").increment(u64::from(!enqueued.existing));
    if !enqueued.existing {
        crate::telemetry::record_submit(
            &st.node,
            &headers,
            enqueued.id,
            &principal.tenant,
            &plugin,
        )
        .await;
    }

    if let (Some(wait), Some(events)) = (wait, events)
        && let Some(record) = wait_terminal(&st, enqueued.id, wait, events).await?
    {
        let job = JobView::load(&st, &record).await;
        return Ok((
            StatusCode::OK,
            axum::Json(SubmitAnswer::Finished(Box::new(job))),
        )
            .into_response());
    }
    let code = if enqueued.existing {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut res = (
        code,
        axum::Json(SubmitAnswer::Submitted(Submitted {
            id: enqueued.id,
            status: enqueued.status.into(),
            existing: enqueued.existing,
            links: JobLinks::new(enqueued.id),
        })),
    )
        .into_response();
    if let Ok(loc) = format!("/v1/jobs/{}", enqueued.id).parse() {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(res)
}

/// A store `NotFound` on enqueue is about the plugin: say so by name.
fn plugin_not_found(plugin: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound { .. } => ApiError::not_found("plugin", plugin),
        e => e.into(),
    }
}

/// One job of a batch, as accepted.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchItemAnswer {
    /// Job id.
    id: Uuid,
    /// True when its idempotency key named an existing job.
    existing: bool,
    /// Links.
    links: JobLinks,
}

/// The answer to a batch submission, in the order of the request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchAnswer {
    /// One per submitted job.
    items: Vec<BatchItemAnswer>,
}

problems!(SubmitBatchErrors, Common::key(Scope::Invoke).writes(), {
    400 => "Empty or too large, or a bad job (`index` says which)",
    404 => "No such plugin for this tenant",
    409 => "An idempotency key names a job with another body",
    413 => "Body larger than `server.limits.max_batch_body_bytes`, or an input too large",
    422 => "Unknown field or wrong type, or past a server limit (`index` says which job)",
});

/// Submit up to 1000 jobs atomically: all are accepted or none.
#[utoipa::path(
    post,
    path = "/v1/plugins/{name}/jobs/batch",
    operation_id = "submit_jobs",
    tag = "jobs",
    params(("name" = String, Path, description = PLUGIN)),
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "All accepted and durable", body = BatchAnswer),
        SubmitBatchErrors,
    )
)]
pub(crate) async fn submit_batch(
    State(st): State<AppState>,
    principal: Invoker,
    Path(plugin): Path<String>,
    Json(req): Json<BatchRequest>,
) -> ApiResult<Response> {
    let max = st.node.config.server.limits.max_batch_jobs;
    if req.jobs.is_empty() || req.jobs.len() > max {
        return Err(ApiError::bad_field(
            "jobs",
            format!("`jobs` must hold 1 to {max} jobs (`server.limits.max_batch_jobs`)"),
        )
        .with("limit", max));
    }
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (i, j) in req.jobs.into_iter().enumerate() {
        let key = j.idempotency_key.clone();
        if let Some(k) = &key {
            check_idempotency_key(k, "idempotency_key", &st.node.config.server.limits)
                .map_err(|e| e.with("index", i))?;
        }
        jobs.push(
            new_job(&st, &principal.tenant, &plugin, j.job, key).map_err(|e| e.with("index", i))?,
        );
    }
    let done = st
        .node
        .store
        .enqueue_batch(jobs)
        .await
        .map_err(plugin_not_found(&plugin))?;
    let items = done
        .iter()
        .map(|e| BatchItemAnswer {
            id: e.id,
            existing: e.existing,
            links: JobLinks::new(e.id),
        })
        .collect();
    Ok((StatusCode::ACCEPTED, axum::Json(BatchAnswer { items })).into_response())
}

/// Body of a batch submission.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// 1 to 1000 jobs.
    jobs: Vec<BatchItem>,
}

impl BodyLimit for BatchRequest {
    fn body_limit(config: &Config) -> (usize, &'static str) {
        (
            config.server.limits.max_batch_body_bytes,
            "server.limits.max_batch_body_bytes",
        )
    }
}

/// One job of a batch: a submission plus its idempotency key.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct BatchItem {
    /// Like the `Idempotency-Key` header of a single submission.
    idempotency_key: Option<String>,
    #[serde(flatten)]
    job: SubmitRequest,
}
