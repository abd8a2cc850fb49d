//! The report: what was accepted and what became of it (read back from the store through
//! the API), latency, throughput, retries, provider behaviour, cost, the series over time,
//! and the SLO verdicts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sluice_gateway::SimStats;
use sluice_types::money::Micros;
use uuid::Uuid;

use super::scenario::{Projection, Scenario, Slo};

/// Ids of lost jobs listed in the report (the count is always complete).
pub const MAX_LISTED_IDS: usize = 50;

/// The whole report, as written by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// What ran.
    pub run: RunInfo,
    /// What happened to the jobs.
    pub jobs: JobCounts,
    /// Accepted → finished, of completed jobs.
    pub latency_ms: Percentiles,
    /// Rates.
    pub throughput: Throughput,
    /// Attempts and calls.
    pub retries: Retries,
    /// What the providers did.
    pub providers: ProviderSummary,
    /// Errors by class.
    pub errors: Errors,
    /// Money.
    pub cost: Cost,
    /// The run over time.
    pub series: Vec<Point>,
    /// Each SLO of the scenario, met or not.
    pub slo: Vec<SloCheck>,
    /// Every SLO met.
    pub passed: bool,
}

/// What ran, where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Its description.
    pub description: String,
    /// The value of the `loadtest` tag on every job of this run.
    pub run_id: String,
    /// Plugin name.
    pub plugin: String,
    /// `in-process (<store>)` or the server's URL.
    pub target: String,
    /// Start, RFC 3339.
    pub started_at: String,
    /// Arrival phase, seconds.
    pub duration_s: f64,
    /// Arrival pattern, in words.
    pub arrival: String,
    /// Jobs the pattern submits.
    pub planned_jobs: u64,
    /// From start to the end of the drain, seconds.
    pub wall_s: f64,
    /// The series' bucket width, seconds.
    pub bucket_s: f64,
}

/// What became of the jobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobCounts {
    /// Submissions sent.
    pub submitted: u64,
    /// Answered 202/200 with a job id.
    pub accepted: u64,
    /// Refused by the server (an HTTP error).
    pub rejected: u64,
    /// Refusals by HTTP status.
    pub rejected_by_status: BTreeMap<String, u64>,
    /// No answer (connection error or timeout): the job may or may not exist.
    pub unanswered: u64,
    /// Completed (read back from the store).
    pub completed: u64,
    /// Dead.
    pub dead: u64,
    /// Cancelled (including `unfinished`).
    pub cancelled: u64,
    /// Not finished at the drain deadline (then cancelled when the scenario says so).
    pub unfinished: u64,
    /// Accepted but not terminal, or not found at all, at the end: must be 0.
    pub lost: u64,
    /// The first lost ids.
    pub lost_ids: Vec<Uuid>,
    /// Jobs of this run found in the store that were never acknowledged (their answer was
    /// lost): not lost, but not counted as accepted.
    pub unacknowledged_found: u64,
}

/// Percentiles, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Observations.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th.
    pub p95: f64,
    /// 99th.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Of `values` (any order).
    pub fn of(values: &mut [f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        // Nearest rank: the smallest value with at least q of the observations at or below.
        let at = |q: f64| values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Percentiles {
            count: n as u64,
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: values[n - 1],
            mean: values.iter().sum::<f64>() / n as f64,
        }
    }
}

/// Rates.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Submissions per second over the arrival phase, as sent.
    pub submitted_per_s: f64,
    /// Completions per second from the first acceptance to the last completion.
    pub completed_per_s: f64,
    /// The busiest bucket's completions per second.
    pub peak_completed_per_s: f64,
    /// Most a submission was sent behind its schedule, ms (the driver or the server could
    /// not keep up).
    pub max_submit_lag_ms: f64,
}

/// Attempts and calls.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Retries {
    /// Job attempts (the store's attempt counts summed).
    pub job_attempts: u64,
    /// Jobs that took more than one attempt.
    pub retried_jobs: u64,
    /// Job attempts per accepted job.
    pub attempts_per_job: f64,
    /// Model calls the handlers made (usage rows of this run).
    pub model_calls: u64,
    /// Requests sent to providers (first tries, retries and failovers).
    pub provider_attempts: u64,
    /// Provider attempts per finished job.
    pub provider_calls_per_job: f64,
    /// Provider attempts per model call: 1.0 means not one retry.
    pub retry_amplification: f64,
}

/// What the providers did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderSummary {
    /// 429s Sluice received.
    pub rate_limited: u64,
    /// Calls that moved to the next provider of a chain.
    pub failovers: u64,
    /// Times a breaker opened.
    pub breaker_opened: u64,
    /// Provider attempts by provider and outcome (`ok`, `rate_limited`, `unavailable`, …).
    pub attempts: BTreeMap<String, BTreeMap<String, u64>>,
    /// What each simulator itself counted (when reachable).
    pub simulators: BTreeMap<String, SimStats>,
}

