//! What the API publishes about a job: allow-listed views of the store's records.
//!
//! Each view names the fields it shows, and its `From` destructures the record without `..`,
//! so a field added to a store record does not compile here until someone decides whether it
//! is public. The views derive the OpenAPI schema themselves: the document describes exactly
//! what is sent.
//!
//! Field order: job bodies were once built as JSON maps, which serialize their keys sorted,
//! and clients have seen them that way since; the job views keep that order by declaring their
//! fields alphabetically (`job_json_is_unchanged` pins the bytes).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sluice_store::{AttemptOutcome, AttemptRecord, JobRecord, JobStatus, JobSummary};
use sluice_types::{JobError, JobEvent, Micros, Tags};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::AppState;

/// A job's status (see `docs/job-states.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = JobStatus)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobStatusView {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready, waiting for a worker.
    Queued,
    /// An attempt failed or was lost; due again at `run_at`.
    Retrying,
    /// A worker holds it.
    Running,
    /// Output stored.
    Completed,
    /// Failed permanently or out of attempts.
    Dead,
    /// Cancelled.
    Cancelled,
}

impl From<JobStatus> for JobStatusView {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Scheduled => JobStatusView::Scheduled,
            JobStatus::Queued => JobStatusView::Queued,
            JobStatus::Retrying => JobStatusView::Retrying,
            JobStatus::Running => JobStatusView::Running,
            JobStatus::Completed => JobStatusView::Completed,
            JobStatus::Dead => JobStatusView::Dead,
            JobStatus::Cancelled => JobStatusView::Cancelled,
        }
    }
}

/// How a job (or an attempt) failed.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = JobError)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum JobErrorView {
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

