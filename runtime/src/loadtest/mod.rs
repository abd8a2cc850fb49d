//! `sluice loadtest SCENARIO.toml`: drive a Sluice (one started in-process with simulated
//! providers, or a running one) with a scenario's jobs, watch it live, and report what
//! happened against the scenario's SLOs.
//!
//! Where each number comes from, so that the report can be trusted:
//! - **accepted**: the driver's own count of 202/200 answers with a job id;
//! - **completed / dead / cancelled / lost, latency, attempts, throughput**: every job of the
//!   run read back from the store through `GET /v1/jobs?tag=loadtest:<run>` at the end
//!   (latency is `finished_at − created_at`, the store's own timestamps);
//! - **provider attempts, 429s, failovers, breaker, errors by kind, queue depth over time**:
//!   the node's `/metrics`, as differences from a scrape taken before the first job;
//! - **cost and model calls**: `GET /v1/usage` grouped by the run's tag;
//! - **what the provider saw**: the simulators' own counters.
//!
//! See `docs/loadtest.md`.

mod driver;
pub mod html;
pub mod inputs;
mod live;
pub mod report;
pub mod scenario;
pub mod scrape;
mod target;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::Value;
use sluice_types::money::Micros;

use crate::config::Config;
use driver::{Listed, Submissions};
use live::{Sample, Sampler, delta};
use report::{
    Cost, Errors, JobCounts, MAX_LISTED_IDS, Percentiles, Point, ProviderSummary, Report, Retries,
    RunInfo, Throughput,
};
use scenario::Scenario;
pub use target::LocalOptions;
use target::Target;

/// Buckets in the series at most (the bucket widens for long runs).
pub const MAX_SERIES_POINTS: usize = 300;

/// Where to run.
pub enum Where {
    /// Start a node here, with this configuration.
    InProcess(Box<Config>, LocalOptions),
    /// A running server.
    Remote {
        /// Base URL.
        url: String,
        /// API key.
        key: Option<String>,
    },
}