/// Errors by class.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Errors {
    /// Dead jobs by their final error.
    pub dead_by_class: BTreeMap<String, u64>,
    /// Failed job attempts by the engine's error kind.
    pub failed_attempts_by_kind: BTreeMap<String, u64>,
    /// Failed provider attempts by kind.
    pub provider_errors_by_kind: BTreeMap<String, u64>,
}

/// Money.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cost {
    /// The run's model spend.
    pub total_micros: Micros,
    /// Per completed job.
    pub per_job_micros: f64,
    /// The scenario's projection.
    pub projection: Option<Projection>,
    /// Total over projected total.
    pub total_vs_projection: Option<f64>,
    /// Per job over projected per job.
    pub per_job_vs_projection: Option<f64>,
    /// Spend by user tag (the run's time window).
    pub by_user: BTreeMap<String, Micros>,
    /// Spend by feature tag (the run's time window).
    pub by_feature: BTreeMap<String, Micros>,
}

/// One bucket of the series.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Point {
    /// Bucket start, seconds from the start.
    pub t: f64,
    /// Submissions sent.
    pub submitted: u64,
    /// Jobs completed (store).
    pub completed: u64,
    /// Jobs dead (store).
    pub dead: u64,
    /// Completed jobs' latency in this bucket (store), ms.
    pub p50_ms: Option<f64>,
    /// 95th.
    pub p95_ms: Option<f64>,
    /// 99th.
    pub p99_ms: Option<f64>,
    /// Accepted and not yet terminal at the bucket's end (store).
    pub outstanding: u64,
    /// Queue depth, queued (the node's gauge; `None` without a sample).
    pub queued: Option<f64>,
    /// Running.
    pub running: Option<f64>,
    /// Retrying.
    pub retrying: Option<f64>,
    /// Failed job attempts.
    pub failed_attempts: f64,
    /// Failed provider attempts.
    pub provider_errors: f64,
    /// 429s.
    pub rate_limited: f64,
    /// Failovers.
    pub failovers: f64,
    /// Spend, micro-dollars.
    pub cost_micros: f64,
}

/// One SLO's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SloCheck {
    /// The scenario's key (`p95_latency_ms`, …).
    pub name: String,
    /// `<=` or `>=`.
    pub op: String,
    /// The target.
    pub target: f64,
    /// What the run measured.
    pub actual: f64,
    /// Met.
    pub met: bool,
}

/// Judge the report against the scenario's SLOs (lost jobs always).
pub fn judge(slo: &Slo, r: &Report) -> Vec<SloCheck> {
    let mut out = Vec::new();
    let mut at_most = |name: &str, target: Option<f64>, actual: f64| {
        if let Some(target) = target {
            out.push(SloCheck {
                name: name.into(),
                op: "<=".into(),
                target,
                actual,
                met: actual <= target,
            });
        }
    };
    at_most("lost", Some(slo.max_lost as f64), r.jobs.lost as f64);
    at_most("p95_latency_ms", slo.p95_latency_ms, r.latency_ms.p95);
    at_most("p99_latency_ms", slo.p99_latency_ms, r.latency_ms.p99);
    let accepted = r.jobs.accepted.max(1) as f64;
    at_most(
        "max_error_rate",
        slo.max_error_rate,
        r.jobs.dead as f64 / accepted,
    );
    at_most(
        "max_cost_per_job_usd",
        slo.max_cost_per_job_usd,
        r.cost.per_job_micros / 1e6,
    );
    at_most(
        "max_retry_amplification",
        slo.max_retry_amplification,
        r.retries.retry_amplification,
    );
    at_most(
        "max_unfinished",
        slo.max_unfinished.map(|n| n as f64),
        r.jobs.unfinished as f64,
    );
    at_most(
        "max_rejected",
        slo.max_rejected.map(|n| n as f64),
        (r.jobs.rejected + r.jobs.unanswered) as f64,
    );
    if let Some(min) = slo.min_completed_fraction {
        let actual = r.jobs.completed as f64 / accepted;
        out.push(SloCheck {
            name: "min_completed_fraction".into(),
            op: ">=".into(),
            target: min,
            actual,
            met: actual >= min,
        });
    }
    // Latency SLOs mean nothing without a completed job.
    if r.latency_ms.count == 0 {
        for c in out.iter_mut().filter(|c| c.name.ends_with("latency_ms")) {
            c.met = false;
        }
    }
    out
}

