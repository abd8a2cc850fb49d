//! [`LeaseStore`] on SQLite: the check and the grant are one `BEGIN IMMEDIATE` transaction on
//! the single writer, as per-call reservations are.

use async_trait::async_trait;

use super::{SqliteStore, now_ms};
use crate::control::{LedgerLevel, LedgerLine};
use crate::error::Result;
use crate::lease::{LeaseGrant, LeaseStore, SliceRequest};
use crate::util::{micros, signed};

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn lease_take(
        &self,
        line: &LedgerLine,
        slice: SliceRequest,
    ) -> Result<std::result::Result<LeaseGrant, LedgerLevel>> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let level = level_in(&mut tx, line, now).await?;
        let room = line
            .limit_micros
            .saturating_sub(level.spent_micros.saturating_add(level.reserved_micros));
        let Some(granted) = slice.grant(room) else {
            tx.rollback().await?;
            return Ok(Err(level));
        };
        sqlx::query(
            "INSERT INTO budget_spend (budget, scope, win, spent_micros, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (budget, scope, win) DO UPDATE
             SET spent_micros = spent_micros + excluded.spent_micros, updated_at = ?5",
        )
        .bind(&line.budget)
        .bind(&line.scope)
        .bind(&line.window)
        .bind(signed(granted))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let level = level_in(&mut tx, line, now).await?;
        tx.commit().await?;
        Ok(Ok(LeaseGrant {
            granted_micros: granted,
            level,
        }))
    }

    async fn lease_return(&self, line: &LedgerLine, unused: u64) -> Result<LedgerLevel> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE budget_spend SET spent_micros = max(spent_micros - ?4, 0), updated_at = ?5
             WHERE budget = ?1 AND scope = ?2 AND win = ?3",
        )
        .bind(&line.budget)
        .bind(&line.scope)
        .bind(&line.window)
        .bind(signed(unused))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let level = level_in(&mut tx, line, now).await?;
        tx.commit().await?;
        Ok(level)
    }
}

/// A window's spend and unexpired holds, inside the caller's transaction.
async fn level_in(
    conn: &mut sqlx::SqliteConnection,
    line: &LedgerLine,
    now: i64,
) -> Result<LedgerLevel> {
    let (spent, held): (i64, i64) = sqlx::query_as(
        "SELECT coalesce((SELECT spent_micros FROM budget_spend
                          WHERE budget = ?1 AND scope = ?2 AND win = ?3), 0),
                coalesce((SELECT sum(amount) FROM budget_holds
                          WHERE budget = ?1 AND scope = ?2 AND win = ?3 AND expires_at > ?4), 0)",
    )
    .bind(&line.budget)
    .bind(&line.scope)
    .bind(&line.window)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(LedgerLevel {
        spent_micros: micros(spent),
        reserved_micros: micros(held),
    })
}
