//! [`QueueStore`] on SQLite: enqueue (with idempotency and quotas), claim, heartbeats,
//! completion and reads of the queue. Failing, cancelling, rescuing and redriving are the
//! shared flows of [`crate::flows`].

use super::*;

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

impl SqliteStore {
    /// Enqueue within each tenant's waiting-jobs quota.
    pub(super) async fn enqueue_admitted(&self, prepared: Vec<Prepared>) -> Result<Vec<Enqueued>> {
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

    pub(super) async fn enqueue_prepared(&self, prepared: Vec<Prepared>) -> Result<Vec<Enqueued>> {
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
                    let status = Self::status_in(&mut tx, job_id, now).await?;
                    out.push(Enqueued::existing(job_id, status));
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
            out.push(Enqueued::inserted(p.id, j.run_at, columns::ts(now)));
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

    /// The status of job `id`, live or finished, at `now` (Unix ms), inside `tx`.
    async fn status_in(tx: &mut SqliteConnection, id: Uuid, now: i64) -> Result<Option<JobStatus>> {
        let row = sqlx::query(
            "SELECT state, attempt, run_at FROM jobs WHERE id = ?1
             UNION ALL SELECT state, attempt, run_at FROM job_history WHERE id = ?1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        row.as_ref()
            .map(|r| rows::status(r, columns::ts(now)))
            .transpose()
    }

    pub(super) async fn claim_round(
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
            let c = rows::claimed(r)?;
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

    pub(super) fn push_filter(
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
}

#[async_trait]
impl QueueStore for SqliteStore {
    fn work_signal(&self) -> WorkSignal {
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
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::record).transpose()
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
            .map(|r| rows::summary(r, now))
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

    async fn queue_breakdown(&self) -> Result<QueueBreakdown> {
        stats::queue_breakdown(self).await
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
        flows::redrive(self, filter, options).await
    }
}
