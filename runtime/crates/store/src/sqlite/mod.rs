//! The SQLite store: embedded, one node, one file (or memory).
//!
//! One writer connection serializes every write (`BEGIN IMMEDIATE`, so no transaction ever
//! has to upgrade its lock and fail with `SQLITE_BUSY`); a small pool of readers serves reads
//! from the WAL concurrently.
//!
//! The queue's hot path in full (`queue`, `lease`); for every other section only the SQL text
//! its shared flow runs (`plugins`, `records`, `state`, `control`, `stats`; see [`crate::sql`])
//! and the few statements that differ whole; the statements of the queue's shared transitions
//! (`statements`, see [`crate::flows`]); how arguments bind (`sql`) and columns decode
//! (`columns`). This file holds the connections and what concerns the whole store.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_types::{JobEvent, JobStatus, Micros};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use crate::config::{BackoffPolicy, StoreConfig};
use crate::error::{Result, StoreError};
use crate::flows;
use crate::machine::Running;
use crate::model::*;
use crate::rows::{self, Columns};
use crate::store::{Backend, JobStore, QueueStore, Signal, WorkSignal};
use crate::util::{self, Candidate, MAX_CLAIM_ROUNDS, Prepared, more_rounds};

static MIGRATOR: LazyLock<sqlx::migrate::Migrator> = LazyLock::new(crate::migrations::sqlite);

macro_rules! claimed_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, input, tags, priority, attempt, max_attempts, \
         run, timeout_ms, idempotency_key, webhook_url, lease_token, lease_expires_at, attempted_at, \
         run_at, created_at"
    };
}

macro_rules! hist_insert_cols_j {
    () => {
        "j.id, j.tenant, j.plugin, j.plugin_version, j.digest, j.priority, j.run_at, j.input, j.tags, \
         j.timeout_ms, j.max_attempts, j.attempt, j.run, j.idempotency_key, j.webhook_url, \
         j.worker_id, j.attempted_at, j.cancel_requested, j.created_at"
    };
}

mod columns;
mod control;
mod lease;
mod plugins;
mod queue;
mod records;
mod sql;
mod state;
mod statements;
mod stats;

/// The SQLite implementation of [`JobStore`].
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The database lives in the writer's one connection (`sqlite::memory:`): that connection
    /// must never be replaced.
    memory: bool,
    config: StoreConfig,
    signal: Signal,
    rr_cursor: Mutex<String>,
    quota: util::TenantTally,
    state_bytes: util::TenantTally,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ms_of(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

use columns::uuid_of;

impl SqliteStore {
    /// Open `url` (`sqlite://path`, `sqlite:path` or `sqlite::memory:`), creating the file if
    /// needed, and apply migrations.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let (writer, reader) = if memory {
            // One connection keeps the in-memory database alive and serializes everything.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(base)
                .await?;
            MIGRATOR.run(&pool).await?;
            (pool.clone(), pool)
        } else {
            let opts = base
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts.clone())
                .await?;
            MIGRATOR.run(&writer).await?;
            let reader = SqlitePoolOptions::new()
                .max_connections(config.max_connections.clamp(1, 8))
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts.read_only(true))
                .await?;
            (writer, reader)
        };
        Ok(SqliteStore {
            writer,
            reader,
            memory,
            config,
            signal: Signal::new(),
            rr_cursor: Mutex::new(String::new()),
            quota: util::TenantTally::new(util::QUOTA_COUNT_TTL),
            state_bytes: util::TenantTally::new(util::STATE_TALLY_TTL),
        })
    }

    fn wake(&self) {
        self.signal.bump();
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        // A COMMIT that failed (disk full, I/O error) is rolled back by SQLite itself, but
        // sqlx 0.9 keeps counting the transaction open, so its rollback fails too and the
        // connection can never begin again: every write of the node would fail until a
        // restart, even once space is freed. Replace the connection and begin again (a few
        // times: while the disk stays full, another writer's failed commit may have spoilt
        // the new connection before this one got it).
        let mut replaced = 0;
        loop {
            match self.writer.begin_with("BEGIN IMMEDIATE").await {
                Err(sqlx::Error::InvalidSavePointStatement) if !self.memory && replaced < 4 => {
                    tracing::warn!("replacing the SQLite writer connection after a failed commit");
                    self.writer.acquire().await?.close().await?;
                    replaced += 1;
                }
                r => return Ok(r?),
            }
        }
    }

    async fn resolve_plugin(
        conn: &mut SqliteConnection,
        tenant: &str,
        plugin: &str,
    ) -> Result<Option<(i64, String, PluginSettings)>> {
        let row = sqlx::query(
            "SELECT v.version, v.digest, v.settings FROM plugins p JOIN plugin_versions v
               ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
             WHERE p.tenant = ?1 AND p.name = ?2",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => {
                let settings: String = r.try_get("settings")?;
                Ok(Some((
                    r.try_get("version")?,
                    r.try_get("digest")?,
                    util::from_json(&settings)?,
                )))
            }
        }
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn purge(&self) -> Result<PurgeReport> {
        let now = now_ms();
        let done_before = now.saturating_sub(ms_of(self.config.history_retention));
        let dead_before = now.saturating_sub(ms_of(self.config.dead_retention));
        let mut report = PurgeReport::default();
        loop {
            let mut tx = self.begin().await?;
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM job_history
                 WHERE (state <> 'dead' AND finished_at < ?1) OR (state = 'dead' AND finished_at < ?2)
                 LIMIT 5000",
            )
            .bind(done_before)
            .bind(dead_before)
            .fetch_all(&mut *tx)
            .await?;
            let list = util::to_json(&ids);
            for table in [
                "job_history WHERE id",
                "journal WHERE job_id",
                "effects WHERE job_id",
                "job_events WHERE job_id",
                "job_traces WHERE job_id",
            ] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} IN (SELECT value FROM json_each(?1))"
                )))
                .bind(&list)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            report.jobs += ids.len() as u64;
            if ids.len() < 5000 {
                break;
            }
        }
        report.idempotency_keys =
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= ?1")
                .bind(now)
                .execute(&self.writer)
                .await?
                .rows_affected();
        report.state_entries = sqlx::query("DELETE FROM kv_state WHERE expires_at <= ?1")
            .bind(now)
            .execute(&self.writer)
            .await?
            .rows_affected();
        Ok(report)
    }
}
