//! One model call, chat or embeddings, from request to outcome: resolve the alias, check the
//! request, the deadline, the tenant's cache, the budget reservation, the chain, cost and
//! settlement, the record. [`Gateway::call`] is that flow, once; what differs between a chat
//! and an embeddings call is a [`CallKind`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_types::model::{
    ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError, ResponseFormat,
    ResponseSource, Usage,
};
use sluice_types::{CallContext, Micros};

use super::chain::ChainCall;
use super::record::{CallError, CallRecord};
use super::telemetry::{finish_metrics, record_span};
use super::{ESTIMATE_MARGIN_TOKENS, Gateway, Inner, ModelEntry, ms};
use crate::budget::LedgerError;
use crate::cache::ResponseCache;
use crate::provider::{
    DeltaFn, Provider, ProviderChatReply, ProviderChatRequest, ProviderEmbedReply, ProviderError,
};
use crate::tokens;

/// A provider attempt in flight.
pub(super) type AttemptFuture<'a, R> =
    Pin<Box<dyn Future<Output = Result<R, ProviderError>> + Send + 'a>>;

/// What differs between a chat and an embeddings call.
pub(super) trait CallKind: Sync {
    /// `chat` or `embeddings`: the record's operation and the metrics' label.
    const OPERATION: &'static str;
    /// What the handler gets.
    type Response: Clone;
    /// A provider's answer to one attempt.
    type Reply: Send;
    /// What an attempt sends a chain position's provider, built once per position.
    type Prepared: Sync;

    /// The model or alias asked for.
    fn requested_model(&self) -> &str;

    /// Refuse a request no position could serve: the wrong kind of model, nothing to send.
    fn check(&self, inner: &Inner, chain: &[String]) -> Result<(), ModelError>;

    /// The gateway's cache of this kind's responses, if caching is on.
    fn cache(inner: &Inner) -> Option<&ResponseCache<Self::Response>>;

    /// The request's cache key, unless it must not be cached.
    fn cache_key(&self, inner: &Inner, ctx: &CallContext) -> Option<String>;

    /// Shape a cache hit for the caller (free, from the cache) and fill the record from it.
    fn serve_cached(&self, hit: &mut Self::Response, record: &mut CallRecord, started: Instant);

    /// The prompt in tokens: the estimate rate limits book, and the upper bound budgets
    /// reserve (a token per UTF-8 byte, see [`crate::tokens`]), both with framing.
    fn prompt_tokens(&self) -> (u32, u64);

    /// The output cap an attempt on `model` asks for (0: embeddings have no output tokens).
    fn max_out(&self, inner: &Inner, model: &ModelEntry) -> u32;

    /// Where the caller wants streamed text, if it does.
    fn on_delta(&self) -> Option<&DeltaFn<'_>>;

    /// The provider request for `model`.
    fn prepare(&self, model: &ModelEntry, max_out: u32) -> Self::Prepared;

    /// One attempt on `client`; streamed text goes to `on_delta`.
    fn attempt<'a>(
        &'a self,
        client: &'a dyn Provider,
        model: &'a ModelEntry,
        prepared: &'a Self::Prepared,
        on_delta: Option<&'a DeltaFn<'a>>,
    ) -> AttemptFuture<'a, Self::Reply>;

    /// The tokens a reply reports.
    fn usage(reply: &Self::Reply) -> Usage;

    /// The caller's response from `model`'s reply, charged `cost`; fills the record's
    /// latency, time to first token and response model.
    fn respond(
        &self,
        reply: Self::Reply,
        model: &ModelEntry,
        cost: Micros,
        times: CallTimes,
        record: &mut CallRecord,
    ) -> Self::Response;

    /// The finish reason the call's span reports, if the kind has one.
    fn finish_reason(response: &Self::Response) -> Option<&str>;
}

/// When the call and its answering attempt started.
#[derive(Clone, Copy)]
pub(super) struct CallTimes {
    pub started: Instant,
    pub attempt_started: Instant,
}

