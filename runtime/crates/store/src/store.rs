//! The store interface the worker and the API call.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sluice_types::{EffectsBackend, JobEvent, StateBackend};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::StoreConfig;
use crate::control::ControlStore;
use crate::error::Result;
use crate::lease::LeaseStore;
use crate::model::*;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Postgres (production; shared by several nodes).
    Postgres,
    /// SQLite (embedded; one node).
    Sqlite,
}

/// Components and plugins: the code a tenant deployed and the version new jobs run.
#[async_trait]
pub trait PluginStore: Send + Sync {
    /// Store component bytes; returns their digest (`sha256:<hex>`). Idempotent.
    async fn put_component(&self, bytes: &[u8]) -> Result<String>;

    /// Component bytes by digest.
    async fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>>;

    /// Add a version of a tenant's plugin (creating the plugin on first use) running the
    /// stored component `digest`; optionally make it the active version.
    async fn create_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        digest: &str,
        settings: &PluginSettings,
        activate: bool,
    ) -> Result<PluginVersion>;

    /// Make `version` the one new jobs run.
    async fn activate_plugin_version(&self, tenant: &str, plugin: &str, version: i64)
    -> Result<()>;

    /// One version.
    async fn get_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<Option<PluginVersion>>;

    /// A plugin with all its versions.
    async fn get_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<PluginInfo>>;

    /// A tenant's plugins.
    async fn list_plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>>;

    /// Delete a plugin and its versions (queued jobs keep their recorded digest; component
    /// bytes stay). True when it existed.
    async fn delete_plugin(&self, tenant: &str, plugin: &str) -> Result<bool>;

    /// The `concurrency` setting of every active plugin version, as claim caps.
    async fn concurrency_caps(&self) -> Result<Vec<PluginCap>>;
}

/// The queue: jobs from enqueue to history, and the dead letters (the state machine of
/// `docs/job-states.md`).
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// A handle that wakes when work may be available (see [`WorkSignal`]).
    fn work_signal(&self) -> WorkSignal;

    /// Accept a job. Returns after the job is committed.
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued>;

    /// Accept many jobs atomically (all or none), in one transaction. Results are in input
    /// order.
    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;

    /// Claim up to `req.limit` due jobs (transition #2).
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedJob>>;

    /// Extend leases (transition #3). One status per lease, in order.
    async fn heartbeat(&self, leases: &[Lease], extend: Duration) -> Result<Vec<LeaseStatus>>;

    /// Store a job's output (transition #4).
    async fn complete(&self, lease: Lease, output: &Value) -> Result<Finalized>;

    /// Store many outputs in one statement. One outcome per item, in order
    /// (`Completed` or `LeaseLost`).
    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Finalized>>;

    /// Record a failed attempt: retry, dead, or cancelled (transitions #5–#7).
    async fn fail(&self, lease: Lease, failure: &Failure) -> Result<Finalized>;

    /// Cancel a job (transitions #11, #12).
    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome>;

    /// Take back jobs whose lease expired (transitions #8–#10).
    async fn rescue_expired_leases(&self) -> Result<RescueReport>;

    /// Everything about one job, live or finished.
    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>>;

    /// Jobs matching `filter`, newest first.
    async fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<JobSummary>>;

    /// Queue depth by status and the dead-letter depth.
    async fn queue_stats(&self) -> Result<QueueStats>;

    /// [`JobStore::queue_stats`] by plugin name, and when the oldest dead job died.
    async fn queue_breakdown(&self) -> Result<QueueBreakdown>;

    // -- dead letters ----------------------------------------------------------------------

    /// Dead jobs, newest first.
    async fn list_dead(
        &self,
        tenant: Option<&str>,
        plugin: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<JobSummary>> {
        let filter = JobFilter {
            tenant: tenant.map(str::to_owned),
            plugin: plugin.map(str::to_owned),
            status: Some(JobStatus::Dead),
            tags: Default::default(),
        };
        self.list_jobs(&filter, page).await
    }

    /// How many dead jobs match.
    async fn count_dead(&self, tenant: Option<&str>, plugin: Option<&str>) -> Result<u64>;

    /// Put dead jobs back in the queue (transition #13); returns their ids.
    async fn redrive(&self, filter: &DeadFilter, options: &RedriveOptions) -> Result<Vec<Uuid>>;
}

