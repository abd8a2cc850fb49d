//! `/v1/plugins/{name}/jobs` and `/v1/jobs…`: submit (optionally waiting for the result),
//! get, list, cancel, redrive and the dead-letter queue.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{
    CancelOutcome, DeadFilter, JobFilter, JobRecord, JobStatus, JobSummary, NewJob, PageRequest,
    RedriveOptions, RedriveTarget,
};
use sluice_types::{JobEvent, Micros, Tags};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::{Invoker, Reader};
use super::error::{ApiError, ApiResult, PROBLEM_JSON, Problem};
use super::extract::{BodyLimit, Json, Path, Query};
use crate::config::{ApiLimits, Config};

/// Longest `?wait=` honoured.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);

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

/// Parse `30s`, `500ms`, `2m`, `1h` or plain seconds; `None` for anything else, including
/// durations too long to represent (they come from tenants: no arithmetic here may overflow).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    // `from_secs_f64` panics past `u64::MAX` seconds; this one says no.
    Duration::try_from_secs_f64(secs).ok()
}

/// Check a submission's tags against the server's limits: count, key and value bytes, and no
/// NUL or other control characters (they end up in usage records, logs and SQL text).
fn check_tags(tags: &Tags, limits: &ApiLimits) -> ApiResult<()> {
    if tags.len() > limits.max_tags {
        return Err(ApiError::limit_exceeded(
            "tags",
            limits.max_tags,
            format!(
                "a job may have at most {} tags, not {} (`server.limits.max_tags`)",
                limits.max_tags,
                tags.len()
            ),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() {
            return Err(ApiError::bad_field("tags", "tag keys must not be empty"));
        }
        if k.len() > limits.max_tag_key_bytes {
            return Err(ApiError::limit_exceeded(
                "tags",
                limits.max_tag_key_bytes,
                format!(
                    "tag key {} is {} bytes; the limit is {} (`server.limits.max_tag_key_bytes`)",
                    preview(k),
                    k.len(),
                    limits.max_tag_key_bytes
                ),
            ));
        }
        if v.len() > limits.max_tag_value_bytes {
            return Err(ApiError::limit_exceeded(
                "tags",
                limits.max_tag_value_bytes,
                format!(
                    "the value of tag {} is {} bytes; the limit is {} (`server.limits.max_tag_value_bytes`)",
                    preview(k),
                    v.len(),
                    limits.max_tag_value_bytes
                ),
            ));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(ApiError::bad_field(
                "tags",
                format!(
                    "tag {} has NUL or control characters in its key or value",
                    preview(k)
                ),
            ));
        }
    }
    Ok(())
}

/// The start of a tenant's string, quoted and escaped, for an error message.
fn preview(s: &str) -> String {
    let head: String = s.chars().take(32).collect();
    if head.len() < s.len() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// An idempotency key: 1 to `server.limits.max_idempotency_key_bytes` bytes, no control
/// characters. `field` names where it came from.
fn check_idempotency_key(key: &str, field: &str, limits: &ApiLimits) -> ApiResult<()> {
    let max = limits.max_idempotency_key_bytes;
    if key.is_empty() || key.len() > max || key.chars().any(char::is_control) {
        return Err(ApiError::bad_field(
            field,
            format!("{field} must be 1..={max} bytes without control characters (`server.limits.max_idempotency_key_bytes`)"),
        )
        .with("limit", max));
    }
    Ok(())
}

fn parse_run_at(s: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-run-at",
                "Invalid run_at",
                format!("`run_at` must be an RFC 3339 timestamp such as 2030-01-01T09:00:00Z: {e}"),
            )
            .with("field", "run_at")
            .with("run_at", s.chars().take(64).collect::<String>())
        })
}

fn idempotency_key(headers: &HeaderMap, limits: &ApiLimits) -> ApiResult<Option<String>> {
    const FIELD: &str = "Idempotency-Key";
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // `to_str` admits visible ASCII only.
    let key = v.to_str().map(str::trim).unwrap_or_default();
    check_idempotency_key(key, FIELD, limits)?;
    Ok(Some(key.to_string()))
}

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

/// Where to go from a job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobLinks {
    /// The job.
    #[serde(rename = "self")]
    this: String,
    /// Its Server-Sent Events.
    events: String,
    /// Cancel it.
    cancel: String,
}

