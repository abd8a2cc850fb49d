//! What the store benches share: settings from the environment, percentiles, and a fresh
//! Postgres database per run.

use std::time::Duration;

use sqlx::Connection;

/// `name` from the environment, or `default`.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A `sluice_bench_<uuid>` database on the server named by `SLUICE_BENCH_PG_URL` (admin URL,
/// default `postgres://postgres@127.0.0.1:5432/postgres`); [`BenchDb::drop_db`] removes it.
pub struct BenchDb {
    conn: sqlx::PgConnection,
    name: String,
    /// The new database's URL.
    pub url: String,
}

impl BenchDb {
    /// Create the database.
    pub async fn create() -> BenchDb {
        let admin = std::env::var("SLUICE_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("sluice_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to Postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        BenchDb { conn, name, url }
    }

    /// Drop the database.
    pub async fn drop_db(mut self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.conn)
        .await
        .unwrap();
    }
}
