//! The data the store takes and returns, by section: the queue's here (jobs from enqueue to
//! history, leases, dead letters), the plugin section's in `plugins`, the record section's
//! (journal, usage, events, API keys) in `records`. All are re-exported from here.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_types::{JobError, JobInfo, Tags};
use uuid::Uuid;

mod plugins;
mod records;

pub use plugins::*;
pub use records::*;

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// A job to enqueue. `NewJob::new` fills the defaults; set the public fields for the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewJob {
    /// The tenant submitting the job.
    pub tenant: String,
    /// The plugin (of that tenant) to run; its active version is resolved at enqueue.
    pub plugin: String,
    /// The handler's input.
    pub input: Value,
    /// Lower runs first within the tenant. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Not before this time (a delayed job). Default: now.
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Attempt timeout; default from the plugin settings, then [`crate::StoreConfig`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Attempts allowed; default from the plugin settings, then [`crate::StoreConfig`].
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Attribution tags (`user`, `feature`, anything).
    #[serde(default)]
    pub tags: Tags,
    /// Idempotency key, unique per tenant for [`crate::StoreConfig::idempotency_ttl`].
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Where to POST the outcome.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

impl NewJob {
    /// A job with default options.
    pub fn new(tenant: impl Into<String>, plugin: impl Into<String>, input: Value) -> Self {
        NewJob {
            tenant: tenant.into(),
            plugin: plugin.into(),
            input,
            priority: 0,
            run_at: None,
            timeout_ms: None,
            max_attempts: None,
            tags: Tags::new(),
            idempotency_key: None,
            webhook_url: None,
        }
    }

    /// Set the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Add a tag.
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }
}

/// The result of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    /// The job's id.
    pub id: Uuid,
    /// True when an idempotency key matched an existing job with the same body (nothing was
    /// inserted).
    pub existing: bool,
    /// The job's status as the enqueue left it: `queued` or `scheduled` for a new job; for an
    /// existing one, its status read in the same transaction (`queued` if it is gone, purged
    /// while its key lived on).
    pub status: JobStatus,
}

impl Enqueued {
    /// A job just inserted, due at `run_at` (`None`: now), as of `now`.
    pub(crate) fn inserted(id: Uuid, run_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        Enqueued {
            id,
            existing: false,
            status: live_status(false, 0, run_at.unwrap_or(now), now),
        }
    }

    /// An existing job an idempotency key named, in `status` (`None`: no longer stored).
    pub(crate) fn existing(id: Uuid, status: Option<JobStatus>) -> Self {
        Enqueued {
            id,
            existing: true,
            status: status.unwrap_or(JobStatus::Queued),
        }
    }
}

pub use sluice_types::JobStatus;

/// Derive the status of a row in the hot table (`available` or `running`).
pub(crate) fn live_status(
    running: bool,
    attempt: i64,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> JobStatus {
    if running {
        JobStatus::Running
    } else if attempt > 0 {
        JobStatus::Retrying
    } else if run_at > now {
        JobStatus::Scheduled
    } else {
        JobStatus::Queued
    }
}

/// A (job, lease token) pair: what a worker holds for each claimed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The job.
    pub id: Uuid,
    /// The token the claim handed out.
    pub token: Uuid,
}

/// A per-`(tenant, plugin)` concurrency cap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PluginCap {
    /// Tenant.
    pub tenant: String,
    /// Plugin.
    pub plugin: String,
    /// Most jobs of this plugin running at once, across all nodes.
    pub max_running: u32,
}

/// What a worker asks for when it has free slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Who claims (recorded on the job and in its attempt log).
    pub worker_id: String,
    /// Most jobs to claim: the worker's free slots.
    pub limit: u32,
    /// Lease length; heartbeats extend it.
    pub lease: Duration,
    /// Per-`(tenant, plugin)` running caps.
    pub plugin_caps: Vec<PluginCap>,
    /// Per-tenant running cap for tenants without an override.
    pub tenant_cap: Option<u32>,
    /// Per-tenant running cap overrides.
    pub tenant_caps: HashMap<String, u32>,
}

impl ClaimRequest {
    /// A claim without caps.
    pub fn new(worker_id: impl Into<String>, limit: u32, lease: Duration) -> Self {
        ClaimRequest {
            worker_id: worker_id.into(),
            limit,
            lease,
            plugin_caps: Vec::new(),
            tenant_cap: None,
            tenant_caps: HashMap::new(),
        }
    }

    /// Whether any cap applies.
    pub fn has_caps(&self) -> bool {
        self.has_exact_caps() || self.tenant_cap.is_some()
    }

