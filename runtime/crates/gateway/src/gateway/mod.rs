//! The gateway: alias → chain, cache, budget, rate limits, breaker, retries, failover, cost.
//!
//! - [`builder`]: a [`Gateway`] from its config (clients, simulators, breakers, limiters).
//! - [`call`]: one call's flow, the same for chat and embeddings ([`call::CallKind`]).
//! - [`chain`]: the walk down the alias's models, one attempt's verdict at a time.
//! - [`hold`]: the budget reservation that settles even when a call is dropped mid-way.
//! - [`record`]: what a call leaves for the host's usage rows.
//! - [`telemetry`]: the call's span and metrics.

mod builder;
mod call;
mod chain;
mod hold;
mod record;
mod telemetry;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_types::model::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError};
use sluice_types::{CallContext, Micros, ModelBackend};
use tracing::Instrument;

use crate::breaker::{Breaker, BreakerState};
use crate::budget::Budgets;
use crate::cache::ResponseCache;
use crate::config::{BudgetConfig, ConfigError, RetryConfig};
use crate::limiter::LimiterSet;
use crate::provider::{DeltaFn, Provider};
use crate::tokens::Price;

pub use builder::GatewayBuilder;
pub use hold::{AbandonedCall, AbandonedSink};
pub use record::{AttemptInfo, CallError, CallOutcome, CallRecord, EmbedOutcome};

use call::{ChatCall, EmbedCall, budget_error};
use telemetry::{call_span, finish_metrics, record_span};

/// Tokens added to the prompt estimate for provider-side framing (e.g. the JSON instruction
/// the Anthropic client adds), so the rate-limit reservation errs high.
const ESTIMATE_MARGIN_TOKENS: u32 = 16;

struct ProviderEntry {
    name: String,
    kind: &'static str,
    client: Arc<dyn Provider>,
    breaker: Breaker,
    max_retries: u32,
    timeout: Duration,
    /// Set by a 429's `retry-after`: every call to this provider holds until then.
    hold_until: Mutex<Option<Instant>>,
    /// Moving average of successful attempts' duration, µs: a call does not queue for
    /// rate-limit capacity it could only use after its deadline has left too little time.
    typical_us: AtomicU64,
    /// Its last attempts, for [`Gateway::provider_health`].
    recent: crate::health::RecentAttempts,
}

impl ProviderEntry {
    fn typical(&self) -> Duration {
        Duration::from_micros(self.typical_us.load(Ordering::Relaxed))
    }

    fn observe(&self, d: Duration) {
        let new = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.typical_us.load(Ordering::Relaxed);
        let avg = if old == 0 { new } else { (old * 4 + new) / 5 };
        self.typical_us.store(avg, Ordering::Relaxed);
    }
}

struct ModelEntry {
    id: String,
    provider: String,
    name: String,
    price: Price,
    max_tokens: Option<u32>,
    context_tokens: Option<u32>,
    embedding: bool,
    /// The provider's limiters and the model's own.
    limits: LimiterSet,
    /// The model's own limiters only.
    own_limits: LimiterSet,
}

struct Inner {
    providers: HashMap<String, ProviderEntry>,
    models: HashMap<String, ModelEntry>,
    aliases: HashMap<String, Vec<String>>,
    chat_cache: Option<ResponseCache<ChatResponse>>,
    /// Whether replies to `temperature > 0` requests are cached too.
    cache_sampled: bool,
    /// Where abandoned calls are reported.
    abandoned: std::sync::RwLock<Option<AbandonedSink>>,
    embed_cache: Option<ResponseCache<EmbedResponse>>,
    budgets: Budgets,
    retry: RetryConfig,
    max_call: Duration,
    default_max_tokens: u32,
    provider_limits: Vec<LimiterSet>,
    /// This node's share of every limit, as `f64` bits.
    limit_share: std::sync::atomic::AtomicU64,
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    sims: builder::Sims,
}