/// What a job leaves behind besides its row: its journal and trace, its model calls' usage,
/// its events; and the API keys that submit jobs.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Store the W3C `traceparent` of a job's `job` span (telemetry only; purged with the
    /// job). The value is 55 characters, formatted by the runtime.
    async fn set_job_trace(&self, job: Uuid, traceparent: &str) -> Result<()>;

    /// The `traceparent` stored by [`JobStore::set_job_trace`], if any.
    async fn job_trace(&self, job: Uuid) -> Result<Option<String>>;

    /// Record a model call at `(job, seq)`, replacing an entry from an earlier attempt.
    async fn journal_put(&self, entry: &JournalEntry) -> Result<()>;

    /// The entry at `(job, seq)`.
    async fn journal_get(&self, job: Uuid, seq: u32) -> Result<Option<JournalEntry>>;

    /// A job's entries in order.
    async fn journal_list(&self, job: Uuid) -> Result<Vec<JournalEntry>>;

    // -- usage -----------------------------------------------------------------------------

    /// Record model-call usage.
    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()>;

    /// Aggregate usage over a time range.
    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>>;

    // -- events ----------------------------------------------------------------------------

    /// Persist an event; returns its per-job sequence number (from 1).
    async fn append_event(&self, job: Uuid, event: &JobEvent) -> Result<u64>;

    /// Persist many events (of any jobs) at once; returns each one's per-job sequence
    /// number, in input order. A job's events are numbered in input order.
    async fn append_events(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(events.len());
        for (job, event) in events {
            seqs.push(self.append_event(*job, event).await?);
        }
        Ok(seqs)
    }

    /// A job's events with `seq > after`, in order, at most `limit`.
    async fn events_after(&self, job: Uuid, after: u64, limit: u32) -> Result<Vec<StoredEvent>>;

    // -- API keys --------------------------------------------------------------------------

    /// Store a key.
    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey>;

    /// The unrevoked key with this secret hash.
    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>>;

    /// A tenant's keys (revoked included).
    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>>;

    /// Every tenant's keys (revoked included), by tenant, then oldest first.
    async fn list_all_api_keys(&self) -> Result<Vec<ApiKey>>;

    /// The key with this id, revoked or not.
    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>>;

    /// Revoke a key; true when it existed and was live.
    async fn revoke_api_key(&self, id: Uuid) -> Result<bool>;

    /// How many unrevoked keys exist, across tenants (a server refuses to listen beyond
    /// loopback with none).
    async fn count_api_keys(&self) -> Result<u64>;
}

/// The durable queue and everything stored next to it: one trait per section ([`QueueStore`],
/// [`PluginStore`], [`RecordStore`], [`ControlStore`], and the engine's [`StateBackend`] and
/// [`EffectsBackend`]) and what concerns the whole store.
///
/// Object-safe: a node opens one with [`crate::open`] and shares it as `Arc<dyn JobStore>`,
/// whose methods include every section's. The state machine the queue implements is
/// `docs/job-states.md`.
#[async_trait]
pub trait JobStore:
    QueueStore
    + PluginStore
    + RecordStore
    + ControlStore
    + LeaseStore
    + StateBackend
    + EffectsBackend
    + Send
    + Sync
    + 'static
{
    /// The database behind this store.
    fn backend(&self) -> Backend;

    /// The settings it was opened with.
    fn config(&self) -> &StoreConfig;

    /// Close the pool and stop background tasks.
    async fn close(&self);

    /// Delete history past retention, expired idempotency keys and expired state.
    async fn purge(&self) -> Result<PurgeReport>;
}

/// Wakes a worker when work may be available: after an enqueue or redrive in this process,
/// a `NOTIFY` from another (Postgres), or a listener reconnect. A hint, not a promise: keep
/// polling with a bounded `max_wait` as the backstop.
#[derive(Debug, Clone)]
pub struct WorkSignal {
    rx: watch::Receiver<u64>,
}

impl WorkSignal {
    /// Wait until woken or `max_wait` passes; true when woken.
    pub async fn wait(&mut self, max_wait: Duration) -> bool {
        match tokio::time::timeout(max_wait, self.rx.changed()).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                // The store is gone; behave like a plain poll interval.
                tokio::time::sleep(max_wait).await;
                false
            }
            Err(_) => false,
        }
    }
}

/// The sending side of [`WorkSignal`].
#[derive(Debug, Clone)]
pub(crate) struct Signal {
    tx: std::sync::Arc<watch::Sender<u64>>,
}

impl Signal {
    pub(crate) fn new() -> Self {
        Signal {
            tx: std::sync::Arc::new(watch::channel(0).0),
        }
    }

    pub(crate) fn bump(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> WorkSignal {
        WorkSignal {
            rx: self.tx.subscribe(),
        }
    }
}
