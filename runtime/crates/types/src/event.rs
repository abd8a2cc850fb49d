//! Events a job emits while it runs: what SSE subscribers, webhooks and traces see.

use serde::{Deserialize, Serialize};

use crate::status::JobStatus;

/// Log severity (mirrors WIT `events.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal.
    Info,
    /// Worked around.
    Warn,
    /// Failure.
    Error,
}

/// One event in a job's story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// The job changed state (`queued`, `running`, `retrying`, …).
    Status {
        /// The new state.
        status: JobStatus,
        /// The attempt it concerns.
        attempt: u32,
        /// Why, for failures.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Handler-reported progress.
    Progress {
        /// E.g. `chunk 3/10`.
        message: String,
        /// 0.0..=1.0 when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        fraction: Option<f32>,
    },
    /// A handler log line.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
        /// Structured fields.
        fields: Vec<(String, String)>,
    },
    /// Tokens of a streaming model call.
    TokenDelta {
        /// The call's position in the attempt.
        call: u32,
        /// The new text.
        delta: String,
    },
    /// A model call finished.
    ModelCall {
        /// The call's position in the attempt.
        call: u32,
        /// Model that answered (or was asked, on error).
        model: String,
        /// Provider that answered.
        provider: String,
        /// Tokens in.
        input_tokens: u32,
        /// Tokens out.
        output_tokens: u32,
        /// Cost in micro-dollars.
        cost_micros: u64,
        /// provider, cache or journal; or the error kind.
        outcome: String,
    },
    /// The attempt emitted more events than its limits allow: the events past the cap were
    /// dropped. Emitted once, at the end of the attempt, after every event that was kept.
    EventsTruncated {
        /// The attempt it concerns.
        attempt: u32,
        /// Events dropped.
        dropped: u64,
        /// Bytes of event text dropped.
        dropped_bytes: u64,
        /// The attempt's event count cap.
        max_events: u32,
        /// The attempt's event bytes cap.
        max_bytes: u64,
    },
}

impl JobEvent {
    /// Whether this event announces that its job finished (completed, dead or cancelled):
    /// what waiters, SSE streams and webhooks stop on.
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobEvent::Status { status, .. } if status.is_terminal())
    }

    /// The SSE event name for this event: always its `type` in the event's JSON, so a
    /// client can dispatch on either.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Status { .. } => "status",
            JobEvent::Progress { .. } => "progress",
            JobEvent::Log { .. } => "log",
            JobEvent::TokenDelta { .. } => "token_delta",
            JobEvent::ModelCall { .. } => "model_call",
            JobEvent::EventsTruncated { .. } => "events_truncated",
        }
    }
}
