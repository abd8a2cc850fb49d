//! Rows into the store's types, written once for both backends.
//!
//! The two schemas hold the same columns in different representations (Postgres: `uuid`,
//! `timestamptz`, `jsonb`, `int4`/`int8`, `bool`; SQLite: text ids, Unix-ms integers, JSON
//! text, 64-bit integers, 0/1). [`Columns`] is the per-backend part: how one column of a row
//! decodes into a Rust value. Every mapper below reads through it, so a column added to a
//! record is mapped in one place and decodes the same on both backends.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sluice_types::model::Usage;
use sluice_types::{JobError, JobStatus, Tags};
use uuid::Uuid;

use crate::control::{BudgetRecord, NodeRecord, WebhookDelivery};
use crate::error::Result;
use crate::machine::Running;
use crate::model::{
    ApiKey, AttemptOutcome, AttemptRecord, ClaimedJob, JobRecord, JobSummary, JournalEntry, Lease,
    PluginSettings, PluginVersion, live_status,
};

/// How a backend decodes one column of a result row (by name).
pub(crate) trait Columns {
    /// A non-null text column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// A non-null integer column of any width.
    fn int(&self, col: &str) -> Result<i64>;
    /// A nullable integer column of any width.
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// A non-null bytes column.
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    /// A non-null boolean column.
    fn flag(&self, col: &str) -> Result<bool>;
    /// A non-null id column.
    fn id(&self, col: &str) -> Result<Uuid>;
    /// A nullable id column.
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>>;
    /// A non-null timestamp column.
    fn time(&self, col: &str) -> Result<DateTime<Utc>>;
    /// A nullable timestamp column.
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    /// A non-null JSON column.
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T>;
    /// A nullable JSON column.
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>>;
    /// The time a live row's status is derived against: the database's clock where the query
    /// selected it (`now` column), else this node's.
    fn now(&self) -> Result<DateTime<Utc>>;
}

/// Counts are stored signed; a negative one (never written) reads as 0.
fn count(v: i64) -> u32 {
    v.clamp(0, i64::from(u32::MAX)) as u32
}

/// The status of a `jobs` or `job_history` row at `now`.
pub(crate) fn status<R: Columns>(r: &R, now: DateTime<Utc>) -> Result<JobStatus> {
    let state = r.text("state")?;
    Ok(match state.as_str() {
        "available" | "running" => live_status(
            state == "running",
            r.int("attempt")?,
            r.time("run_at")?,
            now,
        ),
        other => other.parse()?,
    })
}

/// A job a claim statement returned.
pub(crate) fn claimed<R: Columns>(r: &R) -> Result<ClaimedJob> {
    let id = r.id("id")?;
    Ok(ClaimedJob {
        id,
        tenant: r.text("tenant")?,
        plugin: r.text("plugin")?,
        plugin_version: r.int("plugin_version")?,
        digest: r.text("digest")?,
        input: r.json("input")?,
        tags: r.json::<Tags>("tags")?,
        priority: r.int("priority")? as i32,
        attempt: count(r.int("attempt")?),
        max_attempts: count(r.int("max_attempts")?),
        run: count(r.int("run")?),
        timeout_ms: r.int("timeout_ms")?.max(0) as u64,
        idempotency_key: r.opt_text("idempotency_key")?,
        webhook_url: r.opt_text("webhook_url")?,
        lease: Lease {
            id,
            token: r.id("lease_token")?,
        },
        lease_expires_at: r.time("lease_expires_at")?,
        attempted_at: r.time("attempted_at")?,
        run_at: r.time("run_at")?,
        created_at: r.time("created_at")?,
    })
}

/// Everything about one job, live or finished (the `GET_JOB_SQL` columns).
pub(crate) fn record<R: Columns>(r: &R) -> Result<JobRecord> {
    let status = status(r, r.now()?)?;
    let mut attempts = r.json::<Vec<AttemptRecord>>("attempt_log")?;
    let finished_at = r.opt_time("finished_at")?;
    let attempted_at = r.opt_time("attempted_at")?;
    let attempt = count(r.int("attempt")?);
    let run = count(r.int("run")?);
    let worker_id = r.opt_text("worker_id")?;
    let digest = r.text("digest")?;
    if status == JobStatus::Completed {
        // A completed attempt is not written to the log (completion is one batched
        // statement): it is the row itself.
        attempts.push(AttemptRecord {
            run,
            attempt,
            worker_id: worker_id.clone(),
            digest: digest.clone(),
            started_at: attempted_at.unwrap_or_default(),
            finished_at: finished_at.unwrap_or_default(),
            outcome: AttemptOutcome::Completed,
            error: None,
            detail: None,
        });
    }
    Ok(JobRecord {
        id: r.id("id")?,
        tenant: r.text("tenant")?,
        plugin: r.text("plugin")?,
        plugin_version: r.int("plugin_version")?,
        digest,
        status,
        priority: r.int("priority")? as i32,
        input: r.json("input")?,
        tags: r.json::<Tags>("tags")?,
        attempt,
        max_attempts: count(r.int("max_attempts")?),
        run,
        timeout_ms: r.int("timeout_ms")?.max(0) as u64,
        idempotency_key: r.opt_text("idempotency_key")?,
        webhook_url: r.opt_text("webhook_url")?,
        worker_id,
        cancel_requested: r.flag("cancel_requested")?,
        created_at: r.time("created_at")?,
        run_at: r.time("run_at")?,
        attempted_at,
        lease_expires_at: r.opt_time("lease_expires_at")?,
        finished_at,
        output: r.opt_json::<Value>("output")?,
        error: r.opt_json::<JobError>("error")?,
        attempts,
    })
}

