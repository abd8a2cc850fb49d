//! [`Sql`] on SQLite: ids as text, times as Unix milliseconds, JSON as text; reads on the
//! reader pool, writes on the single writer.

use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};

use super::*;
use crate::sql::{Arg, On, Sql};

fn bind<'q>(
    q: Query<'q, Sqlite, SqliteArguments>,
    arg: &Arg<'_>,
) -> Query<'q, Sqlite, SqliteArguments> {
    match *arg {
        Arg::Text(s) => q.bind(s.to_owned()),
        Arg::OptText(s) => q.bind(s.map(str::to_owned)),
        Arg::Int(n) => q.bind(n),
        Arg::OptInt(n) => q.bind(n),
        Arg::Id(id) => q.bind(id.to_string()),
        Arg::OptId(id) => q.bind(id.map(|id| id.to_string())),
        Arg::Json(text) => q.bind(text.to_owned()),
        Arg::OptJson(text) => q.bind(text.map(str::to_owned)),
        Arg::Bytes(b) => q.bind(b.to_vec()),
        Arg::Now => q.bind(now_ms()),
        Arg::Millis(d) => q.bind(d.map(ms_of)),
        Arg::Time(t) => q.bind(t.timestamp_millis()),
        Arg::OptTime(t) => q.bind(t.map(|t| t.timestamp_millis())),
    }
}

pub(super) fn query(
    sql: &'static str,
    args: &[Arg<'_>],
) -> Query<'static, Sqlite, SqliteArguments> {
    args.iter().fold(sqlx::query(sql), bind)
}

impl SqliteStore {
    fn pool(&self, on: On) -> &SqlitePool {
        match on {
            On::Read => &self.reader,
            On::Write => &self.writer,
        }
    }
}

#[async_trait]
impl Sql for SqliteStore {
    type Row = SqliteRow;

    async fn rows(
        &self,
        on: On,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<Vec<SqliteRow>> {
        query(sql, args).fetch_all(self.pool(on)).await
    }

    async fn rows_in(
        &self,
        tx: &mut Self::Tx,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<Vec<SqliteRow>> {
        query(sql, args).fetch_all(&mut **tx).await
    }

    async fn exec(&self, on: On, sql: &'static str, args: &[Arg<'_>]) -> sqlx::Result<u64> {
        Ok(query(sql, args)
            .execute(self.pool(on))
            .await?
            .rows_affected())
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
