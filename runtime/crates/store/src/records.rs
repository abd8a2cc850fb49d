//! [`RecordStore`] written once over [`RecordSql`]: a job's trace and journal, usage, events
//! and API keys.
//!
//! The flow and the arguments are here; a backend supplies the SQL text that differs
//! ([`crate::sql`]) and three statements that differ as a whole: inserting usage (Postgres:
//! one multi-row `INSERT`; SQLite: row by row in one transaction), summarising it (Postgres
//! aggregates and takes percentiles in SQL; SQLite has no `percentile_cont`, so it sums in
//! Rust) and appending a batch of events (Postgres: one `unnest` statement; SQLite: in order
//! on the single writer).

use async_trait::async_trait;
use sluice_types::JobEvent;
use uuid::Uuid;

use crate::error::{Result, StoreError, is_unique_violation};
use crate::model::{
    ApiKey, JournalEntry, NewApiKey, StoredEvent, UsageQuery, UsageRecord, UsageSummary,
};
use crate::rows::{self, Columns};
use crate::sql::{Arg, On, Sql};
use crate::store::RecordStore;
use crate::util;

/// The columns [`rows::api_key`] reads.
macro_rules! api_key_cols {
    () => {
        "id, tenant, name, scopes, secret_hash, created_at, revoked_at"
    };
}
pub(crate) use api_key_cols;

/// The record statements, one set per backend (a default is the SQL both run). Each names
/// the arguments it binds.
#[async_trait]
pub(crate) trait RecordSql: Sql {
    /// Store traceparent `$2` of job `$1` unless stored.
    const SET_TRACE: &'static str = "INSERT INTO job_traces (job_id, traceparent) VALUES ($1, $2)
         ON CONFLICT (job_id) DO NOTHING";
    /// `traceparent` of job `$1`.
    const TRACE: &'static str = "SELECT traceparent FROM job_traces WHERE job_id = $1";
    /// Insert or replace the entry of job `$1` at `$2`: fingerprint `$3`, response `$4`,
    /// usage `$5` (`$6` now).
    const JOURNAL_PUT: &'static str;
    /// The entry of job `$1` at `$2`.
    const JOURNAL_GET: &'static str =
        "SELECT job_id, seq, fingerprint, response, usage FROM journal
         WHERE job_id = $1 AND seq = $2";
    /// Job `$1`'s entries in order.
    const JOURNAL_LIST: &'static str =
        "SELECT job_id, seq, fingerprint, response, usage FROM journal
         WHERE job_id = $1 ORDER BY seq";
    /// Append event `$2` to job `$1`'s, numbered after its last (`$3` now); `seq`.
    const APPEND_EVENT: &'static str;
    /// Job `$1`'s events with `seq > $2`, in order, at most `$3`.
    const EVENTS_AFTER: &'static str = "SELECT job_id, seq, event, created_at FROM job_events
         WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
    /// Insert key `$1` of tenant `$2`: name `$3`, scopes `$4`, secret hash `$5` (`$6` now),
    /// returning its columns.
    const CREATE_API_KEY: &'static str;
    /// The unrevoked key with secret hash `$1`.
    const API_KEY_BY_HASH: &'static str = concat!(
        "SELECT ",
        api_key_cols!(),
        " FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL"
    );
    /// Tenant `$1`'s keys, oldest first.
    const API_KEYS: &'static str = concat!(
        "SELECT ",
        api_key_cols!(),
        " FROM api_keys WHERE tenant = $1 ORDER BY created_at, id"
    );
    /// Every key, by tenant, then oldest first.
    const ALL_API_KEYS: &'static str = concat!(
        "SELECT ",
        api_key_cols!(),
        " FROM api_keys ORDER BY tenant, created_at, id"
    );
    /// Key `$1`.
    const API_KEY: &'static str =
        concat!("SELECT ", api_key_cols!(), " FROM api_keys WHERE id = $1");
    /// Revoke live key `$1` (`$2` now).
    const REVOKE_API_KEY: &'static str;
    /// `n`: unrevoked keys.
    const COUNT_API_KEYS: &'static str =
        "SELECT count(*) AS n FROM api_keys WHERE revoked_at IS NULL";

    /// Insert usage records (never empty).
    async fn insert_usage(&self, records: &[UsageRecord]) -> Result<()>;
    /// [`RecordStore::usage_summary`].
    async fn summarize_usage(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>>;
    /// [`RecordStore::append_events`] (never empty).
    async fn append_event_batch(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>>;
}

/// How a usage record's source is stored.
pub(crate) fn source_str(s: sluice_types::model::ResponseSource) -> &'static str {
    use sluice_types::model::ResponseSource;
    match s {
        ResponseSource::Provider => "provider",
        ResponseSource::Cache => "cache",
        ResponseSource::Journal => "journal",
    }
}

/// A stored event.
fn stored_event<R: Columns>(r: &R) -> Result<StoredEvent> {
    Ok(StoredEvent {
        job_id: r.id("job_id")?,
        seq: r.int("seq")?.max(0) as u64,
        event: r.json::<JobEvent>("event")?,
        created_at: r.time("created_at")?,
    })
}

