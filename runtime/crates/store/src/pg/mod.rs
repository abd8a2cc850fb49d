//! The Postgres store: production, shared by several nodes.
//!
//! The queue's hot path in full (`queue`, `lease`); for every other section only the SQL text
//! its shared flow runs (`plugins`, `records`, `state`, `control`, `stats`; see [`crate::sql`])
//! and the few statements that differ whole; the statements of the queue's shared transitions
//! (`statements`, see [`crate::flows`]); how arguments bind (`sql`) and columns decode
//! (`columns`). This file holds the connection, the `LISTEN`/`NOTIFY` wake-ups and what
//! concerns the whole store.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_types::{JobEvent, JobStatus, Micros};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::{BackoffPolicy, StoreConfig};
use crate::error::{Result, StoreError, is_unique_violation};
use crate::flows;
use crate::machine::Running;
use crate::model::*;
use crate::rows::{self, Columns};
use crate::store::{Backend, JobStore, QueueStore, Signal, WorkSignal};
use crate::util::{self, MAX_CLAIM_ROUNDS, Prepared, more_rounds};

/// The `LISTEN`/`NOTIFY` channel that announces new work.
pub const NOTIFY_CHANNEL: &str = "sluice_jobs";

static MIGRATOR: LazyLock<sqlx::migrate::Migrator> = LazyLock::new(crate::migrations::postgres);

macro_rules! hist_select_cols_d {
    () => {
        "d.id, d.tenant, d.plugin, d.plugin_version, d.digest, d.priority, d.run_at, d.input, \
         d.tags, d.timeout_ms, d.max_attempts, d.attempt, d.run, d.idempotency_key, \
         d.webhook_url, d.worker_id, d.attempted_at, d.cancel_requested, d.created_at"
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

/// The Postgres implementation of [`JobStore`].
pub struct PgStore {
    pool: PgPool,
    config: StoreConfig,
    signal: Signal,
    notify: Arc<Notify>,
    rr_cursor: Mutex<String>,
    quota: util::TenantTally,
    state_bytes: util::TenantTally,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    listening: std::sync::Once,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.get_mut() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

async fn notify_loop(pool: PgPool, notify: Arc<Notify>, debounce: Duration) {
    loop {
        notify.notified().await;
        // A lost notification only delays workers until their next poll.
        let _ = sqlx::query("SELECT pg_notify($1, '')")
            .bind(NOTIFY_CHANNEL)
            .execute(&pool)
            .await;
        tokio::time::sleep(debounce).await;
    }
}

async fn listen_loop(pool: PgPool, signal: Signal) {
    loop {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await
            && listener.listen(NOTIFY_CHANNEL).await.is_ok()
        {
            // Anything may have been enqueued while we were not listening.
            signal.bump();
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => {
                        while listener.next_buffered().is_some() {}
                        signal.bump();
                    }
                    // Connection lost; `try_recv` reconnects and re-listens.
                    Ok(None) => signal.bump(),
                    Err(_) => break,
                }
            }
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl PgStore {
    /// Connect to `url` (`postgres://…`) and apply migrations.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        // JIT compilation costs far more than it saves on the queue's short statements (the
        // claim's pessimistic row estimates would otherwise trigger it on every call).
        let options = PgConnectOptions::from_str(url)?
            .application_name("sluice")
            .options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(15))
            // Ping only connections that sat idle a while: a ping per acquire would double
            // the round trips of the hot path. A connection killed under us fails one query,
            // is discarded, and the caller's retry gets a fresh one.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > Duration::from_secs(10) {
                        use sqlx::Connection;
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Self::with_pool(pool, config).await
    }

    /// Use an existing pool; applies migrations. [`PgStore::connect`] also sets `jit = off` on
    /// its connections (the claim statement runs faster without JIT); do the same here.
    pub async fn with_pool(pool: PgPool, config: StoreConfig) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        let notify = Arc::new(Notify::new());
        let notifier = tokio::spawn(notify_loop(
            pool.clone(),
            notify.clone(),
            config.notify_debounce,
        ));
        Ok(PgStore {
            pool,
            config,
            signal: Signal::new(),
            notify,
            rr_cursor: Mutex::new(String::new()),
            quota: util::TenantTally::new(util::QUOTA_COUNT_TTL),
            state_bytes: util::TenantTally::new(util::STATE_TALLY_TTL),
            tasks: Mutex::new(vec![notifier]),
            listening: std::sync::Once::new(),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn wake(&self) {
        self.signal.bump();
        self.notify.notify_one();
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }
}

#[async_trait]
impl JobStore for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    async fn close(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        self.pool.close().await;
    }

    async fn purge(&self) -> Result<PurgeReport> {
        let mut report = PurgeReport::default();
        loop {
            let n: i64 = sqlx::query_scalar(
                "WITH gone AS (
                    DELETE FROM job_history WHERE id IN (
                        SELECT id FROM job_history
                        WHERE (state <> 'dead' AND finished_at < now() - $1 * interval '1 millisecond')
                           OR (state = 'dead' AND finished_at < now() - $2 * interval '1 millisecond')
                        LIMIT 5000)
                    RETURNING id
                ),
                j AS (DELETE FROM journal WHERE job_id IN (SELECT id FROM gone)),
                e AS (DELETE FROM effects WHERE job_id IN (SELECT id FROM gone)),
                v AS (DELETE FROM job_events WHERE job_id IN (SELECT id FROM gone)),
                t AS (DELETE FROM job_traces WHERE job_id IN (SELECT id FROM gone))
                SELECT count(*) FROM gone",
            )
            .bind(Self::ms(self.config.history_retention))
            .bind(Self::ms(self.config.dead_retention))
            .fetch_one(&self.pool)
            .await?;
            report.jobs += n.max(0) as u64;
            if n < 5000 {
                break;
            }
        }
        report.idempotency_keys =
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
                .execute(&self.pool)
                .await?
                .rows_affected();
        report.state_entries = sqlx::query("DELETE FROM kv_state WHERE expires_at <= now()")
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(report)
    }
}