    /// Whether a cap applies that must hold exactly across nodes (a plugin's `concurrency`,
    /// a tenant override): Postgres serializes such claims. The default per-tenant cap is a
    /// fair-share bound, not a promise: nodes claiming at the same instant may overshoot it by
    /// one claim's worth, and claims carrying only it take no lock.
    pub fn has_exact_caps(&self) -> bool {
        !self.plugin_caps.is_empty() || !self.tenant_caps.is_empty()
    }
}

/// A job a worker now holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedJob {
    /// The job.
    pub id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version recorded at enqueue (or redrive).
    pub plugin_version: i64,
    /// Component digest recorded at enqueue (or redrive): the code to run.
    pub digest: String,
    /// Handler input.
    pub input: Value,
    /// Tags.
    pub tags: Tags,
    /// Priority.
    pub priority: i32,
    /// This attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Redrive generation (0 until redriven).
    pub run: u32,
    /// Attempt timeout.
    pub timeout_ms: u64,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Webhook for the outcome.
    pub webhook_url: Option<String>,
    /// The lease to heartbeat and finalize with.
    pub lease: Lease,
    /// When the lease runs out unless extended.
    pub lease_expires_at: DateTime<Utc>,
    /// When this attempt was claimed.
    pub attempted_at: DateTime<Utc>,
    /// When the job was due (claim latency = `attempted_at − run_at`).
    pub run_at: DateTime<Utc>,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// When this attempt must end: claim time + timeout.
    /// Saturates instead of overflowing: `timeout_ms` comes from a tenant and is bounded at
    /// submit, but a row written before that bound (or by another version) must not panic.
    pub fn deadline(&self) -> DateTime<Utc> {
        let ms = i64::try_from(self.timeout_ms).unwrap_or(i64::MAX);
        chrono::TimeDelta::try_milliseconds(ms)
            .and_then(|d| self.attempted_at.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// What the handler is told about the job.
    pub fn job_info(&self) -> JobInfo {
        JobInfo {
            id: self.id,
            plugin: self.plugin.clone(),
            tenant: self.tenant.clone(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            idempotency_key: self.idempotency_key.clone(),
            tags: self.tags.clone(),
            deadline_unix_ms: self.deadline().timestamp_millis().max(0) as u64,
        }
    }
}

/// What a heartbeat learned about one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    /// Extended.
    Held,
    /// Extended, but the job was cancelled: stop the handler and finalize with `fail`.
    CancelRequested,
    /// The lease is gone (rescued, re-claimed or finalized): drop the job.
    Lost,
}

/// One successful result for [`crate::JobStore::complete_many`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The lease held.
    pub lease: Lease,
    /// The handler's output.
    pub output: Value,
}

/// A failed attempt, for [`crate::JobStore::fail`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// How it failed.
    pub error: JobError,
    /// Anything else worth keeping in the attempt log (trap backtrace, timings, …).
    pub detail: Option<Value>,
}

impl Failure {
    /// A failure without detail.
    pub fn new(error: JobError) -> Self {
        Failure {
            error,
            detail: None,
        }
    }
}

/// The outcome of a lease-guarded finalize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Finalized {
    /// Output stored.
    Completed,
    /// Rescheduled.
    Retrying {
        /// When it is due again.
        run_at: DateTime<Utc>,
        /// The attempt that failed.
        attempt: u32,
    },
    /// Moved to the dead-letter queue.
    Dead,
    /// Cancelled (a cancel was requested while it ran).
    Cancelled,
    /// The lease was not held any more: nothing changed.
    LeaseLost,
}

/// The outcome of [`crate::JobStore::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was waiting; it is now cancelled.
    Cancelled,
    /// It is running; the worker will stop it and finalize it as cancelled.
    CancelRequested,
    /// It had already finished.
    AlreadyFinished {
        /// How it finished.
        status: JobStatus,
    },
    /// No such job.
    NotFound,
}

/// What a rescue pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescueReport {
    /// Jobs put back to retry.
    pub retried: Vec<Uuid>,
    /// Jobs out of attempts, now dead.
    pub dead: Vec<Uuid>,
    /// Jobs whose cancel was requested, now cancelled.
    pub cancelled: Vec<Uuid>,
}

