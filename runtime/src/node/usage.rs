//! Spend of running jobs, and the `usage` host import on top of the gateway's budgets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_gateway::Gateway;
use sluice_types::backend::Spend;
use sluice_types::model::Usage;
use sluice_types::{CallContext, UsageBackend};
use uuid::Uuid;

/// What each job running on this node has spent, for `usage.job-spend`. Entries are
/// dropped when the job's attempt ends.
#[derive(Clone, Default)]
pub struct SpendTracker {
    map: Arc<Mutex<HashMap<Uuid, Spend>>>,
}

impl SpendTracker {
    /// Add a call.
    pub fn add(&self, job: Uuid, usage: Usage, cost_micros: u64) {
        let mut map = self.map.lock().expect("spend poisoned");
        map.entry(job).or_default().add_call(usage, cost_micros);
    }

    /// Add an extra cost.
    pub fn add_cost(&self, job: Uuid, cost_micros: u64) {
        self.map
            .lock()
            .expect("spend poisoned")
            .entry(job)
            .or_default()
            .cost_micros += cost_micros;
    }

    /// A job's spend so far.
    pub fn get(&self, job: Uuid) -> Spend {
        self.map
            .lock()
            .expect("spend poisoned")
            .get(&job)
            .copied()
            .unwrap_or_default()
    }

    /// Forget a job (its attempt ended); returns what it spent.
    pub fn take(&self, job: Uuid) -> Spend {
        self.map
            .lock()
            .expect("spend poisoned")
            .remove(&job)
            .unwrap_or_default()
    }
}

/// The `usage` import: spend from the tracker, budgets from the gateway.
pub struct NodeUsage {
    gateway: Gateway,
    spend: SpendTracker,
}

impl NodeUsage {
    pub(crate) fn new(gateway: Gateway, spend: SpendTracker) -> Self {
        NodeUsage { gateway, spend }
    }
}

#[async_trait]
impl UsageBackend for NodeUsage {
    async fn report_cost(
        &self,
        ctx: &CallContext,
        description: &str,
        cost_micros: u64,
    ) -> Result<(), String> {
        self.gateway
            .charge_extra(ctx, cost_micros)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(job = %ctx.job.id, description, cost_micros, "extra cost reported");
        self.spend.add_cost(ctx.job.id, cost_micros);
        Ok(())
    }

    async fn job_spend(&self, ctx: &CallContext) -> Spend {
        self.spend.get(ctx.job.id)
    }

    async fn budget_remaining(&self, ctx: &CallContext) -> Option<u64> {
        self.gateway.budget_remaining(ctx).await
    }
}