impl Gateway {
    /// One call: resolve, check, cache, reserve, walk the chain, settle, record.
    pub(super) async fn call<K: CallKind>(
        &self,
        ctx: &CallContext,
        call: K,
    ) -> Result<(K::Response, CallRecord), CallError> {
        let started = Instant::now();
        let inner = &*self.inner;
        let mut record = CallRecord::new(K::OPERATION, call.requested_model());
        let checked = self.resolve(call.requested_model()).and_then(|chain| {
            call.check(inner, &chain)?;
            Ok((chain, self.deadline(ctx, started)?))
        });
        let (chain, deadline) = match checked {
            Ok(x) => x,
            Err(e) => return Err(failed(record, e, started)),
        };

        let cache_key = call.cache_key(inner, ctx);
        if let (Some(cache), Some(key)) = (K::cache(inner), &cache_key)
            && let Some(mut hit) = cache.get(key)
        {
            record.source = ResponseSource::Cache;
            call.serve_cached(&mut hit, &mut record, started);
            metrics::counter!("sluice_model_cache_hits_total", "operation" => K::OPERATION)
                .increment(1);
            finish_metrics(&record);
            record_span(&record, K::finish_reason(&hit));
            return Ok((hit, record));
        }

        // Rate limits book the estimate (reconciled with the reported usage after); budgets
        // reserve the upper bound.
        let (est_input, bound_input) = call.prompt_tokens();
        let (worst, mut guard) = self.reserve_guard(ctx, &call, &chain, bound_input);
        record.reserved_micros = worst.get();
        match inner.budgets.reserve(ctx, worst).await {
            Ok(h) => guard.arm(h),
            Err(e) => return Err(failed(record, budget_error(e), started)),
        };

        let caller_delta = call.on_delta();
        let counting = |delta: &str| {
            guard
                .streamed_bytes
                .fetch_add(delta.len() as u64, Ordering::Relaxed);
            if let Some(f) = caller_delta {
                f(delta);
            }
        };
        let walk = ChainCall {
            ctx,
            call: &call,
            chain: &chain,
            est_input,
            deadline,
            sent: &guard.sent,
            on_delta: caller_delta.map(|_| &counting as &DeltaFn<'_>),
        };
        let answer = match self.run_chain(&walk, &mut record).await {
            Ok(a) => a,
            Err(e) => {
                // Text already streamed to the handler is paid for, whatever failed after.
                let cost = guard.streamed_cost();
                record.cost_micros = cost.get();
                guard.settle(cost).await;
                return Err(failed(record, e, started));
            }
        };
        let usage = K::usage(&answer.reply);
        let cost = capped_cost(answer.model, &usage, worst);
        guard.settle(cost).await;
        record.usage = usage;
        record.cost_micros = cost.get();
        let times = CallTimes {
            started,
            attempt_started: answer.attempt_started,
        };
        let response = call.respond(answer.reply, answer.model, cost, times, &mut record);
        if let (Some(cache), Some(key)) = (K::cache(inner), cache_key) {
            cache.put(key, response.clone());
        }
        finish_metrics(&record);
        record_span(&record, K::finish_reason(&response));
        Ok((response, record))
    }

    /// When the call must be done: the gateway's cap on a call, or the job's deadline if
    /// sooner. A job already past its deadline makes no call.
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
}

/// A failed call: its record finished (outcome, latency, metrics, span) and the error.
fn failed(mut record: CallRecord, error: ModelError, started: Instant) -> CallError {
    record.outcome = error.outcome();
    record.latency_ms = ms(started.elapsed());
    finish_metrics(&record);
    record_span(&record, None);
    CallError {
        error,
        record: Box::new(record),
    }
}

/// The response-cache key of a request: the tenant and the request's fingerprint, so tenants
/// never share entries. The fingerprint is 64 hex digits, so the pair is unambiguous.
fn cache_key(ctx: &CallContext, fingerprint: &str) -> String {
    format!("{fingerprint}:{}", ctx.job.tenant)
}

pub(super) fn budget_error(e: LedgerError) -> ModelError {
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

/// The model a reply names, or the configured one when the provider named none.
fn answered_by(reply_model: String, model: &ModelEntry) -> String {
    if reply_model.is_empty() {
        model.name.clone()
    } else {
        reply_model
    }
}

/// A chat call: the request, and where the caller wants streamed text.
pub(super) struct ChatCall<'a> {
    pub request: ChatRequest,
    pub on_delta: Option<&'a DeltaFn<'a>>,
}

impl CallKind for ChatCall<'_> {
    const OPERATION: &'static str = "chat";
    type Response = ChatResponse;
    type Reply = ProviderChatReply;
    type Prepared = ProviderChatRequest;

