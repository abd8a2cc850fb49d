//! The worker: claims jobs from the store, runs each on a fresh wasm instance, and
//! finalizes it under its lease.
//!
//! Four loops share one node:
//! - the **dispatcher** claims up to the number of free slots whenever it is woken (a store
//!   notification, a finished job) or the polling backstop fires;
//! - each **job task** runs one attempt and hands its outcome to the finalizer;
//! - the **heartbeat** extends the leases of running jobs and tells them when they were
//!   cancelled or lost;
//! - the **rescuer** returns jobs whose lease expired (a dead worker's) to the queue.
//!
//! Successful completions are batched into one statement; failures are finalized one by
//! one (they are rare and each needs its backoff computed).

mod finalize;
mod heartbeat;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use sluice_engine::JobLimits;
use sluice_store::{ClaimRequest, ClaimedJob, Lease, PluginSettings};
use sluice_types::{CallContext, JobEvent, JobStatus};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::node::Node;
use finalize::{Finalizer, Outcome};

/// A running worker. Dropping the handle aborts its loops and running jobs at once (their
/// leases expire to another node); [`WorkerHandle::shutdown`] drains them instead.
pub struct WorkerHandle {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// This worker's id, as recorded on the jobs it claims.
    pub worker_id: String,
}

impl WorkerHandle {
    /// Stop claiming, let running jobs finish (up to `grace`), then stop.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// What the worker tracks about one running attempt.
pub(crate) struct Running {
    pub(crate) cancelled: Arc<AtomicBool>,
    /// Set when the heartbeat learns the lease is gone: the outcome must be dropped.
    pub(crate) lost: Arc<AtomicBool>,
}

pub(crate) type RunningMap = Arc<Mutex<HashMap<Lease, Running>>>;

/// Start the worker on `node`.
pub fn spawn(node: Node) -> WorkerHandle {
    let worker_id = format!(
        "{}-{}",
        hostname(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let stop = CancellationToken::new();
    let running: RunningMap = Arc::default();
    let slots = Arc::new(Semaphore::new(node.config.worker.slots as usize));
    let finished = Arc::new(Notify::new());
    let finalizer = Finalizer::spawn(node.clone(), finished.clone());
    let mut tasks = JoinSet::new();

    tasks.spawn(dispatch(
        node.clone(),
        worker_id.clone(),
        stop.clone(),
        running.clone(),
        slots,
        finished,
        finalizer,
    ));
    tasks.spawn(heartbeat::heartbeat(
        node.clone(),
        running.clone(),
        stop.clone(),
    ));
    tasks.spawn(heartbeat::rescuer(node, running, stop.clone()));
    WorkerHandle {
        stop,
        tasks,
        worker_id,
    }
}

/// Worker nodes sharing the database, as cluster membership last counted them (the gateway's
/// rate-limit share is one over that count).
fn live_worker_nodes(node: &Node) -> u32 {
    let share = node.gateway.limit_share();
    if share > 0.0 && share <= 1.0 {
        (1.0 / share).round() as u32
    } else {
        1
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

async fn dispatch(
    node: Node,
    worker_id: String,
    stop: CancellationToken,
    running: RunningMap,
    slots: Arc<Semaphore>,
    finished: Arc<Notify>,
    finalizer: Finalizer,
) {
    let lease = Duration::from_secs(node.config.worker.lease_secs);
    let poll = Duration::from_millis(node.config.worker.poll_ms);
    let mut signal = node.store.work_signal();
    let mut caps = Vec::new();
    let mut caps_refreshed = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut jobs = JoinSet::new();
    let mut backoff = Duration::from_millis(50);
    let total_slots = node.config.worker.slots;
    let mut paused = false;

    while !stop.is_cancelled() {
        // Reap finished job tasks so the set does not grow.
        while jobs.try_join_next().is_some() {}

        // Back-pressure: while the store cannot keep up with this node's events and usage
        // rows, claim nothing new (running jobs go on) rather than buffer without bound.
        if backlog_full(&node, &mut paused) {
            tokio::select! {
                _ = tokio::time::sleep(BACKLOG_RECHECK) => {}
                _ = stop.cancelled() => break,
            }
            continue;
        }

        let free = slots.available_permits() as u32;
        // Claim in batches: while most slots are busy, wait for more to free up (or a short
        // while) rather than paying a claim round trip for one or two jobs.
        let batch_floor = (total_slots / 4).clamp(1, 64);
        if free == 0 || (free < batch_floor && free < total_slots) {
            tokio::select! {
                _ = finished.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(2)), if free > 0 => {}
                _ = stop.cancelled() => break,
            }
            if slots.available_permits() == 0 {
                continue;
            }
        }
        let free = slots.available_permits() as u32;
        if caps_refreshed.elapsed() > Duration::from_secs(5) {
            match node.store.concurrency_caps().await {
                Ok(c) => caps = c,
                Err(e) => tracing::warn!(error = %e, "could not read plugin concurrency caps"),
            }
            caps_refreshed = tokio::time::Instant::now();
        }
        let mut request = ClaimRequest::new(worker_id.clone(), free, lease);
        request.plugin_caps = caps.clone();
        request.tenant_cap = node.config.worker.tenant_cap(live_worker_nodes(&node));
        let claimed = match node.store.claim(&request).await {
            Ok(c) => {
                backoff = Duration::from_millis(50);
                c
            }
            Err(e) => {
                // The database may be restarting: back off and try again; nothing is lost,
                // jobs stay queued.
                tracing::warn!(error = %e, retry_in = ?backoff, "claim failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let got = claimed.len() as u32;
        for job in claimed {
            let permit = slots
                .clone()
                .try_acquire_owned()
                .expect("claimed no more than the free slots");
            let node = node.clone();
            let running = running.clone();
            let finalizer = finalizer.clone();
            jobs.spawn(async move {
                run_one(node, job, running, finalizer).await;
                drop(permit);
            });
        }
        if got < free {
            // The queue is drained for now: sleep until woken or the backstop fires.
            tokio::select! {
                _ = signal.wait(poll) => {}
                _ = finished.notified() => {}
                _ = stop.cancelled() => break,
            }
        }
    }
    // Let jobs already running finish (the shutdown grace bounds this).
    while jobs.join_next().await.is_some() {}
}

/// How often a paused dispatcher looks at the backlog again.
const BACKLOG_RECHECK: Duration = Duration::from_millis(100);

/// Whether the node's rows waiting for the store are at `worker.max_buffered_writes`; logs
/// when claiming pauses and resumes.
fn backlog_full(node: &Node, paused: &mut bool) -> bool {
    let held = node.backlog.len();
    let cap = usize::try_from(node.config.worker.max_buffered_writes).unwrap_or(usize::MAX);
    let full = held >= cap;
    if full != *paused {
        *paused = full;
        if full {
            tracing::warn!(
                buffered = held,
                cap,
                "the store is not keeping up with job events and usage rows; claiming no new jobs until it does"
            );
        } else {
            tracing::info!(buffered = held, "the store caught up; claiming jobs again");
        }
    }
    full
}

/// Run one claimed attempt and hand its outcome to the finalizer.
async fn run_one(node: Node, job: ClaimedJob, running: RunningMap, finalizer: Finalizer) {
    let settings = node
        .plugins
        .settings(&job.tenant, &job.plugin, job.plugin_version)
        .await;
    // `allowed_models` fails closed: a deleted plugin's queued job still runs its recorded
    // code, but may call no model, since nothing says which models it may call.
    let ctx = CallContext::new(job.job_info(), job.digest.clone())
        // A redriven job keeps its journal (unless redriven fresh): replay it from attempt 1.
        .with_journal_replay(job.attempt > 1 || job.run > 0);
    let ctx = match &settings {
        Ok(Some(s)) => ctx.with_allowed_models(s.allowed_models.clone()),
        Ok(None) => ctx.with_models_refused("the plugin was deleted"),
        Err(_) => ctx.with_models_refused("the plugin's settings could not be read"),
    };
    let lost = Arc::new(AtomicBool::new(false));
    // Removes the lease from the heartbeat's map however this task ends (a panic included),
    // so a job is never renewed forever by a task that is gone; handed to the finalizer, it
    // keeps the lease renewed until the outcome is recorded.
    let tracked = Tracked::insert(
        running,
        job.lease,
        Running {
            cancelled: ctx.cancelled.clone(),
            lost: lost.clone(),
        },
    );

    node.events.publish_live(
        job.id,
        JobEvent::Status {
            status: JobStatus::Running,
            attempt: job.attempt,
            reason: None,
        },
    );
    crate::metrics::attempt_claimed(&job);
    let trace = crate::telemetry::claimed_job_trace(&node, &job).await;
    let attempt_span = crate::telemetry::attempt_span(&job, trace.as_deref());
    let attempt = async {
        let settings = match settings {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Failed(
                    sluice_types::JobError::retryable(format!(
                        "could not read the plugin's settings: {e}"
                    )),
                    "load",
                );
            }
        };
        let plugin = match node.plugins.get(&job.digest).await {
            Ok(p) => p,
            Err(e) => {
                return Outcome::Failed(
                    sluice_types::JobError::retryable(format!("could not load the plugin: {e}")),
                    "load",
                );
            }
        };
        let limits = limits_for(&node, &job, settings.as_ref());
        let input = job.input.to_string();
        // The engine records the attempt's peak linear memory on it when the run ends.
        let run = tracing::info_span!(
            "handler.run",
            sluice.digest = %job.digest,
            sluice.memory.peak_bytes = tracing::field::Empty,
        );
        match node
            .engine
            .run(&plugin, ctx.clone(), &input, limits, node.services.clone())
            .instrument(run)
            .await
        {
            Ok(output) => Outcome::Completed(output),
            Err(e) => {
                tracing::info!(job = %job.id, attempt = job.attempt, kind = e.kind(), error = %e, "attempt failed");
                Outcome::Failed(e.to_job_error(), e.kind())
            }
        }
    };
    // A panic in the host while running this job (a bug, reachable from its data) fails this
    // attempt under its lease like any other error; it never takes the worker down.
    let outcome = match AssertUnwindSafe(attempt.instrument(attempt_span.clone()))
        .catch_unwind()
        .await
    {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic_text(panic.as_ref());
            tracing::error!(job = %job.id, attempt = job.attempt, panic = %message, "host panicked while running a job");
            metrics::counter!("sluice_worker_panics_total").increment(1);
            Outcome::Failed(
                sluice_types::JobError::retryable(format!(
                    "the host failed while running this attempt: {message}"
                )),
                "host_panic",
            )
        }
    };
    match &outcome {
        Outcome::Completed(_) => {
            attempt_span.record("sluice.outcome", "completed");
        }
        Outcome::Failed(_, kind) => {
            attempt_span.record("sluice.outcome", "failed");
            attempt_span.record("sluice.error.kind", *kind);
            attempt_span.record("otel.status_code", "ERROR");
        }
    }
    crate::metrics::attempt_finished(&job, &outcome_kind(&outcome));
    node.spend.take(job.id);
    if lost.load(Ordering::Relaxed) {
        // Another worker owns the job now; our outcome must not land (it would not: the
        // finalize is lease-guarded, but skip the round trip).
        tracing::info!(job = %job.id, "lease lost while running; dropping the outcome");
        return;
    }
    // The attempt's events first: once the job is seen finished, they must all be readable.
    node.events.flush().await;
    finalizer.submit(job, outcome, tracked).await;
}

fn outcome_kind(outcome: &Outcome) -> crate::metrics::AttemptOutcome {
    match outcome {
        Outcome::Completed(_) => crate::metrics::AttemptOutcome::Completed,
        Outcome::Failed(_, kind) => crate::metrics::AttemptOutcome::Failed(kind),
    }
}

/// A running (or finishing) attempt's entry in the heartbeat's map, removed on drop.
pub(crate) struct Tracked {
    running: RunningMap,
    lease: Lease,
}

impl Tracked {
    fn insert(running: RunningMap, lease: Lease, entry: Running) -> Self {
        lock(&running).insert(lease, entry);
        Tracked { running, lease }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.lease);
    }
}

/// The running map, even if a thread panicked while holding it: its entries are plain
/// flags, always consistent, so a poisoned lock must not stop every later job.
pub(crate) fn lock(running: &RunningMap) -> std::sync::MutexGuard<'_, HashMap<Lease, Running>> {
    running
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}

/// The plugin version's limits for this job: its memory cap and the job's timeout, and the
/// node's guest limits, each lowered where the plugin asks for less (never raised).
fn limits_for(node: &Node, job: &ClaimedJob, settings: Option<&PluginSettings>) -> JobLimits {
    let d = node.engine.config().default_limits;
    let memory = settings
        .and_then(|s| s.memory_limit_bytes)
        .map(|b| usize::try_from(b).unwrap_or(usize::MAX))
        .unwrap_or(d.memory_bytes);
    let p = settings.map(|s| s.limits).unwrap_or_default();
    let bytes = |v: Option<u64>, default: usize| {
        v.map_or(default, |v| {
            usize::try_from(v).unwrap_or(usize::MAX).min(default)
        })
    };
    JobLimits {
        memory_bytes: memory,
        // Bounded at submit; the ceiling here keeps a row written before that bound from
        // overflowing the engine's deadline arithmetic.
        timeout: Duration::from_millis(job.timeout_ms.min(MAX_ATTEMPT_TIMEOUT_MS)),
        max_events: p.max_events.map_or(d.max_events, |v| v.min(d.max_events)),
        max_event_bytes: bytes(p.max_event_bytes, d.max_event_bytes),
        max_output_bytes: bytes(p.max_output_bytes, d.max_output_bytes),
        max_model_calls: p
            .max_model_calls
            .map_or(d.max_model_calls, |v| v.min(d.max_model_calls)),
        max_chat_batch: p
            .max_chat_batch
            .map_or(d.max_chat_batch, |v| v.min(d.max_chat_batch)),
        max_cost_per_report_micros: p
            .max_cost_per_report_micros
            .map_or(d.max_cost_per_report_micros, |v| {
                v.min(d.max_cost_per_report_micros)
            }),
        max_reported_cost_micros: p
            .max_reported_cost_micros
            .map_or(d.max_reported_cost_micros, |v| {
                v.min(d.max_reported_cost_micros)
            }),
        max_hostcall_bytes: bytes(p.max_hostcall_bytes, d.max_hostcall_bytes),
    }
}

/// No attempt runs longer than a day, whatever its row says.
const MAX_ATTEMPT_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