/// A job in a listing.
pub(crate) fn summary<R: Columns>(r: &R, now: DateTime<Utc>) -> Result<JobSummary> {
    Ok(JobSummary {
        id: r.id("id")?,
        tenant: r.text("tenant")?,
        plugin: r.text("plugin")?,
        plugin_version: r.int("plugin_version")?,
        status: status(r, now)?,
        priority: r.int("priority")? as i32,
        tags: r.json::<Tags>("tags")?,
        attempt: count(r.int("attempt")?),
        max_attempts: count(r.int("max_attempts")?),
        run: count(r.int("run")?),
        created_at: r.time("created_at")?,
        run_at: r.time("run_at")?,
        finished_at: r.opt_time("finished_at")?,
        error: r.opt_json::<JobError>("error")?,
    })
}

/// A running job as a failed or lost attempt left it (the state machine's input).
pub(crate) fn running<R: Columns>(r: &R) -> Result<Running> {
    Ok(Running {
        attempt: count(r.int("attempt")?),
        max_attempts: count(r.int("max_attempts")?),
        run: count(r.int("run")?),
        cancel_requested: r.flag("cancel_requested")?,
        worker_id: r.opt_text("worker_id")?,
        digest: r.text("digest")?,
        attempted_at: r.opt_time("attempted_at")?,
    })
}

/// One version of a plugin.
pub(crate) fn plugin_version<R: Columns>(r: &R) -> Result<PluginVersion> {
    Ok(PluginVersion {
        tenant: r.text("tenant")?,
        plugin: r.text("name")?,
        version: r.int("version")?,
        digest: r.text("digest")?,
        settings: r.json::<PluginSettings>("settings")?,
        created_at: r.time("created_at")?,
    })
}

/// An API key (its hash, never the secret).
pub(crate) fn api_key<R: Columns>(r: &R) -> Result<ApiKey> {
    Ok(ApiKey {
        id: r.id("id")?,
        tenant: r.text("tenant")?,
        name: r.text("name")?,
        scopes: r.json::<Vec<String>>("scopes")?,
        secret_hash: r.text("secret_hash")?,
        created_at: r.time("created_at")?,
        revoked: r.opt_time("revoked_at")?.is_some(),
    })
}

/// A journaled model call.
pub(crate) fn journal_entry<R: Columns>(r: &R) -> Result<JournalEntry> {
    Ok(JournalEntry {
        job_id: r.id("job_id")?,
        seq: count(r.int("seq")?),
        fingerprint: r.text("fingerprint")?,
        response: r.json("response")?,
        usage: r.json::<Usage>("usage")?,
    })
}

/// A tenant's budget rule.
pub(crate) fn budget<R: Columns>(r: &R) -> Result<BudgetRecord> {
    Ok(BudgetRecord {
        tenant: r.text("tenant")?,
        name: r.text("name")?,
        spec: r.json::<Value>("spec")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// The columns [`delivery`] reads.
macro_rules! delivery_cols {
    () => {
        "id, delivery_id, tenant, job_id, url, event, payload, status, attempts, \
         next_attempt_at, last_error, created_at, finished_at"
    };
}
pub(crate) use delivery_cols;

/// A webhook delivery in the outbox.
pub(crate) fn delivery<R: Columns>(r: &R) -> Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        id: r.int("id")?,
        delivery_id: r.id("delivery_id")?,
        tenant: r.text("tenant")?,
        job_id: r.opt_id("job_id")?,
        url: r.text("url")?,
        event: r.text("event")?,
        payload: r.opt_json::<Value>("payload")?,
        status: r.text("status")?.parse()?,
        attempts: count(r.int("attempts")?),
        next_attempt_at: r.time("next_attempt_at")?,
        last_error: r.opt_text("last_error")?,
        created_at: r.time("created_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

/// A node that announced itself.
pub(crate) fn node<R: Columns>(r: &R) -> Result<NodeRecord> {
    Ok(NodeRecord {
        id: r.text("id")?,
        hostname: r.text("hostname")?,
        version: r.text("version")?,
        roles: r.text("roles")?,
        started_at: r.time("started_at")?,
        last_seen: r.time("last_seen")?,
    })
}