impl From<&JobError> for JobErrorView {
    fn from(e: &JobError) -> Self {
        match e.clone() {
            JobError::Retryable {
                message,
                retry_after_ms,
            } => JobErrorView::Retryable {
                message,
                retry_after_ms,
            },
            JobError::Permanent { message } => JobErrorView::Permanent { message },
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[schema(as = AttemptOutcome)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AttemptOutcomeView {
    /// The handler returned output.
    Completed,
    /// The handler (or the host) reported an error.
    Failed,
    /// Its worker stopped heartbeating; the job was taken back.
    LeaseExpired,
    /// Stopped because the job was cancelled.
    Cancelled,
}

impl From<AttemptOutcome> for AttemptOutcomeView {
    fn from(o: AttemptOutcome) -> Self {
        match o {
            AttemptOutcome::Completed => AttemptOutcomeView::Completed,
            AttemptOutcome::Failed => AttemptOutcomeView::Failed,
            AttemptOutcome::LeaseExpired => AttemptOutcomeView::LeaseExpired,
            AttemptOutcome::Cancelled => AttemptOutcomeView::Cancelled,
        }
    }
}

/// One attempt in a job's history.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Attempt)]
pub(crate) struct AttemptView {
    /// Attempt number within the run.
    attempt: u32,
    /// Extra detail the worker supplied.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    detail: Option<Value>,
    /// The component it ran.
    digest: String,
    /// Its error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<JobErrorView>,
    /// Ended (or was declared lost) at.
    finished_at: DateTime<Utc>,
    /// How it ended.
    outcome: AttemptOutcomeView,
    /// Redrive generation.
    run: u32,
    /// Claimed at.
    started_at: DateTime<Utc>,
    /// Who ran it.
    worker_id: Option<String>,
}

impl From<&AttemptRecord> for AttemptView {
    fn from(a: &AttemptRecord) -> Self {
        // No `..`: a new field must be published here, or left out here, on purpose.
        let AttemptRecord {
            run,
            attempt,
            worker_id,
            digest,
            started_at,
            finished_at,
            outcome,
            error,
            detail,
        } = a;
        AttemptView {
            attempt: *attempt,
            detail: detail.clone(),
            digest: digest.clone(),
            error: error.as_ref().map(JobErrorView::from),
            finished_at: *finished_at,
            outcome: (*outcome).into(),
            run: *run,
            started_at: *started_at,
            worker_id: worker_id.clone(),
        }
    }
}

/// Where to go from a job.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobLinks {
    /// Cancel it.
    cancel: String,
    /// Its Server-Sent Events.
    events: String,
    /// The job.
    #[serde(rename = "self")]
    this: String,
}

impl JobLinks {
    /// The links of job `id`.
    pub(crate) fn new(id: Uuid) -> Self {
        JobLinks {
            cancel: format!("/v1/jobs/{id}/cancel"),
            events: format!("/v1/jobs/{id}/events"),
            this: format!("/v1/jobs/{id}"),
        }
    }
}

/// What a job's model calls used.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct JobUsage {
    /// Cost in micro-dollars.
    cost_micros: u64,
    /// Cost in dollars.
    cost_usd: f64,
    /// Tokens in.
    input_tokens: u64,
    /// Model calls made.
    model_calls: u64,
    /// Tokens out.
    output_tokens: u64,
}

impl JobUsage {
    /// Sum of job `id`'s persisted model-call events (what is readable of them: a store
    /// error ends the sum, the job is still shown).
    pub(crate) async fn of(st: &AppState, id: Uuid) -> JobUsage {
        const PAGE: u32 = 1000;
        let (mut calls, mut input, mut output, mut cost) = (0u64, 0u64, 0u64, Micros::ZERO);
        let mut after = 0;
        loop {
            let Ok(batch) = st.node.store.events_after(id, after, PAGE).await else {
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
            if batch.len() < PAGE as usize {
                break;
            }
        }
        JobUsage {
            cost_micros: cost.get(),
            cost_usd: cost.to_usd(),
            input_tokens: input,
            model_calls: calls,
            output_tokens: output,
        }
    }
}

/// How long a job took, in ms (`null` until known).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Timings {
    /// Its last attempt.
    last_attempt_ms: Option<i64>,
    /// From due to its first attempt.
    queue_ms: Option<i64>,
    /// From accepted to finished.
    total_ms: Option<i64>,
}

impl Timings {
    fn of(r: &JobRecord) -> Self {
        let ms = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds().max(0);
        Timings {
            last_attempt_ms: match (r.attempted_at, r.finished_at) {
                (Some(a), Some(f)) => Some(ms(a, f)),
                _ => None,
            },
            queue_ms: r.attempts.first().map(|a| ms(r.run_at, a.started_at)),
            total_ms: r.finished_at.map(|f| ms(r.created_at, f)),
        }
    }
}

/// A job.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub(crate) struct JobView {
    /// Attempts made in the current run.
    attempt: u32,
    /// Current or last attempt started at.
    attempted_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    attempts: Vec<AttemptView>,
    /// Whether a cancel was requested while it ran.
    cancel_requested: bool,
    /// Accepted at.
    created_at: DateTime<Utc>,
    /// The component it runs (`sha256:<hex>`).
    digest: String,
    /// Final error (dead, cancelled).
    error: Option<JobErrorView>,
    /// Finished at.
    finished_at: Option<DateTime<Utc>>,
    /// Id.
    id: Uuid,
    /// Idempotency key.
    idempotency_key: Option<String>,
    /// Input.
    #[schema(value_type = Value)]
    input: Value,
    /// Lease expiry while running.
    lease_expires_at: Option<DateTime<Utc>>,
    /// Links.
    links: JobLinks,
    /// Attempts allowed.
    max_attempts: u32,
    /// Output (completed).
    #[schema(value_type = Option<Value>)]
    output: Option<Value>,
    /// Plugin name.
    plugin: String,
    /// The plugin version it runs.
    plugin_version: i64,
    /// Priority.
    priority: i32,
    /// Redrive generation, from 0.
    run: u32,
    /// Due at.
    run_at: DateTime<Utc>,
    /// Status.
    status: JobStatusView,
    /// Tags.
    #[schema(value_type = BTreeMap<String, String>)]
    tags: Tags,
    /// Attempt timeout.
    timeout_ms: u64,
    /// Timings.
    timings: Timings,
    /// What its model calls used.
    usage: JobUsage,
    /// Webhook for its outcome.
    webhook_url: Option<String>,
    /// Worker of the current or last attempt.
    worker_id: Option<String>,
}

impl JobView {
    /// The view of `r`, with what its model calls used (from its events).
    pub(crate) async fn load(st: &AppState, r: &JobRecord) -> Self {
        JobView::new(r, JobUsage::of(st, r.id).await)
    }

