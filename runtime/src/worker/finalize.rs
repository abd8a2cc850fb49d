//! Finalizing attempts under their lease: completions batched into one statement, failures
//! one by one; then the live status event.

use std::time::Duration;

use sluice_store::{ClaimedJob, Completion, Failure, Finalized};
use sluice_types::{JobError, JobEvent, JobStatus};
use tokio::sync::{Notify, mpsc};

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
    completions: mpsc::Sender<(ClaimedJob, String)>,
    node: Node,
    finished: Arc<Notify>,
}

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

    pub(crate) async fn submit(&self, job: ClaimedJob, outcome: Outcome) {
        match outcome {
            Outcome::Completed(output) => {
                if self.completions.send((job, output)).await.is_err() {
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
                let result = retry_store(|| self.node.store.fail(job.lease, &failure)).await;
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

async fn complete_loop(
    node: Node,
    mut rx: mpsc::Receiver<(ClaimedJob, String)>,
    finished: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    // Batches being written. A few at once so a batch does not wait for the previous one's
    // WAL flush (Postgres commits concurrent transactions with one flush); the jobs in a
    // batch hold their slot in the tenant's running count until it commits.
    let mut writing = tokio::task::JoinSet::new();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut jobs = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for (job, output) in batch.drain(..) {
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
            writing.spawn(async move { complete_batch(&node, &finished, jobs, items).await });
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
    let result = retry_store(|| node.store.complete_many(&items)).await;
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
                match retry_store(|| node.store.complete_many(&one)).await {
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
    let result = retry_store(|| node.store.fail(job.lease, &failure)).await;
    finished.notify_one();
    match result {
        Ok(finalized) => announce(node, &job, finalized, Some(failure.error.message())),
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "could not record the failure; the lease will expire and the job will be retried")
        }
    }
}

/// Retry a store call through a short outage (a database restart): the job stays leased
/// meanwhile, and if we give up the rescuer returns it to the queue. An error that is not an
/// outage is returned at once: repeating the same statement would fail the same way.
async fn retry_store<T, F, Fut>(mut f: F) -> sluice_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sluice_store::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && tries < 8 => {
                tracing::warn!(error = %e, retry_in = ?delay, "store call failed while finalizing");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                tries += 1;
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