/// Check that the scenario's providers fit an in-process gateway built on `config`, before
/// anything starts.
pub fn target_gateway_check(s: &Scenario, config: &Config) -> Result<(), String> {
    target::gateway_config(s, config.gateway.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Run `scenario` and return its report.
pub async fn run(scenario: Scenario, place: Where, quiet: bool) -> anyhow::Result<Report> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut inputs = inputs::Inputs::new(&scenario, &run_id).map_err(anyhow::Error::msg)?;
    let target = match place {
        Where::InProcess(config, opts) => {
            if !quiet {
                eprintln!("starting an in-process node with simulated providers…");
            }
            Target::local(&scenario, *config, opts).await?
        }
        Where::Remote { url, key } => Target::remote(&url, key, &scenario).await?,
    };
    let target = Arc::new(target);
    let result = drive(&scenario, &target, &mut inputs, &run_id, quiet).await;
    // Leave a remote simulator as it was found.
    for name in target.sims.keys() {
        if !target.is_local() {
            let _ = target
                .set_faults(name, &sluice_gateway::Faults::default())
                .await;
        }
    }
    match Arc::try_unwrap(target) {
        Ok(t) => t.shutdown().await,
        Err(_) => tracing::warn!("the load test's node is still referenced; not stopped"),
    }
    result
}

async fn drive(
    scenario: &Scenario,
    target: &Arc<Target>,
    inputs: &mut inputs::Inputs,
    run_id: &str,
    quiet: bool,
) -> anyhow::Result<Report> {
    let plugin = target.ensure_plugin(scenario).await?;
    let times = scenario::schedule(scenario);
    warn_unreachable_sims(scenario, target);
    let base = target
        .metrics()
        .await
        .context("reading the server's /metrics")?;
    let sims_before = target.sim_stats().await;
    let started = Instant::now();
    let started_at = Utc::now();
    if !quiet {
        eprintln!(
            "run {run_id}: {} jobs of {plugin} ({}) against {}",
            times.len(),
            report::describe_arrival(scenario),
            target.url
        );
    }

    let timeline = tokio::spawn(apply_timeline(scenario.clone(), target.clone(), started));
    let subs = Arc::new(Submissions::default());
    let sampler = Sampler::start(
        target.clone(),
        subs.clone(),
        base.clone(),
        times.len() as u64,
        started,
        quiet,
    );
    driver::submit_all(scenario, target, &plugin, inputs, &times, started, &subs).await;
    let arrivals_done = started.elapsed();
    let deadline = Instant::now() + scenario.drain.timeout;
    let drained = driver::drain(target, run_id, deadline).await?;
    let unfinished = if drained {
        0
    } else if scenario.drain.cancel_unfinished {
        if !quiet {
            eprintln!(
                "drain deadline ({}) passed: cancelling the unfinished jobs",
                scenario::human::show(scenario.drain.timeout)
            );
        }
        driver::cancel_unfinished(target, run_id).await?
    } else {
        let mut n = 0;
        for s in driver::LIVE_STATUSES {
            n += driver::list(target, run_id, Some(s)).await?.len() as u64;
        }
        n
    };
    let wall = started.elapsed();
    let samples = sampler.finish().await;
    timeline.abort();
    let _ = timeline.await;
    let last = target.metrics().await.unwrap_or_else(|_| {
        samples
            .last()
            .map(|s| s.metrics.clone())
            .unwrap_or_default()
    });
    let jobs = driver::list(target, run_id, None).await?;
    let usage = usage(target, run_id, started_at).await;
    let sims_after = target.sim_stats().await;

    let mut r = build(BuildInputs {
        scenario,
        run_id,
        plugin: &plugin,
        target,
        subs: &subs,
        jobs: &jobs,
        base: &base,
        last: &last,
        samples: &samples,
        usage: &usage,
        started_at,
        wall,
        arrivals_done,
        unfinished,
    });
    r.providers.simulators = sims_after
        .into_iter()
        .map(|(k, after)| {
            let before = sims_before.get(&k).cloned().unwrap_or_default();
            (k, sim_delta(&before, &after))
        })
        .collect();
    r.slo = report::judge(&scenario.slo, &r);
    r.passed = r.slo.iter().all(|c| c.met);
    if let Some(why) = subs
        .first_refusal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        && !quiet
    {
        eprintln!("first refused submission: {why}");
    }
    Ok(r)
}

fn warn_unreachable_sims(scenario: &Scenario, target: &Target) {
    let mut wanted: BTreeSet<&str> = scenario
        .timeline
        .iter()
        .map(|w| w.provider.as_str())
        .collect();
    wanted.extend(
        scenario
            .providers
            .iter()
            .filter(|(_, p)| p.error_rate > 0.0)
            .map(|(n, _)| n.as_str()),
    );
    for name in wanted {
        if !target.sims.contains_key(name) {
            eprintln!(
                "warning: provider {name} cannot be switched (in-process runs have {}; against \
                 --url, give its `admin_url`): its timeline and error rate are not applied",
                target::SIM_PROVIDERS.join(", ")
            );
        }
    }
}

/// Put each provider's faults in force at the start and at every edge of the timeline.
async fn apply_timeline(scenario: Scenario, target: Arc<Target>, started: Instant) {
    let names: BTreeSet<String> = scenario
        .providers
        .keys()
        .cloned()
        .chain(scenario.timeline.iter().map(|w| w.provider.clone()))
        .collect();
    let mut edges = vec![Duration::ZERO];
    edges.extend(scenario.timeline_edges());
    for at in edges {
        tokio::time::sleep_until((started + at).into()).await;
        for name in &names {
            if let Err(e) = target.set_faults(name, &scenario.faults_at(name, at)).await {
                tracing::warn!(provider = %name, error = %e, "could not switch the simulator");
            }
        }
    }
}

fn sim_delta(
    a: &sluice_gateway::SimStats,
    b: &sluice_gateway::SimStats,
) -> sluice_gateway::SimStats {
    sluice_gateway::SimStats {
        requests: b.requests.saturating_sub(a.requests),
        chat_requests: b.chat_requests.saturating_sub(a.chat_requests),
        embed_requests: b.embed_requests.saturating_sub(a.embed_requests),
        ok: b.ok.saturating_sub(a.ok),
        rate_limited: b.rate_limited.saturating_sub(a.rate_limited),
        server_errors: b.server_errors.saturating_sub(a.server_errors),
        client_errors: b.client_errors.saturating_sub(a.client_errors),
        broken: b.broken.saturating_sub(a.broken),
        input_tokens: b.input_tokens.saturating_sub(a.input_tokens),
        output_tokens: b.output_tokens.saturating_sub(a.output_tokens),
    }
}

/// The run's usage rows: its own (by the run tag), and by user and by feature over its
/// time window.
struct Usage {
    calls: Option<u64>,
    cost: Option<Micros>,
    by_user: BTreeMap<String, Micros>,
    by_feature: BTreeMap<String, Micros>,
}

async fn usage(target: &Target, run_id: &str, since: chrono::DateTime<Utc>) -> Usage {
    let window = format!(
        "since={}&until={}",
        (since - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (Utc::now() + chrono::Duration::seconds(60))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let rows = |v: &Value| -> Vec<(Option<String>, u64, i64)> {
        v.get("items")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r.get("key").and_then(Value::as_str).map(str::to_string),
                            r.get("calls").and_then(Value::as_u64).unwrap_or(0),
                            r.get("cost_micros").and_then(Value::as_i64).unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let get = |by: &str| {
        let path = format!("/v1/usage?group_by={by}&{}", window.replace('+', "%2B"));
        async move { target.get_json(&path).await.ok() }
    };
    let mut u = Usage {
        calls: None,
        cost: None,
        by_user: BTreeMap::new(),
        by_feature: BTreeMap::new(),
    };
    if let Some(v) = get(&format!("tag:{}", inputs::RUN_TAG)).await {
        for (k, calls, cost) in rows(&v) {
            if k.as_deref() == Some(run_id) {
                u.calls = Some(calls);
                u.cost = Some(Micros::new(cost.max(0) as u64));
            }
        }
    }
    for (by, map) in [("user", &mut u.by_user), ("feature", &mut u.by_feature)] {
        if let Some(v) = get(by).await {
            for (k, _, cost) in rows(&v) {
                if let Some(k) = k {
                    map.insert(k, Micros::new(cost.max(0) as u64));
                }
            }
        }
    }
    u
}

struct BuildInputs<'a> {
    scenario: &'a Scenario,
    run_id: &'a str,
    plugin: &'a str,
    target: &'a Target,
    subs: &'a Submissions,
    jobs: &'a [Listed],
    base: &'a scrape::Metrics,
    last: &'a scrape::Metrics,
    samples: &'a [Sample],
    usage: &'a Usage,
    started_at: chrono::DateTime<Utc>,
    wall: Duration,
    arrivals_done: Duration,
    unfinished: u64,
}

fn secs_since(start: chrono::DateTime<Utc>, t: chrono::DateTime<Utc>) -> f64 {
    (t - start).num_microseconds().unwrap_or(0) as f64 / 1e6
}

fn by_delta(now: &BTreeMap<String, f64>, base: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - base.get(k).copied().unwrap_or(0.0)).max(0.0) as u64,
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// A dead job's error, as a class: its kind and the start of its message (numbers and ids
/// vary per job, so they are cut).
fn error_class(e: Option<&Value>) -> String {
    let Some(e) = e else {
        return "unknown".into();
    };
    let kind = e.get("kind").and_then(Value::as_str).unwrap_or("error");
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
    let head: String = msg
        .split(|c: char| c.is_ascii_digit() || c == '(' || c == '[' || c == '{')
        .next()
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    format!("{kind}: {}", head.trim().trim_end_matches([':', ',']))
}

fn build(i: BuildInputs<'_>) -> Report {
    let s = i.scenario;
    let subs = i.subs;
    let accepted_ids: BTreeSet<uuid::Uuid> = subs
        .ids
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    let by_id: BTreeMap<uuid::Uuid, &Listed> = i.jobs.iter().map(|j| (j.id, j)).collect();

    let mut counts = JobCounts {
        submitted: subs.submitted.load(Ordering::Relaxed),
        accepted: accepted_ids.len() as u64,
        rejected: subs.rejected.load(Ordering::Relaxed),
        rejected_by_status: subs
            .rejected_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        unanswered: subs.unanswered.load(Ordering::Relaxed),
        unfinished: i.unfinished,
        ..JobCounts::default()
    };
    for id in &accepted_ids {
        match by_id.get(id) {
            Some(j) if j.is_terminal() => {}
            _ => {
                counts.lost += 1;
                if counts.lost_ids.len() < MAX_LISTED_IDS {
                    counts.lost_ids.push(*id);
                }
            }
        }
    }
    counts.unacknowledged_found = i
        .jobs
        .iter()
        .filter(|j| !accepted_ids.contains(&j.id))
        .count() as u64;

    let mut latencies = Vec::new();
    let mut dead_by_class: BTreeMap<String, u64> = BTreeMap::new();
    let (mut attempts, mut retried) = (0u64, 0u64);
    let mut first_created: Option<chrono::DateTime<Utc>> = None;
    let mut last_done: Option<chrono::DateTime<Utc>> = None;
    for j in i.jobs.iter().filter(|j| accepted_ids.contains(&j.id)) {
        attempts += u64::from(j.attempt);
        if j.attempt > 1 {
            retried += 1;
        }
        first_created = Some(first_created.map_or(j.created_at, |f| f.min(j.created_at)));
        match j.status.as_str() {
            "completed" => {
                counts.completed += 1;
                if let Some(f) = j.finished_at {
                    latencies.push((f - j.created_at).num_microseconds().unwrap_or(0) as f64 / 1e3);
                    last_done = Some(last_done.map_or(f, |l| l.max(f)));
                }
            }
            "dead" => {
                counts.dead += 1;
                *dead_by_class
                    .entry(error_class(j.error.as_ref()))
                    .or_insert(0) += 1;
            }
            "cancelled" => counts.cancelled += 1,
            _ => {}
        }
    }
    let latency = Percentiles::of(&mut latencies);

    // Series.
    let wall_s = i.wall.as_secs_f64();
    let bucket_s = (wall_s / MAX_SERIES_POINTS as f64).ceil().max(1.0);
    let n = ((wall_s / bucket_s).ceil() as usize).max(1);
    let mut series: Vec<Point> = (0..n)
        .map(|b| Point {
            t: b as f64 * bucket_s,
            ..Point::default()
        })
        .collect();
    let bucket = |t: f64| ((t.max(0.0) / bucket_s) as usize).min(n - 1);
    for t in subs
        .sent_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        series[bucket(*t)].submitted += 1;
    }
    let mut lat_by_bucket: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut created: Vec<f64> = Vec::new();
    let mut finished: Vec<f64> = Vec::new();
    for j in i.jobs.iter().filter(|j| accepted_ids.contains(&j.id)) {
        created.push(secs_since(i.started_at, j.created_at));
        if let Some(f) = j.finished_at.filter(|_| j.is_terminal()) {
            let t = secs_since(i.started_at, f);
            finished.push(t);
            let b = bucket(t);
            match j.status.as_str() {
                "completed" => {
                    series[b].completed += 1;
                    lat_by_bucket[b]
                        .push((f - j.created_at).num_microseconds().unwrap_or(0) as f64 / 1e3);
                }
                "dead" => series[b].dead += 1,
                _ => {}
            }
        }
    }
    created.sort_by(f64::total_cmp);
    finished.sort_by(f64::total_cmp);
    for (b, p) in series.iter_mut().enumerate() {
        let end = (b + 1) as f64 * bucket_s;
        let c = created.partition_point(|t| *t <= end);
        let f = finished.partition_point(|t| *t <= end);
        p.outstanding = c.saturating_sub(f) as u64;
        if !lat_by_bucket[b].is_empty() {
            let q = Percentiles::of(&mut lat_by_bucket[b]);
            (p.p50_ms, p.p95_ms, p.p99_ms) = (Some(q.p50), Some(q.p95), Some(q.p99));
        }
    }
    let mut prev = i.base;
    for sample in i.samples {
        let p = &mut series[bucket(sample.t)];
        let m = &sample.metrics;
        let gauge = |state: &str| Some(m.sum("sluice_queue_depth", &[("state", state)]));
        (p.queued, p.running, p.retrying) = (gauge("queued"), gauge("running"), gauge("retrying"));
        p.failed_attempts += delta(
            m,
            prev,
            "sluice_job_attempts_total",
            &[("outcome", "failed")],
        );
        p.provider_errors += delta(m, prev, "sluice_model_attempts_total", &[])
            - delta(m, prev, "sluice_model_attempts_total", &[("outcome", "ok")]);
        p.rate_limited += delta(m, prev, "sluice_provider_rate_limited_total", &[]);
        p.failovers += delta(m, prev, "sluice_model_fallbacks_total", &[]);
        p.cost_micros += delta(m, prev, "sluice_model_cost_micros_total", &[]);
        prev = m;
    }

    // Totals from the metrics.
    let (base, last) = (i.base, i.last);
    let provider_attempts = delta(last, base, "sluice_model_attempts_total", &[]) as u64;
    let mut attempts_by = BTreeMap::<String, BTreeMap<String, u64>>::new();
    let before = base.by_pair("sluice_model_attempts_total", "provider", "outcome");
    for ((prov, outcome), v) in last.by_pair("sluice_model_attempts_total", "provider", "outcome") {
        let d = (v - before
            .get(&(prov.clone(), outcome.clone()))
            .copied()
            .unwrap_or(0.0))
        .max(0.0) as u64;
        if d > 0 {
            attempts_by.entry(prov).or_default().insert(outcome, d);
        }
    }
    let mut provider_errors = by_delta(
        &last.by("sluice_model_attempts_total", "outcome"),
        &base.by("sluice_model_attempts_total", "outcome"),
    );
    provider_errors.remove("ok");
    let failed_kinds = {
        let f = |m: &scrape::Metrics| {
            m.by_pair("sluice_job_attempts_total", "outcome", "error_kind")
                .into_iter()
                .filter(|((o, _), _)| o == "failed")
                .map(|((_, k), v)| (k, v))
                .collect::<BTreeMap<String, f64>>()
        };
        by_delta(&f(last), &f(base))
    };
    let model_calls = i.usage.calls.unwrap_or_else(|| {
        (delta(last, base, "sluice_model_calls_total", &[])
            - delta(
                last,
                base,
                "sluice_model_calls_total",
                &[("source", "journal")],
            )) as u64
    });
    let finished_jobs = (counts.completed + counts.dead).max(1) as f64;
    let retries = Retries {
        job_attempts: attempts,
        retried_jobs: retried,
        attempts_per_job: attempts as f64 / counts.accepted.max(1) as f64,
        model_calls,
        provider_attempts,
        provider_calls_per_job: provider_attempts as f64 / finished_jobs,
        retry_amplification: if model_calls > 0 {
            provider_attempts as f64 / model_calls as f64
        } else {
            0.0
        },
    };

    let total = i.usage.cost.unwrap_or_else(|| {
        Micros::new(delta(last, base, "sluice_model_cost_micros_total", &[]) as u64)
    });
    let per_job = total.get() as f64 / counts.completed.max(1) as f64;
    let projection = s.projection.clone();
    let cost = Cost {
        total_micros: total,
        per_job_micros: per_job,
        total_vs_projection: projection
            .as_ref()
            .and_then(|p| p.total_usd)
            .filter(|t| *t > 0.0)
            .map(|t| total.to_usd() / t),
        per_job_vs_projection: projection
            .as_ref()
            .and_then(|p| p.cost_per_job_usd)
            .filter(|t| *t > 0.0)
            .map(|t| per_job / 1e6 / t),
        projection,
        by_user: i.usage.by_user.clone(),
        by_feature: i.usage.by_feature.clone(),
    };

    let active_s = match (first_created, last_done) {
        (Some(a), Some(b)) => secs_since(a, b).max(1e-3),
        _ => wall_s.max(1e-3),
    };
    let throughput = Throughput {
        submitted_per_s: counts.submitted as f64 / i.arrivals_done.as_secs_f64().max(1e-3),
        completed_per_s: counts.completed as f64 / active_s,
        peak_completed_per_s: series.iter().map(|p| p.completed).max().unwrap_or(0) as f64
            / bucket_s,
        max_submit_lag_ms: subs.max_lag_us.load(Ordering::Relaxed) as f64 / 1e3,
    };

    Report {
        run: RunInfo {
            scenario: s.name.clone(),
            description: s.description.clone(),
            run_id: i.run_id.to_string(),
            plugin: i.plugin.to_string(),
            target: match &i.target.store {
                Some(store) => format!("in-process ({store})"),
                None => i.target.url.clone(),
            },
            started_at: i
                .started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            duration_s: s.duration.as_secs_f64(),
            arrival: report::describe_arrival(s),
            planned_jobs: s.planned_jobs(),
            wall_s,
            bucket_s,
        },
        jobs: counts,
        latency_ms: latency,
        throughput,
        retries,
        providers: ProviderSummary {
            rate_limited: delta(last, base, "sluice_provider_rate_limited_total", &[]) as u64,
            failovers: delta(last, base, "sluice_model_fallbacks_total", &[]) as u64,
            breaker_opened: delta(
                last,
                base,
                "sluice_breaker_transitions_total",
                &[("to", "open")],
            ) as u64,
            attempts: attempts_by,
            simulators: BTreeMap::new(),
        },
        errors: Errors {
            dead_by_class,
            failed_attempts_by_kind: failed_kinds,
            provider_errors_by_kind: provider_errors,
        },
        cost,
        series,
        slo: Vec::new(),
        passed: false,
    }
}

/// Where `--json` / `--html` write: a file, or stdout for `-`.
pub fn write_out(path: &PathBuf, text: &str) -> std::io::Result<()> {
    if path.as_os_str() == "-" {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")
    } else {
        std::fs::write(path, text)
    }
}
