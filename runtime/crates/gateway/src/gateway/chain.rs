//! The provider chain: for each model an alias resolves to, in order, up to `1 + max_retries`
//! attempts on its provider, skipping positions whose breaker is open, whose rate limit has no
//! room before the deadline, or whose context window is too small.
//!
//! Each attempt ends in a [`Verdict`] (an answer, retry after a wait, fail over to the next
//! position, give up), so the walk itself is a short loop; what it learns on the way ([`Walk`])
//! decides the error when no position answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_types::CallContext;
use sluice_types::model::ModelError;
use tracing::Instrument;
use tracing::field::Empty;

use super::call::CallKind;
use super::record::{AttemptInfo, CallRecord, summary};
use super::{ESTIMATE_MARGIN_TOKENS, Gateway, ModelEntry, ProviderEntry, ms};
use crate::breaker::{Admission, BreakerState};
use crate::config::RetryConfig;
use crate::limiter::Permit;
use crate::outcome::AttemptOutcome;
use crate::provider::{DeltaFn, FailureKind, ProviderError};

/// One call's walk down its chain: what every attempt needs to know.
pub(super) struct ChainCall<'a, K> {
    pub ctx: &'a CallContext,
    /// The request, and how to send it.
    pub call: &'a K,
    /// Model ids, in fallback order.
    pub chain: &'a [String],
    /// The prompt's estimate, tokens: rate limits book it (reconciled with the reported usage).
    pub est_input: u32,
    pub deadline: Instant,
    /// Set while an attempt's request is out, and after one that may have been billed: the
    /// call's hold guard charges a dropped call by it.
    pub sent: &'a AtomicBool,
    /// Where streamed text goes (through the hold guard's counter), when streaming.
    pub on_delta: Option<&'a DeltaFn<'a>>,
}

/// The attempt that answered.
pub(super) struct Answer<'g, R> {
    pub reply: R,
    pub model: &'g ModelEntry,
    pub attempt_started: Instant,
}

/// What one attempt yielded, and so what the walk does next.
enum Verdict<'g, R> {
    /// The provider answered: the call is done.
    Answer(Answer<'g, R>),
    /// Failed in a way worth retrying here: wait, then try the same provider again.
    RetryAfter { wait: Duration, kind: &'static str },
    /// Nothing more to get from this position (skipped, out of retries, or no time left to
    /// retry): on to the next model.
    FailOver,
    /// Failed in a way no other provider would fix (cancelled, invalid, content filtered).
    GiveUp(ModelError),
}

/// One chain position: its model and provider, and the request prepared for them.
struct Position<'g, P> {
    model: &'g ModelEntry,
    provider: &'g ProviderEntry,
    /// The output cap the attempt asks for (0 for embeddings).
    max_out: u32,
    prepared: P,
}

/// How an attempt that got as far as the provider was made, for judging its failure.
struct Tried {
    try_no: u32,
    /// It was the breaker's half-open probe.
    probe: bool,
    /// Its timeout was cut short by the call's deadline.
    deadline_cut: bool,
}

/// What the walk has learned so far, for the error when no position answers.
struct Walk {
    /// The last provider failure (or the first context-window refusal).
    last: Option<ProviderError>,
    /// Whether every position so far was throttled or rate limited: the call then fails as
    /// rate limited (with when to retry), not as unavailable.
    all_throttled: bool,
    /// Whether a finished attempt may have been billed (it failed without a status: a timeout
    /// or a broken stream). [`ChainCall::sent`] is that, or an attempt in flight.
    billed_before: bool,
    /// The soonest a throttled position has capacity again.
    throttle_retry: Option<Duration>,
}

impl Walk {
    fn new() -> Self {
        Walk {
            last: None,
            all_throttled: true,
            billed_before: false,
            throttle_retry: None,
        }
    }

    fn throttled_for(&mut self, retry_in: Duration) {
        self.throttle_retry = Some(self.throttle_retry.map_or(retry_in, |t| t.min(retry_in)));
    }