fn links(id: Uuid) -> JobLinks {
    JobLinks {
        this: format!("/v1/jobs/{id}"),
        events: format!("/v1/jobs/{id}/events"),
        cancel: format!("/v1/jobs/{id}/cancel"),
    }
}

/// The answer to a submission that did not wait for the result.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Submitted {
    /// Job id.
    id: Uuid,
    /// Its status now (`queued`, `scheduled`, … or later for an existing job).
    #[schema(value_type = String)]
    status: JobStatus,
    /// True when the idempotency key named an existing job (nothing was inserted).
    existing: bool,
    /// Links.
    links: JobLinks,
}

/// The job id in the path.
const JOB_ID: &str = "Job id (UUID)";
/// The plugin name in the path.
const PLUGIN: &str = "Plugin name";

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
            body = SubmitAnswerDoc),
        (status = 400, description = "Malformed JSON, bad `run_at`, `wait`, webhook URL or key", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `invoke` scope", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such plugin (or no active version) for this tenant", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The idempotency key names a job with another body", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Body or input too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Not `application/json`", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Unknown field or wrong type, or past a server limit (`limit-exceeded`: tags, `timeout_ms`, `max_attempts`; `field` and `limit` say which)", body = Problem, content_type = PROBLEM_JSON),
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
    let wait = match params.wait.as_deref() {
        Some(w) => Some(
            parse_duration(w)
                .ok_or_else(|| {
                    ApiError::bad_field(
                        "wait",
                        format!(
                            "`wait` must be a duration such as 30s or 500ms (at most {}s), not {}",
                            MAX_WAIT.as_secs(),
                            preview(w)
                        ),
                    )
                })?
                .min(MAX_WAIT),
        ),
        None => None,
    };
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
        return Ok((StatusCode::OK, axum::Json(job_view(&st, &record).await)).into_response());
    }
    let record = st.node.store.get_job(enqueued.id).await?;
    let status = record.as_ref().map_or(JobStatus::Queued, |r| r.status);
    let code = if enqueued.existing {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut res = (
        code,
        axum::Json(Submitted {
            id: enqueued.id,
            status,
            existing: enqueued.existing,
            links: links(enqueued.id),
        }),
    )
        .into_response();
    if let Ok(loc) = format!("/v1/jobs/{}", enqueued.id).parse() {
        res.headers_mut().insert(axum::http::header::LOCATION, loc);
    }
    Ok(res)
}

/// A store `NotFound` on enqueue is about the plugin: say so by name.
fn plugin_not_found(plugin: &str) -> impl Fn(sluice_store::StoreError) -> ApiError + '_ {
    move |e| match e {
        sluice_store::StoreError::NotFound { .. } => ApiError::not_found("plugin", plugin),
        e => e.into(),
    }
}

/// Wait up to `wait` for job `id` to finish; `None` when it did not.
pub(crate) async fn wait_terminal(
    st: &AppState,
    id: Uuid,
    wait: Duration,
    mut events: tokio::sync::broadcast::Receiver<crate::node::LiveEvent>,
) -> ApiResult<Option<JobRecord>> {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(r) = st.node.store.get_job(id).await?
            && r.status.is_terminal()
        {
            return Ok(Some(r));
        }
        // Woken by a terminal status event for this job, or re-check the store every
        // second (a cancel by the API or another node publishes nothing here).
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let until = tick.min(deadline);
        loop {
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(Ok(ev)) if ev.job == id && ev.event.is_terminal() => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) | Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(st
                .node
                .store
                .get_job(id)
                .await?
                .filter(|r| r.status.is_terminal()));
        }
    }
}

/// Whether `event` reports a terminal status.
/// What a job's model calls used.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct JobUsage {
    /// Model calls made.
    model_calls: u64,
    /// Tokens in.
    input_tokens: u64,
    /// Tokens out.
    output_tokens: u64,
    /// Cost in micro-dollars.
    cost_micros: u64,
    /// Cost in dollars.
    cost_usd: f64,
}

/// How long a job took, in ms (`null` until known).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Timings {
    /// From due to its first attempt.
    queue_ms: Option<i64>,
    /// Its last attempt.
    last_attempt_ms: Option<i64>,
    /// From accepted to finished.
    total_ms: Option<i64>,
}

