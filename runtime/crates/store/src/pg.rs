//! The Postgres store: production, shared by several nodes.

mod control;
mod lease;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_types::model::Usage;
use sluice_types::{
    EffectError, EffectsBackend, JobError, JobEvent, StateBackend, StateError, StateScope, Tags,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::StoreConfig;
use crate::error::{Result, StoreError, is_unique_violation};
use crate::machine::{self, Decision, Running};
use crate::model::*;
use crate::store::{Backend, JobStore, Signal, WorkSignal};
use crate::util::{self, MAX_CLAIM_ROUNDS, Prepared, more_rounds};

/// The `LISTEN`/`NOTIFY` channel that announces new work.
pub const NOTIFY_CHANNEL: &str = "sluice_jobs";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Columns shared by `jobs` and `job_history`, in one order.
macro_rules! common_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, state, priority, run_at, input, tags, \
         timeout_ms, max_attempts, attempt, run, idempotency_key, webhook_url, worker_id, \
         attempted_at, cancel_requested, attempt_log, created_at"
    };
}

/// `common_cols!` except `state`, for inserting into history with a new state.
macro_rules! hist_insert_cols {
    () => {
        "id, tenant, plugin, plugin_version, digest, priority, run_at, input, tags, timeout_ms, \
         max_attempts, attempt, run, idempotency_key, webhook_url, worker_id, attempted_at, \
         cancel_requested, created_at"
    };
}

macro_rules! hist_select_cols_d {
    () => {
        "d.id, d.tenant, d.plugin, d.plugin_version, d.digest, d.priority, d.run_at, d.input, \
         d.tags, d.timeout_ms, d.max_attempts, d.attempt, d.run, d.idempotency_key, \
         d.webhook_url, d.worker_id, d.attempted_at, d.cancel_requested, d.created_at"
    };
}

const CLAIM_SQL: &str = "WITH RECURSIVE
fwd(tenant, n) AS (
    SELECT (SELECT j.tenant FROM jobs j WHERE j.state = 'available' AND j.tenant > $1
            ORDER BY j.tenant LIMIT 1), 1
  UNION ALL
    SELECT (SELECT j.tenant FROM jobs j WHERE j.state = 'available' AND j.tenant > f.tenant
            ORDER BY j.tenant LIMIT 1), f.n + 1
    FROM fwd f WHERE f.tenant IS NOT NULL AND f.n < $2
),
wrap(tenant, n) AS (
    SELECT (SELECT j.tenant FROM jobs j WHERE j.state = 'available' AND j.tenant <= $1
            ORDER BY j.tenant LIMIT 1), 1
  UNION ALL
    SELECT (SELECT j.tenant FROM jobs j WHERE j.state = 'available' AND j.tenant > w.tenant
              AND j.tenant <= $1 ORDER BY j.tenant LIMIT 1), w.n + 1
    FROM wrap w WHERE w.tenant IS NOT NULL AND w.n < $2
),
tenants AS (
    SELECT tenant, ord FROM (
        SELECT tenant, n AS ord FROM fwd WHERE tenant IS NOT NULL
        UNION ALL
        SELECT tenant, n + $2 AS ord FROM wrap WHERE tenant IS NOT NULL
    ) x ORDER BY ord LIMIT $2
),
caps AS (
    SELECT c.tenant, c.plugin,
           c.cap - (SELECT count(*) FROM jobs r WHERE r.state = 'running'
                    AND r.tenant = c.tenant AND r.plugin = c.plugin) AS room
    FROM unnest($5::text[], $6::text[], $7::int8[]) AS c(tenant, plugin, cap)
),
quota AS (
    SELECT t.tenant, t.ord,
           CASE WHEN tc.cap IS NULL THEN b.q
                ELSE greatest(0, least(b.q, tc.cap - (SELECT count(*) FROM jobs r
                     WHERE r.state = 'running' AND r.tenant = t.tenant)))
           END AS q,
           coalesce((SELECT array_agg(k.plugin) FROM caps k
                     WHERE k.tenant = t.tenant AND k.room <= 0), '{}'::text[]) AS blocked
    FROM tenants t
    CROSS JOIN (SELECT ceil($3::float8 / greatest(count(*), 1))::int8 AS q FROM tenants) b
    CROSS JOIN LATERAL (
        SELECT coalesce((SELECT o.cap FROM unnest($8::text[], $9::int8[]) AS o(tenant, cap)
                         WHERE o.tenant = t.tenant LIMIT 1), $10::int8) AS cap
    ) tc
),
cand AS (
    SELECT c.id, c.tenant, c.plugin, q.ord, q.q,
           row_number() OVER (PARTITION BY c.tenant ORDER BY c.priority, c.run_at, c.id) AS rn_t
    FROM quota q
    CROSS JOIN LATERAL (
        SELECT j.id, j.tenant, j.plugin, j.priority, j.run_at
        FROM jobs j
        WHERE j.state = 'available' AND j.tenant = q.tenant AND j.run_at <= now()
          -- Written so the planner does not guess it filters out almost everything (it
          -- would then sort the whole tenant instead of walking jobs_ready).
          AND coalesce(array_position(q.blocked, j.plugin), 0) < 1
        ORDER BY j.priority, j.run_at, j.id
        LIMIT q.q
        FOR UPDATE SKIP LOCKED
    ) c
),
picked AS (
    SELECT x.id, x.ord, x.q FROM (
        SELECT cand.*, k.room,
               row_number() OVER (PARTITION BY cand.tenant, cand.plugin ORDER BY cand.rn_t) AS rn_p
        FROM cand LEFT JOIN caps k ON k.tenant = cand.tenant AND k.plugin = cand.plugin
    ) x
    WHERE x.room IS NULL OR x.rn_p <= x.room
    ORDER BY x.rn_t, x.ord
    LIMIT $3
),
upd AS (
    UPDATE jobs j
    SET state = 'running', attempt = j.attempt + 1, lease_token = $4, worker_id = $11,
        lease_expires_at = now() + $12 * interval '1 millisecond', attempted_at = now()
    FROM picked p
    WHERE j.id = p.id
    RETURNING j.id, j.tenant, j.plugin, j.plugin_version, j.digest, j.input, j.tags, j.priority,
        j.attempt, j.max_attempts, j.run, j.timeout_ms, j.idempotency_key, j.webhook_url,
        j.lease_token, j.lease_expires_at, j.attempted_at, j.run_at, j.created_at, p.q
)
-- One row per claimed job, or a single row of NULLs when none: either way it carries the
-- round's last visited tenant (the next cursor) and how many tenants it visited.
SELECT m.last_tenant, m.visited, u.*
FROM (SELECT (SELECT tenant FROM tenants ORDER BY ord DESC LIMIT 1) AS last_tenant,
             (SELECT count(*) FROM tenants) AS visited) m
LEFT JOIN upd u ON true";

const ENQUEUE_SQL: &str = "INSERT INTO jobs (id, tenant, plugin, plugin_version, digest, state, priority, run_at, input,
    tags, timeout_ms, max_attempts, idempotency_key, webhook_url, created_at)
