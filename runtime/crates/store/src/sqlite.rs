//! The SQLite store: embedded, one node, one file (or memory).
//!
//! One writer connection serializes every write (`BEGIN IMMEDIATE`, so no transaction ever
//! has to upgrade its lock and fail with `SQLITE_BUSY`); a small pool of readers serves reads
//! from the WAL concurrently.

mod control;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_types::model::Usage;
use sluice_types::{
    EffectError, EffectsBackend, JobError, JobEvent, StateBackend, StateError, StateScope,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use crate::config::StoreConfig;
use crate::error::{Result, StoreError};
use crate::machine::{self, Decision, Running};
use crate::model::*;
use crate::store::{Backend, JobStore, Signal, WorkSignal};
use crate::util::{self, Candidate, MAX_CLAIM_ROUNDS, Prepared, more_rounds};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

macro_rules! common_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, state, priority, run_at, input, tags, \
         timeout_ms, max_attempts, attempt, run, idempotency_key, webhook_url, worker_id, \
         attempted_at, cancel_requested, attempt_log, created_at"
    };
}

macro_rules! hist_insert_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, priority, run_at, input, tags, timeout_ms, \
         max_attempts, attempt, run, idempotency_key, webhook_url, worker_id, attempted_at, \
         cancel_requested, created_at"
    };
}

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

/// Move one job (guarded by the caller) to history: binds state, error, entry (or NULL),
/// finished_at, id.
const MOVE_SQL: &str = concat!(
    "INSERT INTO job_history (",
    hist_insert_cols!(),
    ", attempt_log, state, output, error, finished_at) SELECT ",
    hist_insert_cols!(),
    ", CASE WHEN ?3 IS NULL THEN attempt_log ELSE json_insert(attempt_log, '$[#]', json(?3)) END,
       ?1, NULL, ?2, ?4 FROM jobs WHERE id = ?5"
);

/// `?1`: JSON array of `[id, token, output-json-text]`; `?2`: now. Returns the ids moved.
const COMPLETE_SQL: &str = concat!(
    "INSERT INTO job_history (",
    hist_insert_cols!(),
    ", attempt_log, state, output, error, finished_at) SELECT ",
    hist_insert_cols_j!(),
    ", j.attempt_log, 'completed', c.value ->> '$[2]', NULL, ?2
     FROM json_each(?1) AS c JOIN jobs j ON j.id = c.value ->> '$[0]'
     WHERE j.lease_token = c.value ->> '$[1]' AND j.state = 'running'
     RETURNING id"
);

/// `?5`: JSON array of ids to claim.
const CLAIM_UPDATE_SQL: &str = concat!(
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = ?1, worker_id = ?2,
        lease_expires_at = ?3, attempted_at = ?4
     WHERE id IN (SELECT value FROM json_each(?5)) AND state = 'available' RETURNING ",
    claimed_cols!()
);

