//! A call's budget reservation, held by a guard that settles it even when the call's future is
//! dropped mid-way (job timeout, cancel): what was streamed, or the reservation if a request
//! was out, never 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sluice_types::model::Usage;
use sluice_types::{CallContext, Micros, ModelOutcome};

use super::call::CallKind;
use super::record::CallRecord;
use super::{Gateway, Inner, ModelEntry};
use crate::budget::Hold;
use crate::tokens;

/// A call whose future was dropped before it finished (its job timed out or was cancelled)
/// after a request went out: what it was charged, for the host's usage records.
#[derive(Debug, Clone)]
pub struct AbandonedCall {
    /// The job that made the call.
    pub ctx: CallContext,
    /// The call: `outcome` is `abandoned`, `cost_micros` what was charged to its budgets (what
    /// was streamed, or the reservation), `usage` the tokens streamed (output) and the prompt's
    /// bound (input) as far as known.
    pub record: CallRecord,
}

/// Receives [`AbandonedCall`]s, from a drop guard: must not block.
pub type AbandonedSink = Arc<dyn Fn(AbandonedCall) + Send + Sync>;

/// A budget reservation that settles itself when the call's future is dropped before
/// [`HoldGuard::settle`] (the job timed out or was cancelled mid-call): a call cut off
/// mid-stream is charged what was streamed, a call cut off while its request was out is charged
/// the reservation, never 0. Only a call that never sent a request settles at 0. The charge also
/// goes to the gateway's [`AbandonedSink`], so the host can write its usage row.
pub(super) struct HoldGuard {
    inner: Arc<Inner>,
    /// Set once the reservation succeeded: from then on a drop settles.
    armed: bool,
    hold: Option<Hold>,
    /// The caller's context and the call's record so far, for the abandoned-call report.
    ctx: CallContext,
    operation: &'static str,
    requested_model: String,
    /// The worst case reserved.
    reserved: Micros,
    /// The prompt's upper bound, tokens.
    input_tokens: u64,
    /// The prompt's upper bound at the chain's dearest input price.
    input_cost: Micros,
    /// The chain's dearest output price per million tokens.
    output_price: Micros,
    /// The output cap of the call (largest over the chain).
    max_out: u64,
    /// Whether deltas are streamed to the caller.
    streaming: bool,
    /// Set while an attempt's request is out, and after one that may have been billed.
    pub(super) sent: AtomicBool,
    /// Bytes of text streamed to the caller so far (over all attempts).
    pub(super) streamed_bytes: AtomicU64,
}

impl HoldGuard {
    /// What the text streamed so far may have cost: the prompt's bound plus a token per
    /// streamed byte (at most `max_out`), at most the reservation; 0 when nothing streamed.
    pub(super) fn streamed_cost(&self) -> Micros {
        let bytes = self.streamed_bytes.load(Ordering::Relaxed);
        if bytes == 0 {
            return Micros::ZERO;
        }
        let out = Micros::per_mtok(bytes.min(self.max_out), self.output_price);
        (self.input_cost + out).min(self.reserved)
    }

    /// The charge of a call abandoned before it settled.
    fn abandoned_cost(&self) -> Micros {
        if !self.sent.load(Ordering::Relaxed) {
            Micros::ZERO
        } else if self.streaming {
            self.streamed_cost().max(self.input_cost.min(self.reserved))
        } else {
            self.reserved
        }
    }

    /// Hold `hold` (if any budget applies) until settled or dropped.
    pub(super) fn arm(&mut self, hold: Option<Hold>) {
        self.hold = hold;
        self.armed = true;
    }

    /// Settle at `actual` (at most the reservation: the budget layer cuts anything above).
    pub(super) async fn settle(mut self, actual: Micros) {
        self.armed = false;
        if let Some(h) = self.hold.take() {
            self.inner.budgets.settle(h, actual).await;
        }
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        if !self.armed || !self.sent.load(Ordering::Relaxed) {
            // Never armed (refused, or settled), or no request went out: nothing to charge;
            // a hold still held is released at 0.
            if let Some(hold) = self.hold.take() {
                spawn_settle(self.inner.clone(), hold, Micros::ZERO);
            }
            return;
        }
        let cost = self.abandoned_cost();
        metrics::counter!("sluice_model_calls_abandoned_total").increment(1);
        tracing::info!(
            job = %self.ctx.job.id,
            cost_micros = cost.get(),
            reserved_micros = self.reserved.get(),
            "a model call was dropped before it finished; charging what it may have cost"
        );
        if let Some(hold) = self.hold.take() {
            spawn_settle(self.inner.clone(), hold, cost);
        }
        let sink = self
            .inner
            .abandoned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sink) = sink {
            let streamed = self.streamed_bytes.load(Ordering::Relaxed);
            let record = CallRecord {
                usage: Usage {
                    input_tokens: tokens::clamp_u32(self.input_tokens),
                    output_tokens: tokens::clamp_u32(streamed.min(self.max_out)),
                    cached_input_tokens: 0,
                },
                cost_micros: cost.get(),
                reserved_micros: self.reserved.get(),
                outcome: ModelOutcome::Abandoned,
                ..CallRecord::new(self.operation, &self.requested_model)
            };
            sink(AbandonedCall {
                ctx: self.ctx.clone(),
                record,
            });
        }
    }
}

/// Settle `hold` at `cost` from a task: a drop guard cannot await.
fn spawn_settle(inner: Arc<Inner>, hold: Hold, cost: Micros) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move { inner.budgets.settle(hold, cost).await });
        }
        Err(_) => tracing::error!(
            "no runtime to settle a dropped call's reservation; it expires with its hold"
        ),
    }
}

impl Gateway {
    /// The worst case of `call` over `chain` (the dearest model, with `input` prompt tokens and
    /// each model's output cap), and a guard for its reservation (not yet holding one).
    pub(super) fn reserve_guard<K: CallKind>(
        &self,
        ctx: &CallContext,
        call: &K,
        chain: &[String],
        input: u64,
    ) -> (Micros, HoldGuard) {
        let inner = &*self.inner;
        let models = || chain.iter().map(|id| &inner.models[id]);
        let max_out = |m: &ModelEntry| u64::from(call.max_out(inner, m));
        let worst = models()
            .map(|m| m.price.worst_case(input, max_out(m)))
            .max()
            .unwrap_or(Micros::ZERO);
        let input_price = models()
            .map(|m| m.price.input.max(m.price.cached_input))
            .max()
            .unwrap_or(Micros::ZERO);
        let guard = HoldGuard {
            inner: self.inner.clone(),
            armed: false,
            hold: None,
            ctx: ctx.clone(),
            operation: K::OPERATION,
            requested_model: call.requested_model().to_string(),
            reserved: worst,
            input_tokens: input,
            input_cost: Micros::per_mtok(input, input_price),
            output_price: models()
                .map(|m| m.price.output)
                .max()
                .unwrap_or(Micros::ZERO),
            max_out: models().map(max_out).max().unwrap_or(0),
            streaming: call.on_delta().is_some(),
            sent: AtomicBool::new(false),
            streamed_bytes: AtomicU64::new(0),
        };
        (worst, guard)
    }
}