    /// The error of a call no position answered.
    fn exhausted(self, deadline: Instant, record: &CallRecord) -> ModelError {
        if Instant::now() >= deadline {
            return ModelError::Timeout {
                message: format!(
                    "deadline passed after {} attempt(s): {}",
                    record.attempts.len(),
                    summary(record)
                ),
            };
        }
        let last = self.last;
        if self.all_throttled
            && (self.throttle_retry.is_some()
                || last
                    .as_ref()
                    .is_some_and(|e| e.kind == FailureKind::RateLimited))
        {
            let ra = self
                .throttle_retry
                .or(last.as_ref().and_then(|e| e.retry_after));
            return ModelError::RateLimited {
                message: format!("rate limited: {}", summary(record)),
                retry_after_ms: ra.map(|d| d.as_millis() as u64),
            };
        }
        match last {
            Some(e)
                if e.kind == FailureKind::InvalidRequest
                    && record
                        .attempts
                        .iter()
                        .all(|a| a.outcome == AttemptOutcome::ContextExceeded) =>
            {
                ModelError::invalid(e.message)
            }
            _ => ModelError::unavailable(format!("all providers failed: {}", summary(record))),
        }
    }
}

impl Gateway {
    /// Walk the chain until an attempt answers, one fails for good, or the positions (or the
    /// deadline) run out.
    pub(super) async fn run_chain<'g, K: CallKind>(
        &'g self,
        call: &ChainCall<'_, K>,
        record: &mut CallRecord,
    ) -> Result<Answer<'g, K::Reply>, ModelError> {
        let inner = &*self.inner;
        let mut walk = Walk::new();
        for (position, model_id) in call.chain.iter().enumerate() {
            let model = &inner.models[model_id];
            let provider = &inner.providers[&model.provider];
            let max_out = call.call.max_out(inner, model);
            let pos = Position {
                model,
                provider,
                max_out,
                prepared: call.call.prepare(model, max_out),
            };
            enter(&pos, position, record);
            if let Some(refusal) = context_refusal(&pos, call.est_input) {
                skip(record, &pos, AttemptOutcome::ContextExceeded);
                walk.all_throttled = false;
                walk.last.get_or_insert(refusal);
                continue;
            }
            for try_no in 0..=provider.max_retries {
                match self.attempt(call, &pos, try_no, &mut walk, record).await {
                    Verdict::Answer(answer) => return Ok(answer),
                    Verdict::GiveUp(error) => return Err(error),
                    Verdict::FailOver => break,
                    Verdict::RetryAfter { wait, kind } => {
                        tracing::debug!(
                            provider = %provider.name,
                            sluice.backoff_ms = ms(wait),
                            error.type = kind,
                            "retry"
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if Instant::now() >= call.deadline {
                break;
            }
        }
        Err(walk.exhausted(call.deadline, record))
    }

    /// One attempt at `pos`: admission (cancel, breaker, a 429's hold, rate limits), the
    /// provider call under its timeout, and what its result means for the walk.
    async fn attempt<'g, K: CallKind>(
        &'g self,
        call: &ChainCall<'_, K>,
        pos: &Position<'g, K::Prepared>,
        try_no: u32,
        walk: &mut Walk,
        record: &mut CallRecord,
    ) -> Verdict<'g, K::Reply> {
        let (model, provider) = (pos.model, pos.provider);
        if call.ctx.is_cancelled() {
            return Verdict::GiveUp(ModelError::unavailable("the job was cancelled"));
        }
        let probe = match provider.breaker.admit() {
            Admission::Refused(_) => {
                skip(record, pos, AttemptOutcome::CircuitOpen);
                walk.all_throttled = false;
                return Verdict::FailOver;
            }
            Admission::Probe => true,
            Admission::Allowed => false,
        };
        if let Err(retry_in) = wait_for_hold(provider, call.deadline, record).await {
            return throttled(walk, record, pos, retry_in, probe);
        }
        let cost_tokens = call.est_input.saturating_add(pos.max_out);
        let (permit, waited) = match acquire(pos, cost_tokens, call.deadline, record).await {
            Ok(x) => x,
            Err(retry_in) => {
                metrics::counter!("sluice_rate_limit_refusals_total", "provider" => provider.name.clone()).increment(1);
                return throttled(walk, record, pos, retry_in, probe);
            }
        };
        if try_no > 0 {
            record.retries += 1;
            metrics::counter!("sluice_model_retries_total", "provider" => provider.name.clone())
                .increment(1);
        }
        let attempt_started = Instant::now();
        let budget = provider
            .timeout
            .min(call.deadline.saturating_duration_since(attempt_started));
        let result = send(call, pos, try_no, waited, budget).await;
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
                let u = K::usage(&reply);
                permit.reconcile(u.input_tokens.saturating_add(u.output_tokens));
                provider.observe(latency);
                self.breaker_record(provider, true);
                metrics::counter!("sluice_model_attempts_total", "provider" => provider.name.clone(), "outcome" => "ok").increment(1);
                record.attempts.push(info);
                Verdict::Answer(Answer {
                    reply,
                    model,
                    attempt_started,
                })
            }
            Err(e) => {
                info.outcome = AttemptOutcome::Failed(e.kind);
                info.status = e.status;
                record.attempts.push(info);
                metrics::counter!("sluice_model_attempts_total", "provider" => provider.name.clone(), "outcome" => e.kind.as_str()).increment(1);
                tracing::debug!(provider = %provider.name, model = %model.id, attempt = try_no + 1, error = %e, "model attempt failed");
                // A refusal with a status was not processed: give the tokens back, and it was
                // not billed. Otherwise (timeouts, broken streams) assume the provider counted
                // (and billed) them.
                if e.status.is_some() {
                    call.sent.store(walk.billed_before, Ordering::Relaxed);
                    permit.cancel();
                } else {
                    walk.billed_before = true;
                    permit.reconcile(cost_tokens);
                }
                let tried = Tried {
                    try_no,
                    probe,
                    deadline_cut: budget < provider.timeout,
                };
                self.judge_failure(e, provider, &tried, call.deadline, walk)
            }
        }
    }

    /// What a failed attempt means: the breaker's view of the provider, a 429's hold on it,
    /// and whether to retry here, fail over or give up.
    fn judge_failure<'g, R>(
        &self,
        e: ProviderError,
        provider: &ProviderEntry,
        tried: &Tried,
        deadline: Instant,
        walk: &mut Walk,
    ) -> Verdict<'g, R> {
        // A timeout cut short by the call's deadline says nothing about the provider.
        let own_deadline = tried.deadline_cut && e.kind == FailureKind::Timeout;
        if e.kind.is_health_failure() && !own_deadline {
            self.breaker_record(provider, false);
        } else if tried.probe || e.kind == FailureKind::InvalidRequest {
            self.breaker_record(provider, true);
        }
        if e.kind == FailureKind::RateLimited {
            metrics::counter!("sluice_provider_rate_limited_total", "provider" => provider.name.clone()).increment(1);
            // `retry_after` is clamped to MAX_RETRY_AFTER by the client.
            if let Some(until) = e.retry_after.and_then(|ra| Instant::now().checked_add(ra)) {
                let mut h = provider
                    .hold_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if h.is_none_or(|x| x < until) {
                    *h = Some(until);
                }
            }
        } else {
            walk.all_throttled = false;
        }
        if !e.kind.fails_over() {
            return Verdict::GiveUp(match e.kind {
                FailureKind::ContentFiltered => ModelError::ContentFiltered { message: e.message },
                _ => ModelError::invalid(format!("{}: {}", provider.name, e.message)),
            });
        }
        let retry = e.kind.retryable() && tried.try_no < provider.max_retries;
        let kind = e.kind.as_str();
        let wait = backoff(&self.inner.retry, tried.try_no).max(e.retry_after.unwrap_or_default());
        walk.last = Some(e);
        if !retry || Instant::now() + wait >= deadline {
            // Out of retries here, or no time to retry: the next provider may still answer.
            return Verdict::FailOver;
        }
        Verdict::RetryAfter { wait, kind }
    }

    /// Record a breaker's view of `provider`, with the gauge, counter and log of a change.
    pub(super) fn breaker_record(&self, provider: &ProviderEntry, healthy: bool) {
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

/// Moving to a chain position: the record names it, and a position past the first is a
/// fallback (an event of the model-call span, as are the waits and retries).
fn enter<P>(pos: &Position<'_, P>, position: usize, record: &mut CallRecord) {
    let (model, provider) = (pos.model, pos.provider);
    record.provider = Some(provider.name.clone());
    record.model = Some(model.id.clone());
    if position > 0 {
        tracing::debug!(to = %provider.name, model = %model.id, "fallback");
        record.fallbacks += 1;
        metrics::counter!("sluice_model_fallbacks_total", "to" => provider.name.clone())
            .increment(1);
    }
}

/// Why the prompt and output cap cannot fit `pos`'s context window, if they cannot.
fn context_refusal<P>(pos: &Position<'_, P>, est_input: u32) -> Option<ProviderError> {
    let limit = pos.model.context_tokens?;
    let needed =
        u64::from(est_input.saturating_sub(ESTIMATE_MARGIN_TOKENS)) + u64::from(pos.max_out);
    (needed > u64::from(limit)).then(|| {
        ProviderError::new(
            FailureKind::InvalidRequest,
            format!(
                "the prompt and max_tokens exceed {}'s context of {limit} tokens",
                pos.model.id
            ),
        )
    })
}

/// A position passed over without a provider call.
fn skip<P>(record: &mut CallRecord, pos: &Position<'_, P>, outcome: AttemptOutcome) {
    record.attempts.push(AttemptInfo {
        provider: pos.provider.name.clone(),
        model: pos.model.id.clone(),
        outcome,
        status: None,
        latency_ms: 0,
        rate_limit_wait_ms: 0,
    });
}

/// A position with no capacity before the deadline: skipped, and (if this was the breaker's
/// probe) nothing was learned about the provider's health.
fn throttled<'g, P, R>(
    walk: &mut Walk,
    record: &mut CallRecord,
    pos: &Position<'_, P>,
    retry_in: Duration,
    probe: bool,
) -> Verdict<'g, R> {
    walk.throttled_for(retry_in);
    skip(record, pos, AttemptOutcome::Throttled);
    if probe {
        pos.provider.breaker.record(true);
    }
    Verdict::FailOver
}

