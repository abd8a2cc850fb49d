//! Lease upkeep: extending the leases of running jobs, and rescuing expired ones.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_store::{Lease, LeaseStatus};
use tokio_util::sync::CancellationToken;

use super::RunningMap;
use crate::node::Node;

/// Every lease/3, extend every running job's lease; flag jobs that were cancelled or lost.
pub(crate) async fn heartbeat(node: Node, running: RunningMap, stop: CancellationToken) {
    let lease = Duration::from_secs(node.config.worker.lease_secs);
    let every = (lease / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let _ = renew(&node, &running).await;
    }
}

/// Extend the leases of the jobs this node runs or is finalizing, and flag those cancelled
/// or lost. `false` when the store could not be asked.
async fn renew(node: &Node, running: &RunningMap) -> bool {
    let lease = Duration::from_secs(node.config.worker.lease_secs);
    let leases: Vec<Lease> = super::lock(running).keys().copied().collect();
    if leases.is_empty() {
        return true;
    }
    match node.store.heartbeat(&leases, lease).await {
        Ok(statuses) => {
            let map = super::lock(running);
            for (lease, status) in leases.iter().zip(statuses) {
                let Some(r) = map.get(lease) else { continue };
                match status {
                    LeaseStatus::Held => {}
                    LeaseStatus::CancelRequested => r.cancelled.store(true, Ordering::Relaxed),
                    LeaseStatus::Lost => {
                        r.lost.store(true, Ordering::Relaxed);
                        r.cancelled.store(true, Ordering::Relaxed);
                    }
                }
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = leases.len(), "heartbeat failed; will retry");
            false
        }
    }
}

/// Return jobs whose lease expired (their worker died) to the queue, and purge history.
///
/// Each pass first renews this node's own leases: after a database outage longer than a
/// lease, they have all expired, and a rescue before the next heartbeat would send this
/// node's running and finishing jobs back to the queue (to run again) although they are alive.
pub(crate) async fn rescuer(node: Node, running: RunningMap, stop: CancellationToken) {
    let every = Duration::from_secs(node.config.worker.lease_secs)
        .div_f32(2.0)
        .max(Duration::from_millis(500));
    let mut last_purge = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        if !renew(&node, &running).await {
            // The store is unreachable: the rescue would fail too, or rescue our own jobs.
            continue;
        }
        match node.store.rescue_expired_leases().await {
            Ok(report) if report.total() > 0 => {
                tracing::warn!(
                    retried = report.retried.len(),
                    dead = report.dead.len(),
                    cancelled = report.cancelled.len(),
                    "rescued jobs with expired leases"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "rescue pass failed"),
        }
        if last_purge.elapsed() > Duration::from_secs(3600) {
            last_purge = tokio::time::Instant::now();
            if let Err(e) = node.store.purge().await {
                tracing::warn!(error = %e, "purge failed");
            }
        }
    }
}
