//! [`ControlSql`] on SQLite. Every write goes through the single writer connection inside
//! `BEGIN IMMEDIATE`, so a reservation's check and holds are one step; times come from the
//! `now` argument (Unix ms).

use std::time::Duration;

use async_trait::async_trait;

use super::{SqliteStore, ms_of, now_ms};
use crate::control::*;
use crate::error::Result;
use crate::rows::delivery_cols;
use crate::util::{micros, signed};

async fn level_in(
    conn: &mut sqlx::SqliteConnection,
    line: &LedgerLine,
    now: i64,
) -> Result<LedgerLevel> {
    let spent: Option<i64> = sqlx::query_scalar(
        "SELECT spent_micros FROM budget_spend WHERE budget = ?1 AND scope = ?2 AND win = ?3",
    )
    .bind(&line.budget)
    .bind(&line.scope)
    .bind(&line.window)
    .fetch_optional(&mut *conn)
    .await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0) FROM budget_holds
         WHERE budget = ?1 AND scope = ?2 AND win = ?3 AND expires_at > ?4",
    )
    .bind(&line.budget)
    .bind(&line.scope)
    .bind(&line.window)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(LedgerLevel {
        spent_micros: micros(spent.unwrap_or(0)),
        reserved_micros: micros(held),
    })
}

#[async_trait]
impl ControlSql for SqliteStore {
    const PUT_BUDGET: &'static str =
        "INSERT INTO budget_rules (tenant, name, spec, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (tenant, name) DO UPDATE SET spec = excluded.spec, updated_at = $4
         RETURNING tenant, name, spec, created_at, updated_at";

    const BUDGETS: &'static str =
        "SELECT tenant, name, spec, created_at, updated_at FROM budget_rules
         WHERE $1 IS NULL OR tenant = $1 ORDER BY tenant, name";

    const MARK_ALERT: &'static str =
        "INSERT OR IGNORE INTO budget_alerts (budget, scope, win, marker, created_at)
         VALUES ($1, $2, $3, $4, $5)";

    const WINDOWS: &'static str = "SELECT s.scope, s.win, s.spent_micros,
                coalesce((SELECT sum(h.amount) FROM budget_holds h
                          WHERE h.budget = s.budget AND h.scope = s.scope AND h.win = s.win
                            AND h.expires_at > $3), 0) AS held
         FROM budget_spend s WHERE s.budget = $1
         ORDER BY s.updated_at DESC, s.scope, s.win LIMIT $2";

    const NODE_SEEN: &'static str =
        "INSERT INTO nodes (id, hostname, version, roles, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET last_seen = $6";

    const LIVE_WORKERS: &'static str =
        "SELECT count(*) AS n FROM nodes WHERE last_seen > $2 - $1 AND roles LIKE '%worker%'";

    const NODES: &'static str =
        "SELECT id, hostname, version, roles, started_at, last_seen FROM nodes
         WHERE last_seen > $2 - $1 ORDER BY started_at, id";

    const ENQUEUE_DELIVERY: &'static str = concat!(
        "INSERT INTO webhook_deliveries
             (delivery_id, tenant, job_id, url, event, payload, next_attempt_at, created_at)
         VALUES ($6, $1, $2, $3, $4, $5, $7, $7) RETURNING ",
        delivery_cols!()
    );

    const CLAIM_DELIVERIES: &'static str = concat!(
        "UPDATE webhook_deliveries SET locked_until = $3 + $2
         WHERE id IN (
             SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= $3
               AND (locked_until IS NULL OR locked_until < $3)
             ORDER BY next_attempt_at, id LIMIT $1)
         RETURNING ",
        delivery_cols!()
    );

    const FINISH_DELIVERY: &'static str =
        "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1,
             next_attempt_at = coalesce($3, next_attempt_at), locked_until = NULL,
             last_error = coalesce($4, last_error),
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $5 END
         WHERE id = $1";

    const DELIVERIES: &'static str = concat!(
        "SELECT ",
        delivery_cols!(),
        " FROM webhook_deliveries
         WHERE tenant = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    );

    const RETRY_DELIVERY: &'static str =
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3,
             locked_until = NULL, finished_at = NULL
         WHERE tenant = $1 AND id = $2 AND status = 'dead'";

    const PURGE_HOLDS: &'static str = "DELETE FROM budget_holds WHERE expires_at < $1";

    const PURGE_NODES: &'static str = "DELETE FROM nodes WHERE last_seen < $1 - 86400000";

    const PURGE_DELIVERIES: &'static str =
        "DELETE FROM webhook_deliveries WHERE status = 'delivered' AND finished_at < $2 - $1";

    async fn reserve(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        amount: u64,
        ttl: Duration,
    ) -> Result<std::result::Result<(), LedgerRefusal>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        for (i, line) in lines.iter().enumerate() {
            let level = level_in(&mut tx, line, now).await?;
            let after = level
                .spent_micros
                .saturating_add(level.reserved_micros)
                .saturating_add(amount);
            if after > line.limit_micros {
                tx.rollback().await?;
                return Ok(Err(LedgerRefusal { line: i, level }));
            }
        }
        for line in lines {
            sqlx::query(
                "INSERT OR IGNORE INTO budget_holds (hold_id, budget, scope, win, amount, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(hold)
            .bind(&line.budget)
            .bind(&line.scope)
            .bind(&line.window)
            .bind(signed(amount))
            .bind(now.saturating_add(ms_of(ttl)))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn settle(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        actual: u64,
    ) -> Result<Vec<LedgerLevel>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM budget_holds WHERE hold_id = ?1")
            .bind(hold)
            .execute(&mut *tx)
            .await?;
        let mut levels = Vec::with_capacity(lines.len());
        for line in lines {
            sqlx::query(
                "INSERT INTO budget_spend (budget, scope, win, spent_micros, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (budget, scope, win) DO UPDATE
                 SET spent_micros = spent_micros + excluded.spent_micros, updated_at = ?5",
            )
            .bind(&line.budget)
            .bind(&line.scope)
            .bind(&line.window)
            .bind(signed(actual))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            levels.push(level_in(&mut tx, line, now).await?);
        }
        tx.commit().await?;
        Ok(levels)
    }

    async fn level(&self, line: &LedgerLine) -> Result<LedgerLevel> {
        let mut conn = self.reader.acquire().await?;
        level_in(&mut conn, line, now_ms()).await
    }
}
