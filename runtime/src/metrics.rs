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
    let completed = matches!(outcome, AttemptOutcome::Completed);
    let (outcome, kind) = match outcome {
        AttemptOutcome::Completed => ("completed", "none"),
        AttemptOutcome::Failed(kind) => ("failed", *kind),
    };
    let took = seconds_between(job.attempted_at, chrono::Utc::now());
    crate::alerts::observe_attempt(&job.tenant, &job.plugin, completed, took);
    metrics::histogram!("sluice_job_attempt_duration_seconds", "outcome" => outcome).record(took);
    metrics::counter!("sluice_job_attempts_total", "outcome" => outcome, "error_kind" => kind)
        .increment(1);
    match kind {
        "timeout" => {
            metrics::counter!("sluice_engine_kills_total", "reason" => "deadline").increment(1)
        }
        "memory_limit" => {
            metrics::counter!("sluice_engine_kills_total", "reason" => "memory").increment(1)
        }
        _ => {}
    }
}

/// A job reached a terminal status (`completed`, `dead`, `cancelled`) after this attempt.
pub fn job_finished(job: &ClaimedJob, status: sluice_types::JobStatus) {
    let status = status.as_str();
    metrics::histogram!("sluice_job_duration_seconds", "status" => status)
        .record(seconds_between(job.created_at, chrono::Utc::now()));
    metrics::histogram!("sluice_job_attempts", "status" => status).record(f64::from(job.attempt));
}

/// The Prometheus recorder's builder: real histograms (not summaries, so that quantiles can
/// be aggregated across nodes in Prometheus), with buckets per kind of value.
pub fn prometheus_builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Seconds: 5 ms to 30 min (jobs, model calls, queue waits, rate-limit waits).
    const SECONDS: &[f64] = &[
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 1800.0,
    ];
    // Tokens: the OpenTelemetry GenAI recommendation (powers of 4).
    const TOKENS: &[f64] = &[
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
        4194304.0,
    ];
    const ATTEMPTS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0];
    // US dollars per call: a hundredth of a cent to ten dollars.
    const USD: &[f64] = &[
        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0,
    ];
    let set = |b: PrometheusBuilder, m: Matcher, v: &[f64]| {
        b.set_buckets_for_metric(m, v)
            .expect("bucket lists are non-empty constants")
    };
    let b = PrometheusBuilder::new();
    let b = set(b, Matcher::Suffix("_seconds".into()), SECONDS);
    let b = set(b, Matcher::Full("gen_ai_client_token_usage".into()), TOKENS);
    let b = set(b, Matcher::Full("sluice_job_attempts".into()), ATTEMPTS);
    set(b, Matcher::Full("sluice_model_cost_usd".into()), USD)
}
