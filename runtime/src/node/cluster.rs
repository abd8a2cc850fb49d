//! Node membership: each node announces itself in the store every few seconds, counts the
//! live nodes that run the worker role (the ones that call providers) and takes its share of
//! every provider rate limit (`1 / live workers`), so nodes sharing one provider account stay
//! under its limits together. The same loop reloads the
//! tenants' budget rules, so a change made through any node's API reaches every node.

use std::time::Duration;

use chrono::Utc;
use sluice_store::NodeRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Node;

/// How often a node announces itself and reloads budgets.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node not heard from for this long no longer counts towards the limit share.
pub const NODE_TTL: Duration = Duration::from_secs(15);

/// The running membership loop; [`Membership::leave`] on shutdown.
pub struct Membership {
    id: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    node: Node,
}

impl Membership {
    /// This node's id in the `nodes` table.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stop announcing without removing this node (its entry expires after [`NODE_TTL`]).
    pub(crate) fn cancel(&self) {
        self.stop.cancel();
    }

    /// Stop announcing and remove this node, so the others take its share at once.
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Err(e) = self.node.store.node_leave(&self.id).await {
            tracing::warn!(error = %e, "leaving the node list failed; the entry expires");
        }
    }
}

/// Start announcing `node` with its `roles` (e.g. `api,worker`).
pub fn join(node: Node, roles: &str) -> Membership {
    let record = NodeRecord {
        id: format!(
            "{}-{}",
            hostname(),
            &Uuid::new_v4().simple().to_string()[..8]
        ),
        hostname: hostname(),
        version: env!("CARGO_PKG_VERSION").into(),
        roles: roles.into(),
        started_at: Utc::now(),
        last_seen: Utc::now(),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(node.clone(), record.clone(), stop.clone()));
    Membership {
        id: record.id,
        stop,
        task,
        node,
    }
}

async fn run(node: Node, record: NodeRecord, stop: CancellationToken) {
    let mut share_of = 0u32;
    loop {
        match node.store.node_heartbeat(&record, NODE_TTL).await {
            Ok(live) if live != share_of => {
                share_of = live;
                node.gateway.set_limit_share(1.0 / f64::from(live));
                metrics::gauge!("sluice_live_nodes").set(f64::from(live));
                tracing::info!(
                    live_nodes = live,
                    "provider rate limits split between {live} node(s)"
                );
            }
            Ok(_) => {}
            // Keep the last share: guessing "alone" during a database blip could overshoot.
            Err(e) => tracing::warn!(error = %e, "node heartbeat failed"),
        }
        if let Err(e) = super::budgets::refresh(&node).await {
            tracing::warn!(error = %e, "reloading budgets failed; the previous rules stay");
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}