SELECT u.id, u.tenant, u.plugin, v.version, v.digest, 'available', u.priority,
    coalesce(u.run_at, now()), u.input::jsonb, u.tags::jsonb,
    coalesce(u.timeout_ms, (v.settings->>'timeout_ms')::int8, $12),
    coalesce(u.max_attempts, (v.settings->>'max_attempts')::int4, $13),
    u.ikey, u.webhook, now()
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[], $6::text[],
            $7::text[], $8::int8[], $9::int4[], $10::text[], $11::text[])
    AS u(id, tenant, plugin, priority, run_at, input, tags, timeout_ms, max_attempts, ikey, webhook)
LEFT JOIN plugins p ON p.tenant = u.tenant AND p.name = u.plugin
LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version";

const COMPLETE_SQL: &str = concat!(
    "WITH d AS (
    DELETE FROM jobs j
    USING unnest($1::uuid[], $2::uuid[], $3::text[]) AS c(id, token, output)
    WHERE j.id = c.id AND j.lease_token = c.token AND j.state = 'running'
    RETURNING j.*, c.output AS new_output
),
w AS (
    INSERT INTO webhook_deliveries (tenant, job_id, url, event)
    SELECT d.tenant, d.id, d.webhook_url, 'job.completed' FROM d WHERE d.webhook_url IS NOT NULL
)
INSERT INTO job_history (",
    hist_insert_cols!(),
    ", attempt_log, state, output, error, finished_at)
SELECT ",
    hist_select_cols_d!(),
    ", d.attempt_log, 'completed', d.new_output::jsonb, NULL, now() FROM d
RETURNING id"
);

/// Move rows (ids in `$1`, with per-row state, error and attempt entry) from `jobs` to
/// history. `$5` guards on the lease token when given.
const MOVE_SQL: &str = concat!(
    "WITH m AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
        AS m(id, new_state, error, entry)
),
d AS (
    DELETE FROM jobs j USING m
    WHERE j.id = m.id AND ($5::uuid IS NULL OR j.lease_token = $5)
    RETURNING j.*, m.new_state, m.error AS new_error, m.entry
),
w AS (
    INSERT INTO webhook_deliveries (tenant, job_id, url, event)
    SELECT d.tenant, d.id, d.webhook_url, 'job.' || d.new_state FROM d
    WHERE d.webhook_url IS NOT NULL
)
INSERT INTO job_history (",
    hist_insert_cols!(),
    ", attempt_log, state, output, error, finished_at)
SELECT ",
    hist_select_cols_d!(),
    ", CASE WHEN d.entry IS NULL THEN d.attempt_log ELSE d.attempt_log || jsonb_build_array(d.entry::jsonb) END,
    d.new_state, NULL, d.new_error::jsonb, now() FROM d
RETURNING id"
);

const GET_JOB_SQL: &str = concat!(
    "SELECT ",
    common_cols!(),
    ", lease_expires_at, NULL::jsonb AS output, NULL::jsonb AS error,
    NULL::timestamptz AS finished_at, now() AS now FROM jobs WHERE id = $1
UNION ALL
SELECT ",
    common_cols!(),
    ", NULL::timestamptz, output, error, finished_at, now() FROM job_history WHERE id = $1"
);

