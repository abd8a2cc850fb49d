//! [`ControlStore`] on SQLite. Every write goes through the single writer connection inside
//! `BEGIN IMMEDIATE`, so a reservation's check and holds are one step.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::{SqliteStore, ms_of, now_ms};
use crate::control::*;
use crate::error::Result;
use crate::rows::{self, DELIVERY_COLS};
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
impl ControlStore for SqliteStore {
    async fn put_budget(&self, tenant: &str, name: &str, spec: &Value) -> Result<BudgetRecord> {
        let now = now_ms();
        let r = sqlx::query(
            "INSERT INTO budget_rules (tenant, name, spec, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (tenant, name) DO UPDATE SET spec = excluded.spec, updated_at = ?4
             RETURNING tenant, name, spec, created_at, updated_at",
        )
        .bind(tenant)
        .bind(name)
        .bind(spec.to_string())
        .bind(now)
        .fetch_one(&self.writer)
        .await?;
        rows::budget(&r)
    }

    async fn list_budgets(&self, tenant: Option<&str>) -> Result<Vec<BudgetRecord>> {
        let rows = sqlx::query(
            "SELECT tenant, name, spec, created_at, updated_at FROM budget_rules
             WHERE ?1 IS NULL OR tenant = ?1 ORDER BY tenant, name",
        )
        .bind(tenant)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::budget).collect()
    }

    async fn delete_budget(&self, tenant: &str, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM budget_rules WHERE tenant = ?1 AND name = ?2")
                .bind(tenant)
                .bind(name)
                .execute(&self.writer)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn ledger_reserve(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        amount: u64,
        ttl: Duration,
    ) -> Result<std::result::Result<(), LedgerRefusal>> {
        if lines.is_empty() {
            return Ok(Ok(()));
        }
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

    async fn ledger_settle(
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

    async fn ledger_mark_alert(
        &self,
        budget: &str,
        scope: &str,
        window: &str,
        marker: &str,
    ) -> Result<bool> {
        Ok(sqlx::query(
            "INSERT OR IGNORE INTO budget_alerts (budget, scope, win, marker, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(budget)
        .bind(scope)
        .bind(window)
        .bind(marker)
        .bind(now_ms())
        .execute(&self.writer)
        .await?
        .rows_affected()
            > 0)
    }

    async fn ledger_level(&self, budget: &str, scope: &str, window: &str) -> Result<LedgerLevel> {
        let line = LedgerLine {
            budget: budget.into(),
            scope: scope.into(),
            window: window.into(),
            limit_micros: 0,
        };
        let mut conn = self.reader.acquire().await?;
        level_in(&mut conn, &line, now_ms()).await
    }

    async fn ledger_windows(&self, budget: &str, limit: u32) -> Result<Vec<LedgerWindow>> {
        let rows = sqlx::query(
            "SELECT s.scope, s.win, s.spent_micros,
                    coalesce((SELECT sum(h.amount) FROM budget_holds h
                              WHERE h.budget = s.budget AND h.scope = s.scope AND h.win = s.win
                                AND h.expires_at > ?3), 0) AS held
             FROM budget_spend s WHERE s.budget = ?1
             ORDER BY s.updated_at DESC, s.scope, s.win LIMIT ?2",
        )
        .bind(budget)
        .bind(i64::from(limit))
        .bind(now_ms())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LedgerWindow {
                    scope: r.try_get("scope")?,
                    window: r.try_get("win")?,
                    level: LedgerLevel {
                        spent_micros: micros(r.try_get("spent_micros")?),
                        reserved_micros: micros(r.try_get("held")?),
                    },
                })
            })
            .collect()
    }

    async fn node_heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<u32> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO nodes (id, hostname, version, roles, started_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET last_seen = ?6",
        )
        .bind(&node.id)
        .bind(&node.hostname)
        .bind(&node.version)
        .bind(&node.roles)
        .bind(node.started_at.timestamp_millis())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM nodes WHERE last_seen > ?1 AND roles LIKE '%worker%'",
        )
        .bind(now - ms_of(ttl))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n.clamp(1, i64::from(u32::MAX)) as u32)
    }

    async fn node_leave(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM nodes WHERE id = ?1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn list_nodes(&self, ttl: Duration) -> Result<Vec<NodeRecord>> {
        let rows = sqlx::query(
            "SELECT id, hostname, version, roles, started_at, last_seen FROM nodes
             WHERE last_seen > ?1 ORDER BY started_at, id",
        )
        .bind(now_ms() - ms_of(ttl))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::node).collect()
    }

    async fn webhook_enqueue(&self, d: &NewDelivery) -> Result<WebhookDelivery> {
        let now = now_ms();
        let sql = format!(
            "INSERT INTO webhook_deliveries
                 (delivery_id, tenant, job_id, url, event, payload, next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) RETURNING {DELIVERY_COLS}"
        );
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::new_v4().to_string())
            .bind(&d.tenant)
            .bind(d.job_id.map(|j| j.to_string()))
            .bind(&d.url)
            .bind(&d.event)
            .bind(d.payload.as_ref().map(|p| p.to_string()))
            .bind(now)
            .fetch_one(&self.writer)
            .await?;
        rows::delivery(&r)
    }

    async fn webhook_claim(&self, limit: u32, lease: Duration) -> Result<Vec<WebhookDelivery>> {
        let now = now_ms();
        let sql = format!(
            "UPDATE webhook_deliveries SET locked_until = ?3
             WHERE id IN (
                 SELECT id FROM webhook_deliveries
                 WHERE status = 'pending' AND next_attempt_at <= ?2
                   AND (locked_until IS NULL OR locked_until < ?2)
                 ORDER BY next_attempt_at, id LIMIT ?1)
             RETURNING {DELIVERY_COLS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .bind(now)
            .bind(now.saturating_add(ms_of(lease)))
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(rows::delivery).collect()
    }

    async fn webhook_finish(&self, id: i64, result: &DeliveryResult) -> Result<()> {
        let now = now_ms();
        let (status, at, error): (&str, Option<i64>, Option<&str>) = match result {
            DeliveryResult::Delivered => ("delivered", None, None),
            DeliveryResult::Retry { at, error } => {
                ("pending", Some(at.timestamp_millis()), Some(error))
            }
            DeliveryResult::Dead { error } => ("dead", None, Some(error)),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = ?2, attempts = attempts + 1,
                 next_attempt_at = coalesce(?3, next_attempt_at), locked_until = NULL,
                 last_error = coalesce(?4, last_error),
                 finished_at = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?5 END
             WHERE id = ?1",
        )
        .bind(id)
        .bind(status)
        .bind(at)
        .bind(error)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn webhook_list(
        &self,
        tenant: &str,
        status: Option<DeliveryStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries
             WHERE tenant = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(status.map(|s| s.as_str()))
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::delivery).collect()
    }

    async fn webhook_get(&self, tenant: &str, id: i64) -> Result<Option<WebhookDelivery>> {
        let sql =
            format!("SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE tenant = ?1 AND id = ?2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::delivery).transpose()
    }

    async fn webhook_retry(&self, tenant: &str, id: i64) -> Result<bool> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?3,
                 locked_until = NULL, finished_at = NULL
             WHERE tenant = ?1 AND id = ?2 AND status = 'dead'",
        )
        .bind(tenant)
        .bind(id)
        .bind(now_ms())
        .execute(&self.writer)
        .await?
        .rows_affected()
            > 0)
    }

    async fn purge_control(&self, retention: Duration) -> Result<u64> {
        let now = now_ms();
        let mut n = sqlx::query("DELETE FROM budget_holds WHERE expires_at < ?1")
            .bind(now)
            .execute(&self.writer)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM nodes WHERE last_seen < ?1")
            .bind(now - 86_400_000)
            .execute(&self.writer)
            .await?
            .rows_affected();
        n += sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status = 'delivered' AND finished_at < ?1",
        )
        .bind(now - ms_of(retention))
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n)
    }
}
