//! `/v1/plugins/{name}/jobs` and `/v1/jobs…`: submit (optionally waiting for the result),
//! get, list, cancel, redrive and the dead-letter queue.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{
    CancelOutcome, DeadFilter, JobFilter, JobRecord, JobStatus, JobSummary, NewJob, PageRequest,
    RedriveOptions, RedriveTarget,
};
use sluice_types::{JobEvent, Tags};
use uuid::Uuid;

use super::AppState;
use super::auth::{Principal, Scope};
use super::error::{ApiError, ApiResult};
use super::extract::{Json, Path, Query};

/// Longest `?wait=` honoured.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);

/// Body of a job submission.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitRequest {
    #[serde(default)]
    input: Value,
    #[serde(default)]
    tags: Tags,
    #[serde(default)]
    priority: i32,
    run_at: Option<String>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    webhook: Option<WebhookSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSpec {
    url: String,
}

/// Query of a submission.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitParams {
    /// `30s`, `500ms`, `2m` or plain seconds; capped at [`MAX_WAIT`].
    wait: Option<String>,
}

/// Parse `30s`, `500ms`, `2m`, `1h` or plain seconds.
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
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
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
            .with("run_at", s)
        })
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= sluice_store::MAX_KEY_BYTES)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1..={} visible ASCII characters",
                sluice_store::MAX_KEY_BYTES
            ))
        })?;
    Ok(Some(key.to_string()))
}

fn new_job(
    st: &AppState,
    tenant: &str,
    plugin: &str,
    req: SubmitRequest,
    key: Option<String>,
) -> ApiResult<NewJob> {
    let run_at = req.run_at.as_deref().map(parse_run_at).transpose()?;
    if let Some(0) = req.max_attempts {
        return Err(ApiError::bad_request("`max_attempts` must be at least 1"));
    }
    if let Some(0) = req.timeout_ms {
        return Err(ApiError::bad_request("`timeout_ms` must be at least 1"));
    }
    let webhook_url = match req.webhook {
        Some(w) => {
            // The same rule delivery applies: accepting a URL that can never be delivered
            // to (or refusing one that could) would only surface later, as a dead delivery.
            let cfg = &st.node.config;
            let open = crate::webhooks::private_allowed(cfg);
            crate::webhooks::check_url_with(&w.url, open, &cfg.webhooks.allow_hosts).map_err(
                |reason| {
                    ApiError::bad_request(format!("webhook url rejected: {reason}"))
                        .with("webhook_url", w.url.clone())
                },
            )?;
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

fn links(id: Uuid) -> Value {
    json!({
        "self": format!("/v1/jobs/{id}"),
        "events": format!("/v1/jobs/{id}/events"),
        "cancel": format!("/v1/jobs/{id}/cancel"),
    })
}

/// `POST /v1/plugins/{name}/jobs`
pub(crate) async fn submit(
    State(st): State<AppState>,
    principal: Principal,
    Path(plugin): Path<String>,
    Query(params): Query<SubmitParams>,
    headers: HeaderMap,
    Json(req): Json<SubmitRequest>,
) -> ApiResult<Response> {
    principal.require(Scope::Invoke)?;
    let wait = match params.wait.as_deref() {
        Some(w) => Some(
            parse_duration(w)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`wait` must be a duration such as 30s or 500ms, not `{w}`"
                    ))
                })?
                .min(MAX_WAIT),
        ),
        None => None,
    };
    let key = idempotency_key(&headers)?;
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

    if let (Some(wait), Some(events)) = (wait, events)
        && let Some(record) = wait_terminal(&st, enqueued.id, wait, events).await?
    {
        return Ok((StatusCode::OK, axum::Json(job_view(&st, &record).await)).into_response());
    }
    let record = st.node.store.get_job(enqueued.id).await?;
    let status = record
        .as_ref()
        .map(|r| r.status.as_str())
        .unwrap_or("queued");
    let code = if enqueued.existing {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut res = (
        code,
        axum::Json(json!({
            "id": enqueued.id,
            "status": status,
            "existing": enqueued.existing,
            "links": links(enqueued.id),
        })),
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
                Ok(Ok(ev)) if ev.job == id && is_terminal_event(&ev.event) => break,
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
pub(crate) fn is_terminal_event(event: &JobEvent) -> bool {
    matches!(event, JobEvent::Status { status, .. }
        if matches!(status.as_str(), "completed" | "dead" | "cancelled"))
}

/// Sum of the job's persisted model-call events.
async fn usage_of(st: &AppState, id: Uuid) -> Value {
    let (mut calls, mut input, mut output, mut cost) = (0u64, 0u64, 0u64, 0u64);
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
                calls += 1;
                input += u64::from(*input_tokens);
                output += u64::from(*output_tokens);
                cost += cost_micros;
            }
        }
        if batch.len() < 1000 {
            break;
        }
    }
    json!({ "model_calls": calls, "input_tokens": input, "output_tokens": output, "cost_micros": cost, "cost_usd": cost as f64 / 1e6 })
}

/// The public view of a job record: the record plus usage, timings and links.
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
        map.insert(
            "timings".into(),
            json!({ "queue_ms": queue_ms, "last_attempt_ms": run_ms, "total_ms": total_ms }),
        );
        map.insert("usage".into(), usage_of(st, r.id).await);
        map.insert("links".into(), links(r.id));
    }
    v
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