    /// The view of `r` with `usage`.
    pub(crate) fn new(r: &JobRecord, usage: JobUsage) -> Self {
        // No `..`: a new field must be published here, or left out here, on purpose.
        let JobRecord {
            id,
            tenant: _,
            plugin,
            plugin_version,
            digest,
            status,
            priority,
            input,
            tags,
            attempt,
            max_attempts,
            run,
            timeout_ms,
            idempotency_key,
            webhook_url,
            worker_id,
            cancel_requested,
            created_at,
            run_at,
            attempted_at,
            lease_expires_at,
            finished_at,
            output,
            error,
            attempts,
        } = r;
        JobView {
            attempt: *attempt,
            attempted_at: *attempted_at,
            attempts: attempts.iter().map(AttemptView::from).collect(),
            cancel_requested: *cancel_requested,
            created_at: *created_at,
            digest: digest.clone(),
            error: error.as_ref().map(JobErrorView::from),
            finished_at: *finished_at,
            id: *id,
            idempotency_key: idempotency_key.clone(),
            input: input.clone(),
            lease_expires_at: *lease_expires_at,
            links: JobLinks::new(*id),
            max_attempts: *max_attempts,
            output: output.clone(),
            plugin: plugin.clone(),
            plugin_version: *plugin_version,
            priority: *priority,
            run: *run,
            run_at: *run_at,
            status: (*status).into(),
            tags: tags.clone(),
            timeout_ms: *timeout_ms,
            timings: Timings::of(r),
            usage,
            webhook_url: webhook_url.clone(),
            worker_id: worker_id.clone(),
        }
    }
}

/// A job in a listing (no input, output or attempt log).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = JobSummary)]
pub(crate) struct JobSummaryView {
    /// Attempts made in the current run.
    attempt: u32,
    /// Accepted at.
    created_at: DateTime<Utc>,
    /// Final error (dead, cancelled).
    error: Option<JobErrorView>,
    /// Finished at.
    finished_at: Option<DateTime<Utc>>,
    /// Id.
    id: Uuid,
    /// Links.
    links: JobLinks,
    /// Attempts allowed.
    max_attempts: u32,
    /// Plugin name.
    plugin: String,
    /// The plugin version it runs.
    plugin_version: i64,
    /// Priority.
    priority: i32,
    /// Redrive generation, from 0.
    run: u32,
    /// Due at.
    run_at: DateTime<Utc>,
    /// Status.
    status: JobStatusView,
    /// Tags.
    #[schema(value_type = BTreeMap<String, String>)]
    tags: Tags,
}

impl From<&JobSummary> for JobSummaryView {
    fn from(s: &JobSummary) -> Self {
        // No `..`: a new field must be published here, or left out here, on purpose.
        let JobSummary {
            id,
            tenant: _,
            plugin,
            plugin_version,
            status,
            priority,
            tags,
            attempt,
            max_attempts,
            run,
            created_at,
            run_at,
            finished_at,
            error,
        } = s;
        JobSummaryView {
            attempt: *attempt,
            created_at: *created_at,
            error: error.as_ref().map(JobErrorView::from),
            finished_at: *finished_at,
            id: *id,
            links: JobLinks::new(*id),
            max_attempts: *max_attempts,
            plugin: plugin.clone(),
            plugin_version: *plugin_version,
            priority: *priority,
            run: *run,
            run_at: *run_at,
            status: (*status).into(),
            tags: tags.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A record with every field set, and a tenant that must not show.
    fn record() -> JobRecord {
        let id = Uuid::parse_str("0192d3c4-0000-7000-8000-000000000001").unwrap();
        JobRecord {
            id,
            tenant: "secret-tenant".into(),
            plugin: "noop".into(),
            plugin_version: 3,
            digest: "sha256:ab".into(),
            status: JobStatus::Dead,
            priority: -2,
            input: serde_json::json!({"z": 1, "a": [true, null]}),
            tags: [("user".to_string(), "u1".to_string())].into(),
            attempt: 2,
            max_attempts: 2,
            run: 1,
            timeout_ms: 1500,
            idempotency_key: Some("k1".into()),
            webhook_url: Some("https://example.com/h".into()),
            worker_id: Some("w1".into()),
            cancel_requested: false,
            created_at: at("2026-01-01T00:00:00Z"),
            run_at: at("2026-01-01T00:00:01Z"),
            attempted_at: Some(at("2026-01-01T00:00:03Z")),
            lease_expires_at: None,
            finished_at: Some(at("2026-01-01T00:00:04.5Z")),
            output: Some(serde_json::json!({"b": 2})),
            error: Some(JobError::permanent("boom")),
            attempts: vec![
                AttemptRecord {
                    run: 1,
                    attempt: 1,
                    worker_id: Some("w1".into()),
                    digest: "sha256:ab".into(),
                    started_at: at("2026-01-01T00:00:02Z"),
                    finished_at: at("2026-01-01T00:00:02.250Z"),
                    outcome: AttemptOutcome::Failed,
                    error: Some(JobError::Retryable {
                        message: "later".into(),
                        retry_after_ms: Some(100),
                    }),
                    detail: Some(serde_json::json!({"trap": "x"})),
                },
                AttemptRecord {
                    run: 1,
                    attempt: 2,
                    worker_id: None,
                    digest: "sha256:ab".into(),
                    started_at: at("2026-01-01T00:00:03Z"),
                    finished_at: at("2026-01-01T00:00:04.5Z"),
                    outcome: AttemptOutcome::LeaseExpired,
                    error: None,
                    detail: None,
                },
            ],
        }
    }

    /// The bytes clients got when the body was the record, minus `tenant`, as a sorted map
    /// (compared with that code's output when these views replaced it).
    #[test]
    fn job_json_is_unchanged() {
        let usage = JobUsage {
            cost_micros: 1500,
            cost_usd: 0.0015,
            input_tokens: 10,
            model_calls: 1,
            output_tokens: 20,
        };
        let got = serde_json::to_string(&JobView::new(&record(), usage)).unwrap();
        let want = concat!(
            r#"{"attempt":2,"attempted_at":"2026-01-01T00:00:03Z","attempts":["#,
            r#"{"attempt":1,"detail":{"trap":"x"},"digest":"sha256:ab","error":{"kind":"retryable","message":"later","retry_after_ms":100},"#,
            r#""finished_at":"2026-01-01T00:00:02.250Z","outcome":"failed","run":1,"started_at":"2026-01-01T00:00:02Z","worker_id":"w1"},"#,
            r#"{"attempt":2,"digest":"sha256:ab","finished_at":"2026-01-01T00:00:04.500Z","outcome":"lease_expired","run":1,"#,
            r#""started_at":"2026-01-01T00:00:03Z","worker_id":null}],"#,
            r#""cancel_requested":false,"created_at":"2026-01-01T00:00:00Z","digest":"sha256:ab","#,
            r#""error":{"kind":"permanent","message":"boom"},"finished_at":"2026-01-01T00:00:04.500Z","#,
            r#""id":"0192d3c4-0000-7000-8000-000000000001","idempotency_key":"k1","input":{"a":[true,null],"z":1},"#,
            r#""lease_expires_at":null,"links":{"cancel":"/v1/jobs/0192d3c4-0000-7000-8000-000000000001/cancel","#,
            r#""events":"/v1/jobs/0192d3c4-0000-7000-8000-000000000001/events","#,
            r#""self":"/v1/jobs/0192d3c4-0000-7000-8000-000000000001"},"max_attempts":2,"output":{"b":2},"#,
            r#""plugin":"noop","plugin_version":3,"priority":-2,"run":1,"run_at":"2026-01-01T00:00:01Z","#,
            r#""status":"dead","tags":{"user":"u1"},"timeout_ms":1500,"#,
            r#""timings":{"last_attempt_ms":1500,"queue_ms":1000,"total_ms":4500},"#,
            r#""usage":{"cost_micros":1500,"cost_usd":0.0015,"input_tokens":10,"model_calls":1,"output_tokens":20},"#,
            r#""webhook_url":"https://example.com/h","worker_id":"w1"}"#,
        );
        assert_eq!(got, want);
    }

    #[test]
    fn summary_json_is_unchanged() {
        let r = record();
        let s = JobSummary {
            id: r.id,
            tenant: r.tenant,
            plugin: r.plugin,
            plugin_version: r.plugin_version,
            status: JobStatus::Cancelled,
            priority: r.priority,
            tags: r.tags,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            run: r.run,
            created_at: r.created_at,
            run_at: r.run_at,
            finished_at: None,
            error: Some(JobError::retryable("x")),
        };
        let got = serde_json::to_string(&JobSummaryView::from(&s)).unwrap();
        let want = concat!(
            r#"{"attempt":2,"created_at":"2026-01-01T00:00:00Z","#,
            r#""error":{"kind":"retryable","message":"x","retry_after_ms":null},"finished_at":null,"#,
            r#""id":"0192d3c4-0000-7000-8000-000000000001","links":{"cancel":"/v1/jobs/0192d3c4-0000-7000-8000-000000000001/cancel","#,
            r#""events":"/v1/jobs/0192d3c4-0000-7000-8000-000000000001/events","#,
            r#""self":"/v1/jobs/0192d3c4-0000-7000-8000-000000000001"},"max_attempts":2,"#,
            r#""plugin":"noop","plugin_version":3,"priority":-2,"run":1,"run_at":"2026-01-01T00:00:01Z","#,
            r#""status":"cancelled","tags":{"user":"u1"}}"#,
        );
        assert_eq!(got, want);
    }
}