/// Sum of the job's persisted model-call events.
async fn usage_of(st: &AppState, id: Uuid) -> JobUsage {
    let (mut calls, mut input, mut output, mut cost) = (0u64, 0u64, 0u64, Micros::ZERO);
    let mut after = 0;
    loop {
        let Ok(batch) = st.node.store.events_after(id, after, 1000).await else {
            break;
        };
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in &batch {
            if let JobEvent::ModelCall {
                input_tokens,
                output_tokens,
                cost_micros,
                ..
            } = &e.event
            {
                calls = calls.saturating_add(1);
                input = input.saturating_add(u64::from(*input_tokens));
                output = output.saturating_add(u64::from(*output_tokens));
                // Reported by guests: `Micros` saturates rather than overflows.
                cost += Micros::new(*cost_micros);
            }
        }
        if batch.len() < 1000 {
            break;
        }
    }
    JobUsage {
        model_calls: calls,
        input_tokens: input,
        output_tokens: output,
        cost_micros: cost.get(),
        cost_usd: cost.to_usd(),
    }
}

/// The public view of a job record: the record minus `tenant`, plus usage, timings and links
/// (documented as [`JobDoc`]).
pub(crate) async fn job_view(st: &AppState, r: &JobRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.remove("tenant");
        let queue_ms = r
            .attempts
            .first()
            .map(|a| (a.started_at - r.run_at).num_milliseconds().max(0));
        let run_ms = match (r.attempted_at, r.finished_at) {
            (Some(a), Some(f)) => Some((f - a).num_milliseconds().max(0)),
            _ => None,
        };
        let total_ms = r
            .finished_at
            .map(|f| (f - r.created_at).num_milliseconds().max(0));
        let timings = Timings {
            queue_ms,
            last_attempt_ms: run_ms,
            total_ms,
        };
        map.insert("timings".into(), to_value(&timings));
        map.insert("usage".into(), to_value(&usage_of(st, r.id).await));
        map.insert("links".into(), to_value(&links(r.id)));
    }
    v
}

/// Plain structs of numbers and strings always serialize.
fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Load a job of this tenant (another tenant's job is "not found").
pub(crate) async fn find_job(st: &AppState, tenant: &str, id: &str) -> ApiResult<JobRecord> {
    let uuid = Uuid::parse_str(id).map_err(|_| ApiError::not_found("job", id))?;
    st.node
        .store
        .get_job(uuid)
        .await?
        .filter(|r| r.tenant == tenant)
        .ok_or_else(|| ApiError::not_found("job", id))
}

/// A job: status, attempts, output or error, usage, timings, digest.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = String, Path, description = JOB_ID)),
    responses(
        (status = 200, description = "The job", body = JobDoc),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `read` scope", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such job for this tenant", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Reader,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let r = find_job(&st, &principal.tenant, &id).await?;
    Ok(axum::Json(job_view(&st, &r).await))
}

fn summary_view(s: &JobSummary) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.remove("tenant");
        map.insert("links".into(), to_value(&links(s.id)));
    }
    v
}

