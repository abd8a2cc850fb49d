//! What a call leaves behind for the host: the [`CallRecord`] a usage row is written from (on
//! failure too), its attempts, and the outcome types that carry it with the response.

use serde::{Deserialize, Serialize};
use sluice_types::ModelOutcome;
use sluice_types::model::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError};
use sluice_types::model::{ResponseSource, Usage};

use crate::outcome::AttemptOutcome;

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

    pub(super) fn new(operation: &str, requested_model: &str) -> Self {
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

/// The attempts of `record` in one line, repeats collapsed, for the error a caller sees when
/// every chain position failed.
pub(super) fn summary(record: &CallRecord) -> String {
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
