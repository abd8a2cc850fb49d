//! Finalizing attempts under their lease: completions batched into one statement, failures
//! one by one; then the live status event.
//!
//! A finished attempt's outcome is the only record of work done (and paid for): while the
//! store is unreachable it is tried again, with backoff, for `worker.finalize_retry_secs`,
//! and its lease stays in the heartbeat's map until it is recorded, so the lease is renewed
//! once the store is back and the job is not rescued and run again meanwhile.

use std::time::Duration;

use sluice_store::{ClaimedJob, Completion, Failure, Finalized};
use sluice_types::{JobError, JobEvent, JobStatus};
use tokio::sync::{Notify, mpsc};

use super::Tracked;
use crate::node::Node;
use std::sync::Arc;

/// How an attempt ended, as the job task saw it.
pub(crate) enum Outcome {
    /// Output JSON text.
    Completed(String),
    /// The error and its kind (`trap`, `timeout`, `retryable`, …).
    Failed(JobError, &'static str),
}

/// Hands outcomes to the store. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Finalizer {
    completions: mpsc::Sender<Pending>,
    node: Node,
    finished: Arc<Notify>,
}

/// A completion waiting for its batch; its lease is renewed until its `Tracked` is dropped.
type Pending = (ClaimedJob, String, Tracked);

/// Most completions written in one statement.
const BATCH: usize = 512;

/// Most completion statements in flight at once.
const BATCHES_IN_FLIGHT: usize = 2;

impl Finalizer {
    pub(crate) fn spawn(node: Node, finished: Arc<Notify>) -> Finalizer {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tokio::spawn(complete_loop(node.clone(), rx, finished.clone()));
        Finalizer {
            completions: tx,
            node,
            finished,
        }
    }

    /// Record `outcome`; `tracked` keeps the job's lease renewed until it is recorded (or
    /// given up on).
    pub(crate) async fn submit(&self, job: ClaimedJob, outcome: Outcome, tracked: Tracked) {
        match outcome {
            Outcome::Completed(output) => {
                if self.completions.send((job, output, tracked)).await.is_err() {
                    tracing::error!(
                        "completion writer stopped; the job will be rescued when its lease expires"
                    );
                }
            }
            Outcome::Failed(error, kind) => {
                let failure = Failure {
                    error,
                    detail: Some(serde_json::json!({ "kind": kind })),
                };
                let result =
                    retry_store(&self.node, || self.node.store.fail(job.lease, &failure)).await;
                drop(tracked);
                self.finished.notify_one();
                match result {
                    Ok(finalized) => {
                        announce(&self.node, &job, finalized, Some(failure.error.message()))
                    }
                    Err(e) => {
                        tracing::error!(job = %job.id, error = %e, "could not record the failure; the lease will expire and the job will be retried")
                    }
                }
            }
        }
    }
}

async fn complete_loop(node: Node, mut rx: mpsc::Receiver<Pending>, finished: Arc<Notify>) {
    let mut batch = Vec::with_capacity(BATCH);
    // Batches being written. A few at once so a batch does not wait for the previous one's
    // WAL flush (Postgres commits concurrent transactions with one flush); the jobs in a
    // batch hold their slot in the tenant's running count until it commits.
    let mut writing = tokio::task::JoinSet::new();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        // Dropped (the leases left to expire or already released) once the batch is recorded.
        let mut tracked = Vec::with_capacity(batch.len());
        for (job, output, track) in batch.drain(..) {
            tracked.push(track);
            // A NUL can only be in the text as an escape: one search spares the walk.
            let suspect = output.contains("\\u0000");
            // The engine checked the output is JSON.
            let output = serde_json::from_str(&output).unwrap_or(serde_json::Value::Null);
            match suspect.then(|| unstorable(&output)).flatten() {
                // This job's own classified failure; the rest of the batch goes on.
                Some(reason) => fail_one(&node, &finished, job, reason).await,
                None => {
                    items.push(Completion {
                        lease: job.lease,
                        output,
                    });
                    jobs.push(job);
                }
            }
        }
        if !items.is_empty() {
            while writing.len() >= BATCHES_IN_FLIGHT {
                writing.join_next().await;
            }
            let (node, finished) = (node.clone(), finished.clone());
            writing.spawn(async move {
                complete_batch(&node, &finished, jobs, items).await;
                // The leases may lapse now: the outcomes are recorded (or given up on).
                drop(tracked);
            });
        }
        while writing.try_join_next().is_some() {}
    }
    // The workers are gone: let the last batches commit before the node goes on stopping.
    while writing.join_next().await.is_some() {}
}

/// Store a batch of completions in one statement. When the statement fails for a reason that
/// is not an outage (one row the database refuses), each job is completed on its own, so one
/// job's bad data fails only that job.
async fn complete_batch(
    node: &Node,
    finished: &Notify,
    jobs: Vec<ClaimedJob>,
    items: Vec<Completion>,
) {
    let result = retry_store(node, || node.store.complete_many(&items)).await;
    finished.notify_one();
    match result {
        Ok(outcomes) => {
            for (job, finalized) in jobs.iter().zip(outcomes) {
                announce(node, job, finalized, None);
            }
        }
        Err(e) if jobs.len() > 1 && !e.is_transient() => {
            tracing::warn!(jobs = jobs.len(), error = %e, "a completion batch failed; completing its jobs one by one");
            for (job, item) in jobs.into_iter().zip(items) {
                let one = [item];
                match retry_store(node, || node.store.complete_many(&one)).await {
                    Ok(outcomes) => {
                        for finalized in outcomes {
                            announce(node, &job, finalized, None);
                        }
                    }
                    Err(e) if !e.is_transient() => {
                        let reason =
                            JobError::permanent(format!("the output could not be stored: {e}"));
                        fail_one(node, finished, job, reason).await;
                    }
                    Err(e) => {
                        tracing::error!(job = %job.id, error = %e, "could not record the completion; its lease will expire and it will run again")
                    }
                }
            }
        }
        Err(e) => tracing::error!(
            jobs = jobs.len(),
            error = %e,
            "could not record completions; their leases will expire and they will run again"
        ),
    }
}

