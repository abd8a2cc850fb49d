//! [`Statements`] on SQLite. A transaction here is `BEGIN IMMEDIATE` on the single writer: it
//! holds the whole database until it commits, so a row read in it cannot change under it (no
//! row locks or lease-token guards are needed after the read) and batches are written row by
//! row. This node's clock judges leases and stamps times.

use super::*;
use crate::flows::{Finish, LiveState, RedriveTo, Requeue, Statements};
use crate::transact::Transact;

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

const RUNNING_COLS: &str =
    "attempt, max_attempts, run, cancel_requested, worker_id, digest, attempted_at";

#[async_trait]
impl Transact for SqliteStore {
    type Tx = sqlx::Transaction<'static, Sqlite>;

    async fn begin(&self) -> Result<Self::Tx> {
        SqliteStore::begin(self).await
    }

    async fn commit(&self, tx: Self::Tx) -> Result<()> {
        Ok(tx.commit().await?)
    }
}

#[async_trait]
impl Statements for SqliteStore {
    fn backoff(&self) -> &BackoffPolicy {
        &self.config.backoff
    }

    fn wake(&self) {
        SqliteStore::wake(self);
    }

    async fn lock_leased(
        &self,
        tx: &mut Self::Tx,
        lease: Lease,
    ) -> Result<Option<(Running, DateTime<Utc>)>> {
        let now = Utc::now();
        let sql = format!(
            "SELECT {RUNNING_COLS} FROM jobs
             WHERE id = ?1 AND lease_token = ?2 AND state = 'running'"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(lease.id.to_string())
            .bind(lease.token.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|r| Ok((rows::running(&r)?, now))).transpose()
    }

    async fn lock_expired(
        &self,
        tx: &mut Self::Tx,
    ) -> Result<(DateTime<Utc>, Vec<(Uuid, Running)>)> {
        let now = Utc::now();
        let sql = format!(
            "SELECT id, {RUNNING_COLS} FROM jobs
             WHERE state = 'running' AND lease_expires_at < ?1
             ORDER BY lease_expires_at LIMIT 1000"
        );
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now.timestamp_millis())
            .fetch_all(&mut **tx)
            .await?;
        let jobs = found
            .iter()
            .map(|r| Ok((r.id("id")?, rows::running(r)?)))
            .collect::<Result<_>>()?;
        Ok((now, jobs))
    }

    async fn lock_live(&self, tx: &mut Self::Tx, id: Uuid) -> Result<Option<LiveState>> {
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
        Ok(state.map(|s| {
            if s == "available" {
                LiveState::Available
            } else {
                LiveState::Running
            }
        }))
    }

    async fn finished_status(&self, tx: &mut Self::Tx, id: Uuid) -> Result<Option<JobStatus>> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM job_history WHERE id = ?1")
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await?;
        Ok(state.map(|s| s.parse()).transpose()?)
    }

    async fn request_cancel(&self, tx: &mut Self::Tx, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn requeue(&self, tx: &mut Self::Tx, jobs: &[Requeue]) -> Result<()> {
        for job in jobs {
            sqlx::query(
                "UPDATE jobs SET state = 'available', run_at = ?2, lease_token = NULL,
                    lease_expires_at = NULL, attempt_log = json_insert(attempt_log, '$[#]', json(?3))
                 WHERE id = ?1",
            )
            .bind(job.id.to_string())
            .bind(job.run_at.timestamp_millis())
            .bind(util::to_json(&job.entry))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    async fn finish(&self, tx: &mut Self::Tx, jobs: &[Finish], now: DateTime<Utc>) -> Result<()> {
        for job in jobs {
            let id = job.id.to_string();
            let moved = sqlx::query(MOVE_SQL)
                .bind(job.status.as_str())
                .bind(util::to_json(&job.error))
                .bind(job.entry.as_ref().map(util::to_json))
                .bind(now.timestamp_millis())
                .bind(&id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if moved > 0 {
                sqlx::query("DELETE FROM jobs WHERE id = ?1")
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    async fn redrive_dead(
        &self,
        tx: &mut Self::Tx,
        filter: &DeadFilter,
        to: &RedriveTo,
        max_attempts: Option<u32>,
    ) -> Result<Vec<Uuid>> {
        let ids_json = filter
            .ids
            .as_ref()
            .map(|ids| util::to_json(&ids.iter().map(Uuid::to_string).collect::<Vec<_>>()));
        let now = now_ms();
        let dead = sqlx::query(
            "SELECT id, tenant, plugin FROM job_history WHERE state = 'dead'
               AND (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR plugin = ?2)
               AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3)))
             ORDER BY id LIMIT ?4",
        )
        .bind(filter.tenant.as_deref())
        .bind(filter.plugin.as_deref())
        .bind(ids_json)
        .bind(i64::from(filter.limit.unwrap_or(10_000)))
        .fetch_all(&mut **tx)
        .await?;
        let mut out = Vec::with_capacity(dead.len());
        let mut active: HashMap<(String, String), Option<(i64, String)>> = HashMap::new();
        for r in &dead {
            let id = r.id("id")?;
            let tenant: String = r.try_get("tenant")?;
            let plugin: String = r.try_get("plugin")?;
            let target = match to {
                RedriveTo::Same => None,
                RedriveTo::Version(v, digest) => Some((*v, digest.clone())),
                RedriveTo::Active => {
                    let key = (tenant.clone(), plugin.clone());
                    if !active.contains_key(&key) {
                        let v = Self::resolve_plugin(tx, &tenant, &plugin)
                            .await?
                            .map(|(v, d, _)| (v, d));
                        active.insert(key.clone(), v);
                    }
                    active[&key].clone()
                }
            };
            let sid = id.to_string();
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
            .bind(max_attempts.map(i64::from))
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM job_history WHERE id = ?1")
                .bind(&sid)
                .execute(&mut **tx)
                .await?;
            out.push(id);
        }
        Ok(out)
    }

    async fn clear_journals(&self, tx: &mut Self::Tx, ids: &[Uuid]) -> Result<()> {
        for id in ids {
            sqlx::query("DELETE FROM journal WHERE job_id = ?1")
                .bind(id.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}
