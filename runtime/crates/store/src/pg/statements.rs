//! [`Statements`] on Postgres: rows are locked `FOR UPDATE` (expired leases with `SKIP
//! LOCKED`, so two nodes rescuing at once split the work), the database's clock judges them,
//! and batches are one statement over `unnest`ed arrays.

use super::*;
use crate::flows::{Finish, LiveState, RedriveTo, Requeue, Statements};
use crate::transact::Transact;

/// Move rows (ids in `$1`, with per-row state, error and attempt entry) from `jobs` to
/// history, queueing their webhooks. `$5` guards on the lease token when given.
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

const RUNNING_COLS: &str =
    "attempt, max_attempts, run, cancel_requested, worker_id, digest, attempted_at, now() AS now";

#[async_trait]
impl Transact for PgStore {
    type Tx = sqlx::Transaction<'static, Postgres>;

    async fn begin(&self) -> Result<Self::Tx> {
        Ok(self.pool.begin().await?)
    }

    async fn commit(&self, tx: Self::Tx) -> Result<()> {
        Ok(tx.commit().await?)
    }
}

#[async_trait]
impl Statements for PgStore {
    fn backoff(&self) -> &BackoffPolicy {
        &self.config.backoff
    }

    fn wake(&self) {
        PgStore::wake(self);
    }

    async fn lock_leased(
        &self,
        tx: &mut Self::Tx,
        lease: Lease,
    ) -> Result<Option<(Running, DateTime<Utc>)>> {
        let sql = format!(
            "SELECT {RUNNING_COLS} FROM jobs
             WHERE id = $1 AND lease_token = $2 AND state = 'running' FOR UPDATE"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(lease.id)
            .bind(lease.token)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|r| Ok((rows::running(&r)?, r.now()?))).transpose()
    }

    async fn lock_expired(
        &self,
        tx: &mut Self::Tx,
    ) -> Result<(DateTime<Utc>, Vec<(Uuid, Running)>)> {
        let sql = format!(
            "SELECT id, {RUNNING_COLS} FROM jobs
             WHERE state = 'running' AND lease_expires_at < now()
             ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
        );
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut **tx)
            .await?;
        let now = match found.first() {
            Some(r) => r.now()?,
            None => Utc::now(),
        };
        let jobs = found
            .iter()
            .map(|r| Ok((r.id("id")?, rows::running(r)?)))
            .collect::<Result<_>>()?;
        Ok((now, jobs))
    }

    async fn lock_live(&self, tx: &mut Self::Tx, id: Uuid) -> Result<Option<LiveState>> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(state.map(|s| {
            if s == "running" {
                LiveState::Running
            } else {
                LiveState::Available
            }
        }))
    }

    async fn finished_status(&self, tx: &mut Self::Tx, id: Uuid) -> Result<Option<JobStatus>> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM job_history WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(state.map(|s| s.parse()).transpose()?)
    }

    async fn request_cancel(&self, tx: &mut Self::Tx, id: Uuid) -> Result<()> {
        sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'running'")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn requeue(&self, tx: &mut Self::Tx, jobs: &[Requeue]) -> Result<()> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let run_ats: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.run_at).collect();
        let entries: Vec<String> = jobs.iter().map(|j| util::to_pg_json(&j.entry)).collect();
        sqlx::query(
            "UPDATE jobs j SET state = 'available', run_at = u.run_at, lease_token = NULL,
                lease_expires_at = NULL, attempt_log = j.attempt_log || jsonb_build_array(u.entry::jsonb)
             FROM unnest($1::uuid[], $2::timestamptz[], $3::text[]) AS u(id, run_at, entry)
             WHERE j.id = u.id",
        )
        .bind(&ids)
        .bind(&run_ats)
        .bind(&entries)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn finish(&self, tx: &mut Self::Tx, jobs: &[Finish], _now: DateTime<Utc>) -> Result<()> {
        // Postgres stamps `finished_at` with its own clock, like every other time it keeps.
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
        let states: Vec<&str> = jobs.iter().map(|j| j.status.as_str()).collect();
        let errors: Vec<Option<String>> = jobs
            .iter()
            .map(|j| Some(util::to_pg_json(&j.error)))
            .collect();
        let entries: Vec<Option<String>> = jobs
            .iter()
            .map(|j| j.entry.as_ref().map(util::to_pg_json))
            .collect();
        sqlx::query_scalar::<_, Uuid>(MOVE_SQL)
            .bind(&ids)
            .bind(&states)
            .bind(&errors)
            .bind(&entries)
            .bind(None::<Uuid>)
            .fetch_all(&mut **tx)
            .await?;
        Ok(())
    }

    async fn redrive_dead(
        &self,
        tx: &mut Self::Tx,
        filter: &DeadFilter,
        to: &RedriveTo,
        max_attempts: Option<u32>,
    ) -> Result<Vec<Uuid>> {
        let (mode, version) = match to {
            RedriveTo::Same => ("same", None),
            RedriveTo::Active => ("active", None),
            RedriveTo::Version(v, _) => ("version", Some(*v)),
        };
        let limit = i64::from(filter.limit.unwrap_or(10_000));
        Ok(sqlx::query_scalar(
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
        .bind(max_attempts.map(|m| m.min(i32::MAX as u32) as i32))
        .fetch_all(&mut **tx)
        .await?)
    }

    async fn clear_journals(&self, tx: &mut Self::Tx, ids: &[Uuid]) -> Result<()> {
        sqlx::query("DELETE FROM journal WHERE job_id = ANY($1)")
            .bind(ids)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