/// What one claim statement did.
struct Round {
    jobs: Vec<ClaimedJob>,
    last_tenant: Option<String>,
    visited: i64,
    quota: i64,
}

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

    async fn insert_jobs<'e, E>(&self, exec: E, jobs: &[&Prepared]) -> Result<u64, sqlx::Error>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        let n = jobs.len();
        let mut ids = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut plugins = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut run_ats = Vec::with_capacity(n);
        let mut inputs = Vec::with_capacity(n);
        let mut tags = Vec::with_capacity(n);
        let mut timeouts = Vec::with_capacity(n);
        let mut maxes = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut hooks = Vec::with_capacity(n);
        for p in jobs {
            ids.push(p.id);
            tenants.push(p.job.tenant.as_str());
            plugins.push(p.job.plugin.as_str());
            priorities.push(p.job.priority);
            run_ats.push(p.job.run_at);
            inputs.push(p.input.as_str());
            tags.push(p.tags.as_str());
            timeouts.push(p.job.timeout_ms.map(|t| t.min(i64::MAX as u64) as i64));
            maxes.push(p.job.max_attempts.map(|m| m.min(i32::MAX as u32) as i32));
            keys.push(p.job.idempotency_key.as_deref());
            hooks.push(p.job.webhook_url.as_deref());
        }
        let res = sqlx::query(ENQUEUE_SQL)
            .bind(ids)
            .bind(tenants)
            .bind(plugins)
            .bind(priorities)
            .bind(run_ats)
            .bind(inputs)
            .bind(tags)
            .bind(timeouts)
            .bind(maxes)
            .bind(keys)
            .bind(hooks)
            .bind(self.config.default_timeout_ms.min(i64::MAX as u64) as i64)
            .bind(self.config.default_max_attempts.min(i32::MAX as u32) as i32)
            .execute(exec)
            .await?;
        Ok(res.rows_affected())
    }

    /// The clear error for an enqueue whose plugin has no active version.
    async fn missing_plugin(&self, jobs: &[&Prepared]) -> Result<StoreError> {
        let tenants: Vec<&str> = jobs.iter().map(|p| p.job.tenant.as_str()).collect();
        let plugins: Vec<&str> = jobs.iter().map(|p| p.job.plugin.as_str()).collect();
        let row = sqlx::query(
            "SELECT u.tenant, u.plugin FROM unnest($1::text[], $2::text[]) AS u(tenant, plugin)
             WHERE NOT EXISTS (SELECT 1 FROM plugins p JOIN plugin_versions v
                 ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
                 WHERE p.tenant = u.tenant AND p.name = u.plugin)
             LIMIT 1",
        )
        .bind(tenants)
        .bind(plugins)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => not_found_plugin(r.try_get("tenant")?, r.try_get("plugin")?),
            None => StoreError::Invalid("enqueue failed: a plugin changed concurrently".into()),
        })
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
                    "SELECT coalesce(sum(octet_length(key) + octet_length(value)), 0) FROM kv_state WHERE tenant = $1",
                )
                .bind(tenant)
                .fetch_one(&self.pool)
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
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE tenant = $1")
                        .bind(tenant)
                        .fetch_one(&self.pool)
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
        if prepared.iter().all(|p| p.job.idempotency_key.is_none()) {
            let refs: Vec<&Prepared> = prepared.iter().collect();
            match self.insert_jobs(&self.pool, &refs).await {
                Ok(_) => {}
                Err(e) if is_not_null_violation(&e) => {
                    return Err(self.missing_plugin(&refs).await?);
                }
                Err(e) => return Err(e.into()),
            }
            self.wake();
            return Ok(prepared
                .iter()
                .map(|p| Enqueued {
                    id: p.id,
                    existing: false,
                })
                .collect());
        }

        // With idempotency keys: claim the keys first (the primary key is the guard), then
        // insert only the jobs whose key we won, all in one transaction.
        let mut results: Vec<Option<Enqueued>> = vec![None; prepared.len()];
        // Duplicates within the batch resolve to the first occurrence.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        let mut alias: Vec<(usize, usize)> = Vec::new();
        let mut keyed: Vec<usize> = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            if let Some(k) = p.job.idempotency_key.as_deref() {
                match first.get(&(p.job.tenant.as_str(), k)) {
                    Some(&j) => {
                        if prepared[j].body_hash != p.body_hash {
                            return Err(StoreError::Conflict {
                                key: k.to_owned(),
                                job_id: prepared[j].id,
                            });
                        }
                        alias.push((i, j));
                    }
                    None => {
                        first.insert((p.job.tenant.as_str(), k), i);
                        keyed.push(i);
                    }
                }
            }
        }
        // A stable order for key inserts avoids deadlocks between concurrent batches.
        keyed.sort_by(|&a, &b| {
            let (pa, pb) = (&prepared[a].job, &prepared[b].job);
            (pa.tenant.as_str(), pa.idempotency_key.as_deref())
                .cmp(&(pb.tenant.as_str(), pb.idempotency_key.as_deref()))
        });

        let mut tx = self.pool.begin().await?;
        let k_tenants: Vec<&str> = keyed
            .iter()
            .map(|&i| prepared[i].job.tenant.as_str())
            .collect();
        let k_keys: Vec<&str> = keyed
            .iter()
            .map(|&i| prepared[i].job.idempotency_key.as_deref().unwrap_or(""))
            .collect();
        let k_ids: Vec<Uuid> = keyed.iter().map(|&i| prepared[i].id).collect();
        let k_hashes: Vec<&str> = keyed
            .iter()
            .map(|&i| prepared[i].body_hash.as_str())
            .collect();
        let won: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (tenant, key, job_id, body_hash, created_at, expires_at)
             SELECT u.tenant, u.key, u.job_id, u.body_hash, now(), now() + $5 * interval '1 millisecond'
             FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[]) AS u(tenant, key, job_id, body_hash)
             ON CONFLICT (tenant, key) DO UPDATE
                SET job_id = EXCLUDED.job_id, body_hash = EXCLUDED.body_hash,
                    created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
                WHERE idempotency_keys.expires_at <= now()
             RETURNING job_id",
        )
        .bind(&k_tenants)
        .bind(&k_keys)
        .bind(&k_ids)
        .bind(&k_hashes)
        .bind(Self::ms(self.config.idempotency_ttl))
        .fetch_all(&mut *tx)
        .await?;
        let won: std::collections::HashSet<Uuid> = won.into_iter().collect();
        let lost: Vec<usize> = keyed
            .iter()
            .copied()
            .filter(|&i| !won.contains(&prepared[i].id))
            .collect();
        if !lost.is_empty() {
            // A new statement sees keys committed by concurrent submitters we waited for.
            let l_tenants: Vec<&str> = lost
                .iter()
                .map(|&i| prepared[i].job.tenant.as_str())
                .collect();
            let l_keys: Vec<&str> = lost
                .iter()
                .map(|&i| prepared[i].job.idempotency_key.as_deref().unwrap_or(""))
                .collect();
            let rows = sqlx::query(
                "SELECT k.tenant, k.key, k.job_id, k.body_hash FROM idempotency_keys k
                 JOIN unnest($1::text[], $2::text[]) AS u(tenant, key)
                   ON k.tenant = u.tenant AND k.key = u.key",
            )
            .bind(&l_tenants)
            .bind(&l_keys)
            .fetch_all(&mut *tx)
            .await?;
            let mut existing: HashMap<(String, String), (Uuid, String)> = HashMap::new();
            for r in rows {
                existing.insert(
                    (r.try_get("tenant")?, r.try_get("key")?),
                    (r.try_get("job_id")?, r.try_get("body_hash")?),
                );
            }
            for &i in &lost {
                let p = &prepared[i];
                let key = p.job.idempotency_key.clone().unwrap_or_default();
                let Some((job_id, hash)) = existing.get(&(p.job.tenant.clone(), key.clone()))
                else {
                    return Err(StoreError::Invalid(format!(
                        "idempotency key `{key}` changed concurrently; retry"
                    )));
                };
                if *hash != p.body_hash {
                    return Err(StoreError::Conflict {
                        key,
                        job_id: *job_id,
                    });
                }
                results[i] = Some(Enqueued {
                    id: *job_id,
                    existing: true,
                });
            }
        }
        let to_insert: Vec<&Prepared> = prepared
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                results[*i].is_none() && (p.job.idempotency_key.is_none() || won.contains(&p.id))
            })
            .map(|(_, p)| p)
            .collect();
        if !to_insert.is_empty() {
            match self.insert_jobs(&mut *tx, &to_insert).await {
                Ok(_) => {}
                Err(e) if is_not_null_violation(&e) => {
                    drop(tx);
                    return Err(self.missing_plugin(&to_insert).await?);
                }
                Err(e) => return Err(e.into()),
            }
        }
        tx.commit().await?;
        for p in &to_insert {
            let i = prepared.iter().position(|q| q.id == p.id).unwrap_or(0);
            results[i] = Some(Enqueued {
                id: p.id,
                existing: false,
            });
        }
        for (i, j) in alias {
            results[i] = results[j].map(|e| Enqueued {
                id: e.id,
                existing: true,
            });
        }
        if !to_insert.is_empty() {
            self.wake();
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| StoreError::Invalid("enqueue lost track of a job".into())))
            .collect()
    }

    async fn claim_round(&self, req: &ClaimRequest, limit: u32, cursor: &str) -> Result<Round> {
        let (cap_t, cap_p, cap_c): (Vec<&str>, Vec<&str>, Vec<i64>) = req
            .plugin_caps
            .iter()
            .map(|c| {
                (
                    c.tenant.as_str(),
                    c.plugin.as_str(),
                    i64::from(c.max_running),
                )
            })
            .fold((vec![], vec![], vec![]), |mut acc, (t, p, c)| {
                acc.0.push(t);
                acc.1.push(p);
                acc.2.push(c);
                acc
            });
        let over_t: Vec<&str> = req.tenant_caps.keys().map(String::as_str).collect();
        let over_c: Vec<i64> = over_t
            .iter()
            .map(|t| i64::from(req.tenant_caps[*t]))
            .collect();
        let token = Uuid::new_v4();
        let query = sqlx::query(CLAIM_SQL)
            .bind(cursor)
            .bind(limit.min(i32::MAX as u32) as i32)
            .bind(i64::from(limit))
            .bind(token)
            .bind(cap_t)
            .bind(cap_p)
            .bind(cap_c)
            .bind(over_t)
            .bind(over_c)
            .bind(req.tenant_cap.map(i64::from))
            .bind(req.worker_id.as_str())
            .bind(Self::ms(req.lease));
        let rows = if req.has_exact_caps() {
            // Serialize capped claims across nodes so two cannot both take the last slot.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7242031077)")
                .execute(&mut *tx)
                .await?;
            let rows = query.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        } else {
            query.fetch_all(&self.pool).await?
        };
        let mut round = Round {
            jobs: Vec::with_capacity(rows.len()),
            last_tenant: None,
            visited: 0,
            quota: 0,
        };
        for r in &rows {
            round.last_tenant = r.try_get("last_tenant")?;
            round.visited = r.try_get("visited")?;
            if r.try_get::<Option<Uuid>, _>("id")?.is_some() {
                round.quota = r.try_get("q")?;
                round.jobs.push(claimed_from_row(r)?);
            }
        }
        Ok(round)
    }

    /// Move `ids` (locked or guarded by `token`) to history; one state/error/entry each.
    async fn move_to_history<'e, E>(
        exec: E,
        ids: &[Uuid],
        states: &[&str],
        errors: &[Option<String>],
        entries: &[Option<String>],
        token: Option<Uuid>,
    ) -> Result<Vec<Uuid>>
    where
        E: sqlx::Executor<'e, Database = Postgres>,
    {
        Ok(sqlx::query_scalar(MOVE_SQL)
            .bind(ids)
            .bind(states)
            .bind(errors)
            .bind(entries)
            .bind(token)
            .fetch_all(exec)
            .await?)
    }

    fn push_filter(
        qb: &mut QueryBuilder<Postgres>,
        filter: &JobFilter,
        before: Option<Uuid>,
        status_sql: &str,
    ) -> Result<()> {
        qb.push(" WHERE ");
        qb.push(status_sql);
        if let Some(t) = &filter.tenant {
            qb.push(" AND tenant = ").push_bind(t.clone());
        }
        if let Some(p) = &filter.plugin {
            qb.push(" AND plugin = ").push_bind(p.clone());
        }
        if !filter.tags.is_empty() {
            qb.push(" AND tags @> ")
                .push_bind(util::to_pg_json(&filter.tags))
                .push("::jsonb");
        }
        if let Some(b) = before {
            qb.push(" AND id < ").push_bind(b);
        }
        Ok(())
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

fn is_not_null_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23502"))
}

