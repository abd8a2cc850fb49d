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
        let per_report = self.limits.max_cost_per_report_micros;
        if cost_micros > per_report {
            return Ok(Err(format!(
                "reported cost of {cost_micros} micro-dollars exceeds the limit of \
                 {per_report} per report (job limit max_cost_per_report_micros); not recorded"
            )));
        }
        let per_job = self.limits.max_reported_cost_micros;
        let Some(total) = self
            .reported_cost_micros
            .checked_add(cost_micros)
            .filter(|total| *total <= per_job)
        else {
            return Ok(Err(format!(
                "reported cost of {cost_micros} micro-dollars would take this attempt past \
                 its limit of {per_job} (job limit max_reported_cost_micros; {} reported so \
                 far); not recorded",
                self.reported_cost_micros
            )));
        };
        let span = tracing::info_span!(
            "usage",
            otel.name = "usage.report_cost",
            sluice.cost_micros = cost_micros,
            sluice.outcome = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(
            self.services
                .usage
                .report_cost(&self.ctx, &description, cost_micros),
            span.clone(),
        )
        .await;
        span.record(
            "sluice.outcome",
            if result.is_ok() { "ok" } else { "error" },
        );
        if result.is_ok() {
            self.reported_cost_micros = total;
        }
        Ok(result)
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

    #[tokio::test]
    async fn costs_over_the_caps_are_refused_as_values() {
        let mut h = testing::state_with(crate::limits::JobLimits {
            max_cost_per_report_micros: 1_000,
            max_reported_cost_micros: 2_500,
            ..Default::default()
        });
        let huge = h.report_cost("x".into(), u64::MAX).await.unwrap();
        assert!(
            huge.as_ref()
                .is_err_and(|m| m.contains("max_cost_per_report_micros")),
            "{huge:?}"
        );
        h.report_cost("a".into(), 1_000).await.unwrap().unwrap();
        h.report_cost("b".into(), 1_000).await.unwrap().unwrap();
        let over = h.report_cost("c".into(), 1_000).await.unwrap();
        assert!(
            over.as_ref()
                .is_err_and(|m| m.contains("max_reported_cost_micros")),
            "{over:?}"
        );
        h.report_cost("d".into(), 500).await.unwrap().unwrap();
        assert_eq!(h.job_spend().await.unwrap().cost_micros, 2_500);
    }
}