/// `GET /v1/jobs/{id}`
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let r = find_job(&st, &principal.tenant, &id).await?;
    Ok(axum::Json(job_view(&st, &r).await))
}

fn summary_view(s: &JobSummary) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Value::Object(map) = &mut v {
        map.remove("tenant");
        map.insert("links".into(), links(s.id));
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

/// `GET /v1/jobs?status=&plugin=&tag=k:v&cursor=&limit=` (`tag` may repeat).
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Principal,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
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
    Ok(axum::Json(json!({
        "items": page.items.iter().map(summary_view).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

/// `POST /v1/jobs/{id}/cancel`
pub(crate) async fn cancel(
    State(st): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    principal.require(Scope::Invoke)?;
    let r = find_job(&st, &principal.tenant, &id).await?;
    let (code, status) = match st.node.store.cancel(r.id).await? {
        CancelOutcome::Cancelled => {
            // Nobody else will announce this one: tell live subscribers (SSE, webhooks).
            st.node.events.publish_live(
                r.id,
                JobEvent::Status {
                    status: "cancelled".into(),
                    attempt: r.attempt,
                    reason: Some("cancelled by request".into()),
                },
            );
            (StatusCode::OK, "cancelled")
        }
        CancelOutcome::CancelRequested => (StatusCode::ACCEPTED, "cancel_requested"),
        CancelOutcome::AlreadyFinished {
            status: JobStatus::Cancelled,
        } => (StatusCode::OK, "cancelled"),
        CancelOutcome::AlreadyFinished { status } => {
            return Err(ApiError::conflict(
                "job-finished",
                format!("job {id} already finished as {status}"),
            )
            .with("status", status.as_str()));
        }
        CancelOutcome::NotFound => return Err(ApiError::not_found("job", id)),
    };
    Ok((
        code,
        axum::Json(json!({ "id": r.id, "status": status, "links": links(r.id) })),
    )
        .into_response())
}

/// Body of the redrive endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveRequest {
    /// Only this plugin (DLQ redrive).
    plugin: Option<String>,
    /// Only these jobs (DLQ redrive).
    ids: Option<Vec<Uuid>>,
    /// At most this many.
    limit: Option<u32>,
    /// `same` (default), `active`, or a version number.
    target: Option<Value>,
    /// New attempt budget.
    max_attempts: Option<u32>,
    /// Forget journaled model calls.
    #[serde(default)]
    clear_journal: bool,
}

impl RedriveRequest {
    fn options(&self) -> ApiResult<RedriveOptions> {
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
            clear_journal: self.clear_journal,
        })
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

/// `POST /v1/jobs/{id}/redrive`
pub(crate) async fn redrive_one(
    State(st): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    super::extract::Body(body): super::extract::Body,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Invoke)?;
    let req = optional_body(body).await?;
    let r = find_job(&st, &principal.tenant, &id).await?;
    if r.status != JobStatus::Dead {
        return Err(ApiError::conflict(
            "job-not-dead",
            format!("only dead jobs can be redriven; job {id} is {}", r.status),
        )
        .with("status", r.status.as_str()));
    }
    let filter = DeadFilter {
        tenant: Some(principal.tenant.clone()),
        plugin: Some(r.plugin.clone()),
        ids: Some(vec![r.id]),
        limit: Some(1),
    };
    let ids = st.node.store.redrive(&filter, &req.options()?).await?;
    Ok(axum::Json(json!({ "redriven": ids })))
}

/// `POST /v1/dlq/redrive` with filters `{plugin, ids, limit, target, max_attempts}`.
pub(crate) async fn redrive_dead(
    State(st): State<AppState>,
    principal: Principal,
    super::extract::Body(body): super::extract::Body,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Invoke)?;
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
    let ids = st.node.store.redrive(&filter, &req.options()?).await?;
    Ok(axum::Json(json!({ "redriven": ids, "count": ids.len() })))
}

/// Query of `GET /v1/dlq`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadParams {
    plugin: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/dlq?plugin=&cursor=&limit=`
pub(crate) async fn list_dead(
    State(st): State<AppState>,
    principal: Principal,
    Query(p): Query<DeadParams>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
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
    Ok(axum::Json(json!({
        "items": page.items.iter().map(summary_view).collect::<Vec<_>>(),
        "next_cursor": page.next,
        "total": total,
    })))
}

/// `POST /v1/plugins/{name}/jobs/batch` with `{"jobs": [SubmitRequest…]}`: all or none.
pub(crate) async fn submit_batch(
    State(st): State<AppState>,
    principal: Principal,
    Path(plugin): Path<String>,
    Json(req): Json<BatchRequest>,
) -> ApiResult<Response> {
    principal.require(Scope::Invoke)?;
    if req.jobs.is_empty() || req.jobs.len() > 1000 {
        return Err(ApiError::bad_request("`jobs` must hold 1 to 1000 jobs"));
    }
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (i, j) in req.jobs.into_iter().enumerate() {
        let key = j.idempotency_key.clone();
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
    let items: Vec<Value> = done
        .iter()
        .map(|e| json!({ "id": e.id, "existing": e.existing, "links": links(e.id) }))
        .collect();
    Ok((StatusCode::ACCEPTED, axum::Json(json!({ "items": items }))).into_response())
}

/// Body of a batch submission.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    jobs: Vec<BatchItem>,
}

#[derive(Debug, Deserialize)]
struct BatchItem {
    idempotency_key: Option<String>,
    #[serde(flatten)]
    job: SubmitRequest,
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
    }
}