/// Why an output cannot be stored on every backend, if it cannot: Postgres' `jsonb` refuses
/// the NUL character, so no backend accepts it (a job behaves the same on both).
fn unstorable(output: &serde_json::Value) -> Option<JobError> {
    sluice_store::has_nul(output).then(|| {
        JobError::permanent(
            "the output contains a NUL character (\\u0000) in a string, which the job store \
             cannot hold; remove or escape it in the handler",
        )
    })
}

/// Record one job's failure under its lease and announce it.
async fn fail_one(node: &Node, finished: &Notify, job: ClaimedJob, error: JobError) {
    let failure = Failure {
        error,
        detail: Some(serde_json::json!({ "kind": "bad_output" })),
    };
    let result = retry_store(node, || node.store.fail(job.lease, &failure)).await;
    finished.notify_one();
    match result {
        Ok(finalized) => announce(node, &job, finalized, Some(failure.error.message())),
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "could not record the failure; the lease will expire and the job will be retried")
        }
    }
}

/// Retry a store call through an outage (a database restart, a failover) for
/// `worker.finalize_retry_secs`: the job stays leased meanwhile (its lease renewed by the
/// heartbeat once the store answers again), and if we give up the rescuer returns it to the
/// queue. An error that is not an outage is returned at once: repeating the same statement
/// would fail the same way.
async fn retry_store<T, F, Fut>(node: &Node, f: F) -> sluice_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sluice_store::Result<T>>,
{
    let budget = Duration::from_secs(node.config.worker.finalize_retry_secs);
    retry_for(budget, Backoff::STORE, f).await
}

/// Waits between tries: from `first`, doubling up to `max`.
#[derive(Clone, Copy)]
struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// For a database restarting: soon at first, then every 5 s.
    const STORE: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
}

/// Call `f` until it succeeds, fails for a reason that is not an outage, or `budget` has
/// passed since the first try.
async fn retry_for<T, F, Fut>(
    budget: Duration,
    backoff: Backoff,
    mut f: F,
) -> sluice_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sluice_store::Result<T>>,
{
    let give_up_at = tokio::time::Instant::now() + budget;
    let mut delay = backoff.first;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up_at => {
                let left = give_up_at.saturating_duration_since(tokio::time::Instant::now());
                tracing::warn!(error = %e, retry_in = ?delay, gives_up_in = ?left, "store call failed while finalizing");
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(backoff.max);
            }
            Err(e) => return Err(e),
        }
    }
}

fn announce(node: &Node, job: &ClaimedJob, finalized: Finalized, reason: Option<&str>) {
    let status = match finalized {
        Finalized::Completed => JobStatus::Completed,
        Finalized::Retrying { .. } => JobStatus::Retrying,
        Finalized::Dead => JobStatus::Dead,
        Finalized::Cancelled => JobStatus::Cancelled,
        Finalized::LeaseLost => {
            tracing::info!(job = %job.id, "finalize ignored: the lease was lost (rescued or cancelled)");
            return;
        }
    };
    metrics::counter!("sluice_jobs_finished_total", "status" => status.as_str()).increment(1);
    if status.is_terminal() {
        crate::metrics::job_finished(job, status);
    }
    node.events.publish_live(
        job.id,
        JobEvent::Status {
            status,
            attempt: job.attempt,
            reason: reason.map(str::to_string),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    fn outage() -> sluice_store::StoreError {
        sluice_store::StoreError::Database(sqlx::Error::PoolTimedOut)
    }

    /// Short waits, so an outage of many tries takes a fraction of a second here.
    const QUICK: Backoff = Backoff {
        first: Duration::from_millis(1),
        max: Duration::from_millis(2),
    };

    /// An outage lasting far more tries than the eight this used to give up after does not
    /// lose the outcome while it is within the budget.
    #[tokio::test]
    async fn an_outage_of_many_tries_within_the_budget_is_ridden_out() {
        let back = Instant::now() + Duration::from_millis(300);
        let tries = AtomicU32::new(0);
        let result = retry_for(Duration::from_secs(600), QUICK, || async {
            tries.fetch_add(1, Ordering::Relaxed);
            if Instant::now() < back {
                Err(outage())
            } else {
                Ok("recorded")
            }
        })
        .await;
        assert_eq!(result.unwrap(), "recorded");
        assert!(tries.load(Ordering::Relaxed) > 8);
    }

    /// Past the budget it gives up (the lease then returns the job to the queue); an error
    /// that is not an outage is returned at once.
    #[tokio::test]
    async fn it_gives_up_after_the_budget_and_at_once_on_a_refusal() {
        let start = Instant::now();
        let budget = Duration::from_millis(200);
        let result: sluice_store::Result<()> =
            retry_for(budget, QUICK, || async { Err(outage()) }).await;
        assert!(result.unwrap_err().is_transient());
        assert!(start.elapsed() >= budget);

        let tries = AtomicU32::new(0);
        let result: sluice_store::Result<()> = retry_for(budget, QUICK, || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Err(sluice_store::StoreError::Database(sqlx::Error::RowNotFound))
        })
        .await;
        assert!(!result.unwrap_err().is_transient());
        assert_eq!(tries.load(Ordering::Relaxed), 1);
    }
}
