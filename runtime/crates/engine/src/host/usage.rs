//! `sluice:plugin/usage`: the job's spend, extra costs and remaining budget.

use super::HostState;
use crate::bindings::usage as w;

impl w::Host for HostState {
    async fn report_cost(
        &mut self,
        description: String,
        cost_micros: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        self.check_cancelled()?;
        Ok(self
            .services
            .usage
            .report_cost(&self.ctx, &description, cost_micros)
            .await)
    }

    async fn job_spend(&mut self) -> wasmtime::Result<w::Spend> {
        let s = self.services.usage.job_spend(&self.ctx).await;
        Ok(w::Spend {
            cost_micros: s.cost_micros,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            calls: s.calls,
        })
    }

    async fn budget_remaining(&mut self) -> wasmtime::Result<Option<u64>> {
        Ok(self.services.usage.budget_remaining(&self.ctx).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing;
    use w::Host;

    #[tokio::test]
    async fn reported_cost_shows_in_spend() {
        let mut h = testing::state();
        h.report_cost("search api".into(), 1_500)
            .await
            .unwrap()
            .unwrap();
        let s = h.job_spend().await.unwrap();
        assert_eq!(s.cost_micros, 1_500);
    }
}