/// A count that cannot be negative, from a signed column.
fn unsigned(n: i64) -> u64 {
    n.max(0) as u64
}

#[async_trait]
impl<S: RecordSql> RecordStore for S {
    async fn set_job_trace(&self, job: Uuid, traceparent: &str) -> Result<()> {
        let args = [Arg::Id(job), Arg::Text(traceparent)];
        self.exec(On::Write, Self::SET_TRACE, &args).await?;
        Ok(())
    }

    async fn job_trace(&self, job: Uuid) -> Result<Option<String>> {
        let row = self.row(On::Read, Self::TRACE, &[Arg::Id(job)]).await?;
        row.map(|r| r.text("traceparent")).transpose()
    }

    async fn journal_put(&self, entry: &JournalEntry) -> Result<()> {
        let (response, usage) = (util::to_json(&entry.response), util::to_json(&entry.usage));
        let args = [
            Arg::Id(entry.job_id),
            Arg::Int(i64::from(entry.seq)),
            Arg::Text(&entry.fingerprint),
            Arg::Json(&response),
            Arg::Json(&usage),
            Arg::Now,
        ];
        self.exec(On::Write, Self::JOURNAL_PUT, &args).await?;
        Ok(())
    }

    async fn journal_get(&self, job: Uuid, seq: u32) -> Result<Option<JournalEntry>> {
        let args = [Arg::Id(job), Arg::Int(i64::from(seq))];
        let row = self.row(On::Read, Self::JOURNAL_GET, &args).await?;
        row.as_ref().map(rows::journal_entry).transpose()
    }

    async fn journal_list(&self, job: Uuid) -> Result<Vec<JournalEntry>> {
        let found = self
            .rows(On::Read, Self::JOURNAL_LIST, &[Arg::Id(job)])
            .await?;
        found.iter().map(rows::journal_entry).collect()
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.insert_usage(records).await
    }

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>> {
        self.summarize_usage(query).await
    }

    async fn append_event(&self, job: Uuid, event: &JobEvent) -> Result<u64> {
        let body = util::to_json(event);
        let args = [Arg::Id(job), Arg::Json(&body), Arg::Now];
        // Two writers numbering the same job's events at once collide on (job, seq) on
        // Postgres; the loser numbers again. (SQLite's single writer never collides.)
        let mut tries = 0;
        loop {
            match self.row(On::Write, Self::APPEND_EVENT, &args).await {
                Ok(row) => {
                    let seq = row.ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
                    return Ok(unsigned(seq.int("seq")?));
                }
                Err(e) if is_unique_violation(&e) && tries < 20 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn append_events(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.append_event_batch(events).await
    }

    async fn events_after(&self, job: Uuid, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let after = Arg::Int(after.min(i64::MAX as u64) as i64);
        let args = [Arg::Id(job), after, Arg::Int(i64::from(limit))];
        let found = self.rows(On::Read, Self::EVENTS_AFTER, &args).await?;
        found.iter().map(stored_event).collect()
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey> {
        let scopes = util::to_json(&key.scopes);
        let args = [
            Arg::Id(Uuid::now_v7()),
            Arg::Text(&key.tenant),
            Arg::Text(&key.name),
            Arg::Json(&scopes),
            Arg::Text(&key.secret_hash),
            Arg::Now,
        ];
        match self.row(On::Write, Self::CREATE_API_KEY, &args).await {
            Ok(Some(row)) => rows::api_key(&row),
            Ok(None) => Err(StoreError::Database(sqlx::Error::RowNotFound)),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Invalid(
                "an API key with this secret already exists".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let args = [Arg::Text(secret_hash)];
        let row = self.row(On::Read, Self::API_KEY_BY_HASH, &args).await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let found = self
            .rows(On::Read, Self::API_KEYS, &[Arg::Text(tenant)])
            .await?;
        found.iter().map(rows::api_key).collect()
    }

    async fn list_all_api_keys(&self) -> Result<Vec<ApiKey>> {
        let found = self.rows(On::Read, Self::ALL_API_KEYS, &[]).await?;
        found.iter().map(rows::api_key).collect()
    }

    async fn api_key(&self, id: Uuid) -> Result<Option<ApiKey>> {
        let row = self.row(On::Read, Self::API_KEY, &[Arg::Id(id)]).await?;
        row.as_ref().map(rows::api_key).transpose()
    }

    async fn revoke_api_key(&self, id: Uuid) -> Result<bool> {
        let args = [Arg::Id(id), Arg::Now];
        Ok(self.exec(On::Write, Self::REVOKE_API_KEY, &args).await? > 0)
    }

    async fn count_api_keys(&self) -> Result<u64> {
        let row = self.row(On::Read, Self::COUNT_API_KEYS, &[]).await?;
        Ok(unsigned(row.map(|r| r.int("n")).transpose()?.unwrap_or(0)))
    }
}