    fn requested_model(&self) -> &str {
        &self.request.model
    }

    fn check(&self, inner: &Inner, chain: &[String]) -> Result<(), ModelError> {
        let request = &self.request;
        if chain.iter().any(|id| inner.models[id].embedding) {
            return Err(ModelError::invalid(format!(
                "{:?} is an embeddings model; use embed",
                request.model
            )));
        }
        if request.messages.is_empty() {
            return Err(ModelError::invalid(
                "a chat request needs at least one message",
            ));
        }
        if request.max_tokens == Some(0) {
            return Err(ModelError::invalid("max_tokens must be positive"));
        }
        Ok(())
    }

    fn cache(inner: &Inner) -> Option<&ResponseCache<ChatResponse>> {
        inner.chat_cache.as_ref()
    }

    fn cache_key(&self, inner: &Inner, ctx: &CallContext) -> Option<String> {
        // Sampled replies vary by design: not served from (nor put in) the cache unless
        // configured. `None` asked for no temperature and is cached.
        let request = &self.request;
        let sampled = request.temperature.is_some_and(|t| t > 0.0 || t.is_nan());
        let cacheable = !request.no_cache && (!sampled || inner.cache_sampled);
        cacheable.then(|| cache_key(ctx, &request.fingerprint()))
    }

    fn serve_cached(&self, hit: &mut ChatResponse, record: &mut CallRecord, started: Instant) {
        hit.source = ResponseSource::Cache;
        hit.cost_micros = 0;
        hit.latency_ms = ms(started.elapsed());
        if let Some(f) = self.on_delta {
            f(&hit.content);
        }
        record.provider = Some(hit.provider.clone());
        record.response_model = Some(hit.model.clone());
        record.usage = hit.usage;
        record.latency_ms = hit.latency_ms;
    }

    fn prompt_tokens(&self) -> (u32, u64) {
        let messages = &self.request.messages;
        (
            tokens::messages_tokens(messages).saturating_add(ESTIMATE_MARGIN_TOKENS),
            tokens::prompt_upper_bound(messages).saturating_add(ESTIMATE_MARGIN_TOKENS.into()),
        )
    }

    fn max_out(&self, inner: &Inner, model: &ModelEntry) -> u32 {
        self.request
            .max_tokens
            .or(model.max_tokens)
            .unwrap_or(inner.default_max_tokens)
    }

    fn on_delta(&self) -> Option<&DeltaFn<'_>> {
        self.on_delta
    }

    fn prepare(&self, model: &ModelEntry, max_out: u32) -> ProviderChatRequest {
        let request = &self.request;
        ProviderChatRequest {
            model: model.name.clone(),
            messages: request.messages.clone(),
            max_tokens: max_out,
            temperature: request.temperature,
            json: request.response_format == ResponseFormat::Json,
            stream: self.on_delta.is_some(),
        }
    }

    fn attempt<'a>(
        &'a self,
        client: &'a dyn Provider,
        _: &'a ModelEntry,
        prepared: &'a ProviderChatRequest,
        on_delta: Option<&'a DeltaFn<'a>>,
    ) -> AttemptFuture<'a, ProviderChatReply> {
        client.chat(prepared, on_delta)
    }

    fn usage(reply: &ProviderChatReply) -> Usage {
        reply.usage
    }

    fn respond(
        &self,
        reply: ProviderChatReply,
        model: &ModelEntry,
        cost: Micros,
        times: CallTimes,
        record: &mut CallRecord,
    ) -> ChatResponse {
        let response = ChatResponse {
            content: reply.content,
            model: answered_by(reply.model, model),
            provider: model.provider.clone(),
            usage: reply.usage,
            cost_micros: cost.get(),
            latency_ms: ms(times.started.elapsed()),
            source: ResponseSource::Provider,
            finish_reason: reply.finish_reason,
        };
        record.latency_ms = response.latency_ms;
        record.response_model = Some(response.model.clone());
        record.ttft_ms = reply
            .ttft
            .map(|t| ms(times.attempt_started.duration_since(times.started) + t));
        response
    }

    fn finish_reason(response: &ChatResponse) -> Option<&str> {
        Some(&response.finish_reason)
    }
}

