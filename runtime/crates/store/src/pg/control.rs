//! [`ControlSql`] on Postgres: the ledger's reservation and settlement are calls of SQL
//! functions (`sluice_budget_reserve`, `sluice_budget_settle`) that lock the windows in one
//! order; times come from the database's clock (the `now` argument is unused).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PgStore;
use crate::control::*;
use crate::error::Result;
use crate::rows::delivery_cols;
use crate::util::{micros, signed};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Lines as parallel arrays for `unnest`, sorted and deduplicated so every transaction locks
/// windows in the same order (no deadlocks between concurrent reservations).
struct Columns {
    budgets: Vec<String>,
    scopes: Vec<String>,
    windows: Vec<String>,
    limits: Vec<i64>,
}

fn columns(lines: &[LedgerLine]) -> Columns {
    let mut keys: Vec<&LedgerLine> = lines.iter().collect();
    keys.sort_unstable_by(|a, b| {
        (&a.budget, &a.scope, &a.window).cmp(&(&b.budget, &b.scope, &b.window))
    });
    keys.dedup_by(|a, b| (&a.budget, &a.scope, &a.window) == (&b.budget, &b.scope, &b.window));
    Columns {
        budgets: keys.iter().map(|k| k.budget.clone()).collect(),
        scopes: keys.iter().map(|k| k.scope.clone()).collect(),
        windows: keys.iter().map(|k| k.window.clone()).collect(),
        limits: keys.iter().map(|k| signed(k.limit_micros)).collect(),
    }
}

impl PgStore {
    /// Spend and unexpired holds of each window in `lines`, keyed by (budget, scope, window).
    async fn levels_in(
        conn: &mut sqlx::PgConnection,
        lines: &[LedgerLine],
    ) -> Result<Vec<LedgerLevel>> {
        let Columns {
            budgets: b,
            scopes: s,
            windows: w,
            ..
        } = columns(lines);
        let spent = sqlx::query(
            "SELECT budget, scope, win, spent_micros FROM budget_spend
             WHERE (budget, scope, win) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
        )
            .bind(&b)
            .bind(&s)
            .bind(&w)
            .fetch_all(&mut *conn)
            .await?;
        let held = sqlx::query(
            "SELECT budget, scope, win, sum(amount)::bigint AS held FROM budget_holds
             WHERE (budget, scope, win) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))
               AND expires_at > now()
             GROUP BY budget, scope, win",
        )
        .bind(&b)
        .bind(&s)
        .bind(&w)
        .fetch_all(&mut *conn)
        .await?;
        let find = |rows: &[PgRow], l: &LedgerLine, col: &str| -> Result<i64> {
            for r in rows {
                if r.try_get::<&str, _>("budget")? == l.budget
                    && r.try_get::<&str, _>("scope")? == l.scope
                    && r.try_get::<&str, _>("win")? == l.window
                {
                    return Ok(r.try_get::<i64, _>(col)?);
                }
            }
            Ok(0)
        };
        lines
            .iter()
            .map(|l| {
                Ok(LedgerLevel {
                    spent_micros: micros(find(&spent, l, "spent_micros")?),
                    reserved_micros: micros(find(&held, l, "held")?),
                })
            })
            .collect()
    }
}

#[async_trait]
impl ControlSql for PgStore {
    const PUT_BUDGET: &'static str =
        "INSERT INTO budget_rules (tenant, name, spec) VALUES ($1, $2, $3::jsonb)
         ON CONFLICT (tenant, name) DO UPDATE SET spec = EXCLUDED.spec, updated_at = now()
         RETURNING tenant, name, spec, created_at, updated_at";

    const BUDGETS: &'static str =
        "SELECT tenant, name, spec, created_at, updated_at FROM budget_rules
         WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, name";

    const MARK_ALERT: &'static str =
        "INSERT INTO budget_alerts (budget, scope, win, marker) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING";

    const WINDOWS: &'static str = "SELECT s.scope, s.win, s.spent_micros,
                coalesce((SELECT sum(h.amount) FROM budget_holds h
                          WHERE h.budget = s.budget AND h.scope = s.scope AND h.win = s.win
                            AND h.expires_at > now()), 0)::bigint AS held
         FROM budget_spend s WHERE s.budget = $1
         ORDER BY s.updated_at DESC, s.scope, s.win LIMIT $2";

    const NODE_SEEN: &'static str =
        "INSERT INTO nodes (id, hostname, version, roles, started_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (id) DO UPDATE SET last_seen = now()";

