//! Finalizing attempts under their lease: completions batched into one statement, failures
//! one by one; then the live status event.

use std::time::Duration;

use sluice_store::{ClaimedJob, Completion, Failure, Finalized};
use sluice_types::{JobError, JobEvent};
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
                    Some(finalized) => {
                        announce(&self.node, &job, finalized, Some(failure.error.message()))
                    }
                    None => {
                        tracing::error!(job = %job.id, "could not record the failure; the lease will expire and the job will be retried")
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
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let items: Vec<Completion> = batch
            .iter()
            .map(|(job, output)| Completion {
                lease: job.lease,
                // The engine checked the output is JSON.
                output: serde_json::from_str(output).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        let result = retry_store(|| node.store.complete_many(&items)).await;
        finished.notify_one();
        match result {
            Some(outcomes) => {
                for ((job, _), finalized) in batch.iter().zip(outcomes) {
                    announce(&node, job, finalized, None);
                }
            }
            None => tracing::error!(
                jobs = batch.len(),
                "could not record completions; their leases will expire and they will run again"
            ),
        }
        batch.clear();
    }
}

/// Retry a store call through a short outage (a database restart): the job stays leased
/// meanwhile, and if we give up the rescuer returns it to the queue.
async fn retry_store<T, F, Fut>(mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sluice_store::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    for _ in 0..8 {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "store call failed while finalizing");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    None
}

fn announce(node: &Node, job: &ClaimedJob, finalized: Finalized, reason: Option<&str>) {
    let status = match finalized {
        Finalized::Completed => "completed",
        Finalized::Retrying { .. } => "retrying",
        Finalized::Dead => "dead",
        Finalized::Cancelled => "cancelled",
        Finalized::LeaseLost => {
            tracing::info!(job = %job.id, "finalize ignored: the lease was lost (rescued or cancelled)");
            return;
        }
    };
    metrics::counter!("sluice_jobs_finished_total", "status" => status).increment(1);
    node.events.publish_live(
        job.id,
        JobEvent::Status {
            status: status.into(),
            attempt: job.attempt,
            reason: reason.map(str::to_string),
        },
    );
}
