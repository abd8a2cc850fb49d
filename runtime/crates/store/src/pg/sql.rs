//! [`Sql`] on Postgres: ids as `uuid`, times as `timestamptz`, JSON as text the statement
//! casts to `jsonb`, durations as `float8` milliseconds.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;

use super::*;
use crate::sql::{Arg, On, Sql};

fn bind<'q>(
    q: Query<'q, Postgres, PgArguments>,
    arg: &Arg<'_>,
) -> Query<'q, Postgres, PgArguments> {
    match *arg {
        Arg::Text(s) => q.bind(s),
        Arg::OptText(s) => q.bind(s),
        Arg::Int(n) => q.bind(n),
        Arg::OptInt(n) => q.bind(n),
        Arg::Id(id) => q.bind(id),
        Arg::OptId(id) => q.bind(id),
        Arg::Json(text) => q.bind(util::pg_json_text(text)),
        Arg::OptJson(text) => q.bind(text.map(util::pg_json_text)),
        Arg::Bytes(b) => q.bind(b),
        Arg::Now => q.bind(Utc::now()),
        Arg::Millis(d) => q.bind(d.map(PgStore::ms)),
        Arg::Time(t) => q.bind(t),
        Arg::OptTime(t) => q.bind(t),
    }
}

fn query(sql: &'static str, args: &[Arg<'_>]) -> Query<'static, Postgres, PgArguments> {
    args.iter().fold(sqlx::query(sql), bind)
}

#[async_trait]
impl Sql for PgStore {
    type Row = PgRow;

    async fn rows(&self, _: On, sql: &'static str, args: &[Arg<'_>]) -> sqlx::Result<Vec<PgRow>> {
        query(sql, args).fetch_all(&self.pool).await
    }

    async fn rows_in(
        &self,
        tx: &mut Self::Tx,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<Vec<PgRow>> {
        query(sql, args).fetch_all(&mut **tx).await
    }

    async fn exec(&self, _: On, sql: &'static str, args: &[Arg<'_>]) -> sqlx::Result<u64> {
        Ok(query(sql, args).execute(&self.pool).await?.rows_affected())
    }

    async fn exec_in(
        &self,
        tx: &mut Self::Tx,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<u64> {
        Ok(query(sql, args).execute(&mut **tx).await?.rows_affected())
    }
}