/// The arrival pattern in words.
pub fn describe_arrival(s: &Scenario) -> String {
    use super::scenario::{Arrival, human::show};
    match &s.arrival {
        Arrival::Constant { rate } => format!("constant {rate}/s for {}", show(s.duration)),
        Arrival::Ramp { from, to } => format!("ramp {from}/s → {to}/s over {}", show(s.duration)),
        Arrival::Burst {
            jobs,
            at,
            over,
            base_rate,
        } => format!(
            "burst of {jobs} at {} over {}{}",
            show(*at),
            show(*over),
            if *base_rate > 0.0 {
                format!(" on {base_rate}/s for {}", show(s.duration))
            } else {
                String::new()
            }
        ),
        Arrival::Expected {
            per_minute,
            multiplier,
        } => format!(
            "{multiplier}× the expected {per_minute}/min for {}",
            show(s.duration)
        ),
    }
}

fn usd(m: f64) -> String {
    let d = m / 1e6;
    if d.abs() < 1.0 {
        format!("${d:.6}")
    } else {
        format!("${d:.2}")
    }
}

/// The report as text for the terminal.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let j = &r.jobs;
    let _ = writeln!(
        s,
        "\nload test {} ({}) — {}",
        r.run.scenario, r.run.run_id, r.run.target
    );
    let _ = writeln!(
        s,
        "  arrival     {}; {:.1} s wall",
        r.run.arrival, r.run.wall_s
    );
    let _ = writeln!(
        s,
        "  jobs        submitted {}  accepted {}  rejected {}  unanswered {}",
        j.submitted, j.accepted, j.rejected, j.unanswered
    );
    let _ = writeln!(
        s,
        "              completed {}  dead {}  cancelled {} (unfinished at the deadline {})  lost {}",
        j.completed, j.dead, j.cancelled, j.unfinished, j.lost
    );
    let l = &r.latency_ms;
    let _ = writeln!(
        s,
        "  latency     p50 {:.0} ms  p95 {:.0} ms  p99 {:.0} ms  max {:.0} ms ({} completed)",
        l.p50, l.p95, l.p99, l.max, l.count
    );
    let t = &r.throughput;
    let _ = writeln!(
        s,
        "  throughput  submitted {:.1}/s  completed {:.1}/s (peak {:.1}/s)  submit lag ≤ {:.0} ms",
        t.submitted_per_s, t.completed_per_s, t.peak_completed_per_s, t.max_submit_lag_ms
    );
    let x = &r.retries;
    let _ = writeln!(
        s,
        "  retries     {} job attempts ({:.3}/job, {} jobs retried); {} model calls, {} provider attempts ({:.2}/job, amplification {:.3})",
        x.job_attempts,
        x.attempts_per_job,
        x.retried_jobs,
        x.model_calls,
        x.provider_attempts,
        x.provider_calls_per_job,
        x.retry_amplification
    );
    let p = &r.providers;
    let _ = writeln!(
        s,
        "  providers   429s {}  failovers {}  breaker opened {}",
        p.rate_limited, p.failovers, p.breaker_opened
    );
    for (name, st) in &p.simulators {
        let _ = writeln!(
            s,
            "              {name}: {} requests, {} ok, {} 429, {} 5xx",
            st.requests, st.ok, st.rate_limited, st.server_errors
        );
    }
    let c = &r.cost;
    let mut cost = format!(
        "  cost        {} total, {} per completed job",
        usd(c.total_micros.get() as f64),
        usd(c.per_job_micros)
    );
    if let Some(v) = c.total_vs_projection {
        let _ = write!(cost, "; {:.0}% of the projected total", v * 100.0);
    }
    if let Some(v) = c.per_job_vs_projection {
        let _ = write!(cost, "; {:.0}% of the projected per job", v * 100.0);
    }
    let _ = writeln!(s, "{cost}");
    for (what, m) in [
        ("dead", &r.errors.dead_by_class),
        ("attempts", &r.errors.failed_attempts_by_kind),
        ("provider", &r.errors.provider_errors_by_kind),
    ] {
        if !m.is_empty() {
            let list: Vec<String> = m.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
            let _ = writeln!(s, "  errors/{what:<9}{}", list.join(", "));
        }
    }
    let _ = writeln!(s, "  SLOs");
    for c in &r.slo {
        let _ = writeln!(
            s,
            "    {} {:<26} {} {:<12} measured {}",
            if c.met { "ok  " } else { "MISS" },
            c.name,
            c.op,
            trim(c.target),
            trim(c.actual)
        );
    }
    let _ = writeln!(
        s,
        "  verdict     {}",
        if r.passed {
            "every SLO met"
        } else {
            "SLO missed (exit code 1)"
        }
    );
    s
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.count, 100);
        let mut one = vec![7.0];
        assert_eq!(Percentiles::of(&mut one).p99, 7.0);
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }
}