fn not_found_plugin(tenant: String, plugin: String) -> StoreError {
    StoreError::NotFound {
        what: "plugin",
        name: format!(
            "`{plugin}` of tenant `{tenant}` (no such plugin, or it has no active version)"
        ),
    }
}

fn u32_of(v: i32) -> u32 {
    v.max(0) as u32
}

fn claimed_from_row(r: &PgRow) -> Result<ClaimedJob> {
    let id: Uuid = r.try_get("id")?;
    Ok(ClaimedJob {
        id,
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        digest: r.try_get("digest")?,
        input: r.try_get("input")?,
        tags: r.try_get::<Json<Tags>, _>("tags")?.0,
        priority: r.try_get("priority")?,
        attempt: u32_of(r.try_get("attempt")?),
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run: u32_of(r.try_get("run")?),
        timeout_ms: r.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        idempotency_key: r.try_get("idempotency_key")?,
        webhook_url: r.try_get("webhook_url")?,
        lease: Lease {
            id,
            token: r.try_get("lease_token")?,
        },
        lease_expires_at: r.try_get("lease_expires_at")?,
        attempted_at: r.try_get("attempted_at")?,
        run_at: r.try_get("run_at")?,
        created_at: r.try_get("created_at")?,
    })
}

fn status_of(r: &PgRow, now: DateTime<Utc>) -> Result<JobStatus> {
    let state: String = r.try_get("state")?;
    Ok(match state.as_str() {
        "available" | "running" => JobStatus::of_live(
            state == "running",
            r.try_get::<i32, _>("attempt")?.into(),
            r.try_get("run_at")?,
            now,
        ),
        other => other.parse()?,
    })
}

fn record_from_row(r: &PgRow) -> Result<JobRecord> {
    let now: DateTime<Utc> = r.try_get("now")?;
    let status = status_of(r, now)?;
    let mut attempts = r.try_get::<Json<Vec<AttemptRecord>>, _>("attempt_log")?.0;
    let finished_at: Option<DateTime<Utc>> = r.try_get("finished_at")?;
    let attempted_at: Option<DateTime<Utc>> = r.try_get("attempted_at")?;
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
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        digest,
        status,
        priority: r.try_get("priority")?,
        input: r.try_get("input")?,
        tags: r.try_get::<Json<Tags>, _>("tags")?.0,
        attempt,
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run,
        timeout_ms: r.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        idempotency_key: r.try_get("idempotency_key")?,
        webhook_url: r.try_get("webhook_url")?,
        worker_id,
        cancel_requested: r.try_get("cancel_requested")?,
        created_at: r.try_get("created_at")?,
        run_at: r.try_get("run_at")?,
        attempted_at,
        lease_expires_at: r.try_get("lease_expires_at")?,
        finished_at,
        output: r.try_get("output")?,
        error: r
            .try_get::<Option<Json<JobError>>, _>("error")?
            .map(|j| j.0),
        attempts,
    })
}

fn summary_from_row(r: &PgRow, now: DateTime<Utc>) -> Result<JobSummary> {
    Ok(JobSummary {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("plugin")?,
        plugin_version: r.try_get("plugin_version")?,
        status: status_of(r, now)?,
        priority: r.try_get("priority")?,
        tags: r.try_get::<Json<Tags>, _>("tags")?.0,
        attempt: u32_of(r.try_get("attempt")?),
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run: u32_of(r.try_get("run")?),
        created_at: r.try_get("created_at")?,
        run_at: r.try_get("run_at")?,
        finished_at: r.try_get("finished_at")?,
        error: r
            .try_get::<Option<Json<JobError>>, _>("error")?
            .map(|j| j.0),
    })
}

fn version_from_row(r: &PgRow) -> Result<PluginVersion> {
    Ok(PluginVersion {
        tenant: r.try_get("tenant")?,
        plugin: r.try_get("name")?,
        version: r.try_get("version")?,
        digest: r.try_get("digest")?,
        settings: r.try_get::<Json<PluginSettings>, _>("settings")?.0,
        created_at: r.try_get("created_at")?,
    })
}

fn running_from_row(r: &PgRow) -> Result<Running> {
    Ok(Running {
        attempt: u32_of(r.try_get("attempt")?),
        max_attempts: u32_of(r.try_get("max_attempts")?),
        run: u32_of(r.try_get("run")?),
        cancel_requested: r.try_get("cancel_requested")?,
        worker_id: r.try_get("worker_id")?,
        digest: r.try_get("digest")?,
        attempted_at: r.try_get("attempted_at")?,
    })
}

fn api_key_from_row(r: &PgRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: r.try_get("id")?,
        tenant: r.try_get("tenant")?,
        name: r.try_get("name")?,
        scopes: r.try_get::<Json<Vec<String>>, _>("scopes")?.0,
        secret_hash: r.try_get("secret_hash")?,
        created_at: r.try_get("created_at")?,
        revoked: r
            .try_get::<Option<DateTime<Utc>>, _>("revoked_at")?
            .is_some(),
    })
}

fn state_err(e: sqlx::Error) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn effect_err(e: sqlx::Error) -> EffectError {
    EffectError::Unavailable(e.to_string())
}

