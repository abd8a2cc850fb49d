//! The traits behind the host imports. The engine calls them; the store, gateway and the
//! in-memory defaults implement them. Each is object-safe so a node wires its backends once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::event::JobEvent;
use crate::job::CallContext;
use crate::model::{ChatRequest, ChatResponse, EmbedRequest, EmbedResponse, ModelError};

/// The scope of a state key: one tenant's one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateScope {
    /// Tenant.
    pub tenant: String,
    /// Plugin.
    pub plugin: String,
}

impl StateScope {
    /// The scope of the job in `ctx`.
    pub fn of(ctx: &CallContext) -> Self {
        StateScope {
            tenant: ctx.job.tenant.clone(),
            plugin: ctx.job.plugin.clone(),
        }
    }
}

/// Why a state operation failed (mirrors WIT `state-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Empty, too long or otherwise unusable key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// Value over the size limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The store is unreachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Why an effect operation failed (mirrors WIT `effect-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    /// Empty or too long key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The journal is unreachable.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Longest state or effect key, in bytes (the WIT contract's limit).
pub const MAX_KEY_BYTES: usize = 512;

fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        Some("key must not be empty".into())
    } else if key.len() > MAX_KEY_BYTES {
        Some(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        ))
    } else {
        None
    }
}

/// Check a state key the way every [`StateBackend`] must.
pub fn check_state_key(key: &str) -> Result<(), StateError> {
    key_problem(key).map_or(Ok(()), |m| Err(StateError::InvalidKey(m)))
}

/// Check a state value against a backend's size limit.
pub fn check_state_value(value: &str, limit: usize) -> Result<(), StateError> {
    if value.len() > limit {
        return Err(StateError::TooLarge(format!(
            "value is {} bytes; the limit is {limit}",
            value.len()
        )));
    }
    Ok(())
}

/// Check an effect key the way every [`EffectsBackend`] must.
pub fn check_effect_key(key: &str) -> Result<(), EffectError> {
    key_problem(key).map_or(Ok(()), |m| Err(EffectError::InvalidKey(m)))
}

/// Model calls. `seq` is the call's position within the attempt (0, 1, 2, … in the order the
/// handler made them; a batch takes consecutive positions), which journal replay matches on.
#[async_trait]
pub trait ModelBackend: Send + Sync {
    /// One chat call.
    async fn chat(
        &self,
        ctx: &CallContext,
        seq: u32,
        request: ChatRequest,
    ) -> Result<ChatResponse, ModelError>;

    /// One embeddings call.
    async fn embed(
        &self,
        ctx: &CallContext,
        seq: u32,
        request: EmbedRequest,
    ) -> Result<EmbedResponse, ModelError>;
}

/// Key/value state per tenant + plugin.
#[async_trait]
pub trait StateBackend: Send + Sync {
    /// Read a key.
    async fn get(&self, scope: &StateScope, key: &str) -> Result<Option<String>, StateError>;
    /// Write a key, with an optional time to live.
    async fn set(
        &self,
        scope: &StateScope,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StateError>;
    /// Delete a key; true when it existed.
    async fn delete(&self, scope: &StateScope, key: &str) -> Result<bool, StateError>;
    /// Keys with a prefix, in order, at most `limit`.
    async fn list_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StateError>;
    /// Replace when the current value equals `expected` (`None`: absent).
    async fn compare_and_swap(
        &self,
        scope: &StateScope,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError>;
}

/// Once-per-job effects, journaled by key.
#[async_trait]
pub trait EffectsBackend: Send + Sync {
    /// The recorded result of `key` for `job`, if committed.
    async fn lookup(&self, job: Uuid, key: &str) -> Result<Option<String>, EffectError>;
    /// Record `key`'s result; a second commit keeps the first result.
    async fn commit(&self, job: Uuid, key: &str, result: &str) -> Result<(), EffectError>;
}

/// What a job spent so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Micro-dollars.
    pub cost_micros: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Calls made.
    pub calls: u32,
}

impl Spend {
    /// Add one model call.
    /// Saturating: counts a guest or a provider can inflate never wrap or panic.
    pub fn add_call(&mut self, usage: crate::model::Usage, cost_micros: u64) {
        self.add_cost(cost_micros);
        self.input_tokens = self
            .input_tokens
            .saturating_add(u64::from(usage.input_tokens));
        self.output_tokens = self
            .output_tokens
            .saturating_add(u64::from(usage.output_tokens));
        self.calls = self.calls.saturating_add(1);
    }

    /// Add a cost (saturating at `u64::MAX` µ$).
    pub fn add_cost(&mut self, cost_micros: u64) {
        self.cost_micros = (crate::money::Micros::new(self.cost_micros)
            + crate::money::Micros::new(cost_micros))
        .get();
    }
}

/// Spend tracking and budgets as the handler sees them.
#[async_trait]
pub trait UsageBackend: Send + Sync {
    /// Record a cost the host could not see; `Err` when a hard budget refuses it.
    async fn report_cost(
        &self,
        ctx: &CallContext,
        description: &str,
        cost_micros: u64,
    ) -> Result<(), String>;
    /// The job's spend so far.
    async fn job_spend(&self, ctx: &CallContext) -> Spend;
    /// The least remaining hard budget that applies, if any.
    async fn budget_remaining(&self, ctx: &CallContext) -> Option<u64>;
}

/// Where job events go (SSE fan-out, persistence, traces). Must not block.
pub trait EventSink: Send + Sync {
    /// Publish `event` for job `job`.
    fn emit(&self, job: Uuid, event: JobEvent);
}

/// The set of backends a node's engine serves its jobs with.
#[derive(Clone)]
pub struct HostServices {
    /// Model gateway.
    pub models: Arc<dyn ModelBackend>,
    /// State store.
    pub state: Arc<dyn StateBackend>,
    /// Effect journal.
    pub effects: Arc<dyn EffectsBackend>,
    /// Spend and budgets.
    pub usage: Arc<dyn UsageBackend>,
    /// Event publication.
    pub events: Arc<dyn EventSink>,
}
