//! Spend of running jobs, and the `usage` host import on top of the gateway's budgets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use sluice_gateway::Gateway;
use sluice_types::backend::Spend;
use sluice_types::model::Usage;
use sluice_types::{CallContext, UsageBackend};
use uuid::Uuid;

/// What each job running on this node has spent, for `usage.job-spend`. Entries are
/// dropped when the job's attempt ends.
///
/// Amounts a guest or a provider controls are added with saturating arithmetic
/// ([`sluice_types::Micros`]), and the lock is held only around that: nothing under it can
/// panic, and a poisoned lock (which would need a panic elsewhere) is recovered, not spread to
/// every later job.
#[derive(Clone, Default)]
pub struct SpendTracker {
    map: Arc<Mutex<HashMap<Uuid, Spend>>>,
}

impl SpendTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Spend>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a call.
    pub fn add(&self, job: Uuid, usage: Usage, cost_micros: u64) {
        self.lock()
            .entry(job)
            .or_default()
            .add_call(usage, cost_micros);
    }

    /// Add an extra cost.
    pub fn add_cost(&self, job: Uuid, cost_micros: u64) {
        self.lock().entry(job).or_default().add_cost(cost_micros);
    }

    /// A job's spend so far.
    pub fn get(&self, job: Uuid) -> Spend {
        self.lock().get(&job).copied().unwrap_or_default()
    }

    /// Forget a job (its attempt ended); returns what it spent.
    pub fn take(&self, job: Uuid) -> Spend {
        self.lock().remove(&job).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two `report_cost(u64::MAX)` used to overflow the tracker: a panic in debug builds while
    /// holding its mutex, poisoning it for every later job.
    #[test]
    fn huge_costs_saturate_and_the_tracker_keeps_working() {
        let spend = SpendTracker::default();
        let job = Uuid::new_v4();
        spend.add_cost(job, u64::MAX);
        spend.add_cost(job, u64::MAX);
        let huge = Usage {
            input_tokens: u32::MAX,
            output_tokens: u32::MAX,
            cached_input_tokens: 0,
        };
        spend.add(job, huge, u64::MAX);
        let s = spend.get(job);
        assert_eq!(s.cost_micros, u64::MAX);
        assert_eq!(s.input_tokens, u64::from(u32::MAX));
        assert_eq!(s.calls, 1);
        // Another job is unaffected, and the lock is not poisoned.
        let other = Uuid::new_v4();
        spend.add_cost(other, 5);
        assert_eq!(spend.take(other).cost_micros, 5);
        assert_eq!(spend.take(job).cost_micros, u64::MAX);
    }
}