#[async_trait]
impl JobStore for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn work_signal(&self) -> WorkSignal {
        self.listening.call_once(|| {
            let task = tokio::spawn(listen_loop(self.pool.clone(), self.signal.clone()));
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.push(task);
            }
        });
        self.signal.subscribe()
    }

    async fn close(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        self.pool.close().await;
    }

    async fn put_component(&self, bytes: &[u8]) -> Result<String> {
        let digest = util::component_digest(bytes);
        sqlx::query(
            "INSERT INTO components (digest, bytes, size) VALUES ($1, $2, $3)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(bytes)
        .bind(bytes.len() as i64)
        .execute(&self.pool)
        .await?;
        Ok(digest)
    }

    async fn get_component(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM components WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM components WHERE digest = $1")
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
            "INSERT INTO plugins (tenant, name, next_version) VALUES ($1, $2, 2)
             ON CONFLICT (tenant, name) DO UPDATE
                SET next_version = plugins.next_version + 1, updated_at = now()
             RETURNING next_version - 1",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_one(&mut *tx)
        .await?;
        let row = sqlx::query(
            "INSERT INTO plugin_versions (tenant, name, version, digest, settings)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING tenant, name, version, digest, settings, created_at",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .bind(digest)
        .bind(Json(settings))
        .fetch_one(&mut *tx)
        .await?;
        if activate {
            sqlx::query("UPDATE plugins SET active_version = $3 WHERE tenant = $1 AND name = $2")
                .bind(tenant)
                .bind(plugin)
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        version_from_row(&row)
    }

    async fn activate_plugin_version(
        &self,
        tenant: &str,
        plugin: &str,
        version: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE plugins p SET active_version = $3, updated_at = now()
             WHERE p.tenant = $1 AND p.name = $2 AND EXISTS (
                SELECT 1 FROM plugin_versions v WHERE v.tenant = $1 AND v.name = $2 AND v.version = $3)",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .execute(&self.pool)
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
             WHERE tenant = $1 AND name = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(plugin)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    async fn get_plugin(&self, tenant: &str, plugin: &str) -> Result<Option<PluginInfo>> {
        let mut all = self.list_plugins_where(tenant, Some(plugin)).await?;
        Ok(all.pop())
    }

    async fn list_plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>> {
        self.list_plugins_where(tenant, None).await
    }

    async fn delete_plugin(&self, tenant: &str, plugin: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM plugins WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(plugin)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn concurrency_caps(&self) -> Result<Vec<PluginCap>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, (v.settings->>'concurrency')::int8 AS cap
             FROM plugins p JOIN plugin_versions v
               ON v.tenant = p.tenant AND v.name = p.name AND v.version = p.active_version
             WHERE v.settings ? 'concurrency' ORDER BY p.tenant, p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginCap {
                    tenant: r.try_get("tenant")?,
                    plugin: r.try_get("name")?,
                    max_running: r.try_get::<i64, _>("cap")?.clamp(0, u32::MAX as i64) as u32,
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
        let mut out = Vec::new();
        let mut cursor = self.rr_cursor.lock().map(|c| c.clone()).unwrap_or_default();
        for _round in 0..MAX_CLAIM_ROUNDS {
            let want = req.limit.saturating_sub(out.len() as u32);
            if want == 0 {
                break;
            }
            let round = self.claim_round(req, want, &cursor).await?;
            let mut per_tenant: HashMap<&str, i64> = HashMap::new();
            for j in &round.jobs {
                *per_tenant.entry(j.tenant.as_str()).or_default() += 1;
            }
            let saturated = per_tenant.values().any(|n| *n >= round.quota);
            let got = round.jobs.len() as u32;
            let moved = round.last_tenant.as_deref().is_some_and(|t| t != cursor);
            let more = more_rounds(got, want, saturated, round.visited, moved);
            if let Some(t) = round.last_tenant {
                cursor = t;
            }
            out.extend(round.jobs);
            if !more {
                break;
            }
        }
        if let Ok(mut c) = self.rr_cursor.lock() {
            *c = cursor;
        }
        Ok(out)
    }

    async fn heartbeat(&self, leases: &[Lease], extend: Duration) -> Result<Vec<LeaseStatus>> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.token).collect();
        let rows = sqlx::query(
            "UPDATE jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
             FROM unnest($1::uuid[], $2::uuid[]) AS h(id, token)
             WHERE j.id = h.id AND j.lease_token = h.token AND j.state = 'running'
             RETURNING j.id, j.cancel_requested",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(Self::ms(extend))
        .fetch_all(&self.pool)
        .await?;
        let mut held: HashMap<Uuid, bool> = HashMap::with_capacity(rows.len());
        for r in rows {
            held.insert(r.try_get("id")?, r.try_get("cancel_requested")?);
        }
        Ok(leases
            .iter()
            .map(|l| match held.get(&l.id) {
                Some(true) => LeaseStatus::CancelRequested,
                Some(false) => LeaseStatus::Held,
                None => LeaseStatus::Lost,
            })
            .collect())
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
        let ids: Vec<Uuid> = items.iter().map(|c| c.lease.id).collect();
        let tokens: Vec<Uuid> = items.iter().map(|c| c.lease.token).collect();
        let outputs: Vec<String> = items.iter().map(|c| util::to_pg_json(&c.output)).collect();
        let done: Vec<Uuid> = sqlx::query_scalar(COMPLETE_SQL)
            .bind(&ids)
            .bind(&tokens)
            .bind(&outputs)
            .fetch_all(&self.pool)
            .await?;
        let done: std::collections::HashSet<Uuid> = done.into_iter().collect();
        Ok(items
            .iter()
            .map(|c| {
                if done.contains(&c.lease.id) {
                    Finalized::Completed
                } else {
                    Finalized::LeaseLost
                }
            })
            .collect())
    }

    async fn fail(&self, lease: Lease, failure: &Failure) -> Result<Finalized> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT attempt, max_attempts, run, cancel_requested, worker_id, digest, attempted_at,
                    now() AS now
             FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running' FOR UPDATE",
        )
        .bind(lease.id)
        .bind(lease.token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Finalized::LeaseLost);
        };
        let job = running_from_row(&row)?;
        let now: DateTime<Utc> = row.try_get("now")?;
        let decision = machine::decide(&job, &failure.error, now, &self.config.backoff);
        let entry = machine::attempt_record(
            &job,
            now,
            machine::outcome_of(decision),
            Some(failure.error.clone()),
            failure.detail.clone(),
        );
        let entry = util::to_pg_json(&entry);
        let outcome = match decision {
            Decision::Retry { run_at } => {
                sqlx::query(
                    "UPDATE jobs SET state = 'available', run_at = $2, lease_token = NULL,
                        lease_expires_at = NULL, attempt_log = attempt_log || jsonb_build_array($3::jsonb)
                     WHERE id = $1",
                )
                .bind(lease.id)
                .bind(run_at)
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
                Self::move_to_history(
                    &mut *tx,
                    &[lease.id],
                    &[state],
                    &[Some(util::to_pg_json(&failure.error))],
                    &[Some(entry)],
                    Some(lease.token),
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
        for _ in 0..3 {
            // Waiting → cancelled, in one statement guarded by state.
            let moved: Vec<Uuid> = sqlx::query_scalar(concat!(
                "WITH d AS (DELETE FROM jobs WHERE id = $1 AND state = 'available' RETURNING *),
                 w AS (INSERT INTO webhook_deliveries (tenant, job_id, url, event)
                       SELECT d.tenant, d.id, d.webhook_url, 'job.cancelled' FROM d
                       WHERE d.webhook_url IS NOT NULL)
                 INSERT INTO job_history (",
                hist_insert_cols!(),
                ", attempt_log, state, output, error, finished_at) SELECT ",
                hist_select_cols_d!(),
                ", d.attempt_log, 'cancelled', NULL, $2::jsonb, now() FROM d RETURNING id"
            ))
            .bind(id)
            .bind(util::to_pg_json(&machine::cancelled_error()))
            .fetch_all(&self.pool)
            .await?;
            if !moved.is_empty() {
                return Ok(CancelOutcome::Cancelled);
            }
            let flagged = sqlx::query(
                "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'running'",
            )
            .bind(id)
            .execute(&self.pool)
            .await?;
            if flagged.rows_affected() > 0 {
                return Ok(CancelOutcome::CancelRequested);
            }
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM job_history WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(s) = state {
                return Ok(CancelOutcome::AlreadyFinished { status: s.parse()? });
            }
            // It may have moved between statements (e.g. running → retrying); look again.
            let live: Option<i32> = sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            if live.is_none() {
                return Ok(CancelOutcome::NotFound);
            }
        }
        Err(StoreError::Invalid(format!(
            "job {id} kept changing state; retry the cancel"
        )))
    }

    async fn rescue_expired_leases(&self) -> Result<RescueReport> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, attempt, max_attempts, run, cancel_requested, worker_id, digest, attempted_at,
                    now() AS now
             FROM jobs WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut report = RescueReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        let (mut r_ids, mut r_at, mut r_entry) = (vec![], vec![], vec![]);
        let (mut m_ids, mut m_state, mut m_err, mut m_entry) = (vec![], vec![], vec![], vec![]);
        for row in &rows {
            let id: Uuid = row.try_get("id")?;
            let now: DateTime<Utc> = row.try_get("now")?;
            let job = running_from_row(row)?;
            let error = machine::lease_expired_error(&job);
            let decision = machine::decide(&job, &error, now, &self.config.backoff);
            let outcome = match decision {
                Decision::Cancelled => AttemptOutcome::Cancelled,
                _ => AttemptOutcome::LeaseExpired,
            };
            let entry = util::to_pg_json(&machine::attempt_record(
                &job,
                now,
                outcome,
                Some(error.clone()),
                None,
            ));
            match decision {
                Decision::Retry { run_at } => {
                    r_ids.push(id);
                    r_at.push(run_at);
                    r_entry.push(entry);
                    report.retried.push(id);
                }
                Decision::Dead | Decision::Cancelled => {
                    m_ids.push(id);
                    m_state.push(decision.terminal_state().unwrap_or("dead"));
                    m_err.push(Some(util::to_pg_json(&error)));
                    m_entry.push(Some(entry));
                    if decision == Decision::Dead {
                        report.dead.push(id);
                    } else {
                        report.cancelled.push(id);
                    }
                }
            }
        }
        if !r_ids.is_empty() {
            sqlx::query(
                "UPDATE jobs j SET state = 'available', run_at = u.run_at, lease_token = NULL,
                    lease_expires_at = NULL, attempt_log = j.attempt_log || jsonb_build_array(u.entry::jsonb)
                 FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, run_at, entry)
                 WHERE j.id = u.id",
            )
            .bind(&r_ids)
            .bind(&r_at)
            .bind(&r_entry)
            .execute(&mut *tx)
            .await?;
        }
        if !m_ids.is_empty() {
            Self::move_to_history(&mut *tx, &m_ids, &m_state, &m_err, &m_entry, None).await?;
        }
        tx.commit().await?;
        if !report.retried.is_empty() {
            self.wake();
        }
        Ok(report)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>> {
        let row = sqlx::query(GET_JOB_SQL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    async fn list_jobs(&self, filter: &JobFilter, page: PageRequest) -> Result<Page<JobSummary>> {
        let limit = page.limit.clamp(1, 1000);
        let live_status = match filter.status {
            None => Some("true"),
            Some(JobStatus::Scheduled) => {
                Some("state = 'available' AND attempt = 0 AND run_at > now()")
            }
            Some(JobStatus::Queued) => {
                Some("state = 'available' AND attempt = 0 AND run_at <= now()")
            }
            Some(JobStatus::Retrying) => Some("state = 'available' AND attempt > 0"),
            Some(JobStatus::Running) => Some("state = 'running'"),
            Some(_) => None,
        };
        let hist_status = match filter.status {
            None => Some("true"),
            Some(JobStatus::Completed) => Some("state = 'completed'"),
            Some(JobStatus::Dead) => Some("state = 'dead'"),
            Some(JobStatus::Cancelled) => Some("state = 'cancelled'"),
            Some(_) => None,
        };
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("SELECT x.*, now() AS now FROM (");
        let cols = "id, tenant, plugin, plugin_version, state, priority, tags, attempt, max_attempts, run, created_at, run_at";
        let mut first = true;
        if let Some(st) = live_status {
            qb.push(format!(
                "(SELECT {cols}, NULL::timestamptz AS finished_at, NULL::jsonb AS error FROM jobs"
            ));
            Self::push_filter(&mut qb, filter, page.before, st)?;
            qb.push(format!(" ORDER BY id DESC LIMIT {})", limit + 1));
            first = false;
        }
        if let Some(st) = hist_status {
            if !first {
                qb.push(" UNION ALL ");
            }
            qb.push(format!(
                "(SELECT {cols}, finished_at, error FROM job_history"
            ));
            Self::push_filter(&mut qb, filter, page.before, st)?;
            qb.push(format!(" ORDER BY id DESC LIMIT {})", limit + 1));
        }
        qb.push(format!(") x ORDER BY x.id DESC LIMIT {}", limit + 1));
        let rows = qb.build().fetch_all(&self.pool).await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let now: DateTime<Utc> = r.try_get("now")?;
            items.push(summary_from_row(r, now)?);
        }
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
                count(*) FILTER (WHERE state = 'available' AND attempt = 0 AND run_at > now()) AS scheduled,
                count(*) FILTER (WHERE state = 'available' AND attempt = 0 AND run_at <= now()) AS queued,
                count(*) FILTER (WHERE state = 'available' AND attempt > 0) AS retrying,
                count(*) FILTER (WHERE state = 'running') AS running,
                (SELECT count(*) FROM job_history WHERE state = 'dead') AS dead
             FROM jobs",
        )
        .fetch_one(&self.pool)
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
               AND ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR plugin = $2)",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn redrive(&self, filter: &DeadFilter, options: &RedriveOptions) -> Result<Vec<Uuid>> {
        let (mode, version) = match options.target {
            RedriveTarget::Same => ("same", None),
            RedriveTarget::Active => ("active", None),
            RedriveTarget::Version(v) => {
                let (Some(t), Some(p)) = (&filter.tenant, &filter.plugin) else {
                    return Err(StoreError::Invalid(
                        "redrive onto a version needs the filter to name tenant and plugin".into(),
                    ));
                };
                if self.get_plugin_version(t, p, v).await?.is_none() {
                    return Err(StoreError::NotFound {
                        what: "plugin version",
                        name: format!("`{p}` v{v} of tenant `{t}`"),
                    });
                }
                ("version", Some(v))
            }
        };
        let limit = i64::from(filter.limit.unwrap_or(10_000));
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "WITH d AS (
                DELETE FROM job_history h WHERE h.id IN (
                    SELECT id FROM job_history WHERE state = 'dead'
                      AND ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR plugin = $2)
                      AND ($3::uuid[] IS NULL OR id = ANY($3))
                    ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
                RETURNING h.*
            )
            INSERT INTO jobs (id, tenant, plugin, plugin_version, digest, state, priority, run_at, input,
                tags, timeout_ms, max_attempts, attempt, run, idempotency_key, webhook_url,
                cancel_requested, attempt_log, created_at)
            SELECT d.id, d.tenant, d.plugin, coalesce(t.version, d.plugin_version),
                coalesce(t.digest, d.digest), 'available', d.priority, now(), d.input, d.tags,
                d.timeout_ms, coalesce($7::int4, d.max_attempts), 0, d.run + 1, d.idempotency_key,
                d.webhook_url, false, d.attempt_log, d.created_at
            FROM d LEFT JOIN LATERAL (
                SELECT v.version, v.digest FROM plugins p JOIN plugin_versions v
                  ON v.tenant = p.tenant AND v.name = p.name
                WHERE $5 <> 'same' AND p.tenant = d.tenant AND p.name = d.plugin
                  AND v.version = CASE WHEN $5 = 'active' THEN p.active_version ELSE $6::int8 END
            ) t ON true
            RETURNING id",
        )
        .bind(filter.tenant.as_deref())
        .bind(filter.plugin.as_deref())
        .bind(filter.ids.as_deref())
        .bind(limit)
        .bind(mode)
        .bind(version)
        .bind(options.max_attempts.map(|m| m.min(i32::MAX as u32) as i32))
        .fetch_all(&mut *tx)
        .await?;
        if options.clear_journal && !ids.is_empty() {
            sqlx::query("DELETE FROM journal WHERE job_id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if !ids.is_empty() {
            self.wake();
        }
        Ok(ids)
    }

    async fn journal_put(&self, entry: &JournalEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO journal (job_id, seq, fingerprint, response, usage) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)
             ON CONFLICT (job_id, seq) DO UPDATE
                SET fingerprint = EXCLUDED.fingerprint, response = EXCLUDED.response,
                    usage = EXCLUDED.usage, created_at = now()",
        )
        .bind(entry.job_id)
        .bind(entry.seq.min(i32::MAX as u32) as i32)
        .bind(&entry.fingerprint)
        .bind(util::to_pg_json(&entry.response))
        .bind(util::to_pg_json(&entry.usage))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_job_trace(&self, job: Uuid, traceparent: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO job_traces (job_id, traceparent) VALUES ($1, $2)
             ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job)
        .bind(traceparent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn job_trace(&self, job: Uuid) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT traceparent FROM job_traces WHERE job_id = $1")
                .bind(job)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn journal_get(&self, job: Uuid, seq: u32) -> Result<Option<JournalEntry>> {
        let row = sqlx::query(
            "SELECT job_id, seq, fingerprint, response, usage FROM journal WHERE job_id = $1 AND seq = $2",
        )
        .bind(job)
        .bind(seq.min(i32::MAX as u32) as i32)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(journal_from_row).transpose()
    }

    async fn journal_list(&self, job: Uuid) -> Result<Vec<JournalEntry>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, fingerprint, response, usage FROM journal WHERE job_id = $1 ORDER BY seq",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(journal_from_row).collect()
    }

    async fn record_usage(&self, records: &[UsageRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
            "INSERT INTO usage_records (job_id, attempt, plugin, tenant, tags, provider, model,
                input_tokens, output_tokens, cached_input_tokens, cost_micros, latency_ms, ttft_ms,
                source, outcome, created_at) ",
        );
        qb.push_values(records, |mut b, r| {
            b.push_bind(r.job_id)
                .push_bind(r.attempt.min(i32::MAX as u32) as i32)
                .push_bind(util::pg_text(&r.plugin).into_owned())
                .push_bind(util::pg_text(&r.tenant).into_owned())
                .push_bind(util::to_pg_json(&r.tags))
                .push_unseparated("::jsonb")
                .push_bind(util::pg_text(&r.provider).into_owned())
                .push_bind(util::pg_text(&r.model).into_owned())
                .push_bind(r.input_tokens.min(i64::MAX as u64) as i64)
                .push_bind(r.output_tokens.min(i64::MAX as u64) as i64)
                .push_bind(r.cached_input_tokens.min(i64::MAX as u64) as i64)
                .push_bind(r.cost_micros)
                .push_bind(r.latency_ms.min(i32::MAX as u32) as i32)
                .push_bind(r.ttft_ms.map(|t| t.min(i32::MAX as u32) as i32))
                .push_bind(source_str(r.source))
                .push_bind(util::pg_text(&r.outcome).into_owned())
                .push_bind(r.created_at);
        });
        qb.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn usage_summary(&self, query: &UsageQuery) -> Result<Vec<UsageSummary>> {
        let key = match &query.group_by {
            UsageGroupBy::Plugin => "plugin",
            UsageGroupBy::Model => "model",
            UsageGroupBy::Provider => "provider",
            UsageGroupBy::Tag(_) => "tags->>$4",
        };
        let tag = match &query.group_by {
            UsageGroupBy::Tag(t) => t.as_str(),
            _ => "",
        };
        let sql = format!(
            "SELECT {key} AS key, count(*) AS calls,
                coalesce(sum(input_tokens), 0)::int8 AS input_tokens,
                coalesce(sum(output_tokens), 0)::int8 AS output_tokens,
                coalesce(sum(cached_input_tokens), 0)::int8 AS cached_input_tokens,
                coalesce(sum(cost_micros), 0)::int8 AS cost_micros,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
             FROM usage_records
             WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR tenant = $3)
               AND ($4::text IS NOT NULL OR true)
             GROUP BY 1 ORDER BY 1 NULLS LAST"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.from)
            .bind(query.to)
            .bind(query.tenant.as_deref())
            .bind(tag)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageSummary {
                    key: r.try_get("key")?,
                    calls: r.try_get::<i64, _>("calls")?.max(0) as u64,
                    input_tokens: r.try_get::<i64, _>("input_tokens")?.max(0) as u64,
                    output_tokens: r.try_get::<i64, _>("output_tokens")?.max(0) as u64,
                    cached_input_tokens: r.try_get::<i64, _>("cached_input_tokens")?.max(0) as u64,
                    cost_micros: r.try_get("cost_micros")?,
                    latency_p50_ms: r.try_get::<Option<f64>, _>("p50")?.unwrap_or(0.0),
                    latency_p95_ms: r.try_get::<Option<f64>, _>("p95")?.unwrap_or(0.0),
                })
            })
            .collect()
    }

    async fn append_event(&self, job: Uuid, event: &JobEvent) -> Result<u64> {
        let mut tries = 0;
        loop {
            let res = sqlx::query_scalar::<_, i64>(
                "INSERT INTO job_events (job_id, seq, event)
                 SELECT $1, coalesce(max(seq), 0) + 1, $2::jsonb FROM job_events WHERE job_id = $1
                 RETURNING seq",
            )
            .bind(job)
            .bind(util::to_pg_json(event))
            .fetch_one(&self.pool)
            .await;
            match res {
                Ok(seq) => return Ok(seq.max(0) as u64),
                Err(e) if is_unique_violation(&e) && tries < 20 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn append_events(&self, events: &[(Uuid, JobEvent)]) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let jobs: Vec<Uuid> = events.iter().map(|(j, _)| *j).collect();
        let bodies: Vec<String> = events.iter().map(|(_, e)| util::to_pg_json(e)).collect();
        let mut tries = 0;
        let rows: Vec<(Uuid, i64)> = loop {
            // One statement for the whole batch: each job's events numbered after its last
            // stored one, in input order.
            let res = sqlx::query_as(
                "WITH input AS (
                    SELECT u.job_id, u.event::jsonb AS event, u.ord
                    FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS u(job_id, event, ord)
                 ),
                 numbered AS (
                    SELECT i.job_id, i.event, i.ord,
                           coalesce((SELECT max(x.seq) FROM job_events x WHERE x.job_id = i.job_id), 0)
                             + row_number() OVER (PARTITION BY i.job_id ORDER BY i.ord) AS seq
                    FROM input i
                 )
                 INSERT INTO job_events (job_id, seq, event)
                 SELECT job_id, seq, event FROM numbered ORDER BY ord
                 RETURNING job_id, seq",
            )
            .bind(&jobs)
            .bind(&bodies)
            .fetch_all(&self.pool)
            .await;
            match res {
                Ok(rows) => break rows,
                Err(e) if is_unique_violation(&e) && tries < 20 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        };
        Ok(util::seqs_in_input_order(&jobs, rows))
    }

    async fn events_after(&self, job: Uuid, after: u64, limit: u32) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, event, created_at FROM job_events
             WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(job)
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    job_id: r.try_get("job_id")?,
                    seq: r.try_get::<i64, _>("seq")?.max(0) as u64,
                    event: r.try_get::<Json<JobEvent>, _>("event")?.0,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &NewApiKey) -> Result<ApiKey> {
        let row = sqlx::query(
            "INSERT INTO api_keys (id, tenant, name, scopes, secret_hash) VALUES ($1, $2, $3, $4, $5)
             RETURNING id, tenant, name, scopes, secret_hash, created_at, revoked_at",
        )
        .bind(Uuid::now_v7())
        .bind(&key.tenant)
        .bind(&key.name)
        .bind(Json(&key.scopes))
        .bind(&key.secret_hash)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
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
             WHERE secret_hash = $1 AND revoked_at IS NULL",
        )
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(
            "SELECT id, tenant, name, scopes, secret_hash, created_at, revoked_at FROM api_keys
             WHERE tenant = $1 ORDER BY created_at, id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: Uuid) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn count_api_keys(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
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

impl PgStore {
    async fn list_plugins_where(
        &self,
        tenant: &str,
        plugin: Option<&str>,
    ) -> Result<Vec<PluginInfo>> {
        let rows = sqlx::query(
            "SELECT p.tenant, p.name, p.active_version, v.version, v.digest, v.settings, v.created_at
             FROM plugins p LEFT JOIN plugin_versions v ON v.tenant = p.tenant AND v.name = p.name
             WHERE p.tenant = $1 AND ($2::text IS NULL OR p.name = $2)
             ORDER BY p.name, v.version",
        )
        .bind(tenant)
        .bind(plugin)
        .fetch_all(&self.pool)
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
                info.versions.push(PluginVersion {
                    tenant: info.tenant.clone(),
                    plugin: name,
                    version,
                    digest: r.try_get("digest")?,
                    settings: r.try_get::<Json<PluginSettings>, _>("settings")?.0,
                    created_at: r.try_get("created_at")?,
                });
            }
        }
        Ok(out)
    }
}

