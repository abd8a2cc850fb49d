//! Submitting on schedule (open loop: a job is sent at its time whether or not earlier ones
//! have finished), then draining, and reading the run's jobs back from the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::inputs::{Inputs, RUN_TAG};
use super::scenario::Scenario;
use super::target::Target;

/// Submissions in flight at once: past this the driver falls behind its schedule (and says
/// so as submit lag) instead of opening ever more connections.
pub const MAX_SUBMITS_IN_FLIGHT: usize = 512;
/// Cancels sent at once when a drain deadline passes.
const CANCELS_IN_FLIGHT: usize = 32;
/// How long cancelled jobs get to reach `cancelled`.
const CANCEL_GRACE: Duration = Duration::from_secs(60);

/// What the driver has done so far; read by the live view.
#[derive(Default)]
pub struct Submissions {
    /// Sent.
    pub submitted: AtomicU64,
    /// Accepted.
    pub accepted: AtomicU64,
    /// Refused with an HTTP error.
    pub rejected: AtomicU64,
    /// Never answered.
    pub unanswered: AtomicU64,
    /// Largest lag behind schedule, µs.
    pub max_lag_us: AtomicU64,
    /// Accepted ids.
    pub ids: Mutex<Vec<Uuid>>,
    /// When each submission was sent, seconds from the start.
    pub sent_at: Mutex<Vec<f64>>,
    /// Refusals by status.
    pub rejected_by_status: Mutex<BTreeMap<String, u64>>,
    /// The first refusal's body, to show why.
    pub first_refusal: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Send every job of the schedule at its time; returns when every answer is in.
pub async fn submit_all(
    scenario: &Scenario,
    target: &Arc<Target>,
    plugin: &str,
    inputs: &mut Inputs,
    times: &[Duration],
    started: Instant,
    subs: &Arc<Submissions>,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_SUBMITS_IN_FLIGHT));
    let path = format!("/v1/plugins/{plugin}/jobs");
    for (seq, at) in times.iter().enumerate() {
        tokio::time::sleep_until((started + *at).into()).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let job = inputs.job(seq as u64);
        let mut body = json!({"input": job.input, "tags": job.tags});
        if let Some(t) = scenario.plugin.timeout_ms {
            body["timeout_ms"] = t.into();
        }
        if let Some(a) = scenario.plugin.max_attempts {
            body["max_attempts"] = a.into();
        }
        let now = started.elapsed();
        let lag = now.saturating_sub(*at);
        subs.max_lag_us
            .fetch_max(lag.as_micros() as u64, Ordering::Relaxed);
        subs.submitted.fetch_add(1, Ordering::Relaxed);
        lock(&subs.sent_at).push(now.as_secs_f64());
        let req = target.request(Method::POST, &path).json(&body);
        let subs = subs.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match req.send().await {
                Ok(res) => {
                    let status = res.status();
                    let body: Value = res.json().await.unwrap_or(Value::Null);
                    let id = body
                        .get("id")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok());
                    match id {
                        Some(id) if status.is_success() => {
                            subs.accepted.fetch_add(1, Ordering::Relaxed);
                            lock(&subs.ids).push(id);
                        }
                        _ => {
                            subs.rejected.fetch_add(1, Ordering::Relaxed);
                            *lock(&subs.rejected_by_status)
                                .entry(status.as_u16().to_string())
                                .or_insert(0) += 1;
                            let mut first = lock(&subs.first_refusal);
                            if first.is_none() {
                                *first = Some(format!("{status}: {body}"));
                            }
                        }
                    }
                }
                Err(_) => {
                    subs.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Every permit back: every answer is in.
    let _ = gate.acquire_many(MAX_SUBMITS_IN_FLIGHT as u32).await;
}

/// A job as listed by `GET /v1/jobs`.
#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    /// Id.
    pub id: Uuid,
    /// Status.
    pub status: String,
    /// Attempts made.
    pub attempt: u32,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Final error.
    pub error: Option<Value>,
}

impl Listed {
    /// Completed, dead or cancelled.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "dead" | "cancelled")
    }
}

/// The statuses a job is in before it ends.
pub const LIVE_STATUSES: [&str; 4] = ["queued", "scheduled", "retrying", "running"];

/// Every job of the run in `status` (all statuses when `None`), paging through the list.
pub async fn list(
    target: &Target,
    run_id: &str,
    status: Option<&str>,
) -> anyhow::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/jobs?tag={RUN_TAG}:{run_id}&limit=1000");
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = target.get_json(&path).await?;
        if let Some(items) = page.get("items").and_then(Value::as_array) {
            for item in items {
                out.push(serde_json::from_value::<Listed>(item.clone())?);
            }
        }
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    Ok(out)
}

/// Whether any job of the run is not finished yet.
pub async fn any_live(target: &Target, run_id: &str) -> anyhow::Result<bool> {
    for s in LIVE_STATUSES {
        let page = target
            .get_json(&format!(
                "/v1/jobs?tag={RUN_TAG}:{run_id}&status={s}&limit=1"
            ))
            .await?;
        if page
            .get("items")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Wait until every job of the run has finished or `deadline` passes; `true` when drained.
pub async fn drain(target: &Target, run_id: &str, deadline: Instant) -> anyhow::Result<bool> {
    loop {
        if !any_live(target, run_id).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Cancel every unfinished job of the run and wait for them to end; returns how many were
/// unfinished.
pub async fn cancel_unfinished(target: &Arc<Target>, run_id: &str) -> anyhow::Result<u64> {
    let mut ids = Vec::new();
    for s in LIVE_STATUSES {
        ids.extend(
            list(target, run_id, Some(s))
                .await?
                .into_iter()
                .map(|j| j.id),
        );
    }
    ids.sort();
    ids.dedup();
    let n = ids.len() as u64;
    let gate = Arc::new(tokio::sync::Semaphore::new(CANCELS_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let permit = gate.clone().acquire_owned().await?;
        let target = target.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _ = target
                .request(Method::POST, &format!("/v1/jobs/{id}/cancel"))
                .header("content-type", "application/json")
                .send()
                .await;
        });
    }
    while tasks.join_next().await.is_some() {}
    drain(target, run_id, Instant::now() + CANCEL_GRACE).await?;
    Ok(n)
}