/// An embeddings call.
pub(super) struct EmbedCall {
    pub request: EmbedRequest,
}

impl CallKind for EmbedCall {
    const OPERATION: &'static str = "embeddings";
    type Response = EmbedResponse;
    type Reply = ProviderEmbedReply;
    type Prepared = ();

    fn requested_model(&self) -> &str {
        &self.request.model
    }

    fn check(&self, inner: &Inner, chain: &[String]) -> Result<(), ModelError> {
        if chain.iter().any(|id| !inner.models[id].embedding) {
            return Err(ModelError::invalid(format!(
                "{:?} is not an embeddings model",
                self.request.model
            )));
        }
        if self.request.inputs.is_empty() {
            return Err(ModelError::invalid("an embeddings request needs inputs"));
        }
        Ok(())
    }

    fn cache(inner: &Inner) -> Option<&ResponseCache<EmbedResponse>> {
        inner.embed_cache.as_ref()
    }

    fn cache_key(&self, _: &Inner, ctx: &CallContext) -> Option<String> {
        Some(cache_key(ctx, &self.request.fingerprint()))
    }

    fn serve_cached(&self, hit: &mut EmbedResponse, record: &mut CallRecord, started: Instant) {
        hit.source = ResponseSource::Cache;
        hit.cost_micros = 0;
        record.provider = Some(hit.provider.clone());
        record.response_model = Some(hit.model.clone());
        record.usage = hit.usage;
        record.latency_ms = ms(started.elapsed());
    }

    fn prompt_tokens(&self) -> (u32, u64) {
        let inputs = &self.request.inputs;
        (
            inputs
                .iter()
                .fold(0u32, |a, i| a.saturating_add(tokens::text_tokens(i))),
            inputs
                .iter()
                .fold(0u64, |a, i| a.saturating_add(tokens::text_upper_bound(i))),
        )
    }

    fn max_out(&self, _: &Inner, _: &ModelEntry) -> u32 {
        0
    }

    fn on_delta(&self) -> Option<&DeltaFn<'_>> {
        None
    }

    fn prepare(&self, _: &ModelEntry, _: u32) {}

    fn attempt<'a>(
        &'a self,
        client: &'a dyn Provider,
        model: &'a ModelEntry,
        _: &'a (),
        _: Option<&'a DeltaFn<'a>>,
    ) -> AttemptFuture<'a, ProviderEmbedReply> {
        client.embed(&model.name, &self.request.inputs)
    }

    fn usage(reply: &ProviderEmbedReply) -> Usage {
        reply.usage
    }

    fn respond(
        &self,
        reply: ProviderEmbedReply,
        model: &ModelEntry,
        cost: Micros,
        times: CallTimes,
        record: &mut CallRecord,
    ) -> EmbedResponse {
        let response = EmbedResponse {
            vectors: reply.vectors,
            model: answered_by(reply.model, model),
            provider: model.provider.clone(),
            usage: reply.usage,
            cost_micros: cost.get(),
            source: ResponseSource::Provider,
        };
        record.latency_ms = ms(times.started.elapsed());
        record.response_model = Some(response.model.clone());
        response
    }

    fn finish_reason(_: &EmbedResponse) -> Option<&str> {
        None
    }
}
