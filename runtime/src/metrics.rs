//! Job metrics on `/metrics` (Prometheus text, through the `metrics` facade).
//!
//! Labels are bounded by construction: outcomes, statuses and error kinds are fixed sets
//! (`&'static str` from the engine and the store), never job, user, tenant or plugin names.
//! Every name here is listed in `docs/observability.md`.

use sluice_store::ClaimedJob;

/// How an attempt ended, as the worker saw it.
pub enum AttemptOutcome {
    /// The handler returned.
    Completed,
    /// It failed, with the engine's error kind (`trap`, `timeout`, `memory`, …).
    Failed(&'static str),
}

fn seconds_between(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    // Clocks of different nodes may disagree a little: never a negative duration.
    ((to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

/// An attempt was claimed: how long it waited since it was due.
pub fn attempt_claimed(job: &ClaimedJob) {
    let attempt = if job.attempt <= 1 { "first" } else { "retry" };
    metrics::histogram!("sluice_job_queue_wait_seconds", "attempt" => attempt)
        .record(seconds_between(job.run_at, job.attempted_at));
}

/// An attempt ended (before it is finalized).
pub fn attempt_finished(job: &ClaimedJob, outcome: &AttemptOutcome) {
    let (outcome, kind) = match outcome {
        AttemptOutcome::Completed => ("completed", "none"),
        AttemptOutcome::Failed(kind) => ("failed", *kind),
    };
    let took = seconds_between(job.attempted_at, chrono::Utc::now());
    metrics::histogram!("sluice_job_attempt_duration_seconds", "outcome" => outcome)
        .record(took);
    metrics::counter!("sluice_job_attempts_total", "outcome" => outcome, "error_kind" => kind)
        .increment(1);
    match kind {
        "timeout" => metrics::counter!("sluice_engine_kills_total", "reason" => "deadline").increment(1),
        "memory_limit" => {
            metrics::counter!("sluice_engine_kills_total", "reason" => "memory").increment(1)
        }
        _ => {}
    }
}

/// A job reached a terminal status (`completed`, `dead`, `cancelled`) after this attempt.
pub fn job_finished(job: &ClaimedJob, status: &'static str) {
    metrics::histogram!("sluice_job_duration_seconds", "status" => status)
        .record(seconds_between(job.created_at, chrono::Utc::now()));
    metrics::histogram!("sluice_job_attempts", "status" => status).record(f64::from(job.attempt));
}
