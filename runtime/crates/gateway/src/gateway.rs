//! The gateway: alias → chain, cache, budget, rate limits, breaker, retries, failover, cost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sluice_types::model::{
    ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError, ResponseSource, Usage,
};
use sluice_types::{CallContext, Micros, ModelBackend, ModelOutcome};
use tracing::Instrument;
use tracing::field::Empty;

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::budget::{AlertSink, Budgets, Hold, Ledger, LedgerError, LogAlertSink, MemoryLedger};
use crate::cache::ResponseCache;
use crate::config::{BudgetConfig, ConfigError, GatewayConfig, ProviderKind, RetryConfig, Wire};
use crate::limiter::LimiterSet;
use crate::outcome::AttemptOutcome;
use crate::provider::{
    AnthropicProvider, DeltaFn, FailureKind, OpenAiProvider, Provider, ProviderChatReply,
    ProviderChatRequest, ProviderEmbedReply, ProviderError,
};
use crate::sim::{self, SimHandle};
use crate::tokens::{self, Price};

/// Tokens added to the prompt estimate for provider-side framing (e.g. the JSON instruction
/// the Anthropic client adds), so the rate-limit reservation errs high.
const ESTIMATE_MARGIN_TOKENS: u32 = 16;

/// The response-cache key of a request: the tenant and the request's fingerprint, so tenants
/// never share entries. The fingerprint is 64 hex digits, so the pair is unambiguous.
fn cache_key(ctx: &CallContext, fingerprint: &str) -> String {
    format!("{fingerprint}:{}", ctx.job.tenant)
}

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
struct HoldGuard {
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
    sent: AtomicBool,
    /// Bytes of text streamed to the caller so far (over all attempts).
    streamed_bytes: AtomicU64,
}

impl HoldGuard {
    /// What the text streamed so far may have cost: the prompt's bound plus a token per
    /// streamed byte (at most `max_out`), at most the reservation; 0 when nothing streamed.
    fn streamed_cost(&self) -> Micros {
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
    fn arm(&mut self, hold: Option<Hold>) {
        self.hold = hold;
        self.armed = true;
    }

    /// Settle at `actual` (at most the reservation: the budget layer cuts anything above).
    async fn settle(mut self, actual: Micros) {
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

/// One attempt (or skipped chain position) of a call, for usage records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptInfo {
    /// Provider name.
    pub provider: String,
    /// Model id, `provider/model`.
    pub model: String,
    /// `ok`, a failure kind (`server_error`, `rate_limited`, …), or why the position was
    /// skipped: `circuit_open`, `throttled` (no rate-limit capacity before the deadline),
    /// `context_exceeded`.
    pub outcome: AttemptOutcome,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
    /// Time in the provider call, ms.
    pub latency_ms: u32,
    /// Time waiting for rate-limit capacity before it, ms.
    pub rate_limit_wait_ms: u32,
}

/// What a usage record needs about one call, success or failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// `chat` or `embeddings`.
    pub operation: String,
    /// The model or alias the caller asked for.
    pub requested_model: String,
    /// Provider that answered (or was tried last).
    pub provider: Option<String>,
    /// Model id that answered (or was tried last), `provider/model`.
    pub model: Option<String>,
    /// The model name the provider reported.
    pub response_model: Option<String>,
    /// Tokens (`input_tokens` includes cached ones). On a cache hit: the original call's.
    pub usage: Usage,
    /// Cost charged, micro-dollars: the reported usage at the model's prices, at most
    /// `reserved_micros` (a provider reporting more than the worst case is charged the
    /// reservation; `usage` keeps what it reported). 0 for cache hits and for failures that
    /// streamed nothing; a failure after streamed text is charged the prompt's bound plus a
    /// token per streamed byte.
    pub cost_micros: u64,
    /// Worst-case cost reserved against budgets before the call: the prompt's upper bound (a
    /// token per UTF-8 byte plus framing, see [`crate::tokens`]) and the output cap, at the
    /// chain's dearest model.
    pub reserved_micros: u64,
    /// Wall time of the whole call, ms.
    pub latency_ms: u32,
    /// Time to the first streamed token from the call's start, when streaming.
    pub ttft_ms: Option<u32>,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptInfo>,
    /// Extra attempts on the same provider.
    pub retries: u32,
    /// Chain positions moved past the first.
    pub fallbacks: u32,
    /// Total time waiting for rate-limit capacity or a provider's `retry-after`, ms.
    pub rate_limit_wait_ms: u64,
    /// Provider or cache.
    pub source: ResponseSource,
    /// `ok` or the [`ModelError::kind`].
    pub outcome: ModelOutcome,
}

impl CallRecord {
    /// The record of a call answered from the job's journal on replay (no provider call, no
    /// charge): for the host, which does journal replay in front of the gateway.
    pub fn replayed(request: &ChatRequest, response: &ChatResponse) -> Self {
        Self::journaled(
            "chat",
            &request.model,
            &response.provider,
            &response.model,
            response.usage,
        )
    }

    /// The record of an embedding served from the job's journal: no provider call, no cost.
    pub fn replayed_embed(request: &EmbedRequest, response: &EmbedResponse) -> Self {
        Self::journaled(
            "embeddings",
            &request.model,
            &response.provider,
            &response.model,
            response.usage,
        )
    }

    fn journaled(
        operation: &str,
        requested_model: &str,
        provider: &str,
        model: &str,
        usage: Usage,
    ) -> Self {
        CallRecord {
            provider: Some(provider.to_string()),
            response_model: Some(model.to_string()),
            usage,
            source: ResponseSource::Journal,
            ..CallRecord::new(operation, requested_model)
        }
    }

