//! Sluice's model gateway: every model call a handler makes goes through here.
//!
//! ```text
//! chat(ctx, request) ─▶ alias → chain ─▶ tenant's cache? ─▶ budget reserve (upper bound)
//!     ─▶ for each model in chain:
//!     breaker open? skip ─▶ 429 hold (≤ 600 s) ─▶ RPM/TPM limiter (waits up to the deadline)
//!     ─▶ provider attempt (timeout) ─▶ retry with backoff + full jitter / fail over
//! ─▶ cost (Micros, ≤ reservation) ─▶ budget settle + alerts ─▶ cache put ─▶ CallOutcome
//! ```
//!
//! Money stays honest: the reservation is an upper bound (a token per UTF-8 byte of prompt,
//! plus framing, plus `max_tokens`); settlement never exceeds it, even when a provider reports
//! more; a call whose future is dropped mid-way (job timeout, cancel) settles from a drop guard
//! at what was streamed, or at the reservation if its request was out, never at 0.
//!
//! - [`config`]: the `[gateway]` table of `sluice.toml` (providers, models with prices, alias
//!   chains, cache, retry, budgets); strict, validated at load.
//! - [`provider`]: the OpenAI-compatible and Anthropic Messages clients behind [`Provider`].
//! - [`sim`]: the simulated provider, a real HTTP server speaking both wire formats (behind the
//!   `sim` feature; its settings are in every build, and a build without it refuses
//!   `simulated` providers).
//! - [`Gateway`]: [`Gateway::chat`] and [`Gateway::embed`] return the response together with a
//!   [`CallRecord`] (what a usage row needs), on failure too ([`CallError`]).
//! - [`budget`]: hard budgets behind the [`Ledger`] trait, alerts behind [`AlertSink`].
//!
//! Journal replay and usage persistence are the host's: it checks its journal before calling
//! [`Gateway::chat`] and writes [`CallRecord`]s after.
//!
//! ```
//! use sluice_gateway::{Gateway, GatewayConfig};
//! use sluice_types::model::{ChatRequest, Message, ResponseSource};
//! use sluice_types::{CallContext, JobInfo};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // No keys needed: the default config starts two simulated providers in-process.
//! let gateway = Gateway::new(GatewayConfig::simulated()).await.unwrap();
//! let ctx = CallContext::new(JobInfo {
//!     id: uuid::Uuid::nil(), plugin: "demo".into(), tenant: "acme".into(), attempt: 1,
//!     max_attempts: 3, idempotency_key: None, tags: Default::default(), deadline_unix_ms: 0,
//! }, "sha256:demo");
//! let request = ChatRequest::new("fast", vec![Message::user("Summarize the quarterly report")]);
//! let first = gateway.chat(&ctx, request.clone(), None).await.unwrap();
//! assert_eq!(first.record.provider.as_deref(), Some("sim"));
//! assert!(first.response.cost_micros > 0);
//! let again = gateway.chat(&ctx, request, None).await.unwrap();
//! assert_eq!(again.response.source, ResponseSource::Cache);
//! assert_eq!(again.response.cost_micros, 0);
//! # });
//! ```

pub mod breaker;
pub mod budget;
pub mod cache;
pub mod config;
mod gateway;
pub mod health;
pub mod limiter;
mod outcome;
pub mod provider;
pub mod sim;
pub mod tokens;

pub use breaker::BreakerState;
pub use budget::{
    AlertKind, AlertSink, BudgetAlert, BudgetKey, BudgetLine, Budgets, FanoutAlertSink, Ledger,
    LedgerError, Level, LogAlertSink, MemoryLedger, Refusal,
};
pub use config::{
    BreakerConfig, BudgetConfig, BudgetLeaseConfig, BudgetScope, CacheConfig, ConfigError,
    GatewayConfig, ModelConfig, Period, ProviderConfig, ProviderKind, RetryConfig, Secret,
    SimulatedProvider, Wire,
};
pub use gateway::{
    AbandonedCall, AbandonedSink, AttemptInfo, CallError, CallOutcome, CallRecord, EmbedOutcome,
    Gateway, GatewayBuilder,
};
pub use health::ProviderHealth;
pub use outcome::AttemptOutcome;
pub use provider::{DeltaFn, FailureKind, Provider, ProviderError};
pub use sim::{Faults, Outage, SimConfig, SimStats};
#[cfg(feature = "sim")]
pub use sim::{SimControl, SimHandle};
