//! What the record section takes and returns: journal entries, usage, events, API keys, and
//! what a purge removed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_types::model::{ResponseSource, Usage};
use sluice_types::{JobEvent, Micros, ModelOutcome, Tags};
use uuid::Uuid;

/// One journaled model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The job.
    pub job_id: Uuid,
    /// The call's position within an attempt.
    pub seq: u32,
    /// The request's fingerprint (`ChatRequest::fingerprint`).
    pub fingerprint: String,
    /// The recorded response.
    pub response: Value,
    /// Tokens.
    pub usage: Usage,
}

/// One model call's usage, attributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The job (none for calls outside a job).
    pub job_id: Option<Uuid>,
    /// The attempt.
    pub attempt: u32,
    /// Plugin.
    pub plugin: String,
    /// Tenant.
    pub tenant: String,
    /// The job's tags.
    pub tags: Tags,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Prompt tokens (including cached).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_input_tokens: u64,
    /// Cost.
    pub cost_micros: Micros,
    /// Wall time.
    pub latency_ms: u32,
    /// Time to first token, when streamed.
    pub ttft_ms: Option<u32>,
    /// Provider, cache or journal.
    pub source: ResponseSource,
    /// `ok`, the error kind or `abandoned`.
    pub outcome: ModelOutcome,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// What to group usage by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "tag", rename_all = "snake_case")]
pub enum UsageGroupBy {
    /// Plugin name.
    Plugin,
    /// Model.
    Model,
    /// Provider.
    Provider,
    /// A tag's value (`user`, `feature`, …); records without it group under `None`.
    Tag(String),
}

/// A usage aggregate query over `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// From (inclusive).
    pub from: DateTime<Utc>,
    /// To (exclusive).
    pub to: DateTime<Utc>,
    /// Grouping.
    pub group_by: UsageGroupBy,
}

/// One group of a usage aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// The group's key (`None`: the tag was absent).
    pub key: Option<String>,
    /// Calls.
    pub calls: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_input_tokens: u64,
    /// Cost.
    pub cost_micros: Micros,
    /// Median latency (linear interpolation, as `percentile_cont`).
    pub latency_p50_ms: f64,
    /// 95th percentile latency.
    pub latency_p95_ms: f64,
}

/// A persisted job event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The job.
    pub job_id: Uuid,
    /// Per-job sequence, from 1 (the SSE `id`).
    pub seq: u64,
    /// The event.
    pub event: JobEvent,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A key to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewApiKey {
    /// Owner.
    pub tenant: String,
    /// Label.
    pub name: String,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the secret (the secret itself is never stored).
    pub secret_hash: String,
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Label.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Whether revoked.
    pub revoked: bool,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// History rows (with their journal, effects and events).
    pub jobs: u64,
    /// Expired idempotency keys.
    pub idempotency_keys: u64,
    /// Expired state entries.
    pub state_entries: u64,
}
