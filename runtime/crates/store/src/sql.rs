//! Statements written once: a section's flow binds its arguments in one order and reads rows
//! through [`Columns`]; a backend supplies the SQL text (only where it differs) and how each
//! kind of argument binds in its schema ([`Sql`]).
//!
//! Placeholders are `$1`, `$2`, … on both backends (SQLite takes `$N` as the N-th argument).
//! Both backends receive every argument; a statement may leave some unused. The usual one
//! is [`Arg::Now`]: SQLite statements judge and stamp time with this node's clock, Postgres
//! statements with the database's `now()`, as every other time Postgres keeps.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::rows::Columns;
use crate::transact::Transact;

/// One argument of a statement, bound by each backend in its own representation (Postgres:
/// `uuid`, `timestamptz`, `jsonb` via a `::jsonb` cast; SQLite: text ids, Unix-ms integers,
/// JSON text).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    /// An integer (`int8`; Postgres casts it where a column is narrower).
    Int(i64),
    /// An integer or NULL.
    OptInt(Option<i64>),
    /// An id.
    Id(Uuid),
    /// An id or NULL.
    OptId(Option<Uuid>),
    /// JSON text (`util::to_json`); Postgres replaces NUL, which `jsonb` cannot hold.
    Json(&'a str),
    /// JSON text or NULL.
    OptJson(Option<&'a str>),
    /// Bytes.
    Bytes(&'a [u8]),
    /// This node's clock (see the module comment).
    Now,
    /// A duration in milliseconds or NULL (Postgres: `float8`, for `interval` arithmetic).
    Millis(Option<Duration>),
    /// A point in time.
    Time(DateTime<Utc>),
    /// A point in time or NULL.
    OptTime(Option<DateTime<Utc>>),
}

/// Where a statement outside a transaction runs (SQLite: the reader pool or the single
/// writer; Postgres: the one pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    /// It only reads.
    Read,
    /// It writes.
    Write,
}

/// How a backend runs a statement with [`Arg`]s.
#[async_trait]
pub(crate) trait Sql: Transact {
    /// A result row.
    type Row: Columns + Send;

    /// Run `sql` on its own; its rows.
    async fn rows(
        &self,
        on: On,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<Vec<Self::Row>>;
    /// Run `sql` in `tx`; its rows.
    async fn rows_in(
        &self,
        tx: &mut Self::Tx,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<Vec<Self::Row>>;
    /// Run `sql` on its own; the number of rows it changed.
    async fn exec(&self, on: On, sql: &'static str, args: &[Arg<'_>]) -> sqlx::Result<u64>;
    /// Run `sql` in `tx`; the number of rows it changed.
    async fn exec_in(
        &self,
        tx: &mut Self::Tx,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<u64>;

    /// The first row `sql` returns, if any.
    async fn row(
        &self,
        on: On,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> sqlx::Result<Option<Self::Row>> {
        Ok(self.rows(on, sql, args).await?.into_iter().next())
    }
}
