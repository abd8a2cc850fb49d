//! A node's lifecycle in one place: which roles it runs, the tasks that run them, and the
//! order they stop in. `sluice up`, the tests and the benches all start a node through here,
//! so a task added to a role is started and stopped everywhere the same way.
//!
//! Shutdown order (each step waits for the one before):
//! 1. the HTTP API stops accepting and finishes the requests in flight;
//! 2. the worker stops claiming and lets running jobs finish (up to the grace period; what
//!    is still running then is aborted, and its lease expires to another node);
//! 3. background loops (webhook delivery, alert rules) stop, and the unspent budget slices
//!    this node leased go back to the shared ledger;
//! 4. the node leaves the cluster, so the others take its share of the rate limits at once.
//!
//! Closing the store is left to the caller: a test may still want to read it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Node;
use super::cluster::{self, Membership};
use crate::worker::{self, WorkerHandle};

/// The parts of a node to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Serve the HTTP API.
    pub api: bool,
    /// Claim and run jobs, deliver webhooks and evaluate alert rules.
    pub worker: bool,
}

impl Roles {
    /// API and worker: a single node.
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
    };
    /// Only the HTTP API.
    pub const API: Roles = Roles {
        api: true,
        worker: false,
    };
    /// Only the worker (and webhook delivery and alerts).
    pub const WORKER: Roles = Roles {
        api: false,
        worker: true,
    };

    /// How the node announces itself in the cluster's node list (`api,worker`).
    pub fn label(self) -> &'static str {
        match (self.api, self.worker) {
            (true, true) => "api,worker",
            (true, false) => "api",
            (false, true) => "worker",
            (false, false) => "none",
        }
    }
}

/// Why a node could not start its roles.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The API role needs a listener.
    #[error("the api role needs a listener")]
    NoListener,
    /// The alert rules in the configuration are invalid.
    #[error("invalid [alerts] configuration: {0}")]
    Alerts(String),
    /// The listener's address could not be read.
    #[error("reading the listen address: {0}")]
    Listener(#[from] std::io::Error),
}

/// A node running its roles. Every task it started is owned here; [`RunningNode::shutdown`]
/// stops them in order. Dropping it instead stops them without waiting: the API closes, the
/// loops and the worker's tasks are aborted, and leases left behind expire to other nodes.
pub struct RunningNode {
    node: Node,
    stop: CancellationToken,
    api: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    addr: Option<SocketAddr>,
    worker: Option<WorkerHandle>,
    background: JoinSet<()>,
    membership: Option<Membership>,
}

impl Node {
    /// Start `roles` on this node: the API on `listener` (required when `roles.api`), the
    /// worker, webhook delivery and alert rules when `roles.worker`, and cluster membership.
    pub async fn start_roles(
        &self,
        roles: Roles,
        listener: Option<TcpListener>,
    ) -> Result<RunningNode, StartError> {
        if roles.api && listener.is_none() {
            return Err(StartError::NoListener);
        }
        self.config
            .alerts
            .validate()
            .map_err(|e| StartError::Alerts(e.to_string()))?;
        // Everything that can fail comes before the first task is spawned.
        let listener = listener.filter(|_| roles.api);
        let addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let stop = CancellationToken::new();
        let mut background = JoinSet::new();
        let worker = roles.worker.then(|| worker::spawn(self.clone()));
        if roles.worker {
            background.spawn(crate::webhooks::run(self.clone(), stop.clone()));
            background.spawn(crate::alerts::run(self.clone(), stop.clone()));
        }
        let membership = Some(cluster::join(self.clone(), roles.label()));
        let api = listener.map(|listener| {
            let stopped = stop.clone();
            tokio::spawn(crate::api::serve(self.clone(), listener, async move {
                stopped.cancelled().await
            }))
        });
        Ok(RunningNode {
            node: self.clone(),
            stop,
            api,
            addr,
            worker,
            background,
            membership,
        })
    }

    /// Run `roles` until `shutdown` resolves, then stop in order, giving running jobs up to
    /// `grace` to finish.
    pub async fn run(
        &self,
        roles: Roles,
        listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), StartError> {
        let running = self.start_roles(roles, listener).await?;
        shutdown.await;
        running.shutdown(grace).await;
        Ok(())
    }
}

impl RunningNode {
    /// The address the API listens on, when it runs.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The node these roles run on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// This node's worker id (as recorded on the jobs it claims), when the worker runs.
    pub fn worker_id(&self) -> Option<&str> {
        self.worker.as_ref().map(|w| w.worker_id.as_str())
    }

    /// Stop in order (see the module's documentation). Running jobs get up to `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop.cancel();
        if let Some(api) = self.api.take() {
            match api.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
                Err(e) if e.is_panic() => tracing::error!("the HTTP server panicked"),
                _ => {}
            }
        }
        if let Some(worker) = self.worker.take() {
            worker.shutdown(grace).await;
        }
        // The loops watch `stop`; a delivery in flight gets a moment to record its result.
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while self.background.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.background.abort_all();
        }
        // Unspent budget slices go back to the shared ledger for the nodes that stay.
        self.node.gateway.release_budget().await;
        if let Some(membership) = self.membership.take() {
            membership.leave().await;
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(api) = self.api.take() {
            api.abort();
        }
        if let Some(membership) = &self.membership {
            membership.cancel();
        }
        // `worker` and `background` abort their tasks as their `JoinSet`s drop.
    }
}