/// The model gateway. Cheap to clone; share one per node.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use sluice_gateway::{Gateway, GatewayConfig};
/// use sluice_types::model::{ChatRequest, Message};
/// # let ctx: sluice_types::CallContext = unimplemented!();
/// let gateway = Gateway::new(GatewayConfig::simulated()).await?;
/// let out = gateway.chat(&ctx, ChatRequest::new("fast", vec![Message::user("Hi")]), None).await?;
/// println!("{} ({} µ$)", out.response.content, out.record.cost_micros);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Gateway {
    /// The simulators this gateway started for its `simulated` providers, by provider name.
    #[cfg(feature = "sim")]
    pub fn simulators(&self) -> impl Iterator<Item = (&str, &crate::sim::SimHandle)> {
        self.inner.sims.iter().map(|(n, h)| (n.as_str(), h))
    }

    /// The simulator of simulated provider `name`.
    #[cfg(feature = "sim")]
    pub fn simulator(&self, name: &str) -> Option<&crate::sim::SimHandle> {
        self.inner
            .sims
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h)
    }

    /// Every provider's breaker and its last attempts' error rate and durations, as this
    /// node saw them, sorted by name.
    pub fn provider_health(&self) -> Vec<crate::health::ProviderHealth> {
        let mut out: Vec<_> = self
            .inner
            .providers
            .values()
            .map(|p| {
                crate::health::ProviderHealth::new(&p.name, p.kind, p.breaker.state(), &p.recent)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A provider's circuit-breaker state.
    pub fn breaker_state(&self, provider: &str) -> Option<BreakerState> {
        self.inner
            .providers
            .get(provider)
            .map(|p| p.breaker.state())
    }

    /// Scale every rate limit to this node's share of it (e.g. `1 / live nodes`), so several
    /// nodes sharing one provider account stay under its limits together.
    pub fn set_limit_share(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(0.001, 1.0)
        } else {
            1.0
        };
        for l in &self.inner.provider_limits {
            l.set_share(share);
        }
        for m in self.inner.models.values() {
            m.own_limits.set_share(share);
        }
        self.inner
            .limit_share
            .store(share.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// This node's share of every rate limit (1.0 alone; `1 / n` with n live nodes).
    pub fn limit_share(&self) -> f64 {
        f64::from_bits(
            self.inner
                .limit_share
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Replace the budget rules: the node's configured ones plus every tenant's. Each rule is
    /// checked first; on an error nothing changes.
    pub fn set_budgets(&self, rules: &[BudgetConfig]) -> Result<(), ConfigError> {
        for (index, b) in rules.iter().enumerate() {
            b.validate()
                .map_err(|message| ConfigError::Budget { index, message })?;
        }
        self.inner.budgets.set_rules(rules);
        Ok(())
    }

    /// The least room left in any budget that applies to `ctx`'s job (`None`: no budget).
    pub async fn budget_remaining(&self, ctx: &CallContext) -> Option<u64> {
        self.inner.budgets.remaining(ctx).await
    }

    /// Give back budget this node leased and has not spent (call on shutdown, after the last
    /// model call).
    pub async fn release_budget(&self) {
        self.inner.budgets.release().await;
    }

    /// Report calls dropped before they finished (job timeout, cancel) to `sink`, with what
    /// they were charged; replaces any earlier sink.
    pub fn set_abandoned_sink(&self, sink: AbandonedSink) {
        *self
            .inner
            .abandoned
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// Charge a cost the gateway did not see against the job's budgets.
    pub async fn charge_extra(
        &self,
        ctx: &CallContext,
        cost_micros: u64,
    ) -> Result<(), ModelError> {
        self.inner
            .budgets
            .charge(ctx, Micros::new(cost_micros))
            .await
            .map_err(budget_error)
    }

    /// The model ids an alias or model id resolves to, in fallback order.
    pub fn resolve(&self, model: &str) -> Result<Vec<String>, ModelError> {
        if let Some(chain) = self.inner.aliases.get(model) {
            return Ok(chain.clone());
        }
        if self.inner.models.contains_key(model) {
            return Ok(vec![model.to_string()]);
        }
        let mut known: Vec<&str> = self.inner.aliases.keys().map(String::as_str).collect();
        known.sort_unstable();
        Err(ModelError::invalid(format!(
            "unknown model or alias {model:?} (aliases: {}; or a configured `provider/model`)",
            known.join(", ")
        )))
    }

    /// One chat call: cache, budget, limits, retries and failover. Streamed text goes to
    /// `on_delta` (when given, the streaming wire format is used); the caller gets the
    /// complete response either way.
    pub async fn chat(
        &self,
        ctx: &CallContext,
        request: ChatRequest,
        on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<CallOutcome, CallError> {
        let span = call_span("chat", ctx, &request.model, request.max_tokens);
        let (response, record) = self
            .call(ctx, ChatCall { request, on_delta })
            .instrument(span)
            .await?;
        Ok(CallOutcome { response, record })
    }

    /// A call the host answered from the job's journal ([`CallRecord::replayed`]): its
    /// model-call span, shaped like a provider call's with `sluice.source = "journal"` and
    /// `sluice.journal_replay = true`, and its metrics (`sluice_model_calls_total` with
    /// `source="journal"`), labelled with the configured model of the provider that first
    /// answered it.
    pub fn observe_replay(
        &self,
        ctx: &CallContext,
        record: &CallRecord,
        max_tokens: Option<u32>,
        finish: Option<&str>,
    ) {
        let op = if record.operation == "embeddings" {
            "embeddings"
        } else {
            "chat"
        };
        let span = call_span(op, ctx, &record.requested_model, max_tokens);
        let mut labelled = record.clone();
        if labelled.model.is_none()
            && let (Ok(chain), Some(p)) = (self.resolve(&record.requested_model), &record.provider)
        {
            labelled.model = chain.into_iter().find(|id| {
                id.split_once('/')
                    .is_some_and(|(provider, _)| provider == p)
            });
        }
        span.in_scope(|| {
            tracing::debug!("journal.replay");
            record_span(&labelled, finish);
        });
        finish_metrics(&labelled);
    }

    /// One embeddings call: cache, budget, limits, retries and failover.
    pub async fn embed(
        &self,
        ctx: &CallContext,
        request: EmbedRequest,
    ) -> Result<EmbedOutcome, CallError> {
        let span = call_span("embeddings", ctx, &request.model, None);
        let (response, record) = self
            .call(ctx, EmbedCall { request })
            .instrument(span)
            .await?;
        Ok(EmbedOutcome { response, record })
    }
}

/// A duration in whole milliseconds, saturating: records and spans count in `u32` ms.
fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The gateway as the engine's model backend, without journal replay, usage records or delta
/// events: the host wraps [`Gateway::chat`] to add those. Useful for tests and embedding.
#[async_trait]
impl ModelBackend for Gateway {
    async fn chat(
        &self,
        ctx: &CallContext,
        _seq: u32,
        request: ChatRequest,
    ) -> Result<ChatResponse, ModelError> {
        Gateway::chat(self, ctx, request, None)
            .await
            .map(|o| o.response)
            .map_err(Into::into)
    }

    async fn embed(
        &self,
        ctx: &CallContext,
        _seq: u32,
        request: EmbedRequest,
    ) -> Result<EmbedResponse, ModelError> {
        Gateway::embed(self, ctx, request)
            .await
            .map(|o| o.response)
            .map_err(Into::into)
    }
}
