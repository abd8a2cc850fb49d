//! Jobs as a handler and the host's backends see them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's tags (`user`, `feature`, anything), ordered so they serialize deterministically.
pub type Tags = BTreeMap<String, String>;

/// What the host tells a handler about the job it runs (mirrors WIT `job-info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id.
    pub id: Uuid,
    /// The plugin the job was submitted to.
    pub plugin: String,
    /// The tenant owning the job.
    pub tenant: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Attempts allowed in total.
    pub max_attempts: u32,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// The submission's tags.
    pub tags: Tags,
    /// When this attempt must end, in ms since the Unix epoch.
    pub deadline_unix_ms: u64,
}

/// How a job attempt failed, as the handler (or the host on its behalf) classified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobError {
    /// May pass on retry.
    #[error("retryable: {message}")]
    Retryable {
        /// Why.
        message: String,
        /// Least wait before the next attempt.
        retry_after_ms: Option<u64>,
    },
    /// Will not pass on retry: the job goes to the dead-letter queue.
    #[error("permanent: {message}")]
    Permanent {
        /// Why.
        message: String,
    },
}

impl JobError {
    /// A retryable error without a retry-after hint.
    pub fn retryable(message: impl Into<String>) -> Self {
        JobError::Retryable {
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError::Permanent {
            message: message.into(),
        }
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        match self {
            JobError::Retryable { message, .. } | JobError::Permanent { message } => message,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Retryable { .. })
    }
}

/// Everything a backend needs to attribute and scope one call made by a running job.
///
/// Cheap to clone; shared by every host call of one attempt.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The job being run.
    pub job: Arc<JobInfo>,
    /// The digest of the component the attempt runs.
    pub digest: String,
    /// Set when the job was cancelled: host calls refuse to continue.
    pub cancelled: Arc<AtomicBool>,
    /// The model names and aliases the plugin may call (`None`: any configured model). Set
    /// from the plugin's `allowed_models` setting.
    pub allowed_models: Option<Arc<[String]>>,
    /// Whether model calls consult the job's journal before calling a provider: true on a
    /// retry, and on the first attempt of a redriven job (its journal is kept unless the
    /// redrive asked for a fresh run), so work already paid for is not paid again.
    pub replay_journal: bool,
    /// Set when the plugin's settings could not be read (the store failed, or the plugin was
    /// deleted): `allowed_models` is unknown, so every model call is refused with this reason
    /// (fail closed), never allowed.
    pub models_refused: Option<Arc<str>>,
}

impl CallContext {
    /// A context for `job` running component `digest`.
    pub fn new(job: JobInfo, digest: impl Into<String>) -> Self {
        CallContext {
            replay_journal: job.attempt > 1,
            job: Arc::new(job),
            digest: digest.into(),
            cancelled: Arc::default(),
            allowed_models: None,
            models_refused: None,
        }
    }

    /// Consult the journal on this attempt (see [`CallContext::replay_journal`]).
    pub fn with_journal_replay(mut self, replay: bool) -> Self {
        self.replay_journal = replay;
        self
    }

    /// Restrict the models this job may call to `models` (names or aliases as requested).
    pub fn with_allowed_models(mut self, models: Option<Vec<String>>) -> Self {
        self.allowed_models = models.map(Arc::from);
        self
    }

    /// Refuse every model call with `reason`: the plugin's settings, and so its
    /// `allowed_models`, could not be read.
    pub fn with_models_refused(mut self, reason: impl Into<Arc<str>>) -> Self {
        self.models_refused = Some(reason.into());
        self
    }

    /// Whether the job may call `model` (as the handler named it). Always false once
    /// [`CallContext::with_models_refused`] was set.
    pub fn may_call(&self, model: &str) -> bool {
        self.models_refused.is_none()
            && self
                .allowed_models
                .as_ref()
                .is_none_or(|list| list.iter().any(|m| m == model))
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Milliseconds left before the attempt's deadline (0 when past it).
    pub fn remaining_ms(&self) -> u64 {
        self.job.deadline_unix_ms.saturating_sub(now_unix_ms())
    }
}

/// The current time in ms since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
