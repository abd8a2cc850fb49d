//! What the host tells a handler about the job it is running.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bindings::types as wit;

/// The job a handler is running: who submitted it, which attempt this is, and how long it has.
///
/// The host hands one to the handler function the [`handler!`](crate::handler) macro exports.
/// Tests of handler logic can build one with [`Job::new`] and the `with_*` methods.
///
/// ```
/// use std::time::Duration;
/// use sluice_sdk::Job;
///
/// let job = Job::new("0190c0de-0000-7000-8000-000000000001")
///     .with_attempt(2, 3)
///     .with_tag("user", "alice");
/// assert_eq!(job.tag("user"), Some("alice"));
/// assert!(job.is_retry());
/// assert!(!job.is_last_attempt());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    id: String,
    plugin: String,
    tenant: String,
    attempt: u32,
    max_attempts: u32,
    idempotency_key: Option<String>,
    tags: BTreeMap<String, String>,
    deadline_unix_ms: u64,
}

impl Job {
    /// A job with this id, for tests: plugin and tenant `test`, attempt 1 of 1, no tags,
    /// no idempotency key, and a deadline one minute from now.
    pub fn new(id: impl Into<String>) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Job {
            id: id.into(),
            plugin: "test".into(),
            tenant: "test".into(),
            attempt: 1,
            max_attempts: 1,
            idempotency_key: None,
            tags: BTreeMap::new(),
            deadline_unix_ms: crate::error::millis(now + Duration::from_secs(60)),
        }
    }

    /// Set the plugin name.
    #[must_use]
    pub fn with_plugin(mut self, plugin: impl Into<String>) -> Self {
        self.plugin = plugin.into();
        self
    }

    /// Set the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// Set which attempt this is (from 1) out of how many the job may make.
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32, max_attempts: u32) -> Self {
        self.attempt = attempt;
        self.max_attempts = max_attempts;
        self
    }

    /// Set the idempotency key.
    #[must_use]
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Add a tag, replacing any tag of the same name.
    #[must_use]
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// Set the deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: SystemTime) -> Self {
        let since_epoch = deadline.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.deadline_unix_ms = crate::error::millis(since_epoch);
        self
    }

    /// The job's unique id (a UUID in text form).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The name of the plugin the job was submitted to.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The tenant that owns the job; state and budgets are scoped to it.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Which attempt this is, starting at 1. Model calls and effects of earlier attempts are
    /// replayed from the job's journal, so re-running them costs nothing.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many attempts the job may make in total before it becomes dead.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether an earlier attempt of this job already ran.
    pub fn is_retry(&self) -> bool {
        self.attempt > 1
    }

    /// Whether a retryable error from this attempt would make the job dead anyway.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The `Idempotency-Key` the job was submitted with, if any.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }

    /// The tags the job was submitted with (`user`, `feature`, …). When a tag name was given
    /// more than once, the last value wins.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }

    /// One tag's value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// When this attempt's time runs out. The host stops the handler then, even inside a
    /// model call.
    pub fn deadline(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.deadline_unix_ms)
    }

    /// The deadline in milliseconds since the Unix epoch.
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_unix_ms
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

impl From<wit::JobInfo> for Job {
    fn from(info: wit::JobInfo) -> Self {
        Job {
            id: info.id,
            plugin: info.plugin,
            tenant: info.tenant,
            attempt: info.attempt,
            max_attempts: info.max_attempts,
            idempotency_key: info.idempotency_key,
            tags: info.tags.into_iter().map(|t| (t.key, t.value)).collect(),
            deadline_unix_ms: info.deadline_unix_ms,
        }
    }
}

thread_local! {
    /// The id of the job the current `handle` call runs, for helpers that record who wrote
    /// something (see `state::Conversation`). A component instance runs one job at a time.
    static CURRENT_JOB_ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Marks `id` as the running job until dropped.
pub(crate) struct CurrentJob(());

impl CurrentJob {
    pub(crate) fn enter(id: &str) -> Self {
        CURRENT_JOB_ID.with(|c| *c.borrow_mut() = Some(id.to_owned()));
        CurrentJob(())
    }
}

impl Drop for CurrentJob {
    fn drop(&mut self) {
        CURRENT_JOB_ID.with(|c| *c.borrow_mut() = None);
    }
}

/// The id of the job being run, if the handler was entered through the SDK.
pub(crate) fn current_job_id() -> Option<String> {
    CURRENT_JOB_ID.with(|c| c.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> wit::JobInfo {
        wit::JobInfo {
            id: "j1".into(),
            plugin: "summarize".into(),
            tenant: "acme".into(),
            attempt: 3,
            max_attempts: 3,
            idempotency_key: Some("k".into()),
            tags: vec![
                wit::Tag {
                    key: "user".into(),
                    value: "bob".into(),
                },
                wit::Tag {
                    key: "user".into(),
                    value: "alice".into(),
                },
                wit::Tag {
                    key: "feature".into(),
                    value: "search".into(),
                },
            ],
            deadline_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn from_job_info() {
        let job = Job::from(info());
        assert_eq!(job.id(), "j1");
        assert_eq!(job.plugin(), "summarize");
        assert_eq!(job.tenant(), "acme");
        assert_eq!((job.attempt(), job.max_attempts()), (3, 3));
        assert!(job.is_retry() && job.is_last_attempt());
        assert_eq!(job.idempotency_key(), Some("k"));
        assert_eq!(job.tag("user"), Some("alice"), "last duplicate wins");
        assert_eq!(job.tags().len(), 2);
        assert_eq!(job.deadline_unix_ms(), 1_700_000_000_000);
        assert_eq!(
            job.deadline(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            job.remaining(),
            Duration::ZERO,
            "a deadline in the past leaves nothing"
        );
    }

    #[test]
    fn test_builder() {
        let job = Job::new("x")
            .with_plugin("p")
            .with_tenant("t")
            .with_idempotency_key("i");
        assert_eq!(
            (job.plugin(), job.tenant(), job.idempotency_key()),
            ("p", "t", Some("i"))
        );
        assert!(!job.is_retry() && job.is_last_attempt());
        assert!(job.remaining() > Duration::from_secs(50));
        let later = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        assert_eq!(job.with_deadline(later).deadline(), later);
    }

    #[test]
    fn current_job_is_scoped() {
        assert_eq!(current_job_id(), None);
        {
            let _g = CurrentJob::enter("abc");
            assert_eq!(current_job_id().as_deref(), Some("abc"));
        }
        assert_eq!(current_job_id(), None);
    }
}