    fn new(operation: &str, requested_model: &str) -> Self {
        CallRecord {
            operation: operation.into(),
            requested_model: requested_model.into(),
            provider: None,
            model: None,
            response_model: None,
            usage: Usage::default(),
            cost_micros: 0,
            reserved_micros: 0,
            latency_ms: 0,
            ttft_ms: None,
            attempts: Vec::new(),
            retries: 0,
            fallbacks: 0,
            rate_limit_wait_ms: 0,
            source: ResponseSource::Provider,
            outcome: ModelOutcome::Ok,
        }
    }
}

/// A successful chat call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallOutcome {
    /// What the handler gets.
    pub response: ChatResponse,
    /// What the usage record needs.
    pub record: CallRecord,
}

/// A successful embeddings call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedOutcome {
    /// What the handler gets.
    pub response: EmbedResponse,
    /// What the usage record needs.
    pub record: CallRecord,
}

/// A failed call: the handler's error plus what the usage record needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct CallError {
    /// What the handler gets.
    pub error: ModelError,
    /// What the usage record needs (boxed: errors stay small).
    pub record: Box<CallRecord>,
}

impl From<CallError> for ModelError {
    fn from(e: CallError) -> ModelError {
        e.error
    }
}

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
    sims: Vec<(String, SimHandle)>,
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

/// Builds a [`Gateway`] with a ledger, an alert sink or hand-made providers.
pub struct GatewayBuilder {
    cfg: GatewayConfig,
    ledger: Option<Arc<dyn Ledger>>,
    sink: Option<Arc<dyn AlertSink>>,
    clients: HashMap<String, Arc<dyn Provider>>,
}

impl GatewayBuilder {
    /// Keep budget accounting in `ledger` (default: in memory).
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Send budget alerts to `sink` (default: the log).
    pub fn alert_sink(mut self, sink: Arc<dyn AlertSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Use `client` for provider `name` instead of building one from its config.
    pub fn provider_client(mut self, name: impl Into<String>, client: Arc<dyn Provider>) -> Self {
        self.clients.insert(name.into(), client);
        self
    }

    /// Validate the config, start simulated providers, build clients and limiters.
    pub async fn build(mut self) -> Result<Gateway, ConfigError> {
        let cfg = self.cfg.or_simulated();
        cfg.validate()?;
        let mut sims = Vec::new();
        let mut providers = HashMap::new();
        let mut provider_limits = HashMap::new();
        for (name, p) in &cfg.providers {
            let perr = |message: String| ConfigError::Provider {
                provider: name.clone(),
                message,
            };
            let client: Arc<dyn Provider> = match self.clients.remove(name) {
                Some(c) => c,
                None => match p.kind {
                    ProviderKind::OpenAi => Arc::new(OpenAiProvider::new(p).map_err(perr)?),
                    ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(p).map_err(perr)?),
                    ProviderKind::Simulated => {
                        let s = p.simulator.clone().unwrap_or_default();
                        let handle =
                            sim::start(s.config)
                                .await
                                .map_err(|e| ConfigError::Simulator {
                                    provider: name.clone(),
                                    message: e.to_string(),
                                })?;
                        let mut pc = p.clone();
                        pc.base_url = Some(handle.base_url());
                        let client: Arc<dyn Provider> = match s.wire {
                            Wire::OpenAi => Arc::new(OpenAiProvider::new(&pc).map_err(perr)?),
                            Wire::Anthropic => Arc::new(AnthropicProvider::new(&pc).map_err(perr)?),
                        };
                        sims.push((name.clone(), handle));
                        client
                    }
                },
            };
            let mut limits = LimiterSet::default();
            limits.add(p.rpm, p.tpm, p.burst_secs);
            provider_limits.insert(name.clone(), (limits, p.burst_secs));
            providers.insert(
                name.clone(),
                ProviderEntry {
                    name: name.clone(),
                    kind: p.kind.as_str(),
                    client,
                    breaker: Breaker::new(p.breaker.clone()),
                    max_retries: p.max_retries,
                    timeout: Duration::from_millis(p.timeout_ms),
                    hold_until: Mutex::new(None),
                    typical_us: AtomicU64::new(0),
                    recent: Default::default(),
                },
            );
            metrics::gauge!("sluice_breaker_state", "provider" => name.clone()).set(0.0);
        }
        let mut models = HashMap::new();
        for (id, m) in &cfg.models {
            let (provider, rest) = id.split_once('/').unwrap_or((id.as_str(), ""));
            let (plimits, burst) = &provider_limits[provider];
            let mut own_limits = LimiterSet::default();
            own_limits.add(m.rpm, m.tpm, *burst);
            let mut limits = plimits.clone();
            limits.extend(&own_limits);
            models.insert(
                id.clone(),
                ModelEntry {
                    id: id.clone(),
                    provider: provider.to_string(),
                    name: m.name.clone().unwrap_or_else(|| rest.to_string()),
                    price: Price::of(m),
                    max_tokens: m.max_tokens,
                    context_tokens: m.context_tokens,
                    embedding: m.embedding,
                    limits,
                    own_limits,
                },
            );
        }
        let ttl = Duration::from_secs(cfg.cache.ttl_secs);
        let (chat_cache, embed_cache) = if cfg.cache.enabled {
            (
                Some(ResponseCache::new(ttl, cfg.cache.max_entries)),
                Some(ResponseCache::new(ttl, cfg.cache.max_entries)),
            )
        } else {
            (None, None)
        };
        let ledger = self.ledger.unwrap_or_else(|| Arc::new(MemoryLedger::new()));
        let sink = self.sink.unwrap_or_else(|| Arc::new(LogAlertSink));
        Ok(Gateway {
            inner: Arc::new(Inner {
                providers,
                models,
                aliases: cfg.aliases.clone().into_iter().collect(),
                chat_cache,
                cache_sampled: cfg.cache.sampled,
                abandoned: std::sync::RwLock::new(None),
                embed_cache,
                budgets: Budgets::new(&cfg.budgets, ledger, sink),
                retry: cfg.retry.clone(),
                max_call: Duration::from_millis(cfg.max_call_ms),
                default_max_tokens: cfg.default_max_tokens,
                provider_limits: provider_limits.into_values().map(|(l, _)| l).collect(),
                limit_share: std::sync::atomic::AtomicU64::new(1.0f64.to_bits()),
                sims,
            }),
        })
    }
}

