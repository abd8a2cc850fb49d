//! A running Sluice node: the store, the engine, the gateway and the backends that connect
//! them, shared by the worker and the HTTP API.

mod backlog;
pub mod budgets;
pub mod cluster;
mod events;
mod ledger;
mod models;
mod plugins;
mod run;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_engine::Engine;
use sluice_gateway::Gateway;
use sluice_store::{JobStore, StoreConfig};
use sluice_types::HostServices;

pub use backlog::WriteBacklog;
pub use budgets::AlertRouter;
pub use events::{EventHub, LiveEvent};
pub use ledger::{StoreLedger, StoreSlices};
pub use models::GatewayModels;
pub use plugins::{PluginCache, PluginLoadError};
pub use run::{Roles, RunningNode, StartError};
use sluice_gateway::budget::lease::LeasedLedger;
pub use usage::SpendTracker;

use crate::config::Config;

/// Everything a node runs on. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    /// The configuration it started with.
    pub config: Arc<Config>,
    /// The durable store.
    pub store: Arc<dyn JobStore>,
    /// The wasm engine.
    pub engine: Engine,
    /// Compiled plugins by digest, loaded from the store on demand.
    pub plugins: PluginCache,
    /// The model gateway.
    pub gateway: Gateway,
    /// Job events: persisted, and broadcast to live subscribers.
    pub events: EventHub,
    /// Spend of the jobs running here.
    pub spend: SpendTracker,
    /// The backends the engine's host imports call.
    pub services: HostServices,
    /// Routes budget alerts to the log and to webhooks.
    pub alerts: Arc<AlertRouter>,
    /// Job events and usage rows waiting in memory for the store.
    pub backlog: WriteBacklog,
}

impl Node {
    /// Open the store (applying migrations), build the engine and gateway, and wire them.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let url = config.database.effective_url();
        if url.starts_with("sqlite:") {
            std::fs::create_dir_all(&config.database.data_dir).with_context(|| {
                format!(
                    "creating data directory {}",
                    config.database.data_dir.display()
                )
            })?;
        }
        let store_config = StoreConfig {
            max_input_bytes: config.server.max_input_bytes,
            default_max_attempts: config.worker.default_max_attempts,
            default_timeout_ms: config.engine.default_timeout_secs * 1000,
            max_connections: config.database.max_connections,
            max_waiting_jobs_per_tenant: Some(config.server.limits.max_waiting_jobs_per_tenant)
                .filter(|n| *n > 0),
            max_state_bytes_per_tenant: Some(config.server.limits.max_state_bytes_per_tenant)
                .filter(|n| *n > 0),
            ..StoreConfig::default()
        };
        let store = sluice_store::open(&url, store_config)
            .await
            .with_context(|| format!("opening the store at {}", crate::config::redact_url(&url)))?;

        let engine_config = config
            .engine
            .to_engine_config(Some(&config.database.data_dir));
        let engine = tokio::task::spawn_blocking(move || Engine::new(engine_config))
            .await?
            .context("starting the wasm engine")?;

        // Budgets are kept in the store so every node enforces the same ones; a hold left by a
        // node that died mid-call expires once no call of that node could still be running.
        let hold_ttl = Duration::from_secs(config.engine.default_timeout_secs.max(600) + 60);
        let alerts = AlertRouter::spawn(store.clone());
        let lease = config.gateway.budget_lease;
        let ledger: Arc<dyn sluice_gateway::budget::Ledger> = if lease.enabled {
            Arc::new(LeasedLedger::new(
                StoreSlices::new(store.clone()),
                lease.lease_config(),
            ))
        } else {
            Arc::new(StoreLedger::new(store.clone(), hold_ttl))
        };
        let gateway = Gateway::builder(config.gateway.clone().or_simulated())
            .ledger(ledger)
            .alert_sink(alerts.clone())
            .build()
            .await
            .context("starting the model gateway")?;
        let node = Node::assemble_with(config, store, engine, gateway, alerts);
        budgets::refresh(&node)
            .await
            .context("loading the tenants' budgets")?;
        Ok(node)
    }

    /// Wire already-built parts together (tests build their own). Budget alerts go to the
    /// log only unless the gateway was built with [`Node::alerts`] as its sink.
    pub fn assemble(
        config: Config,
        store: Arc<dyn JobStore>,
        engine: Engine,
        gateway: Gateway,
    ) -> Node {
        let alerts = AlertRouter::spawn(store.clone());
        Node::assemble_with(config, store, engine, gateway, alerts)
    }

    fn assemble_with(
        config: Config,
        store: Arc<dyn JobStore>,
        engine: Engine,
        gateway: Gateway,
        alerts: Arc<AlertRouter>,
    ) -> Node {
        let backlog = WriteBacklog::default();
        let events = EventHub::with_backlog(store.clone(), backlog.clone());
        let spend = SpendTracker::default();
        let models = GatewayModels::new(
            gateway.clone(),
            store.clone(),
            events.clone(),
            spend.clone(),
            backlog.clone(),
        );
        let services = HostServices {
            models: Arc::new(models),
            state: as_state(store.clone()),
            effects: as_effects(store.clone()),
            usage: Arc::new(usage::NodeUsage::new(gateway.clone(), spend.clone())),
            events: Arc::new(events.clone()),
        };
        Node {
            config: Arc::new(config),
            plugins: PluginCache::new(engine.clone(), store.clone()),
            store,
            engine,
            gateway,
            events,
            spend,
            services,
            alerts,
            backlog,
        }
    }
}

/// `JobStore` is both a `StateBackend` and an `EffectsBackend`; these adapters hand it out
/// as each (trait upcasting of `Arc<dyn JobStore>`).
fn as_state(store: Arc<dyn JobStore>) -> Arc<dyn sluice_types::StateBackend> {
    store
}

fn as_effects(store: Arc<dyn JobStore>) -> Arc<dyn sluice_types::EffectsBackend> {
    store
}