const GET_JOB_SQL: &str = concat!(
    "SELECT ",
    common_cols!(),
    ", lease_expires_at, NULL AS output, NULL AS error, NULL AS finished_at FROM jobs WHERE id = ?1
     UNION ALL SELECT ",
    common_cols!(),
    ", NULL, output, error, finished_at FROM job_history WHERE id = ?1"
);

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

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn ms_of(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn uuid_of(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(StoreError::corrupt)
}

fn u32_of(v: i64) -> u32 {
    v.clamp(0, u32::MAX as i64) as u32
}

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

    /// Check a state write against the tenant's state quota; the bytes to tally after it.
    async fn admit_state(
        &self,
        scope: &StateScope,
        key: &str,
        value: &str,
    ) -> std::result::Result<u64, StateError> {
        util::admit_state(
            &self.state_bytes,
            self.config.max_state_bytes_per_tenant,
            &scope.tenant,
            key,
            value,
            |tenant| async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0) FROM kv_state WHERE tenant = ?1",
                )
                .bind(tenant)
                .fetch_one(&self.reader)
                .await?;
                Ok(n.max(0) as u64)
            },
        )
        .await
    }

    /// Enqueue within each tenant's waiting-jobs quota.
    async fn enqueue_admitted(&self, prepared: Vec<Prepared>) -> Result<Vec<Enqueued>> {
        let by_tenant = self
            .quota
            .admit_jobs(
                self.config.max_waiting_jobs_per_tenant,
                &prepared,
                |tenant| async move {
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant = ?1")
                        .bind(tenant)
                        .fetch_one(&self.reader)
                        .await?;
                    Ok(n.max(0) as u64)
                },
            )
            .await?;
        let out = self.enqueue_prepared(prepared).await?;
        for (tenant, n) in by_tenant {
            self.quota.add(&tenant, n);
        }
        Ok(out)
    }

    async fn enqueue_prepared(&self, prepared: Vec<Prepared>) -> Result<Vec<Enqueued>> {
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let mut plugins: HashMap<(String, String), (i64, String, PluginSettings)> = HashMap::new();
        let mut out = Vec::with_capacity(prepared.len());
        let mut inserted = false;
        // New rows go in with one statement at the end; keys are checked one by one before.
        let mut rows: Vec<Value> = Vec::new();
        for p in &prepared {
            let j = &p.job;
            let pk = (j.tenant.clone(), j.plugin.clone());
            if !plugins.contains_key(&pk) {
                match Self::resolve_plugin(&mut tx, &j.tenant, &j.plugin).await? {
                    Some(v) => {
                        plugins.insert(pk.clone(), v);
                    }
                    None => {
                        return Err(StoreError::NotFound {
                            what: "plugin",
                            name: format!(
                                "`{}` of tenant `{}` (no such plugin, or it has no active version)",
                                j.plugin, j.tenant
                            ),
                        });
                    }
                }
            }
            if let Some(key) = &j.idempotency_key {
                let won: Option<String> = sqlx::query_scalar(
                    "INSERT INTO idempotency_keys (tenant, key, job_id, body_hash, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tenant, key) DO UPDATE
                        SET job_id = excluded.job_id, body_hash = excluded.body_hash,
                            created_at = excluded.created_at, expires_at = excluded.expires_at
                        WHERE idempotency_keys.expires_at <= ?5
                     RETURNING job_id",
                )
                .bind(&j.tenant)
                .bind(key)
                .bind(p.id.to_string())
                .bind(&p.body_hash)
                .bind(now)
                .bind(now.saturating_add(ms_of(self.config.idempotency_ttl)))
                .fetch_optional(&mut *tx)
                .await?;
                if won.is_none() {
                    let row = sqlx::query("SELECT job_id, body_hash FROM idempotency_keys WHERE tenant = ?1 AND key = ?2")
                        .bind(&j.tenant)
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                    let job_id = uuid_of(&row.try_get::<String, _>("job_id")?)?;
                    let hash: String = row.try_get("body_hash")?;
                    if hash != p.body_hash {
                        return Err(StoreError::Conflict {
                            key: key.clone(),
                            job_id,
                        });
                    }
                    out.push(Enqueued {
                        id: job_id,
                        existing: true,
                    });
                    continue;
                }
            }
            let (version, digest, settings) = &plugins[&pk];
            let timeout = j
                .timeout_ms
                .or(settings.timeout_ms)
                .unwrap_or(self.config.default_timeout_ms);
            let max_attempts = j
                .max_attempts
                .or(settings.max_attempts)
                .unwrap_or(self.config.default_max_attempts);
            rows.push(serde_json::json!([
                p.id.to_string(),
                j.tenant,
                j.plugin,
                version,
                digest,
                j.priority,
                j.run_at.map(|t| t.timestamp_millis()).unwrap_or(now),
                p.input,
                p.tags,
                timeout.min(i64::MAX as u64) as i64,
                max_attempts,
                j.idempotency_key,
                j.webhook_url,
            ]));
            inserted = true;
            out.push(Enqueued {
                id: p.id,
                existing: false,
            });
        }
        if !rows.is_empty() {
            sqlx::query(
                "INSERT INTO jobs (id, tenant, plugin, plugin_version, digest, state, priority, run_at,
                    input, tags, timeout_ms, max_attempts, idempotency_key, webhook_url, created_at)
                 SELECT r.value ->> 0, r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4,
                    'available', r.value ->> 5, r.value ->> 6, r.value ->> 7, r.value ->> 8,
                    r.value ->> 9, r.value ->> 10, r.value ->> 11, r.value ->> 12, ?2
                 FROM json_each(?1) AS r",
            )
            .bind(Value::Array(rows).to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if inserted {
            self.wake();
        }
        Ok(out)
    }

    async fn move_one(
        conn: &mut SqliteConnection,
        id: &str,
        state: &str,
        error: Option<String>,
        entry: Option<String>,
        now: i64,
    ) -> Result<bool> {
        let n = sqlx::query(MOVE_SQL)
            .bind(state)
            .bind(error)
            .bind(entry)
            .bind(now)
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if n > 0 {
            sqlx::query("DELETE FROM jobs WHERE id = ?1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        Ok(n > 0)
    }

    async fn claim_round(
        &self,
        conn: &mut SqliteConnection,
        req: &ClaimRequest,
        limit: u32,
        cursor: &str,
        now: i64,
        token: &str,
    ) -> Result<(Vec<ClaimedJob>, bool, Option<String>, i64)> {
        // Tenants with available work, round-robin from the cursor, at most `limit`.
        let mut tenants: Vec<String> = Vec::new();
        let mut from = cursor.to_owned();
        while tenants.len() < limit as usize {
            let next: Option<String> = sqlx::query_scalar(
                "SELECT tenant FROM jobs WHERE state = 'available' AND tenant > ?1 ORDER BY tenant LIMIT 1",
            )
            .bind(&from)
            .fetch_optional(&mut *conn)
            .await?;
            match next {
                Some(t) => {
                    from = t.clone();
                    tenants.push(t);
                }
                None => break,
            }
        }
        let mut from = String::new();
        let mut first = true;
        while tenants.len() < limit as usize && !cursor.is_empty() {
            let next: Option<String> = sqlx::query_scalar(
                "SELECT tenant FROM jobs WHERE state = 'available' AND (?2 OR tenant > ?1) AND tenant <= ?3
                 ORDER BY tenant LIMIT 1",
            )
            .bind(&from)
            .bind(first)
            .bind(cursor)
            .fetch_optional(&mut *conn)
            .await?;
            first = false;
            match next {
                Some(t) => {
                    from = t.clone();
                    tenants.push(t);
                }
                None => break,
            }
        }
        if tenants.is_empty() {
            return Ok((Vec::new(), false, None, 0));
        }

        // Room under the caps, from running counts.
        let mut running: HashMap<(String, String), i64> = HashMap::new();
        if req.has_caps() {
            let rows = sqlx::query(
                "SELECT tenant, plugin, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY tenant, plugin",
            )
            .fetch_all(&mut *conn)
            .await?;
            for r in rows {
                running.insert(
                    (r.try_get("tenant")?, r.try_get("plugin")?),
                    r.try_get("n")?,
                );
            }
        }
        let mut plugin_room: HashMap<(String, String), i64> = HashMap::new();
        for c in &req.plugin_caps {
            let key = (c.tenant.clone(), c.plugin.clone());
            let used = running.get(&key).copied().unwrap_or(0);
            plugin_room.insert(key, i64::from(c.max_running) - used);
        }
        let base_q = (i64::from(limit) + tenants.len() as i64 - 1) / tenants.len() as i64;
        let mut per_tenant = Vec::with_capacity(tenants.len());
        let mut quotas = Vec::with_capacity(tenants.len());
        for t in &tenants {
            let cap = req.tenant_caps.get(t).copied().or(req.tenant_cap);
            let q = match cap {
                None => base_q,
                Some(cap) => {
                    let used: i64 = running
                        .iter()
                        .filter(|((rt, _), _)| rt == t)
                        .map(|(_, n)| *n)
                        .sum();
                    base_q.min(i64::from(cap) - used).max(0)
                }
            };
            quotas.push(q);
            if q == 0 {
                per_tenant.push(Vec::new());
                continue;
            }
            let blocked: Vec<&str> = plugin_room
                .iter()
                .filter(|((ct, _), room)| ct == t && **room <= 0)
                .map(|((_, p), _)| p.as_str())
                .collect();
            let rows = sqlx::query(
                "SELECT id, plugin FROM jobs
                 WHERE state = 'available' AND tenant = ?1 AND run_at <= ?2
                   AND plugin NOT IN (SELECT value FROM json_each(?3))
                 ORDER BY priority, run_at, id LIMIT ?4",
            )
            .bind(t)
            .bind(now)
            .bind(util::to_json(&blocked))
            .bind(q)
            .fetch_all(&mut *conn)
            .await?;
            let mut list = Vec::with_capacity(rows.len());
            for r in rows {
                list.push(Candidate {
                    key: r.try_get::<String, _>("id")?,
                    tenant: t.clone(),
                    plugin: r.try_get("plugin")?,
                });
            }
            per_tenant.push(list);
        }
        let saturated = per_tenant
            .iter()
            .zip(&quotas)
            .any(|(l, q)| *q > 0 && l.len() as i64 >= *q);
        let picked = util::round_robin_pick(per_tenant, &mut plugin_room, limit as usize);
        let last_tenant = tenants.last().cloned();
        let ids: Vec<&str> = picked.iter().map(|c| c.key.as_str()).collect();
        let rows = sqlx::query(CLAIM_UPDATE_SQL)
            .bind(token)
            .bind(&req.worker_id)
            .bind(now.saturating_add(ms_of(req.lease)))
            .bind(now)
            .bind(util::to_json(&ids))
            .fetch_all(&mut *conn)
            .await?;
        let mut by_id: HashMap<Uuid, ClaimedJob> = HashMap::with_capacity(rows.len());
        for r in &rows {
            let c = claimed_from_row(r)?;
            by_id.insert(c.id, c);
        }
        // RETURNING order is unspecified: hand jobs out in the round-robin order.
        let mut claimed = Vec::with_capacity(by_id.len());
        for c in &picked {
            if let Some(job) = by_id.remove(&uuid_of(&c.key)?) {
                claimed.push(job);
            }
        }
        Ok((claimed, saturated, last_tenant, tenants.len() as i64))
    }

    fn push_filter(
        qb: &mut QueryBuilder<Sqlite>,
        filter: &JobFilter,
        before: Option<Uuid>,
        status_sql: String,
    ) {
        qb.push(" WHERE ");
        qb.push(status_sql);
        if let Some(t) = &filter.tenant {
            qb.push(" AND tenant = ").push_bind(t.clone());
        }
        if let Some(p) = &filter.plugin {
            qb.push(" AND plugin = ").push_bind(p.clone());
        }
        for (k, v) in &filter.tags {
            qb.push(" AND EXISTS (SELECT 1 FROM json_each(tags) WHERE key = ")
                .push_bind(k.clone())
                .push(" AND value = ")
                .push_bind(v.clone())
                .push(")");
        }
        if let Some(b) = before {
            qb.push(" AND id < ").push_bind(b.to_string());
        }
    }

    async fn list_plugins_where(
        &self,
        tenant: &str,
        plugin: Option<&str>,
    ) -> Result<Vec<PluginInfo>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, p.active_version, v.version, v.digest, v.settings, v.created_at
             FROM plugins p LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name
             WHERE p.tenant = ?1 AND (?2 IS NULL OR p.name = ?2)
             ORDER BY p.name, v.version",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_all(&self.reader)
        .await?;
        let mut out: Vec<PluginInfo> = Vec::new();
        for r in &rows {
            let name: String = r.try_get("name")?;
            if out.last().is_none_or(|p| p.name != name) {
                out.push(PluginInfo {
                    tenant: r.try_get("tenant")?,
                    name: name.clone(),
                    active_version: r.try_get("active_version")?,
                    versions: Vec::new(),
                });
            }
            if let Some(version) = r.try_get::<Option<i64>, _>("version")?
                && let Some(info) = out.last_mut()
            {
                let settings: String = r.try_get("settings")?;
                info.versions.push(PluginVersion {
                    tenant: info.tenant.clone(),
                    plugin: name,
                    version,
                    digest: r.try_get("digest")?,
                    settings: util::from_json(&settings)?,
                    created_at: ts(r.try_get("created_at")?),
                });
            }
        }
        Ok(out)
    }
}

fn claimed_from_row(r: &SqliteRow) -> Result<ClaimedJob> {
    let id = uuid_of(&r.try_get::<String, _>("id")?)?;
    Ok(ClaimedJob {
        id,
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        digest: r.try_get("digest")?,
        input: util::value_from_str(&r.try_get::<String, _>("input")?)?,
        tags: util::from_json(&r.try_get::<String, _>("tags")?)?,
        priority: r.try_get::<i64, _>("priority")? as i32,
        attempt: u32_of(r.try_get("attempt")?),
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run: u32_of(r.try_get("run")?),
        timeout_ms: r.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        idempotency_key: r.try_get("idempotency_key")?,
        webhook_url: r.try_get("webhook_url")?,
        lease: Lease {
            id,
            token: uuid_of(&r.try_get::<String, _>("lease_token")?)?,
        },
        lease_expires_at: ts(r.try_get("lease_expires_at")?),
        attempted_at: ts(r.try_get("attempted_at")?),
        run_at: ts(r.try_get("run_at")?),
        created_at: ts(r.try_get("created_at")?),
    })
}

fn status_of(r: &SqliteRow, now: DateTime<Utc>) -> Result<JobStatus> {
    let state: String = r.try_get("state")?;
    Ok(match state.as_str() {
        "available" | "running" => JobStatus::of_live(
            state == "running",
            r.try_get("attempt")?,
            ts(r.try_get("run_at")?),
            now,
        ),
        other => other.parse()?,
    })
}

fn opt_ts(r: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(r.try_get::<Option<i64>, _>(col)?.map(ts))
}

fn opt_json<T: serde::de::DeserializeOwned>(r: &SqliteRow, col: &str) -> Result<Option<T>> {
    r.try_get::<Option<String>, _>(col)?
        .map(|s| util::from_json(&s))
        .transpose()
}

fn record_from_row(r: &SqliteRow) -> Result<JobRecord> {
    let status = status_of(r, Utc::now())?;
    let mut attempts = util::parse_attempt_log(&r.try_get::<String, _>("attempt_log")?)?;
    let finished_at = opt_ts(r, "finished_at")?;
    let attempted_at = opt_ts(r, "attempted_at")?;
    let attempt = u32_of(r.try_get("attempt")?);
    let run = u32_of(r.try_get("run")?);
    let worker_id: Option<String> = r.try_get("worker_id")?;
    let digest: String = r.try_get("digest")?;
    if status == JobStatus::Completed {
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
        id: uuid_of(&r.try_get::<String, _>("id")?)?,
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        digest,
        status,
        priority: r.try_get::<i64, _>("priority")? as i32,
        input: util::value_from_str(&r.try_get::<String, _>("input")?)?,
        tags: util::from_json(&r.try_get::<String, _>("tags")?)?,
        attempt,
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run,
        timeout_ms: r.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        idempotency_key: r.try_get("idempotency_key")?,
        webhook_url: r.try_get("webhook_url")?,
        worker_id,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: ts(r.try_get("created_at")?),
        run_at: ts(r.try_get("run_at")?),
        attempted_at,
        lease_expires_at: opt_ts(r, "lease_expires_at")?,
        finished_at,
        output: opt_json::<Value>(r, "output")?,
        error: opt_json::<JobError>(r, "error")?,
        attempts,
    })
}