enum Op<'a> {
    Chat {
        req: &'a ChatRequest,
        on_delta: Option<&'a DeltaFn<'a>>,
    },
    Embed {
        inputs: &'a [String],
    },
}

enum Reply {
    Chat(ProviderChatReply),
    Embed(ProviderEmbedReply),
}

impl Reply {
    fn usage(&self) -> Usage {
        match self {
            Reply::Chat(r) => r.usage,
            Reply::Embed(r) => r.usage,
        }
    }
}

struct Answer<'g> {
    reply: Reply,
    model: &'g ModelEntry,
    attempt_started: Instant,
}

impl Gateway {
    /// A gateway from config, with the in-memory ledger and log alerts.
    pub async fn new(cfg: GatewayConfig) -> Result<Gateway, ConfigError> {
        Gateway::builder(cfg).build().await
    }

    /// A builder, to plug in a ledger, an alert sink or provider clients.
    pub fn builder(cfg: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            cfg,
            ledger: None,
            sink: None,
            clients: HashMap::new(),
        }
    }

    /// The simulators this gateway started for its `simulated` providers, by provider name.
    pub fn simulators(&self) -> impl Iterator<Item = (&str, &SimHandle)> {
        self.inner.sims.iter().map(|(n, h)| (n.as_str(), h))
    }

    /// The simulator of simulated provider `name`.
    pub fn simulator(&self, name: &str) -> Option<&SimHandle> {
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
        self.chat_inner(ctx, request, on_delta)
            .instrument(span)
            .await
    }

    async fn chat_inner(
        &self,
        ctx: &CallContext,
        request: ChatRequest,
        on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<CallOutcome, CallError> {
        let started = Instant::now();
        let inner = &*self.inner;
        let mut record = CallRecord::new("chat", &request.model);
        let fail = |mut record: CallRecord, error: ModelError| {
            record.outcome = error.outcome();
            record.latency_ms = ms(started.elapsed());
            finish_metrics(&record);
            record_span(&record, None);
            Err(CallError {
                error,
                record: Box::new(record),
            })
        };

        let chain = match self.resolve(&request.model) {
            Ok(c) => c,
            Err(e) => return fail(record, e),
        };
        if chain.iter().any(|id| inner.models[id].embedding) {
            return fail(
                record,
                ModelError::invalid(format!(
                    "{:?} is an embeddings model; use embed",
                    request.model
                )),
            );
        }
        if request.messages.is_empty() {
            return fail(
                record,
                ModelError::invalid("a chat request needs at least one message"),
            );
        }
        if request.max_tokens == Some(0) {
            return fail(record, ModelError::invalid("max_tokens must be positive"));
        }
        let deadline = match self.deadline(ctx, started) {
            Ok(d) => d,
            Err(e) => return fail(record, e),
        };

        // Sampled replies vary by design: not served from (nor put in) the cache unless
        // configured. `None` asked for no temperature and is cached.
        let sampled = request.temperature.is_some_and(|t| t > 0.0 || t.is_nan());
        let cacheable = !request.no_cache && (!sampled || inner.cache_sampled);
        let cache_key = cacheable.then(|| cache_key(ctx, &request.fingerprint()));
        if let (Some(cache), Some(key)) = (&inner.chat_cache, &cache_key)
            && let Some(mut hit) = cache.get(key)
        {
            hit.source = ResponseSource::Cache;
            hit.cost_micros = 0;
            hit.latency_ms = ms(started.elapsed());
            if let Some(f) = on_delta {
                f(&hit.content);
            }
            record.source = ResponseSource::Cache;
            record.provider = Some(hit.provider.clone());
            record.response_model = Some(hit.model.clone());
            record.usage = hit.usage;
            record.latency_ms = hit.latency_ms;
            metrics::counter!("sluice_model_cache_hits_total", "operation" => "chat").increment(1);
            finish_metrics(&record);
            record_span(&record, Some(&hit.finish_reason));
            return Ok(CallOutcome {
                response: hit,
                record,
            });
        }

        // Rate limits book the estimate (reconciled with the reported usage after); budgets
        // reserve the upper bound: a byte a token, plus framing (see `tokens`).
        let est_input =
            tokens::messages_tokens(&request.messages).saturating_add(ESTIMATE_MARGIN_TOKENS);
        let bound_input = tokens::prompt_upper_bound(&request.messages)
            .saturating_add(ESTIMATE_MARGIN_TOKENS.into());
        let (worst, mut guard) = self.reserve_guard(
            ctx,
            "chat",
            &request.model,
            &chain,
            bound_input,
            |m| u64::from(self.max_tokens(&request, m)),
            on_delta.is_some(),
        );
        record.reserved_micros = worst.get();
        match inner.budgets.reserve(ctx, worst).await {
            Ok(h) => guard.arm(h),
            Err(e) => return fail(record, budget_error(e)),
        };

        let counting = |delta: &str| {
            guard
                .streamed_bytes
                .fetch_add(delta.len() as u64, Ordering::Relaxed);
            if let Some(f) = on_delta {
                f(delta);
            }
        };
        let op = Op::Chat {
            req: &request,
            on_delta: on_delta.map(|_| &counting as &DeltaFn<'_>),
        };
        let result = self
            .run_chain(
                ctx,
                &op,
                &chain,
                est_input,
                deadline,
                &mut record,
                &guard.sent,
            )
            .await;
        let answer = match result {
            Ok(a) => a,
            Err(e) => {
                // Text already streamed to the handler is paid for, whatever failed after.
                let cost = guard.streamed_cost();
                record.cost_micros = cost.get();
                guard.settle(cost).await;
                return fail(record, e);
            }
        };
        let Reply::Chat(reply) = answer.reply else {
            unreachable!("a chat operation yields a chat reply")
        };
        let model = answer.model;
        let cost = capped_cost(model, &reply.usage, worst);
        guard.settle(cost).await;
        let cost = cost.get();
        let response = ChatResponse {
            content: reply.content,
            model: if reply.model.is_empty() {
                model.name.clone()
            } else {
                reply.model
            },
            provider: model.provider.clone(),
            usage: reply.usage,
            cost_micros: cost,
            latency_ms: ms(started.elapsed()),
            source: ResponseSource::Provider,
            finish_reason: reply.finish_reason,
        };
        record.usage = reply.usage;
        record.cost_micros = cost;
        record.latency_ms = response.latency_ms;
        record.response_model = Some(response.model.clone());
        record.ttft_ms = reply
            .ttft
            .map(|t| ms(answer.attempt_started.duration_since(started) + t));
        if let (Some(cache), Some(key)) = (&inner.chat_cache, cache_key) {
            cache.put(key, response.clone());
        }
        finish_metrics(&record);
        record_span(&record, Some(&response.finish_reason));
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
        self.embed_inner(ctx, request).instrument(span).await
    }

    async fn embed_inner(
        &self,
        ctx: &CallContext,
        request: EmbedRequest,
    ) -> Result<EmbedOutcome, CallError> {
        let started = Instant::now();
        let inner = &*self.inner;
        let mut record = CallRecord::new("embeddings", &request.model);
        let fail = |mut record: CallRecord, error: ModelError| {
            record.outcome = error.outcome();
            record.latency_ms = ms(started.elapsed());
            finish_metrics(&record);
            record_span(&record, None);
            Err(CallError {
                error,
                record: Box::new(record),
            })
        };
        let chain = match self.resolve(&request.model) {
            Ok(c) => c,
            Err(e) => return fail(record, e),
        };
        if chain.iter().any(|id| !inner.models[id].embedding) {
            return fail(
                record,
                ModelError::invalid(format!("{:?} is not an embeddings model", request.model)),
            );
        }
        if request.inputs.is_empty() {
            return fail(
                record,
                ModelError::invalid("an embeddings request needs inputs"),
            );
        }
        let deadline = match self.deadline(ctx, started) {
            Ok(d) => d,
            Err(e) => return fail(record, e),
        };
        let cache_key = cache_key(ctx, &request.fingerprint());
        if let Some(cache) = &inner.embed_cache
            && let Some(mut hit) = cache.get(&cache_key)
        {
            hit.source = ResponseSource::Cache;
            hit.cost_micros = 0;
            record.source = ResponseSource::Cache;
            record.provider = Some(hit.provider.clone());
            record.response_model = Some(hit.model.clone());
            record.usage = hit.usage;
            record.latency_ms = ms(started.elapsed());
            metrics::counter!("sluice_model_cache_hits_total", "operation" => "embeddings")
                .increment(1);
            finish_metrics(&record);
            record_span(&record, None);
            return Ok(EmbedOutcome {
                response: hit,
                record,
            });
        }
        let est = request
            .inputs
            .iter()
            .fold(0u32, |a, i| a.saturating_add(tokens::text_tokens(i)));
        let bound = request
            .inputs
            .iter()
            .fold(0u64, |a, i| a.saturating_add(tokens::text_upper_bound(i)));
        let (worst, mut guard) = self.reserve_guard(
            ctx,
            "embeddings",
            &request.model,
            &chain,
            bound,
            |_| 0,
            false,
        );
        record.reserved_micros = worst.get();
        match inner.budgets.reserve(ctx, worst).await {
            Ok(h) => guard.arm(h),
            Err(e) => return fail(record, budget_error(e)),
        };
        let op = Op::Embed {
            inputs: &request.inputs,
        };
        let answer = match self
            .run_chain(ctx, &op, &chain, est, deadline, &mut record, &guard.sent)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                guard.settle(Micros::ZERO).await;
                return fail(record, e);
            }
        };
        let Reply::Embed(reply) = answer.reply else {
            unreachable!("an embeddings operation yields an embeddings reply")
        };
        let model = answer.model;
        let cost = capped_cost(model, &reply.usage, worst);
        guard.settle(cost).await;
        let cost = cost.get();
        let response = EmbedResponse {
            vectors: reply.vectors,
            model: if reply.model.is_empty() {
                model.name.clone()
            } else {
                reply.model
            },
            provider: model.provider.clone(),
            usage: reply.usage,
            cost_micros: cost,
            source: ResponseSource::Provider,
        };
        record.usage = reply.usage;
        record.cost_micros = cost;
        record.latency_ms = ms(started.elapsed());
        record.response_model = Some(response.model.clone());
        if let Some(cache) = &inner.embed_cache {
            cache.put(cache_key, response.clone());
        }
        finish_metrics(&record);
        record_span(&record, None);
        Ok(EmbedOutcome { response, record })
    }

    fn max_tokens(&self, req: &ChatRequest, m: &ModelEntry) -> u32 {
        req.max_tokens
            .or(m.max_tokens)
            .unwrap_or(self.inner.default_max_tokens)
    }

    fn deadline(&self, ctx: &CallContext, started: Instant) -> Result<Instant, ModelError> {
        let cap = self.inner.max_call;
        if ctx.job.deadline_unix_ms == 0 {
            return Ok(started + cap);
        }
        match ctx.remaining_ms() {
            0 => Err(ModelError::Timeout {
                message: "the job's deadline has passed".into(),
            }),
            left => Ok(started + cap.min(Duration::from_millis(left))),
        }
    }

    /// The worst case of a call over `chain` (the dearest model, with `input` prompt tokens and
    /// each model's output cap), and a guard for its reservation (not yet holding one).
    #[allow(clippy::too_many_arguments)]
    fn reserve_guard(
        &self,
        ctx: &CallContext,
        operation: &'static str,
        requested_model: &str,
        chain: &[String],
        input: u64,
        max_out: impl Fn(&ModelEntry) -> u64,
        streaming: bool,
    ) -> (Micros, HoldGuard) {
        let inner = &*self.inner;
        let models = || chain.iter().map(|id| &inner.models[id]);
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
            operation,
            requested_model: requested_model.to_string(),
            reserved: worst,
            input_tokens: input,
            input_cost: Micros::per_mtok(input, input_price),
            output_price: models()
                .map(|m| m.price.output)
                .max()
                .unwrap_or(Micros::ZERO),
            max_out: models().map(&max_out).max().unwrap_or(0),
            streaming,
            sent: AtomicBool::new(false),
            streamed_bytes: AtomicU64::new(0),
        };
        (worst, guard)
    }

    /// Walk the chain: for each model, up to `1 + max_retries` attempts on its provider,
    /// skipping providers whose breaker is open, whose rate limit has no room before the
    /// deadline, or whose context window is too small.
    #[allow(clippy::too_many_arguments)]
    async fn run_chain<'g>(
        &'g self,
        ctx: &CallContext,
        op: &Op<'_>,
        chain: &[String],
        est_input: u32,
        deadline: Instant,
        record: &mut CallRecord,
        sent: &AtomicBool,
    ) -> Result<Answer<'g>, ModelError> {
        let inner = &*self.inner;
        let mut last: Option<ProviderError> = None;
        let mut all_throttled = true;
        // Whether a finished attempt may have been billed (it failed without a status: a
        // timeout or a broken stream). `sent` is that, or an attempt in flight.
        let mut billed_before = false;
        let mut throttle_retry: Option<Duration> = None;
        for (position, model_id) in chain.iter().enumerate() {
            let model = &inner.models[model_id];
            let provider = &inner.providers[&model.provider];
            let (max_out, preq) = match op {
                Op::Chat { req, on_delta } => {
                    let max_out = self.max_tokens(req, model);
                    let preq = ProviderChatRequest {
                        model: model.name.clone(),
                        messages: req.messages.clone(),
                        max_tokens: max_out,
                        temperature: req.temperature,
                        json: req.response_format == sluice_types::model::ResponseFormat::Json,
                        stream: on_delta.is_some(),
                    };
                    (max_out, Some(preq))
                }
                Op::Embed { .. } => (0, None),
            };
            record.provider = Some(provider.name.clone());
            record.model = Some(model.id.clone());
            if position > 0 {
                // An event of the model-call span, as are the waits and retries below.
                tracing::debug!(to = %provider.name, model = %model.id, "fallback");
                record.fallbacks += 1;
                metrics::counter!("sluice_model_fallbacks_total", "to" => provider.name.clone())
                    .increment(1);
            }
            let skip = |record: &mut CallRecord, outcome: AttemptOutcome| {
                record.attempts.push(AttemptInfo {
                    provider: provider.name.clone(),
                    model: model.id.clone(),
                    outcome,
                    status: None,
                    latency_ms: 0,
                    rate_limit_wait_ms: 0,
                });
            };
            if let Some(limit) = model.context_tokens
                && u64::from(est_input.saturating_sub(ESTIMATE_MARGIN_TOKENS)) + u64::from(max_out)
                    > u64::from(limit)
            {
                skip(record, AttemptOutcome::ContextExceeded);
                all_throttled = false;
                if last.is_none() {
                    last = Some(ProviderError::new(
                        FailureKind::InvalidRequest,
                        format!(
                            "the prompt and max_tokens exceed {}'s context of {limit} tokens",
                            model.id
                        ),
                    ));
                }
                continue;
            }
            for try_no in 0..=provider.max_retries {
                if ctx.is_cancelled() {
                    return Err(ModelError::unavailable("the job was cancelled"));
                }
                let probe = match provider.breaker.admit() {
                    Admission::Refused(_) => {
                        skip(record, AttemptOutcome::CircuitOpen);
                        all_throttled = false;
                        break;
                    }
                    Admission::Probe => true,
                    Admission::Allowed => false,
                };
                // A provider's 429 `retry-after` holds every call to it.
                let hold = *provider
                    .hold_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if let Some(h) = hold {
                    let now = Instant::now();
                    if h > now {
                        if h >= deadline {
                            throttle_retry =
                                Some(throttle_retry.map_or(h - now, |t| t.min(h - now)));
                            skip(record, AttemptOutcome::Throttled);
                            if probe {
                                provider.breaker.record(true);
                            }
                            break;
                        }
                        let wait = h - now;
                        // Spread the herd woken by one retry-after.
                        let jitter = Duration::from_micros(rand::random_range(
                            0..=(wait.as_micros() as u64 / 10).max(1),
                        ));
                        tokio::time::sleep(wait + jitter).await;
                        tracing::debug!(
                            provider = %provider.name,
                            sluice.wait_ms = ms(wait + jitter),
                            sluice.reason = "retry_after",
                            "rate_limit.wait"
                        );
                        record.rate_limit_wait_ms = record
                            .rate_limit_wait_ms
                            .saturating_add(ms(wait + jitter).into());
                        metrics::histogram!("sluice_rate_limit_wait_seconds", "provider" => provider.name.clone()).record((wait + jitter).as_secs_f64());
                    }
                }
                let cost_tokens = est_input.saturating_add(max_out);
                // Leave time for the attempt itself after the wait (1.5× a typical one).
                let headroom = provider.typical() * 3 / 2;
                let wait_until = deadline
                    .checked_sub(headroom)
                    .unwrap_or(deadline)
                    .max(Instant::now());
                let (permit, waited) = match model.limits.acquire(cost_tokens, wait_until).await {
                    Ok(x) => x,
                    Err(t) => {
                        throttle_retry =
                            Some(throttle_retry.map_or(t.retry_after, |x| x.min(t.retry_after)));
                        metrics::counter!("sluice_rate_limit_refusals_total", "provider" => provider.name.clone()).increment(1);
                        skip(record, AttemptOutcome::Throttled);
                        if probe {
                            // Nothing was learned about the provider's health.
                            provider.breaker.record(true);
                        }
                        break;
                    }
                };
                if !waited.is_zero() {
                    tracing::debug!(
                        provider = %provider.name,
                        sluice.wait_ms = ms(waited),
                        sluice.reason = "limiter",
                        "rate_limit.wait"
                    );
                    record.rate_limit_wait_ms =
                        record.rate_limit_wait_ms.saturating_add(ms(waited).into());
                    metrics::histogram!("sluice_rate_limit_wait_seconds", "provider" => provider.name.clone()).record(waited.as_secs_f64());
                }
                if try_no > 0 {
                    record.retries += 1;
                    metrics::counter!("sluice_model_retries_total", "provider" => provider.name.clone()).increment(1);
                }
                let attempt_started = Instant::now();
                let budget = provider
                    .timeout
                    .min(deadline.saturating_duration_since(attempt_started));
                let span = tracing::debug_span!(
                    "gen_ai.attempt",
                    provider = %provider.name,
                    model = %model.id,
                    attempt = try_no + 1,
                    gen_ai.provider.name = %provider.name,
                    gen_ai.request.model = %model.id,
                    sluice.rate_limit_wait_ms = ms(waited),
                    sluice.outcome = Empty,
                    error.type = Empty,
                    http.response.status_code = Empty,
                );
                let call = async {
                    sent.store(true, Ordering::Relaxed);
                    match (op, &preq) {
                        (Op::Chat { on_delta, .. }, Some(preq)) => {
                            provider.client.chat(preq, *on_delta).await.map(Reply::Chat)
                        }
                        (Op::Embed { inputs }, _) => provider
                            .client
                            .embed(&model.name, inputs)
                            .await
                            .map(Reply::Embed),
                        (Op::Chat { .. }, None) => unreachable!("chat requests are built above"),
                    }
                };
                // A timeout cut short by the call's deadline says nothing about the provider.
                let deadline_cut = budget < provider.timeout;
                let result = match tokio::time::timeout(budget, call.instrument(span.clone())).await
                {
                    Ok(r) => r,
                    Err(_) => Err(ProviderError::new(
                        FailureKind::Timeout,
                        format!("no complete answer within {} ms", budget.as_millis()),
                    )),
                };
                match &result {
                    Ok(_) => {
                        span.record("sluice.outcome", "ok");
                    }
                    Err(e) => {
                        span.record("sluice.outcome", e.kind.as_str())
                            .record("error.type", e.kind.as_str());
                        if let Some(status) = e.status {
                            span.record("http.response.status_code", status);
                        }
                    }
                }
                let latency = attempt_started.elapsed();
                provider.recent.record(latency, result.is_ok());
                metrics::histogram!("sluice_model_attempt_duration_seconds", "provider" => provider.name.clone()).record(latency.as_secs_f64());
                let mut info = AttemptInfo {
                    provider: provider.name.clone(),
                    model: model.id.clone(),
                    outcome: AttemptOutcome::Ok,
                    status: None,
                    latency_ms: ms(latency),
                    rate_limit_wait_ms: ms(waited),
                };
                match result {
                    Ok(reply) => {
                        let u = reply.usage();
                        permit.reconcile(u.input_tokens.saturating_add(u.output_tokens));
                        provider.observe(latency);
                        self.breaker_record(provider, true);
                        metrics::counter!("sluice_model_attempts_total", "provider" => provider.name.clone(), "outcome" => "ok").increment(1);
                        record.attempts.push(info);
                        return Ok(Answer {
                            reply,
                            model,
                            attempt_started,
                        });
                    }
                    Err(e) => {
                        info.outcome = AttemptOutcome::Failed(e.kind);
                        info.status = e.status;
                        record.attempts.push(info);
                        metrics::counter!("sluice_model_attempts_total", "provider" => provider.name.clone(), "outcome" => e.kind.as_str()).increment(1);
                        tracing::debug!(provider = %provider.name, model = %model.id, attempt = try_no + 1, error = %e, "model attempt failed");
                        // A refusal with a status was not processed: give the tokens back.
                        // Otherwise (timeouts, broken streams) assume the provider counted them.
                        if e.status.is_some() {
                            // Refused with a status: not processed, not billed.
                            sent.store(billed_before, Ordering::Relaxed);
                            permit.cancel();
                        } else {
                            billed_before = true;
                            permit.reconcile(cost_tokens);
                        }
                        let own_deadline = deadline_cut && e.kind == FailureKind::Timeout;
                        if e.kind.is_health_failure() && !own_deadline {
                            self.breaker_record(provider, false);
                        } else if probe || e.kind == FailureKind::InvalidRequest {
                            self.breaker_record(provider, true);
                        }
                        if e.kind == FailureKind::RateLimited {
                            metrics::counter!("sluice_provider_rate_limited_total", "provider" => provider.name.clone()).increment(1);
                            // `retry_after` is clamped to MAX_RETRY_AFTER by the client.
                            if let Some(until) =
                                e.retry_after.and_then(|ra| Instant::now().checked_add(ra))
                            {
                                let mut h = provider
                                    .hold_until
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner());
                                if h.is_none_or(|x| x < until) {
                                    *h = Some(until);
                                }
                            }
                        } else {
                            all_throttled = false;
                        }
                        if !e.kind.fails_over() {
                            return Err(match e.kind {
                                FailureKind::ContentFiltered => {
                                    ModelError::ContentFiltered { message: e.message }
                                }
                                _ => {
                                    ModelError::invalid(format!("{}: {}", provider.name, e.message))
                                }
                            });
                        }
                        let retry = e.kind.retryable() && try_no < provider.max_retries;
                        let e_kind = e.kind.as_str();
                        let wait =
                            backoff(&inner.retry, try_no).max(e.retry_after.unwrap_or_default());
                        last = Some(e);
                        if !retry {
                            break;
                        }
                        if Instant::now() + wait >= deadline {
                            // No time to retry here; the next provider may still answer.
                            break;
                        }
                        tracing::debug!(
                            provider = %provider.name,
                            sluice.backoff_ms = ms(wait),
                            error.type = e_kind,
                            "retry"
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(ModelError::Timeout {
                message: format!(
                    "deadline passed after {} attempt(s): {}",
                    record.attempts.len(),
                    summary(record)
                ),
            });
        }
        if all_throttled
            && (throttle_retry.is_some()
                || last
                    .as_ref()
                    .is_some_and(|e| e.kind == FailureKind::RateLimited))
        {
            let ra = throttle_retry.or(last.as_ref().and_then(|e| e.retry_after));
            return Err(ModelError::RateLimited {
                message: format!("rate limited: {}", summary(record)),
                retry_after_ms: ra.map(|d| d.as_millis() as u64),
            });
        }
        match last {
            Some(e)
                if e.kind == FailureKind::InvalidRequest
                    && record
                        .attempts
                        .iter()
                        .all(|a| a.outcome == AttemptOutcome::ContextExceeded) =>
            {
                Err(ModelError::invalid(e.message))
            }
            _ => Err(ModelError::unavailable(format!(
                "all providers failed: {}",
                summary(record)
            ))),
        }
    }

    fn breaker_record(&self, provider: &ProviderEntry, healthy: bool) {
        if let Some(state) = provider.breaker.record(healthy) {
            metrics::gauge!("sluice_breaker_state", "provider" => provider.name.clone())
                .set(state.gauge());
            metrics::counter!("sluice_breaker_transitions_total", "provider" => provider.name.clone(), "to" => state.as_str()).increment(1);
            match state {
                BreakerState::Open => {
                    tracing::warn!(provider = %provider.name, kind = provider.kind, "circuit breaker opened")
                }
                _ => {
                    tracing::info!(provider = %provider.name, state = state.as_str(), "circuit breaker changed")
                }
            }
        }
    }
}

/// Exponential backoff with full jitter: uniform in `0..=min(max, base·2^n)`.
fn backoff(cfg: &RetryConfig, n: u32) -> Duration {
    let ceiling = cfg
        .base_delay_ms
        .saturating_mul(1u64 << n.min(20))
        .min(cfg.max_delay_ms);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

fn summary(record: &CallRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    for a in &record.attempts {
        let s = match a.status {
            Some(st) => format!("{} {} (HTTP {st})", a.model, a.outcome),
            None => format!("{} {}", a.model, a.outcome),
        };
        match parts.last_mut() {
            Some(last) if last.starts_with(&s) => {
                // Collapse repeats: "sim/x server_error (HTTP 500) ×3".
                let n = last
                    .rsplit_once('×')
                    .and_then(|(_, n)| n.parse::<u32>().ok())
                    .unwrap_or(1);
                *last = format!("{s} ×{}", n + 1);
            }
            _ => parts.push(s),
        }
    }
    if parts.is_empty() {
        "no attempt was made".into()
    } else {
        parts.join("; ")
    }
}

fn budget_error(e: LedgerError) -> ModelError {
    match e {
        LedgerError::Refused(r) => ModelError::BudgetExceeded {
            message: format!(
                "budget {} ({}, {}): limit {} µ$, spent {} µ$, in flight {} µ$, this call needs up to {} µ$",
                r.key.budget,
                r.key.scope,
                r.key.window,
                r.limit_micros,
                r.spent_micros,
                r.reserved_micros,
                r.requested_micros
            ),
        },
        LedgerError::Unavailable(m) => ModelError::unavailable(format!("budget ledger: {m}")),
    }
}

/// The cost of `usage` at `model`'s prices, at most `worst`, the call's reservation. A
/// provider reporting more than the worst case allows (more prompt tokens than bytes, more
/// output than `max_tokens`) is misreporting: the call is charged the reservation, so no budget
/// overshoots; the reported tokens stay in the record, and a warning and a metric say so.
fn capped_cost(model: &ModelEntry, usage: &Usage, worst: Micros) -> Micros {
    let reported = model.price.cost(usage);
    if reported <= worst {
        return reported;
    }
    metrics::counter!("sluice_model_usage_over_reservation_total", "model" => model.id.clone())
        .increment(1);
    tracing::warn!(
        model = %model.id,
        input_tokens = usage.input_tokens,
        output_tokens = usage.output_tokens,
        reported_micros = reported.get(),
        reserved_micros = worst.get(),
        "provider reported more usage than the call's upper bound; charging the reservation"
    );
    worst
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn source_label(source: ResponseSource) -> &'static str {
    match source {
        ResponseSource::Provider => "provider",
        ResponseSource::Cache => "cache",
        ResponseSource::Journal => "journal",
    }
}

/// The span of one model call (`chat <model>` / `embeddings <model>`, kind client) with the
/// OpenTelemetry GenAI attributes; what is known only at the end is filled by `record_span`.
fn call_span(
    operation: &'static str,
    ctx: &CallContext,
    model: &str,
    max_tokens: Option<u32>,
) -> tracing::Span {
    tracing::info_span!(
        "gen_ai.call",
        otel.name = %format!("{operation} {model}"),
        otel.kind = "client",
        gen_ai.operation.name = operation,
        gen_ai.request.model = %model,
        gen_ai.request.max_tokens = max_tokens,
        gen_ai.provider.name = Empty,
        gen_ai.response.model = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        sluice.job.id = %ctx.job.id,
        sluice.tenant = %ctx.job.tenant,
        sluice.plugin = %ctx.job.plugin,
        sluice.tags = ?ctx.job.tags,
        sluice.model = Empty,
        sluice.cost_micros = Empty,
        sluice.cache_hit = Empty,
        sluice.source = Empty,
        sluice.journal_replay = Empty,
        sluice.attempts = Empty,
        sluice.retries = Empty,
        sluice.fallbacks = Empty,
        sluice.rate_limit_wait_ms = Empty,
        sluice.outcome = Empty,
    )
}

fn finish_metrics(r: &CallRecord) {
    let provider = r.provider.clone().unwrap_or_else(|| "none".into());
    // Never the requested name: a guest chooses it, and an unknown one must not become a label.
    let model = r.model.clone().unwrap_or_else(|| "unresolved".into());
    let source = source_label(r.source);
    metrics::counter!("sluice_model_calls_total", "operation" => r.operation.clone(), "provider" => provider.clone(), "model" => model.clone(), "outcome" => r.outcome.as_str(), "source" => source).increment(1);
    metrics::histogram!("sluice_model_call_duration_seconds", "operation" => r.operation.clone(), "provider" => provider.clone(), "model" => model.clone()).record(f64::from(r.latency_ms) / 1000.0);
    if let Some(t) = r.ttft_ms {
        metrics::histogram!("sluice_model_ttft_seconds", "provider" => provider.clone(), "model" => model.clone()).record(f64::from(t) / 1000.0);
    }
    if r.source == ResponseSource::Provider && r.outcome.is_ok() {
        let u = r.usage;
        metrics::counter!("sluice_model_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "input").increment(u64::from(u.input_tokens));
        metrics::counter!("sluice_model_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "output").increment(u64::from(u.output_tokens));
        metrics::counter!("sluice_model_tokens_total", "provider" => provider.clone(), "model" => model.clone(), "kind" => "cached_input").increment(u64::from(u.cached_input_tokens));
        metrics::counter!("sluice_model_cost_micros_total", "provider" => provider.clone(), "model" => model.clone()).increment(r.cost_micros);
        // OpenTelemetry GenAI semantic conventions (gen_ai.client.token.usage, in tokens).
        metrics::histogram!("gen_ai_client_token_usage", "gen_ai_operation_name" => r.operation.clone(), "gen_ai_provider_name" => provider.clone(), "gen_ai_request_model" => model.clone(), "gen_ai_token_type" => "input").record(f64::from(u.input_tokens));
        metrics::histogram!("gen_ai_client_token_usage", "gen_ai_operation_name" => r.operation.clone(), "gen_ai_provider_name" => provider.clone(), "gen_ai_request_model" => model.clone(), "gen_ai_token_type" => "output").record(f64::from(u.output_tokens));
        // Cost per call in US dollars; the histogram's _sum is the total spend.
        metrics::histogram!("sluice_model_cost_usd", "gen_ai_provider_name" => provider.clone(), "gen_ai_request_model" => model.clone()).record(Micros::new(r.cost_micros).to_usd());
    }
    // gen_ai.client.operation.duration, in seconds; `error_type` is empty on success.
    let error_type = if r.outcome.is_ok() {
        ""
    } else {
        r.outcome.as_str()
    };
    metrics::histogram!("gen_ai_client_operation_duration_seconds", "gen_ai_operation_name" => r.operation.clone(), "gen_ai_provider_name" => provider, "gen_ai_request_model" => model, "error_type" => error_type).record(f64::from(r.latency_ms) / 1000.0);
}

fn record_span(r: &CallRecord, finish: Option<&str>) {
    let span = tracing::Span::current();
    if let Some(p) = &r.provider {
        span.record("gen_ai.provider.name", p.as_str());
    }
    if let Some(m) = &r.model {
        span.record("sluice.model", m.as_str());
    }
    if let Some(m) = &r.response_model {
        span.record("gen_ai.response.model", m.as_str());
    }
    if let Some(f) = finish {
        span.record("gen_ai.response.finish_reasons", f);
    }
    if r.outcome.is_ok() {
        span.record("gen_ai.usage.input_tokens", r.usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", r.usage.output_tokens);
    }
    span.record("sluice.cost_micros", r.cost_micros);
    span.record("sluice.cache_hit", r.source == ResponseSource::Cache);
    span.record("sluice.source", source_label(r.source));
    span.record("sluice.journal_replay", r.source == ResponseSource::Journal);
    span.record("sluice.retries", r.retries);
    span.record("sluice.rate_limit_wait_ms", r.rate_limit_wait_ms);
    span.record("sluice.attempts", r.attempts.len());
    span.record("sluice.fallbacks", r.fallbacks);
    span.record("sluice.outcome", r.outcome.as_str());
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
