//! What the plugin section takes and returns: settings, versions, plugins.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A plugin version's settings (stored as JSON; unknown keys are kept in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginSettings {
    /// Attempt timeout for its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Linear memory cap of an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Attempts allowed for its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Most of its jobs running at once, across nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Model aliases or `provider/model` names it may call (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// Tighter per-attempt limits on what its handler may send the host.
    #[serde(default, skip_serializing_if = "PluginLimits::is_empty")]
    pub limits: PluginLimits,
    /// Anything else.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// A plugin's own limits on what its handler sends the host in one attempt (see
/// `docs/limits.md`). Each may only lower the node's default (`[engine.limits]`): the tenant
/// that owns a plugin can tighten what the operator set, never loosen it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLimits {
    /// Events (progress and log lines) per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u32>,
    /// Bytes of event text per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_event_bytes: Option<u64>,
    /// Bytes of output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    /// Model calls per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_model_calls: Option<u32>,
    /// Requests in one chat batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chat_batch: Option<u32>,
    /// Micro-dollars in one `report-cost` call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_report_micros: Option<u64>,
    /// Micro-dollars reported by one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reported_cost_micros: Option<u64>,
    /// Bytes of arguments in one host call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hostcall_bytes: Option<u64>,
}

impl PluginLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == PluginLimits::default()
    }
}

/// One uploaded version of a plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// Owner.
    pub tenant: String,
    /// Plugin name.
    pub plugin: String,
    /// Version number, from 1, never reused while the plugin exists.
    pub version: i64,
    /// Component digest (`sha256:<hex>`).
    pub digest: String,
    /// Settings.
    pub settings: PluginSettings,
    /// Uploaded at.
    pub created_at: DateTime<Utc>,
}

/// A plugin and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Owner.
    pub tenant: String,
    /// Name.
    pub name: String,
    /// The version new jobs run.
    pub active_version: Option<i64>,
    /// Every version, oldest first.
    pub versions: Vec<PluginVersion>,
}

impl PluginInfo {
    /// The active version's record.
    pub fn active(&self) -> Option<&PluginVersion> {
        let v = self.active_version?;
        self.versions.iter().find(|pv| pv.version == v)
    }
}