/// Wait out a 429's `retry-after` on `provider` (it holds every call to it), with jitter;
/// `Err(time left on the hold)` when it outlasts the deadline.
async fn wait_for_hold(
    provider: &ProviderEntry,
    deadline: Instant,
    record: &mut CallRecord,
) -> Result<(), Duration> {
    let hold = *provider
        .hold_until
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(h) = hold else { return Ok(()) };
    let now = Instant::now();
    if h <= now {
        return Ok(());
    }
    if h >= deadline {
        return Err(h - now);
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
    metrics::histogram!("sluice_rate_limit_wait_seconds", "provider" => provider.name.clone())
        .record((wait + jitter).as_secs_f64());
    Ok(())
}

/// Rate-limit capacity for `cost_tokens` at `pos`, waiting no later than leaves time for the
/// attempt itself (1.5× a typical one) before the deadline; `Err(when capacity returns)`.
async fn acquire<P>(
    pos: &Position<'_, P>,
    cost_tokens: u32,
    deadline: Instant,
    record: &mut CallRecord,
) -> Result<(Permit, Duration), Duration> {
    let provider = pos.provider;
    let headroom = provider.typical() * 3 / 2;
    let wait_until = deadline
        .checked_sub(headroom)
        .unwrap_or(deadline)
        .max(Instant::now());
    let (permit, waited) = pos
        .model
        .limits
        .acquire(cost_tokens, wait_until)
        .await
        .map_err(|t| t.retry_after)?;
    if !waited.is_zero() {
        tracing::debug!(
            provider = %provider.name,
            sluice.wait_ms = ms(waited),
            sluice.reason = "limiter",
            "rate_limit.wait"
        );
        record.rate_limit_wait_ms = record.rate_limit_wait_ms.saturating_add(ms(waited).into());
        metrics::histogram!("sluice_rate_limit_wait_seconds", "provider" => provider.name.clone())
            .record(waited.as_secs_f64());
    }
    Ok((permit, waited))
}

/// The provider call of one attempt, in its span, within `budget`.
async fn send<K: CallKind>(
    call: &ChainCall<'_, K>,
    pos: &Position<'_, K::Prepared>,
    try_no: u32,
    waited: Duration,
    budget: Duration,
) -> Result<K::Reply, ProviderError> {
    let (model, provider) = (pos.model, pos.provider);
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
    let request = async {
        call.sent.store(true, Ordering::Relaxed);
        call.call
            .attempt(&*provider.client, model, &pos.prepared, call.on_delta)
            .await
    };
    let result = match tokio::time::timeout(budget, request.instrument(span.clone())).await {
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
    result
}

/// Exponential backoff with full jitter: uniform in `0..=min(max, base·2^n)`.
fn backoff(cfg: &RetryConfig, n: u32) -> Duration {
    let ceiling = cfg
        .base_delay_ms
        .saturating_mul(1u64 << n.min(20))
        .min(cfg.max_delay_ms);
    Duration::from_millis(rand::random_range(0..=ceiling))
}