fn source_str(s: sluice_types::model::ResponseSource) -> &'static str {
    use sluice_types::model::ResponseSource;
    match s {
        ResponseSource::Provider => "provider",
        ResponseSource::Cache => "cache",
        ResponseSource::Journal => "journal",
    }
}

fn journal_from_row(r: &PgRow) -> Result<JournalEntry> {
    Ok(JournalEntry {
        job_id: r.try_get("job_id")?,
        seq: r.try_get::<i32, _>("seq")?.max(0) as u32,
        fingerprint: r.try_get("fingerprint")?,
        response: r.try_get("response")?,
        usage: r.try_get::<Json<Usage>, _>("usage")?.0,
    })
}

#[async_trait]
impl StateBackend for PgStore {
    async fn get(&self, scope: &StateScope, key: &str) -> Result<Option<String>, StateError> {
        util::check_state_key(key)?;
        sqlx::query_scalar(
            "SELECT value FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
               AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .fetch_optional(&self.pool)
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
        sqlx::query(
            "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
             VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', now())
             ON CONFLICT (tenant, plugin, key) DO UPDATE
                SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = now()",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .bind(value)
        .bind(ttl.map(Self::ms))
        .execute(&self.pool)
        .await
        .map_err(state_err)?;
        self.state_bytes.add(&scope.tenant, tally);
        Ok(())
    }

    async fn delete(&self, scope: &StateScope, key: &str) -> Result<bool, StateError> {
        util::check_state_key(key)?;
        let live: Option<bool> = sqlx::query_scalar(
            "DELETE FROM kv_state WHERE tenant = $1 AND plugin = $2 AND key = $3
             RETURNING (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(key)
        .fetch_optional(&self.pool)
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
            "SELECT key FROM kv_state WHERE tenant = $1 AND plugin = $2
               AND key >= $3 AND ($4::text IS NULL OR key < $4) AND starts_with(key, $3)
               AND (expires_at IS NULL OR expires_at > now())
             ORDER BY key LIMIT $5",
        )
        .bind(&scope.tenant)
        .bind(&scope.plugin)
        .bind(prefix)
        .bind(util::prefix_upper_bound(prefix))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let swapped: Option<i32> = match expected {
            None => sqlx::query_scalar(
                "INSERT INTO kv_state (tenant, plugin, key, value, expires_at, updated_at)
                 VALUES ($1, $2, $3, $4, NULL, now())
                 ON CONFLICT (tenant, plugin, key) DO UPDATE
                    SET value = EXCLUDED.value, expires_at = NULL, updated_at = now()
                    WHERE kv_state.expires_at IS NOT NULL AND kv_state.expires_at <= now()
                 RETURNING 1",
            )
            .bind(&scope.tenant)
            .bind(&scope.plugin)
            .bind(key)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(state_err)?,
            Some(old) => sqlx::query_scalar(
                "UPDATE kv_state SET value = $4, updated_at = now()
                 WHERE tenant = $1 AND plugin = $2 AND key = $3 AND value = $5
                   AND (expires_at IS NULL OR expires_at > now())
                 RETURNING 1",
            )
            .bind(&scope.tenant)
            .bind(&scope.plugin)
            .bind(key)
            .bind(value)
            .bind(old)
            .fetch_optional(&self.pool)
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
impl EffectsBackend for PgStore {
    async fn lookup(&self, job: Uuid, key: &str) -> Result<Option<String>, EffectError> {
        util::check_effect_key(key)?;
        sqlx::query_scalar("SELECT result FROM effects WHERE job_id = $1 AND key = $2")
            .bind(job)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(effect_err)
    }

    async fn commit(&self, job: Uuid, key: &str, result: &str) -> Result<(), EffectError> {
        util::check_effect_key(key)?;
        sqlx::query(
            "INSERT INTO effects (job_id, key, result) VALUES ($1, $2, $3)
             ON CONFLICT (job_id, key) DO NOTHING",
        )
        .bind(job)
        .bind(key)
        .bind(result)
        .execute(&self.pool)
        .await
        .map_err(effect_err)?;
        Ok(())
    }
}