fn summary_from_row(r: &SqliteRow, now: DateTime<Utc>) -> Result<JobSummary> {
    Ok(JobSummary {
        id: uuid_of(&r.try_get::<String, _>("id")?)?,
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        status: status_of(r, now)?,
        priority: r.try_get::<i64, _>("priority")? as i32,
        tags: util::from_json(&r.try_get::<String, _>("tags")?)?,
        attempt: u32_of(r.try_get("attempt")?),
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run: u32_of(r.try_get("run")?),
        created_at: ts(r.try_get("created_at")?),
        run_at: ts(r.try_get("run_at")?),
        finished_at: opt_ts(r, "finished_at")?,
        error: opt_json::<JobError>(r, "error")?,
    })
}

fn running_from_row(r: &SqliteRow) -> Result<Running> {
    Ok(Running {
        attempt: u32_of(r.try_get("attempt")?),
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run: u32_of(r.try_get("run")?),
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        worker_id: r.try_get("worker_id")?,
        digest: r.try_get("digest")?,
        attempted_at: opt_ts(r, "attempted_at")?,
    })
}

fn api_key_from_row(r: &SqliteRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: uuid_of(&r.try_get::<String, _>("id")?)?,
        tenant: r.try_get("tenant")?,
        name: r.try_get("name")?,
        scopes: util::from_json(&r.try_get::<String, _>("scopes")?)?,
        secret_hash: r.try_get("secret_hash")?,
        created_at: ts(r.try_get("created_at")?),
        revoked: r.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
    })
}

