//! [`QueueStore`] on Postgres: enqueue (with idempotency and quotas), claim, heartbeats,
//! completion and reads of the queue. Failing, cancelling, rescuing and redriving are the
//! shared flows of [`crate::flows`].

use super::*;

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
-- Materialized: computed once per tenant. Inlined, the planner evaluated the running count
-- once per candidate row (every `q.q` below), which made a claim of 200 jobs walk the
-- jobs_running index 200 times (13 ms of a 15 ms claim in the burn-down's profile).
quota AS MATERIALIZED (
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
-- The claim commits without waiting for its WAL flush (`synchronous_commit` off for this
-- statement's transaction only): it acknowledges nothing to anyone, and a claim a database
-- crash forgets only puts the job back in the queue, as an expired lease would. Anything
-- durable the attempt does later (an effect, its completion) flushes the WAL, claim included.
-- This takes one fsync (~4 ms on this machine's disk) out of every claim round trip.
SELECT m.last_tenant, m.visited, m.commit_mode, u.*
FROM (SELECT (SELECT tenant FROM tenants ORDER BY ord DESC LIMIT 1) AS last_tenant,
             (SELECT count(*) FROM tenants) AS visited,
             set_config('synchronous_commit', 'off', true) AS commit_mode) m
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
pub(super) struct Round {
    jobs: Vec<ClaimedJob>,
    last_tenant: Option<String>,
    visited: i64,
    quota: i64,
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

impl PgStore {
    pub(super) async fn insert_jobs<'e, E>(
        &self,
        exec: E,
        jobs: &[&Prepared],
    ) -> Result<u64, sqlx::Error>
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
    pub(super) async fn missing_plugin(&self, jobs: &[&Prepared]) -> Result<StoreError> {
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

    /// Enqueue within each tenant's waiting-jobs quota.
    pub(super) async fn enqueue_admitted(&self, prepared: Vec<Prepared>) -> Result<Vec<Enqueued>> {
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

    pub(super) async fn enqueue_prepared(&self, prepared: Vec<Prepared>) -> Result<Vec<Enqueued>> {
        if prepared.is_empty() {
            return Ok(Vec::new());
        }
        // New jobs' status (due now or later) by this node's clock: the rows' default `run_at`
        // is the database's `now()`, the same instant to within the clocks' skew.
        let now = Utc::now();
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
                .map(|p| Enqueued::inserted(p.id, p.job.run_at, now))
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
            let ids: Vec<Uuid> = existing.values().map(|(id, _)| *id).collect();
            let statuses = Self::statuses(&mut tx, &ids).await?;
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
                results[i] = Some(Enqueued::existing(*job_id, statuses.get(job_id).copied()));
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
            results[i] = Some(Enqueued::inserted(p.id, p.job.run_at, now));
        }
        for (i, j) in alias {
            results[i] = results[j].map(|e| Enqueued {
                existing: true,
                ..e
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

    /// The statuses of jobs `ids`, live or finished, inside `tx`.
    async fn statuses(
        tx: &mut sqlx::Transaction<'_, Postgres>,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, JobStatus>> {
        let found = sqlx::query(
            "SELECT id, state, attempt, run_at, now() AS now FROM jobs WHERE id = ANY($1)
             UNION ALL
             SELECT id, state, attempt, run_at, now() FROM job_history WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        found
            .iter()
            .map(|r| Ok((r.id("id")?, rows::status(r, r.now()?)?)))
            .collect()
    }

    pub(super) async fn claim_round(
        &self,
        req: &ClaimRequest,
        limit: u32,
        cursor: &str,
    ) -> Result<Round> {
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
                round.jobs.push(rows::claimed(r)?);
            }
        }
        Ok(round)
    }

    pub(super) fn push_filter(
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

#[async_trait]
impl QueueStore for PgStore {
    fn work_signal(&self) -> WorkSignal {
        self.listening.call_once(|| {
            let task = tokio::spawn(listen_loop(self.pool.clone(), self.signal.clone()));
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.push(task);
            }
        });
        self.signal.subscribe()
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
        flows::fail(self, lease, &failure.error, failure.detail.clone()).await
    }

    async fn cancel(&self, id: Uuid) -> Result<CancelOutcome> {
        flows::cancel(self, id).await
    }

    async fn rescue_expired_leases(&self) -> Result<RescueReport> {
        flows::rescue(self).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<JobRecord>> {
        let row = sqlx::query(GET_JOB_SQL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::record).transpose()
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
            items.push(rows::summary(r, now)?);
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

    async fn queue_breakdown(&self) -> Result<QueueBreakdown> {
        stats::queue_breakdown(self).await
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
        flows::redrive(self, filter, options).await
    }
}