fn page_request(cursor: Option<&str>, limit: Option<u32>) -> ApiResult<PageRequest> {
    let before = cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| ApiError::bad_request(format!("invalid cursor `{c}`")))
        })
        .transpose()?;
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    Ok(PageRequest { limit, before })
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    /// The jobs.
    #[schema(value_type = Vec<JobSummaryDoc>)]
    items: Vec<Value>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
}

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(
        ("status" = Option<JobStatusDoc>, Query, description = "Only jobs in this status"),
        ("plugin" = Option<String>, Query, description = "Only this plugin's jobs"),
        ("tag" = Option<Vec<String>>, Query, description = "`key:value`; may repeat, all must match"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Unknown parameter or bad value", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `read` scope", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Reader,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<axum::Json<JobPage>> {
    let mut filter = JobFilter {
        tenant: Some(principal.tenant.clone()),
        ..Default::default()
    };
    let (mut cursor, mut limit) = (None, None);
    for (k, v) in &pairs {
        match k.as_str() {
            "status" => {
                filter.status = Some(v.parse::<JobStatus>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "unknown status `{v}`: use one of {}",
                        JobStatus::ALL.map(|s| s.as_str()).join(", ")
                    ))
                })?)
            }
            "plugin" => filter.plugin = Some(v.clone()),
            "tag" => {
                let (tk, tv) = v.split_once(':').ok_or_else(|| {
                    ApiError::bad_request(format!("`tag` must be key:value, not `{v}`"))
                })?;
                filter.tags.insert(tk.to_string(), tv.to_string());
            }
            "cursor" => cursor = Some(v.as_str()),
            "limit" => {
                limit = Some(v.parse::<u32>().map_err(|_| {
                    ApiError::bad_request("`limit` must be a number between 1 and 1000")
                })?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`"
                )));
            }
        }
    }
    let page = st
        .node
        .store
        .list_jobs(&filter, page_request(cursor, limit)?)
        .await?;
    Ok(axum::Json(JobPage {
        items: page.items.iter().map(summary_view).collect(),
        next_cursor: page.next,
    }))
}

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelAnswer {
    /// Job id.
    id: Uuid,
    /// `cancelled`, or `cancel_requested` while an attempt is still running.
    status: &'static str,
    /// Links.
    links: JobLinks,
}

/// Cancel a job.
///
/// A queued job is cancelled at once (200); a running one is asked to stop (202).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = String, Path, description = JOB_ID)),
    responses(
        (status = 200, description = "Cancelled", body = CancelAnswer),
        (status = 202, description = "Running: cancellation requested", body = CancelAnswer),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `invoke` scope", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such job for this tenant", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "Already finished (`job_status` says how)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn cancel(
    State(st): State<AppState>,
    principal: Invoker,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = find_job(&st, &principal.tenant, &id).await?;
    let (code, status) = match st.node.store.cancel(r.id).await? {
        CancelOutcome::Cancelled => {
            // Nobody else will announce this one: tell live subscribers (SSE, webhooks).
            st.node.events.publish_live(
                r.id,
                JobEvent::Status {
                    status: JobStatus::Cancelled,
                    attempt: r.attempt,
                    reason: Some("cancelled by request".into()),
                },
            );
            (StatusCode::OK, JobStatus::Cancelled.as_str())
        }
        CancelOutcome::CancelRequested => (StatusCode::ACCEPTED, "cancel_requested"),
        CancelOutcome::AlreadyFinished {
            status: JobStatus::Cancelled,
        } => (StatusCode::OK, JobStatus::Cancelled.as_str()),
        CancelOutcome::AlreadyFinished { status } => {
            // Not `status`: in a problem document that is the HTTP status.
            return Err(ApiError::conflict(
                "job-finished",
                format!("job {id} already finished as {status}"),
            )
            .with("job_status", status.as_str()));
        }
        CancelOutcome::NotFound => return Err(ApiError::not_found("job", id)),
    };
    Ok((
        code,
        axum::Json(CancelAnswer {
            id: r.id,
            status,
            links: links(r.id),
        }),
    )
        .into_response())
}

/// Body of the redrive endpoints (optional: empty means the defaults).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveRequest {
    /// Only this plugin (DLQ redrive).
    plugin: Option<String>,
    /// Only these jobs (DLQ redrive).
    ids: Option<Vec<Uuid>>,
    /// At most this many (DLQ redrive).
    limit: Option<u32>,
    /// Which code to run: `"same"` (default), `"active"`, or a version number (DLQ redrive
    /// onto a version needs `plugin`).
    #[schema(value_type = Option<Value>)]
    target: Option<Value>,
    /// New attempt budget (at most `server.limits.max_attempts`).
    max_attempts: Option<u32>,
    /// Run from scratch: forget the job's journal, so its model calls are made (and paid)
    /// again. By default a redriven job replays its journal: calls it already made are
    /// answered from it at no cost. Committed effects are kept either way. (`clear_journal`
    /// is the older name.)
    #[serde(default, alias = "clear_journal")]
    fresh: bool,
}

impl RedriveRequest {
    fn options(&self, limits: &crate::config::ApiLimits) -> ApiResult<RedriveOptions> {
        check_max_attempts(self.max_attempts, limits)?;
        let target = match &self.target {
            None => RedriveTarget::Same,
            Some(Value::String(s)) if s == "same" => RedriveTarget::Same,
            Some(Value::String(s)) if s == "active" => RedriveTarget::Active,
            Some(Value::Number(n)) if n.as_i64().is_some() => {
                RedriveTarget::Version(n.as_i64().unwrap_or_default())
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`target` must be \"same\", \"active\" or a version number, not {other}"
                )));
            }
        };
        Ok(RedriveOptions {
            target,
            max_attempts: self.max_attempts,
            clear_journal: self.fresh,
        })
    }
}

/// `max_attempts` as a submission or a redrive may ask: at least 1, at most the server's cap.
fn check_max_attempts(n: Option<u32>, limits: &crate::config::ApiLimits) -> ApiResult<()> {
    match n {
        Some(0) => Err(ApiError::bad_field(
            "max_attempts",
            "`max_attempts` must be at least 1",
        )),
        Some(n) if n > limits.max_attempts => Err(ApiError::limit_exceeded(
            "max_attempts",
            limits.max_attempts,
            format!(
                "`max_attempts` may be at most {} (`server.limits.max_attempts`)",
                limits.max_attempts
            ),
        )),
        _ => Ok(()),
    }
}

/// An optional JSON body: empty means defaults.
async fn optional_body(body: bytes::Bytes) -> ApiResult<RedriveRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RedriveRequest::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            e.to_string(),
        )
    })
}

/// Jobs put back in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Redriven {
    /// Their ids.
    redriven: Vec<Uuid>,
    /// How many.
    count: usize,
}

impl Redriven {
    fn new(redriven: Vec<Uuid>) -> Self {
        Redriven {
            count: redriven.len(),
            redriven,
        }
    }
}

/// Put a dead job back in the queue.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/redrive",
    operation_id = "redrive_job",
    tag = "dlq",
    params(("id" = String, Path, description = JOB_ID)),
    request_body(content = Option<RedriveRequest>, content_type = "application/json",
        description = "Optional: `target`, `max_attempts`, `fresh`"),
    responses(
        (status = 200, description = "Redriven", body = Redriven),
        (status = 400, description = "Malformed JSON or bad `target`", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `invoke` scope", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such job for this tenant", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "The job is not dead (`job_status` says what it is)", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn redrive_one(
    State(st): State<AppState>,
    principal: Invoker,
    Path(id): Path<String>,
    super::extract::JsonBytes(body): super::extract::JsonBytes,
) -> ApiResult<axum::Json<Redriven>> {
    let req = optional_body(body).await?;
    let r = find_job(&st, &principal.tenant, &id).await?;
    if r.status != JobStatus::Dead {
        return Err(ApiError::conflict(
            "job-not-dead",
            format!("only dead jobs can be redriven; job {id} is {}", r.status),
        )
        .with("job_status", r.status.as_str()));
    }
    let filter = DeadFilter {
        tenant: Some(principal.tenant.clone()),
        plugin: Some(r.plugin.clone()),
        ids: Some(vec![r.id]),
        limit: Some(1),
    };
    let ids = st
        .node
        .store
        .redrive(&filter, &req.options(&st.node.config.server.limits)?)
        .await?;
    Ok(axum::Json(Redriven::new(ids)))
}

/// Redrive dead jobs matching filters (`plugin`, `ids`, `limit`).
#[utoipa::path(
    post,
    path = "/v1/dlq/redrive",
    tag = "dlq",
    request_body(content = Option<RedriveRequest>, content_type = "application/json",
        description = "Optional: filters and how to redrive; empty redrives every dead job of the tenant"),
    responses(
        (status = 200, description = "Redriven", body = Redriven),
        (status = 400, description = "Malformed JSON or bad `target`", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `invoke` scope", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn redrive_dead(
    State(st): State<AppState>,
    principal: Invoker,
    super::extract::JsonBytes(body): super::extract::JsonBytes,
) -> ApiResult<axum::Json<Redriven>> {
    let req = optional_body(body).await?;
    if matches!(req.target, Some(Value::Number(_))) && req.plugin.is_none() {
        return Err(ApiError::bad_request(
            "redriving onto a version needs `plugin`",
        ));
    }
    let filter = DeadFilter {
        tenant: Some(principal.tenant.clone()),
        plugin: req.plugin.clone(),
        ids: req.ids.clone(),
        limit: req.limit,
    };
    let ids = st
        .node
        .store
        .redrive(&filter, &req.options(&st.node.config.server.limits)?)
        .await?;
    Ok(axum::Json(Redriven::new(ids)))
}

/// Query of `GET /v1/dlq`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadParams {
    /// Only this plugin's dead jobs.
    plugin: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of dead jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadPage {
    /// The jobs, newest first.
    #[schema(value_type = Vec<JobSummaryDoc>)]
    items: Vec<Value>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
    /// Dead jobs matching the filter, all pages.
    total: u64,
}

/// Dead jobs (the dead-letter queue), newest first.
#[utoipa::path(
    get,
    path = "/v1/dlq",
    tag = "dlq",
    params(DeadParams),
    responses(
        (status = 200, description = "A page of dead jobs", body = DeadPage),
        (status = 400, description = "Bad query", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `read` scope", body = Problem, content_type = PROBLEM_JSON),
    )
)]
pub(crate) async fn list_dead(
    State(st): State<AppState>,
    principal: Reader,
    Query(p): Query<DeadParams>,
) -> ApiResult<axum::Json<DeadPage>> {
    let store = &st.node.store;
    let page = store
        .list_dead(
            Some(&principal.tenant),
            p.plugin.as_deref(),
            page_request(p.cursor.as_deref(), p.limit)?,
        )
        .await?;
    let total = store
        .count_dead(Some(&principal.tenant), p.plugin.as_deref())
        .await?;
    Ok(axum::Json(DeadPage {
        items: page.items.iter().map(summary_view).collect(),
        next_cursor: page.next,
        total,
    }))
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
        (status = 400, description = "Empty or too large, or a bad job (`index` says which)", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "Missing or unknown API key", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "The key lacks the `invoke` scope", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "No such plugin for this tenant", body = Problem, content_type = PROBLEM_JSON),
        (status = 409, description = "An idempotency key names a job with another body", body = Problem, content_type = PROBLEM_JSON),
        (status = 413, description = "Body larger than `server.limits.max_batch_body_bytes`, or an input too large", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "Unknown field or wrong type, or past a server limit (`index` says which job)", body = Problem, content_type = PROBLEM_JSON),
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
            links: links(e.id),
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

// The shapes below are for the OpenAPI document only: job bodies are the store's records
// serialized (see `job_view`, `summary_view`), and `tests/api.rs` checks that real
// answers and these schemas have the same fields.

/// A job.
#[derive(ToSchema)]
#[schema(as = Job)]
#[allow(dead_code)]
pub(crate) struct JobDoc {
    /// Id.
    id: Uuid,
    /// Plugin name.
    plugin: String,
    /// The plugin version it runs.
    plugin_version: i64,
    /// The component it runs (`sha256:<hex>`).
    digest: String,
    /// Status.
    status: JobStatusDoc,
    /// Priority.
    priority: i32,
    /// Input.
    #[schema(value_type = Value)]
    input: Value,
    /// Tags.
    tags: BTreeMap<String, String>,
    /// Attempts made in the current run.
    attempt: u32,
    /// Attempts allowed.
    max_attempts: u32,
    /// Redrive generation, from 0.
    run: u32,
    /// Attempt timeout.
    timeout_ms: u64,
    /// Idempotency key.
    idempotency_key: Option<String>,
    /// Webhook for its outcome.
    webhook_url: Option<String>,
    /// Worker of the current or last attempt.
    worker_id: Option<String>,
    /// Whether a cancel was requested while it ran.
    cancel_requested: bool,
    /// Accepted at.
    created_at: DateTime<Utc>,
    /// Due at.
    run_at: DateTime<Utc>,
    /// Current or last attempt started at.
    attempted_at: Option<DateTime<Utc>>,
    /// Lease expiry while running.
    lease_expires_at: Option<DateTime<Utc>>,
    /// Finished at.
    finished_at: Option<DateTime<Utc>>,
    /// Output (completed).
    #[schema(value_type = Option<Value>)]
    output: Option<Value>,
    /// Final error (dead, cancelled).
    error: Option<JobErrorDoc>,
    /// Every attempt, oldest first.
    attempts: Vec<AttemptDoc>,
    /// Timings.
    timings: Timings,
    /// What its model calls used.
    usage: JobUsage,
    /// Links.
    links: JobLinks,
}

/// The 200 answer of a submission: with `?wait=`, the finished job; otherwise the existing job
/// an idempotency key named.
#[derive(ToSchema)]
#[schema(as = SubmitAnswer)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum SubmitAnswerDoc {
    Finished(Box<JobDoc>),
    Existing(Submitted),
}

/// A job in a listing (no input, output or attempt log).
#[derive(ToSchema)]
#[schema(as = JobSummary)]
#[allow(dead_code)]
pub(crate) struct JobSummaryDoc {
    /// Id.
    id: Uuid,
    /// Plugin name.
    plugin: String,
    /// The plugin version it runs.
    plugin_version: i64,
    /// Status.
    status: JobStatusDoc,
    /// Priority.
    priority: i32,
    /// Tags.
    tags: BTreeMap<String, String>,
    /// Attempts made in the current run.
    attempt: u32,
    /// Attempts allowed.
    max_attempts: u32,
    /// Redrive generation, from 0.
    run: u32,
    /// Accepted at.
    created_at: DateTime<Utc>,
    /// Due at.
    run_at: DateTime<Utc>,
    /// Finished at.
    finished_at: Option<DateTime<Utc>>,
    /// Final error (dead, cancelled).
    error: Option<JobErrorDoc>,
    /// Links.
    links: JobLinks,
}

/// A job's status (see `docs/job-states.md`).
#[derive(ToSchema)]
#[schema(as = JobStatus)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum JobStatusDoc {
    Scheduled,
    Queued,
    Retrying,
    Running,
    Completed,
    Dead,
    Cancelled,
}

/// How a job (or an attempt) failed.
#[derive(ToSchema)]
#[schema(as = JobError)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum JobErrorDoc {
    /// May pass on retry.
    Retryable {
        /// Why.
        message: String,
        /// Least wait before the next attempt.
        retry_after_ms: Option<u64>,
    },
    /// Will not pass on retry.
    Permanent {
        /// Why.
        message: String,
    },
}

/// One attempt in a job's history.
#[derive(ToSchema)]
#[schema(as = Attempt)]
#[allow(dead_code)]
pub(crate) struct AttemptDoc {
    /// Redrive generation.
    run: u32,
    /// Attempt number within the run.
    attempt: u32,
    /// Who ran it.
    worker_id: Option<String>,
    /// The component it ran.
    digest: String,
    /// Claimed at.
    started_at: DateTime<Utc>,
    /// Ended (or was declared lost) at.
    finished_at: DateTime<Utc>,
    /// `completed`, `failed`, `lease_expired` or `cancelled`.
    outcome: String,
    /// Its error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<JobErrorDoc>,
    /// Extra detail the worker supplied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    detail: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
        // Tenants' numbers: too long to represent is "not a duration", never a panic.
        assert_eq!(parse_duration("100000000000000000000"), None);
        assert_eq!(parse_duration("300000000000000000h"), None);
        assert_eq!(parse_duration(&"9".repeat(400)), None);
        assert!(parse_duration("300000000000h").is_some());
        for bad in ["", ".", "-1", "NaN", "inf", "1e5", "1.2.3s", "\u{0}", "٣s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tags_are_bounded() {
        let limits = ApiLimits::default();
        let tags = |pairs: &[(&str, &str)]| -> Tags {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(check_tags(&tags(&[("user", "alice")]), &limits).is_ok());
        let many: Tags = (0..=limits.max_tags)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let e = check_tags(&many, &limits).unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind), (422, "limit-exceeded"));
        let long_key = "k".repeat(limits.max_tag_key_bytes + 1);
        assert_eq!(
            check_tags(&tags(&[(&long_key, "v")]), &limits)
                .unwrap_err()
                .status,
            422
        );
        let long_value = "v".repeat(limits.max_tag_value_bytes + 1);
        assert_eq!(
            check_tags(&tags(&[("k", &long_value)]), &limits)
                .unwrap_err()
                .status,
            422
        );
        for (k, v) in [
            ("a\0b", "v"),
            ("k", "line\nbreak"),
            ("", "v"),
            ("k", "\u{85}"),
        ] {
            let e = check_tags(&tags(&[(k, v)]), &limits).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.kind),
                (400, "bad-request"),
                "{k:?}={v:?}"
            );
            assert_eq!(e.extra["field"], "tags");
        }
        // Exactly at the limits is fine.
        let key = "k".repeat(limits.max_tag_key_bytes);
        let value = "é".repeat(limits.max_tag_value_bytes / 2);
        assert!(check_tags(&tags(&[(&key, &value)]), &limits).is_ok());
    }
}