fn journal_from_row(r: &SqliteRow) -> Result<JournalEntry> {
    Ok(JournalEntry {
        job_id: uuid_of(&r.try_get::<String, _>("job_id")?)?,
        seq: u32_of(r.try_get("seq")?),
        fingerprint: r.try_get("fingerprint")?,
        response: util::value_from_str(&r.try_get::<String, _>("response")?)?,
        usage: util::from_json::<Usage>(&r.try_get::<String, _>("usage")?)?,
    })
}

fn version_from_row(r: &SqliteRow) -> Result<PluginVersion> {
    Ok(PluginVersion {
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("name")?,
        version: r.try_get("version")?,
        digest: r.try_get("digest")?,
        settings: util::from_json(&r.try_get::<String, _>("settings")?)?,
        created_at: ts(r.try_get("created_at")?),
    })
}

fn state_err(e: impl std::fmt::Display) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn effect_err(e: impl std::fmt::Display) -> EffectError {
    EffectError::Unavailable(e.to_string())
}

fn source_str(s: sluice_types::model::ResponseSource) -> &'static str {
    use sluice_types::model::ResponseSource;
    match s {
        ResponseSource::Provider => "provider",
        ResponseSource::Cache => "cache",
        ResponseSource::Journal => "journal",
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

    fn work_signal(&self) -> WorkSignal {
        self.signal.subscribe()
    }

    async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn put_component(&self, bytes: &[u8]) -> Result<String> {
        let digest = util::component_digest(bytes);
        sqlx::query(
            "INSERT INTO components (digest, bytes, size, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(digest)
    }

    async fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM components WHERE digest = ?1")
                .bind(digest)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn create_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        digest: &str,
        settings: &PluginSettings,
        activate: bool,
    ) -> Result<PluginVersion> {
        if tenant.is_empty() || plugin.is_empty() {
            return Err(StoreError::Invalid(
                "tenant and plugin name must not be empty".into(),
            ));
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM components WHERE digest = ?1")
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: "component",
                name: digest.to_owned(),
            });
        }
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO plugins (tenant, name, next_version, created_at, updated_at) VALUES (?1, ?2, 2, ?3, ?3)
             ON CONFLICT (tenant, name) DO UPDATE
                SET next_version = plugins.next_version + 1, updated_at = ?3
             RETURNING next_version - 1",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO plugin_versions (tenant, name, version, digest, settings, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             RETURNING tenant, name, version, digest, settings, created_at",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .bind(digest)
        .bind(util::to_json(settings))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        if activate {
            sqlx::query("UPDATE plugins SET active_version = ?3 WHERE tenant = ?1 AND name = ?2")
                .bind(tenant)
                .bind(plugin)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        let out = version_from_row(&row)?;
        tx.commit().await?;
        Ok(out)
    }

    async fn activate_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE plugins SET active_version = ?3, updated_at = ?4
             WHERE tenant = ?1 AND name = ?2 AND EXISTS (
                SELECT 1 FROM plugin_versions v WHERE v.tenant = ?1 AND v.name = ?2 AND v.version = ?3)",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "plugin version",
                name: format!("`{plugin}` v{version} of tenant `{tenant}`"),
            });
        }
        Ok(())
    }

    async fn get_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<Option<PluginVersion>> {
        let row = sqlx::query(
            "SELECT tenant, name, version, digest, settings, created_at FROM plugin_versions
             WHERE tenant = ?1 AND name = ?2 AND version = ?3",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn get_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<PluginInfo>> {
        Ok(self.list_plugins_where(tenant, Some(plugin)).await?.pop())
    }

    async fn list_plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>> {
        self.list_plugins_where(tenant, None).await
    }

    async fn delete_plugin(&self, tenant: &str, plugin: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM plugins WHERE tenant = ?1 AND name = ?2")
            .bind(tenant)
            .bind(plugin)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn concurrency_caps(&self) -> Result<Vec<PluginCap>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, json_extract(v.settings, '$.concurrency') AS cap
             FROM plugins p JOIN plugin_versions v
               ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
             WHERE json_extract(v.settings, '$.concurrency') IS NOT NULL ORDER BY p.tenant, p.name",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginCap {
                    tenant: r.try_get("tenant")?,
                    plugin: r.try_get("name")?,
                    max_running: u32_of(r.try_get("cap")?),
                })
            })
            .collect()
    }

    async fn enqueue(&self, job: NewJob) -> Result<Enqueued> {
        let prepared = util::prepare(job, self.config.max_input_bytes)?;
        let mut out = self.enqueue_admitted(vec![prepared]).await?;
        out.pop()
            .ok_or_else(|| StoreError::Invalid("enqueue returned nothing".into()))
    }

    async fn enqueue_batch(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        let prepared = jobs
            .into_iter()
            .map(|j| util::prepare(j, self.config.max_input_bytes))
            .collect::<Result<Vec<_>>>()?;
        self.enqueue_admitted(prepared).await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<ClaimedJob>> {
        if req.limit == 0 {
            return Ok(Vec::new());
        }
        let mut cursor = self.rr_cursor.lock().map(|c| c.clone()).unwrap_or_default();
        let now = now_ms();
        let token = Uuid::new_v4().to_string();
        let mut out = Vec::new();
        let mut tx = self.begin().await?;
        for _round in 0..MAX_CLAIM_ROUNDS {
            let want = req.limit.saturating_sub(out.len() as u32);
            if want == 0 {
                break;
            }
            let (got, saturated, last, visited) = self
                .claim_round(&mut tx, req, want, &cursor, now, &token)
                .await?;
            let moved = last.as_deref().is_some_and(|t| t != cursor);
            let more = more_rounds(got.len() as u32, want, saturated, visited, moved);
            if let Some(t) = last {
                cursor = t;
            }
            out.extend(got);
            if !more {
                break;
            }
        }
        tx.commit().await?;
        if let Ok(mut c) = self.rr_cursor.lock() {
            *c = cursor;
        }
        Ok(out)
    }

    async fn heartbeat(&self, leases: &[Lease], extend: Duration) -> Result<Vec<LeaseStatus>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let until = now_ms().saturating_add(ms_of(extend));
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            let cancel: Option<i64> = sqlx::query_scalar(
                "UPDATE jobs SET lease_expires_at = ?1 WHERE id = ?2 AND lease_token = ?3 AND state = 'running'
                 RETURNING cancel_requested",
            )
            .bind(until)
            .bind(l.id.to_string())
            .bind(l.token.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            out.push(match cancel {
                Some(0) => LeaseStatus::Held,
                Some(_) => LeaseStatus::CancelRequested,
                None => LeaseStatus::Lost,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn complete(&self, lease: Lease, output: &Value) -> Result<Finalized> {
        let mut out = self
            .complete_many(&[Completion {
                lease,
                output: output.clone(),
            }])
            .await?;
        Ok(out.pop().unwrap_or(Finalized::LeaseLost))
    }

    async fn complete_many(&self, items: &[Completion]) -> Result<Vec<Finalized>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Two statements for the whole batch: copy the guarded rows to history, then delete
        // exactly the ones copied.
        let batch: Vec<(String, String, String)> = items
            .iter()
            .map(|c| {
                (
                    c.lease.id.to_string(),
                    c.lease.token.to_string(),
                    util::to_json(&c.output),
                )
            })
            .collect();
        let mut tx = self.begin().await?;
        let done: Vec<String> = sqlx::query_scalar(COMPLETE_SQL)
            .bind(util::to_json(&batch))
            .bind(now_ms())
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(util::to_json(&done))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let done: std::collections::HashSet<String> = done.into_iter().collect();
        Ok(batch
            .iter()
            .map(|(id, _, _)| {
                if done.contains(id) {
                    Finalized::Completed
                } else {
                    Finalized::LeaseLost
                }
            })
            .collect())
    }

    async fn fail(&self, lease: Lease, failure: &Failure) -> Result<Finalized> {
        let now = Utc::now();
        let id = lease.id.to_string();
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "SELECT attempt, max_attempts, run, cancel_requested, worker_id, digest, attempted_at
             FROM jobs WHERE id = ?1 AND lease_token = ?2 AND state = 'running'",
        )
        .bind(&id)
        .bind(lease.token.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Finalized::LeaseLost);
        };
        let job = running_from_row(&row)?;
        let decision = machine::decide(&job, &failure.error, now, &self.config.backoff);
        let entry = util::to_json(&machine::attempt_record(
            &job,
            now,
            machine::outcome_of(decision),
            Some(failure.error.clone()),
            failure.detail.clone(),
        ));
        let outcome = match decision {
            Decision::Retry { run_at } => {
                sqlx::query(
                    "UPDATE jobs SET state = 'available', run_at = ?2, lease_token = NULL, lease_expires_at = NULL,
                        attempt_log = json_insert(attempt_log, '$[#]', json(?3))
                     WHERE id = ?1",
                )
                .bind(&id)
                .bind(run_at.timestamp_millis())
                .bind(&entry)
                .execute(&mut *tx)
                .await?;
                Finalized::Retrying {
                    run_at,
                    attempt: job.attempt,
                }
            }
            Decision::Dead | Decision::Cancelled => {
                let state = decision.terminal_state().unwrap_or("dead");
                Self::move_one(
                    &mut tx,
                    &id,
                    state,
                    Some(util::to_json(&failure.error)),
                    Some(entry),
                    now.timestamp_millis(),
                )
                .await?;
                if decision == Decision::Dead {
                    Finalized::Dead
                } else {
                    Finalized::Cancelled
                }
            }
        };
        tx.commit().await?;
        if matches!(outcome, Finalized::Retrying { .. }) {
            self.wake();
        }
        Ok(outcome)
    }

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        let sid = id.to_string();
        let mut tx = self.begin().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
            .bind(&sid)
            .fetch_optional(&mut *tx)
            .await?;
        let outcome = match state.as_deref() {
            Some("available") => {
                Self::move_one(
                    &mut tx,
                    &sid,
                    "cancelled",
                    Some(util::to_json(&machine::cancelled_error())),
                    None,
                    now_ms(),
                )
                .await?;
                CancelOutcome::Cancelled
            }
            Some(_) => {
                sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
                    .bind(&sid)
                    .execute(&mut *tx)
                    .await?;
                CancelOutcome::CancelRequested
            }
            None => {
                let st: Option<String> =
                    sqlx::query_scalar("SELECT state FROM job_history WHERE id = ?1")
                        .bind(&sid)
                        .fetch_optional(&mut *tx)
                        .await?;
                match st {
                    Some(s) => CancelOutcome::AlreadyFinished { status: s.parse()? },
                    None => CancelOutcome::NotFound,
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn rescue_expired_leases(&self) -> Result<RescueReport> {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts, run, cancel_requested, worker_id, digest, attempted_at
             FROM jobs WHERE state = 'running' AND lease_expires_at < ?1
             ORDER BY lease_expires_at LIMIT 1000",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut report = RescueReport::default();
        for row in &rows {
            let sid: String = row.try_get("id")?;
            let id = uuid_of(&sid)?;
            let job = running_from_row(row)?;
            let error = machine::lease_expired_error(&job);
            let decision = machine::decide(&job, &error, now, &self.config.backoff);
            let outcome = match decision {
                Decision::Cancelled => AttemptOutcome::Cancelled,
                _ => AttemptOutcome::LeaseExpired,
            };
            let entry = util::to_json(&machine::attempt_record(
                &job,
                now,
                outcome,
                Some(error.clone()),
                None,
            ));
            match decision {
                Decision::Retry { run_at } => {
                    sqlx::query(
                        "UPDATE jobs SET state = 'available', run_at = ?2, lease_token = NULL,
                            lease_expires_at = NULL, attempt_log = json_insert(attempt_log, '$[#]', json(?3))
                         WHERE id = ?1",
                    )
                    .bind(&sid)
                    .bind(run_at.timestamp_millis())
                    .bind(&entry)
                    .execute(&mut *tx)
                    .await?;
                    report.retried.push(id);
                }
                Decision::Dead | Decision::Cancelled => {
                    let state = decision.terminal_state().unwrap_or("dead");
                    Self::move_one(
                        &mut tx,
                        &sid,
                        state,
                        Some(util::to_json(&error)),
                        Some(entry),
                        now_ms,
                    )
                    .await?;
                    if decision == Decision::Dead {
                        report.dead.push(id);
                    } else {
                        report.cancelled.push(id);
                    }
                }
            }
        }
        tx.commit().await?;
        if !report.retried.is_empty() {
            self.wake();
        }
        Ok(report)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>> {
        let row = sqlx::query(GET_JOB_SQL)
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<JobSummary>> {
        let limit = page.limit.clamp(1, 1000);
        let now = Utc::now();
        let n = now.timestamp_millis();
        let live_status = match filter.status {
            None => Some("1".to_owned()),
            Some(JobStatus::Scheduled) => Some(format!(
                "state = 'available' AND attempt = 0 AND run_at > {n}"
            )),
            Some(JobStatus::Queued) => Some(format!(
                "state = 'available' AND attempt = 0 AND run_at <= {n}"
            )),
            Some(JobStatus::Retrying) => Some("state = 'available' AND attempt > 0".to_owned()),
            Some(JobStatus::Running) => Some("state = 'running'".to_owned()),
            Some(_) => None,
        };
        let hist_status = match filter.status {
            None => Some("1".to_owned()),
            Some(s @ (JobStatus::Completed | JobStatus::Dead | JobStatus::Cancelled)) => {
                Some(format!("state = '{}'", s.as_str()))
            }
            Some(_) => None,
        };
        let cols = "id, tenant, plugin, plugin_version, state, priority, tags, attempt, max_attempts, run, created_at, run_at";
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM (");
        let mut first = true;
        if let Some(st) = live_status {
            qb.push(format!(
                "SELECT * FROM (SELECT {cols}, NULL AS finished_at, NULL AS error FROM jobs"
            ));
            Self::push_filter(&mut qb, filter, page.before, st);
            qb.push(format!(" ORDER BY id DESC LIMIT {})", limit + 1));
            first = false;
        }
        if let Some(st) = hist_status {
            if !first {
                qb.push(" UNION ALL ");
            }
            qb.push(format!(
                "SELECT * FROM (SELECT {cols}, finished_at, error FROM job_history"
            ));
            Self::push_filter(&mut qb, filter, page.before, st);
            qb.push(format!(" ORDER BY id DESC LIMIT {})", limit + 1));
        }
        qb.push(format!(") ORDER BY id DESC LIMIT {}", limit + 1));
        let rows = qb.build().fetch_all(&self.reader).await?;
        let mut items = rows
            .iter()
            .map(|r| summary_from_row(r, now))
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|j| j.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let r = sqlx::query(
            "SELECT
                coalesce(sum(state = 'available' AND attempt = 0 AND run_at > ?1), 0) AS scheduled,
                coalesce(sum(state = 'available' AND attempt = 0 AND run_at <= ?1), 0) AS queued,
                coalesce(sum(state = 'available' AND attempt > 0), 0) AS retrying,
                coalesce(sum(state = 'running'), 0) AS running,
                (SELECT count(*) FROM job_history WHERE state = 'dead') AS dead
             FROM jobs",
        )
        .bind(now_ms())
        .fetch_one(&self.reader)
        .await?;
        let g = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
        Ok(QueueStats {
            scheduled: g("scheduled")?,
            queued: g("queued")?,
            retrying: g("retrying")?,
            running: g("running")?,
            dead: g("dead")?,
        })
    }

    async fn count_dead(&self, tenant: Option<&str>, plugin: Option<&str>) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_history WHERE state = 'dead'
               AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR plugin = ?2)",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_one(&self.reader)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn redrive(&self, filter: &DeadFilter, options: &RedriveOptions) -> Result<Vec<Uuid>> {
        let target_version = match options.target {
            RedriveTarget::Version(v) => {
                let (Some(t), Some(p)) = (&filter.tenant, &filter.plugin) else {
                    return Err(StoreError::Invalid(
                        "redrive onto a version needs the filter to name tenant and plugin".into(),
                    ));
                };
                match self.get_plugin_version(t, p, v).await? {
                    Some(pv) => Some((pv.version, pv.digest)),
                    None => {
                        return Err(StoreError::NotFound {
                            what: "plugin version",
                            name: format!("`{p}` v{v} of tenant `{t}`"),
                        });
                    }
                }
            }
            _ => None,
        };
        let ids_json = filter
            .ids
            .as_ref()
            .map(|ids| util::to_json(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>()));
        let now = now_ms();
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT id, tenant, plugin FROM job_history WHERE state = 'dead'
               AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR plugin = ?2)
               AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3)))
             ORDER BY id LIMIT ?4",
        )
        .bind(filter.tenant.as_deref())
        .bind(filter.plugin.as_deref())
        .bind(ids_json)
        .bind(i64::from(filter.limit.unwrap_or(10_000)))
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut active: HashMap<(String, String), Option<(i64, String)>> = HashMap::new();
        for r in &rows {
            let sid: String = r.try_get("id")?;
            let tenant: String = r.try_get("tenant")?;
            let plugin: String = r.try_get("plugin")?;
            let target = match options.target {
                RedriveTarget::Same => None,
                RedriveTarget::Version(_) => target_version.clone(),
                RedriveTarget::Active => {
                    let key = (tenant.clone(), plugin.clone());
                    if !active.contains_key(&key) {
                        let v = Self::resolve_plugin(&mut tx, &tenant, &plugin)
                            .await?
                            .map(|(v, d, _)| (v, d));
                        active.insert(key.clone(), v);
                    }
                    active[&key].clone()
                }
            };
            sqlx::query(
                "INSERT INTO jobs (id, tenant, plugin, plugin_version, digest, state, priority, run_at, input,
                    tags, timeout_ms, max_attempts, attempt, run, idempotency_key, webhook_url,
                    cancel_requested, attempt_log, created_at)
                 SELECT id, tenant, plugin, coalesce(?2, plugin_version), coalesce(?3, digest), 'available',
                    priority, ?4, input, tags, timeout_ms, coalesce(?5, max_attempts), 0, run + 1,
                    idempotency_key, webhook_url, 0, attempt_log, created_at
                 FROM job_history WHERE id = ?1",
            )
            .bind(&sid)
            .bind(target.as_ref().map(|t| t.0))
            .bind(target.as_ref().map(|t| t.1.clone()))
            .bind(now)
            .bind(options.max_attempts.map(i64::from))
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM job_history WHERE id = ?1")
                .bind(&sid)
                .execute(&mut *tx)
                .await?;
            if options.clear_journal {
                sqlx::query("DELETE FROM journal WHERE job_id = ?1")
                    .bind(&sid)
                    .execute(&mut *tx)
                    .await?;
            }
            out.push(uuid_of(&sid)?);
        }
        tx.commit().await?;
        if !out.is_empty() {
            self.wake();
        }
        Ok(out)
    }

    async fn journal_put(&self, entry: &JournalEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO journal (job_id, seq, fingerprint, response, usage, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (job_id, seq) DO UPDATE
                SET fingerprint = excluded.fingerprint, response = excluded.response,
                    usage = excluded.usage, created_at = excluded.created_at",
        )
        .bind(entry.job_id.to_string())
        .bind(i64::from(entry.seq))
        .bind(&entry.fingerprint)
        .bind(util::to_json(&entry.response))
        .bind(util::to_json(&entry.usage))
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn set_job_trace(&self, job: Uuid, traceparent: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO job_traces (job_id, traceparent) VALUES (?1, ?2)
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job.to_string())
        .bind(traceparent)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn job_trace(&self, job: Uuid) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT traceparent FROM job_traces WHERE job_id = ?1")
                .bind(job.to_string())
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn journal_get(&self, job: Uuid, seq: u32) -> Result<Option<JournalEntry>> {
        let row = sqlx::query(
            "SELECT job_id, seq, fingerprint, response, usage FROM journal WHERE job_id = ?1 AND seq = ?2",
        )
        .bind(job.to_string())
        .bind(i64::from(seq))
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(journal_from_row).transpose()
    }

    async fn journal_list(&self, job: Uuid) -> Result<Vec<JournalEntry>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, fingerprint, response, usage FROM journal WHERE job_id = ?1 ORDER BY seq",
        )
        .bind(job.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(journal_from_row).collect()
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO usage_records (job_id, attempt, plugin, tenant, tags, provider, model,
                    input_tokens, output_tokens, cached_input_tokens, cost_micros, latency_ms, ttft_ms,
                    source, outcome, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )
            .bind(r.job_id.map(|j| j.to_string()))
            .bind(i64::from(r.attempt))
            .bind(&r.plugin)
            .bind(&r.tenant)
            .bind(util::to_json(&r.tags))
            .bind(&r.provider)
            .bind(&r.model)
            .bind(r.input_tokens.min(i64::MAX as u64) as i64)
            .bind(r.output_tokens.min(i64::MAX as u64) as i64)
            .bind(r.cached_input_tokens.min(i64::MAX as u64) as i64)
            .bind(r.cost_micros)
            .bind(i64::from(r.latency_ms))
            .bind(r.ttft_ms.map(i64::from))
            .bind(source_str(r.source))
            .bind(&r.outcome)
            .bind(r.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>> {
        let key = match &query.group_by {
            UsageGroupBy::Plugin => "plugin",
            UsageGroupBy::Model => "model",
            UsageGroupBy::Provider => "provider",
            UsageGroupBy::Tag(_) => "(SELECT value FROM json_each(tags) WHERE key = ?4)",
        };
        let tag = match &query.group_by {
            UsageGroupBy::Tag(t) => t.as_str(),
            _ => "",
        };
        let sql = format!(
            "SELECT {key} AS key, input_tokens, output_tokens, cached_input_tokens, cost_micros, latency_ms
             FROM usage_records
             WHERE created_at >= ?1 AND created_at < ?2 AND (?3 IS NULL OR tenant = ?3) AND (?4 IS NOT NULL)"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.from.timestamp_millis())
            .bind(query.to.timestamp_millis())
            .bind(query.tenant.as_deref())
            .bind(tag)
            .fetch_all(&self.reader)
            .await?;
        let mut groups: HashMap<Option<String>, (UsageSummary, Vec<f64>)> = HashMap::new();
        for r in &rows {
            let key: Option<String> = r.try_get("key")?;
            let (s, lat) = groups.entry(key.clone()).or_insert_with(|| {
                (
                    UsageSummary {
                        key,
                        calls: 0,
                        input_tokens: 0,
                        output_tokens: 0,
                        cached_input_tokens: 0,
                        cost_micros: 0,
                        latency_p50_ms: 0.0,
                        latency_p95_ms: 0.0,
                    },
                    Vec::new(),
                )
            });
            s.calls += 1;
            s.input_tokens += r.try_get::<i64, _>("input_tokens")?.max(0) as u64;
            s.output_tokens += r.try_get::<i64, _>("output_tokens")?.max(0) as u64;
            s.cached_input_tokens += r.try_get::<i64, _>("cached_input_tokens")?.max(0) as u64;
            s.cost_micros += r.try_get::<i64, _>("cost_micros")?;
            lat.push(r.try_get::<i64, _>("latency_ms")? as f64);
        }
        let mut out: Vec<UsageSummary> = groups
            .into_values()
            .map(|(mut s, mut lat)| {
                lat.sort_by(f64::total_cmp);
                s.latency_p50_ms = util::percentile_cont(&lat, 0.5);
                s.latency_p95_ms = util::percentile_cont(&lat, 0.95);
                s
            })
            .collect();
        // Same order as Postgres: by key, absent last.
        out.sort_by(|a, b| match (&a.key, &b.key) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        Ok(out)
    }

    async fn append_event(&self, job: Uuid, event: &JobEvent) -> Result<u64> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO job_events (job_id, seq, event, created_at)
             SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3 FROM job_events WHERE job_id = ?1
             RETURNING seq",
        )
        .bind(job.to_string())
        .bind(util::to_json(event))
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        Ok(seq.max(0) as u64)
    }

    async fn append_events(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        // One transaction on the writer: one fsync for the batch, not one per event.
        let mut tx = self.writer.begin().await?;
        let now = now_ms();
        let mut seqs = Vec::with_capacity(events.len());
        for (job, event) in events {
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO job_events (job_id, seq, event, created_at)
                 SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3 FROM job_events WHERE job_id = ?1
                 RETURNING seq",
            )
            .bind(job.to_string())
            .bind(util::to_json(event))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            seqs.push(seq.max(0) as u64);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    async fn events_after(&self, job: Uuid, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, event, created_at FROM job_events
             WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(job.to_string())
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    job_id: uuid_of(&r.try_get::<String, _>("job_id")?)?,
                    seq: r.try_get::<i64, _>("seq")?.max(0) as u64,
                    event: util::from_json(&r.try_get::<String, _>("event")?)?,
                    created_at: ts(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey> {
        let row = sqlx::query(
            "INSERT INTO api_keys (id, tenant, name, scopes, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             RETURNING id, tenant, name, scopes, secret_hash, created_at, revoked_at",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(&key.tenant)
        .bind(&key.name)
        .bind(util::to_json(&key.scopes))
        .bind(&key.secret_hash)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| {
            if crate::error::is_unique_violation(&e) {
                StoreError::Invalid("an API key with this secret already exists".into())
            } else {
                e.into()
            }
        })?;
        api_key_from_row(&row)
    }

    async fn api_key_by_hash(&self, secret_hash: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             WHERE secret_hash = ?1 AND revoked_at IS NULL",
        )
        .bind(secret_hash)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             WHERE tenant = ?1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: Uuid) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
                .bind(id.to_string())
                .bind(now_ms())
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_api_keys(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&self.reader)
            .await?;
        Ok(n as u64)
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

#[async_trait]
impl StateBackend for SqliteStore {
    async fn get(&self, scope: &StateScope, key: &str) -> Result<Option<String>, StateError> {
        util::check_state_key(key)?;
        sqlx::query_scalar(
            "SELECT value FROM kv_state WHERE tenant = ?1 AND plugin = ?2 AND key = ?3
               AND (expires_at IS NULL OR expires_at > ?4)",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&self.reader)
        .await
        .map_err(state_err)
    }

    async fn set(
        &self,
        scope: &StateScope,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        util::check_state_key(key)?;
        util::check_state_value(value, self.config.max_state_value_bytes)?;
        let tally = self.admit_state(scope, key, value).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tenant, plugin, key) DO UPDATE
                SET value = excluded.value, expires_at = excluded.expires_at, updated_at = excluded.updated_at",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .bind(value)
        .bind(ttl.map(|t| now.saturating_add(ms_of(t))))
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(state_err)?;
        self.state_bytes.add(&scope.tenant, tally);
        Ok(())
    }

    async fn delete(&self, scope: &StateScope, key: &str) -> Result<bool, StateError> {
        util::check_state_key(key)?;
        let live: Option<bool> = sqlx::query_scalar(
            "DELETE FROM kv_state WHERE tenant = ?1 AND plugin = ?2 AND key = ?3
             RETURNING (expires_at IS NULL OR expires_at > ?4)",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&self.writer)
        .await
        .map_err(state_err)?;
        Ok(live.unwrap_or(false))
    }

    async fn list_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StateError> {
        sqlx::query_scalar(
            "SELECT key FROM kv_state WHERE tenant = ?1 AND plugin = ?2
               AND key >= ?3 AND (?4 IS NULL OR key < ?4) AND substr(key, 1, length(?3)) = ?3
               AND (expires_at IS NULL OR expires_at > ?5)
             ORDER BY key LIMIT ?6",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(prefix)
        .bind(util::prefix_upper_bound(prefix))
        .bind(now_ms())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(state_err)
    }

    async fn compare_and_swap(
        &self,
        scope: &StateScope,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StateError> {
        util::check_state_key(key)?;
        util::check_state_value(value, self.config.max_state_value_bytes)?;
        let tally = self.admit_state(scope, key, value).await?;
        let now = now_ms();
        let swapped: Option<i64> = match expected {
            None => sqlx::query_scalar(
                "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)
                 ON CONFLICT (tenant, plugin, key) DO UPDATE
                    SET value = excluded.value, expires_at = NULL, updated_at = excluded.updated_at
                    WHERE kv_state.expires_at IS NOT NULL AND kv_state.expires_at <= ?5
                 RETURNING 1",
            )
            .bind(&scope.tenant)
            .bind(&scope.plugin)
            .bind(key)
            .bind(value)
            .bind(now)
            .fetch_optional(&self.writer)
            .await
            .map_err(state_err)?,
            Some(old) => sqlx::query_scalar(
                "UPDATE kv_state SET value = ?4, updated_at = ?6
                 WHERE tenant = ?1 AND plugin = ?2 AND key = ?3 AND value = ?5
                   AND (expires_at IS NULL OR expires_at > ?6)
                 RETURNING 1",
            )
            .bind(&scope.tenant)
            .bind(&scope.plugin)
            .bind(key)
            .bind(value)
            .bind(old)
            .bind(now)
            .fetch_optional(&self.writer)
            .await
            .map_err(state_err)?,
        };
        if swapped.is_some() {
            self.state_bytes.add(&scope.tenant, tally);
        }
        Ok(swapped.is_some())
    }
}

#[async_trait]
impl EffectsBackend for SqliteStore {
    async fn lookup(&self, job: Uuid, key: &str) -> Result<Option<String>, EffectError> {
        util::check_effect_key(key)?;
        sqlx::query_scalar("SELECT result FROM effects WHERE job_id = ?1 AND key = ?2")
            .bind(job.to_string())
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(effect_err)
    }

    async fn commit(&self, job: Uuid, key: &str, result: &str) -> Result<(), EffectError> {
        util::check_effect_key(key)?;
        sqlx::query(
            "INSERT INTO effects (job_id, key, result, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job_id, key) DO NOTHING",
        )
        .bind(job.to_string())
        .bind(key)
        .bind(result)
        .bind(now_ms())
        .execute(&self.writer)
        .await
        .map_err(effect_err)?;
        Ok(())
    }
}