    const LIVE_WORKERS: &'static str = "SELECT count(*) AS n FROM nodes
         WHERE last_seen > now() - $1 * interval '1 millisecond' AND roles LIKE '%worker%'";

    const NODES: &'static str =
        "SELECT id, hostname, version, roles, started_at, last_seen FROM nodes
         WHERE last_seen > now() - $1 * interval '1 millisecond' ORDER BY started_at, id";

    const ENQUEUE_DELIVERY: &'static str = concat!(
        "INSERT INTO webhook_deliveries (tenant, job_id, url, event, payload)
         VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING ",
        delivery_cols!()
    );

    const CLAIM_DELIVERIES: &'static str = concat!(
        "UPDATE webhook_deliveries SET locked_until = now() + $2 * interval '1 millisecond'
         WHERE id IN (
             SELECT id FROM webhook_deliveries
             WHERE status = 'pending' AND next_attempt_at <= now()
               AND (locked_until IS NULL OR locked_until < now())
             ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING ",
        delivery_cols!()
    );

    const FINISH_DELIVERY: &'static str =
        "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1,
             next_attempt_at = coalesce($3, next_attempt_at), locked_until = NULL,
             last_error = coalesce($4, last_error),
             finished_at = CASE WHEN $2 = 'pending' THEN NULL ELSE now() END
         WHERE id = $1";

    const DELIVERIES: &'static str = concat!(
        "SELECT ",
        delivery_cols!(),
        " FROM webhook_deliveries
         WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::bigint IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    );

    const RETRY_DELIVERY: &'static str =
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(),
             locked_until = NULL, finished_at = NULL
         WHERE tenant = $1 AND id = $2 AND status = 'dead'";

    const PURGE_HOLDS: &'static str = "DELETE FROM budget_holds WHERE expires_at < now()";

    const PURGE_NODES: &'static str =
        "DELETE FROM nodes WHERE last_seen < now() - interval '1 day'";

    const PURGE_DELIVERIES: &'static str =
        "DELETE FROM webhook_deliveries WHERE status = 'delivered'
           AND finished_at < now() - $1 * interval '1 millisecond'";

    async fn reserve(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        amount: u64,
        ttl: Duration,
    ) -> Result<std::result::Result<(), LedgerRefusal>> {
        let c = columns(lines);
        let r = sqlx::query(
            "SELECT refused, spent, held FROM sluice_budget_reserve($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hold)
        .bind(&c.budgets)
        .bind(&c.scopes)
        .bind(&c.windows)
        .bind(&c.limits)
        .bind(signed(amount))
        .bind(ms(ttl))
        .fetch_one(&self.pool)
        .await?;
        let refused: i32 = r.try_get("refused")?;
        if refused < 0 {
            return Ok(Ok(()));
        }
        // The function numbers the sorted windows; report the caller's line.
        let i = refused as usize;
        let line = lines
            .iter()
            .position(|l| {
                l.budget == c.budgets[i] && l.scope == c.scopes[i] && l.window == c.windows[i]
            })
            .unwrap_or(0);
        Ok(Err(LedgerRefusal {
            line,
            level: LedgerLevel {
                spent_micros: micros(r.try_get("spent")?),
                reserved_micros: micros(r.try_get("held")?),
            },
        }))
    }

    async fn settle(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        actual: u64,
    ) -> Result<Vec<LedgerLevel>> {
        let c = columns(lines);
        let rows = sqlx::query(
            "SELECT o_budget AS budget, o_scope AS scope, o_win AS win,
                    o_spent AS spent_micros, o_held AS held
             FROM sluice_budget_settle($4, $1, $2, $3, $5)",
        )
        .bind(&c.budgets)
        .bind(&c.scopes)
        .bind(&c.windows)
        .bind(hold)
        .bind(signed(actual))
        .fetch_all(&self.pool)
        .await?;
        lines
            .iter()
            .map(|l| {
                for r in &rows {
                    if r.try_get::<&str, _>("budget")? == l.budget
                        && r.try_get::<&str, _>("scope")? == l.scope
                        && r.try_get::<&str, _>("win")? == l.window
                    {
                        return Ok(LedgerLevel {
                            spent_micros: micros(r.try_get("spent_micros")?),
                            reserved_micros: micros(r.try_get("held")?),
                        });
                    }
                }
                Ok(LedgerLevel::default())
            })
            .collect()
    }

    async fn level(&self, line: &LedgerLine) -> Result<LedgerLevel> {
        let mut conn = self.pool.acquire().await?;
        Ok(Self::levels_in(&mut conn, std::slice::from_ref(line)).await?[0])
    }
}
