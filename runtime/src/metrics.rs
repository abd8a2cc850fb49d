//! Job metrics on `/metrics` (Prometheus text, through the `metrics` facade).
//!
//! Labels are bounded by construction: outcomes, statuses and error kinds are fixed sets
//! (`&'static str` from the engine and the store), never job, user, tenant or plugin names.
//! Every name here is listed in `docs/observability.md`.

use serde::{Deserialize, Serialize};
use sluice_store::{ClaimedJob, QueueBreakdown, QueueStats};

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Plugin names that get their own `plugin` label on `sluice_plugin_queue_depth`; every
    /// other plugin is counted under `plugin="other"`. Plugin names are chosen by tenants, so
    /// only the operator's list becomes labels: the series are bounded by its length.
    pub plugin_labels: Vec<String>,
}

/// Most entries of `[metrics] plugin_labels`.
pub const MAX_PLUGIN_LABELS: usize = 100;

/// The `plugin` label of everything not allow-listed.
pub const OTHER_PLUGINS: &str = "other";

impl MetricsConfig {
    /// At most [`MAX_PLUGIN_LABELS`] valid plugin names, none of them `other`.
    pub fn validate(&self) -> Result<(), String> {
        if self.plugin_labels.len() > MAX_PLUGIN_LABELS {
            return Err(format!(
                "metrics.plugin_labels has {} entries; at most {MAX_PLUGIN_LABELS}",
                self.plugin_labels.len()
            ));
        }
        for name in &self.plugin_labels {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid || name == OTHER_PLUGINS {
                return Err(format!(
                    "metrics.plugin_labels: {name:?} is not a plugin name (1-64 of a-z, 0-9, `-`, `_`; not `other`)"
                ));
            }
        }
        Ok(())
    }
}

/// The per-plugin queue gauges and the DLQ's age, in the Prometheus text format: one series
/// per allow-listed plugin and state, the rest summed under `plugin="other"`.
pub fn render_breakdown(
    breakdown: &QueueBreakdown,
    allowed: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut by_label: BTreeMap<&str, QueueStats> = BTreeMap::new();
    // Allow-listed plugins are always present (0 when idle), so their series never vanish.
    for name in allowed {
        by_label.entry(name.as_str()).or_default();
    }
    by_label.entry(OTHER_PLUGINS).or_default();
    for (plugin, q) in &breakdown.by_plugin {
        let label = if allowed.iter().any(|a| a == plugin) {
            plugin.as_str()
        } else {
            OTHER_PLUGINS
        };
        let e = by_label.entry(label).or_default();
        e.scheduled += q.scheduled;
        e.queued += q.queued;
        e.retrying += q.retrying;
        e.running += q.running;
        e.dead += q.dead;
    }
    let mut out = String::new();
    out.push_str("# HELP sluice_plugin_queue_depth Jobs by plugin (allow-listed names, else `other`) and state.\n");
    out.push_str("# TYPE sluice_plugin_queue_depth gauge\n");
    for (plugin, q) in &by_label {
        for (state, n) in [
            ("scheduled", q.scheduled),
            ("queued", q.queued),
            ("retrying", q.retrying),
            ("running", q.running),
            ("dead", q.dead),
        ] {
            let _ = writeln!(
                out,
                "sluice_plugin_queue_depth{{plugin=\"{plugin}\",state=\"{state}\"}} {n}"
            );
        }
    }
    let age = breakdown
        .oldest_dead_at
        .map_or(0.0, |t| seconds_between(t, now));
    out.push_str("# HELP sluice_dlq_oldest_age_seconds How long the oldest dead job has been in the dead-letter queue (0 when empty).\n");
    out.push_str("# TYPE sluice_dlq_oldest_age_seconds gauge\n");
    let _ = writeln!(out, "sluice_dlq_oldest_age_seconds {age:.3}");
    out
}

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
    // Bytes of linear memory: 1 MiB to 4 GiB in powers of 2.
    const BYTES: &[f64] = &[
        1048576.0,
        2097152.0,
        4194304.0,
        8388608.0,
        16777216.0,
        33554432.0,
        67108864.0,
        134217728.0,
        268435456.0,
        536870912.0,
        1073741824.0,
        2147483648.0,
        4294967296.0,
    ];
    let set = |b: PrometheusBuilder, m: Matcher, v: &[f64]| {
        b.set_buckets_for_metric(m, v)
            .expect("bucket lists are non-empty constants")
    };
    let b = PrometheusBuilder::new();
    let b = set(b, Matcher::Suffix("_seconds".into()), SECONDS);
    let b = set(b, Matcher::Full("gen_ai_client_token_usage".into()), TOKENS);
    let b = set(b, Matcher::Full("sluice_job_attempts".into()), ATTEMPTS);
    let b = set(
        b,
        Matcher::Full("sluice_engine_memory_peak_bytes".into()),
        BYTES,
    );
    set(b, Matcher::Full("sluice_model_cost_usd".into()), USD)
}