impl RescueReport {
    /// Jobs touched.
    pub fn total(&self) -> usize {
        self.retried.len() + self.dead.len() + self.cancelled.len()
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The handler returned output.
    Completed,
    /// The handler (or host) reported an error.
    Failed,
    /// The worker stopped heartbeating; the rescuer took the job back.
    LeaseExpired,
    /// Stopped because the job was cancelled.
    Cancelled,
}

/// One attempt in a job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Redrive generation.
    pub run: u32,
    /// Attempt number within the run.
    pub attempt: u32,
    /// Who ran it.
    pub worker_id: Option<String>,
    /// The code it ran.
    pub digest: String,
    /// Claimed at.
    pub started_at: DateTime<Utc>,
    /// Ended (or was declared lost) at.
    pub finished_at: DateTime<Utc>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// Its error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Extra detail the worker supplied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// Everything known about one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Plugin name.
    pub plugin: String,
    /// Plugin version.
    pub plugin_version: i64,
    /// Component digest.
    pub digest: String,
    /// Status.
    pub status: JobStatus,
    /// Priority.
    pub priority: i32,
    /// Input.
    pub input: Value,
    /// Tags.
    pub tags: Tags,
    /// Attempts made in the current run.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Redrive generation.
    pub run: u32,
    /// Attempt timeout.
    pub timeout_ms: u64,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Webhook.
    pub webhook_url: Option<String>,
    /// Worker of the current or last attempt.
    pub worker_id: Option<String>,
    /// Whether a cancel was requested while it ran.
    pub cancel_requested: bool,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Due at.
    pub run_at: DateTime<Utc>,
    /// Current or last attempt started at.
    pub attempted_at: Option<DateTime<Utc>>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Finished at (terminal statuses).
    pub finished_at: Option<DateTime<Utc>>,
    /// Output (completed).
    pub output: Option<Value>,
    /// Final error (dead, cancelled).
    pub error: Option<JobError>,
    /// Every attempt, oldest first (the completing one included).
    pub attempts: Vec<AttemptRecord>,
}

/// A job in a listing (no input, output or attempt log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub tenant: String,
    /// Plugin.
    pub plugin: String,
    /// Plugin version.
    pub plugin_version: i64,
    /// Status.
    pub status: JobStatus,
    /// Priority.
    pub priority: i32,
    /// Tags.
    pub tags: Tags,
    /// Attempts made in the current run.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Redrive generation.
    pub run: u32,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Due at.
    pub run_at: DateTime<Utc>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Final error (dead, cancelled).
    pub error: Option<JobError>,
}

/// Which jobs to list. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// Owner.
    pub tenant: Option<String>,
    /// Status.
    pub status: Option<JobStatus>,
    /// Plugin.
    pub plugin: Option<String>,
    /// Tags that must all be present with these values.
    #[serde(default)]
    pub tags: Tags,
}

/// One page request: newest first, `before` the cursor of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    /// Page size (1..=1000).
    pub limit: u32,
    /// Only jobs older than this id (the previous page's `next`).
    pub before: Option<Uuid>,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            limit: 100,
            before: None,
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, newest first.
    pub items: Vec<T>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next: Option<Uuid>,
}

/// Which dead jobs to redrive. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadFilter {
    /// Owner.
    pub tenant: Option<String>,
    /// Plugin.
    pub plugin: Option<String>,
    /// Only these jobs.
    pub ids: Option<Vec<Uuid>>,
    /// At most this many (default 10,000 per call).
    pub limit: Option<u32>,
}

/// Which code a redriven job runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", content = "version", rename_all = "snake_case")]
pub enum RedriveTarget {
    /// The version it ran before.
    #[default]
    Same,
    /// The plugin's active version now (falls back to the old one if the plugin is gone).
    Active,
    /// This version of the plugin (the filter must name tenant and plugin).
    Version(i64),
}

/// How to redrive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveOptions {
    /// Which code to run.
    pub target: RedriveTarget,
    /// New attempt budget (default: the job's previous `max_attempts`).
    pub max_attempts: Option<u32>,
    /// Forget journaled model calls, so the new run calls providers afresh. Committed effects
    /// are kept either way.
    pub clear_journal: bool,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Delayed jobs.
    pub scheduled: u64,
    /// Ready jobs.
    pub queued: u64,
    /// Jobs waiting to retry.
    pub retrying: u64,
    /// Running jobs.
    pub running: u64,
    /// Dead-letter queue depth.
    pub dead: u64,
}

/// The queue by plugin and the age of the dead-letter queue, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueBreakdown {
    /// Depths of each plugin name with any job waiting, running or dead (over all tenants),
    /// sorted by name.
    pub by_plugin: Vec<(String, QueueStats)>,
    /// When the oldest job still in the dead-letter queue died.
    pub oldest_dead_at: Option<DateTime<Utc>>,
}
