//! [`LeaseStore`] on Postgres: one short transaction per slice, on the same rows as per-call
//! holds.

use async_trait::async_trait;

use super::PgStore;
use crate::control::{LedgerLevel, LedgerLine};
use crate::error::Result;
use crate::lease::{LeaseGrant, LeaseStore, SliceRequest};
use crate::util::{micros, signed};

#[async_trait]
impl LeaseStore for PgStore {
    async fn lease_take(
        &self,
        line: &LedgerLine,
        slice: SliceRequest,
    ) -> Result<std::result::Result<LeaseGrant, LedgerLevel>> {
        // The grant is spent money a node will use without asking again: unlike per-call holds,
        // it is committed with the usual WAL flush, so a database crash cannot forget it.
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO budget_spend (budget, scope, win) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(&line.budget)
        .bind(&line.scope)
        .bind(&line.window)
        .execute(&mut *tx)
        .await?;
        // Lock the window row (as a per-call reservation does) before reading its holds.
        let (spent, held): (i64, i64) = sqlx::query_as(
            "SELECT b.spent_micros,
                    coalesce((SELECT sum(h.amount) FROM budget_holds h
                              WHERE h.budget = b.budget AND h.scope = b.scope AND h.win = b.win
                                AND h.expires_at > now()), 0)::bigint
             FROM budget_spend b WHERE b.budget = $1 AND b.scope = $2 AND b.win = $3
             FOR UPDATE OF b",
        )
        .bind(&line.budget)
        .bind(&line.scope)
        .bind(&line.window)
        .fetch_one(&mut *tx)
        .await?;
        let level = LedgerLevel {
            spent_micros: micros(spent),
            reserved_micros: micros(held),
        };
        let room = line
            .limit_micros
            .saturating_sub(level.spent_micros.saturating_add(level.reserved_micros));
        let Some(granted) = slice.grant(room) else {
            tx.rollback().await?;
            return Ok(Err(level));
        };
        let spent: i64 = sqlx::query_scalar(
            "UPDATE budget_spend SET spent_micros = spent_micros + $4, updated_at = now()
             WHERE budget = $1 AND scope = $2 AND win = $3 RETURNING spent_micros",
        )
        .bind(&line.budget)
        .bind(&line.scope)
        .bind(&line.window)
        .bind(signed(granted))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(LeaseGrant {
            granted_micros: granted,
            level: LedgerLevel {
                spent_micros: micros(spent),
                ..level
            },
        }))
    }

    async fn lease_return(&self, line: &LedgerLine, unused: u64) -> Result<LedgerLevel> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE budget_spend b SET spent_micros = greatest(b.spent_micros - $4, 0),
                    updated_at = now()
             WHERE b.budget = $1 AND b.scope = $2 AND b.win = $3
             RETURNING b.spent_micros,
                       coalesce((SELECT sum(h.amount) FROM budget_holds h
                                 WHERE h.budget = b.budget AND h.scope = b.scope
                                   AND h.win = b.win AND h.expires_at > now()), 0)::bigint",
        )
        .bind(&line.budget)
        .bind(&line.scope)
        .bind(&line.window)
        .bind(signed(unused))
        .fetch_optional(&self.pool)
        .await?;
        let (spent, held) = row.unwrap_or_default();
        Ok(LedgerLevel {
            spent_micros: micros(spent),
            reserved_micros: micros(held),
        })
    }
}
