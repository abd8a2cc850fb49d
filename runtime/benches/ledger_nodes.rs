//! Hard budgets across nodes: N nodes (each its own connection pool and ledger) on one
//! Postgres make reserve → settle pairs as the gateway does for a call with budgets — its
//! tenant's window and its user's among 100 — all on the same tenant window.
//!
//! ```text
//! cargo bench -p sluice --bench ledger_nodes                  # 1, 2 and 4 nodes, leased
//! NODES=1,2 MODES=leased,per-call CALLS=20000 cargo bench -p sluice --bench ledger_nodes
//! ```
//!
//! `MODES`: `leased` (budget leases, the default) and/or `per-call` (every call reserves and
//! settles in the database). `CALLS` is per node (default 200,000 leased, 20,000 per call);
//! `CONCURRENCY` callers per node (16). After each throughput run the bench checks that the
//! tenant's spend equals the sum of the settles; then an exhaustion run (a 5 $ budget, calls
//! of 1,000 µ$ until every caller is refused) prints the overshoot, which must be 0.
//! A fresh database is created at `SLUICE_TEST_PG_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres) for every run and dropped after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice::node::{StoreLedger, StoreSlices};
use sluice_gateway::budget::lease::{LeaseConfig, LeasedLedger};
use sluice_gateway::budget::{BudgetKey, BudgetLine, Ledger, LedgerError};
use sluice_store::{JobStore, StoreConfig};
use sqlx::Connection;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn line(budget: &str, scope: String, window: &str, limit: u64) -> BudgetLine {
    BudgetLine {
        key: BudgetKey {
            budget: budget.into(),
            scope,
            window: window.into(),
        },
        limit_micros: limit,
    }
}

fn lines(i: u64, tenant_limit: u64) -> Vec<BudgetLine> {
    vec![
        line(
            "acme/monthly",
            "tenant:acme".into(),
            "2026-12",
            tenant_limit,
        ),
        line(
            "acme/per-user",
            format!("tag:user=u{}", i % 100),
            "2026-12-06",
            u64::MAX / 4,
        ),
    ]
}

struct Db {
    admin: String,
    name: String,
    url: String,
}

impl Db {
    async fn create() -> Db {
        let admin = std::env::var("SLUICE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("sluice_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        Db { admin, name, url }
    }

    async fn drop_db(self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Leased,
    PerCall,
}

async fn nodes(
    db: &Db,
    n: usize,
    mode: Mode,
    conns: u32,
) -> Vec<(Arc<dyn JobStore>, Arc<dyn Ledger>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let config = StoreConfig {
            max_connections: conns,
            ..StoreConfig::default()
        };
        let store = sluice_store::open(&db.url, config).await.unwrap();
        let ledger: Arc<dyn Ledger> = match mode {
            Mode::Leased => Arc::new(LeasedLedger::new(
                StoreSlices::new(store.clone()),
                LeaseConfig::default(),
            )),
            Mode::PerCall => Arc::new(StoreLedger::new(store.clone(), Duration::from_secs(600))),
        };
        out.push((store, ledger));
    }
    out
}

/// `callers` tasks per ledger, `calls` pairs per ledger; returns (seconds, latencies, granted).
async fn drive(
    ledgers: &[Arc<dyn Ledger>],
    calls: u64,
    callers: u64,
    tenant_limit: u64,
    amount: u64,
    actual: u64,
) -> (f64, Vec<Duration>, u64) {
    let granted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (node, ledger) in ledgers.iter().enumerate() {
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..callers {
            let (ledger, next, granted) = (ledger.clone(), next.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return lat;
                    }
                    let lines = lines(i + node as u64 * 7, tenant_limit);
                    let t = Instant::now();
                    match ledger.reserve(&lines, amount).await {
                        Ok(id) => {
                            ledger.settle(id, &lines, amount, actual).await.unwrap();
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(LedgerError::Refused(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                    lat.push(t.elapsed());
                }
            }));
        }
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    (secs, lat, granted.load(Ordering::Relaxed))
}

fn pct(lat: &[Duration], p: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

async fn run(n: usize, mode: Mode, calls: u64, callers: u64) {
    let label = match mode {
        Mode::Leased => "leased",
        Mode::PerCall => "per-call",
    };
    // Throughput: a budget far from its limit.
    let db = Db::create().await;
    let parts = nodes(&db, n, mode, callers as u32 + 2).await;
    let ledgers: Vec<_> = parts.iter().map(|(_, l)| l.clone()).collect();
    let (secs, lat, granted) = drive(&ledgers, calls, callers, u64::MAX / 4, 1_000, 800).await;
    for l in &ledgers {
        l.release().await;
    }
    let level = parts[0]
        .0
        .ledger_level("acme/monthly", "tenant:acme", "2026-12")
        .await
        .unwrap();
    assert_eq!(
        granted,
        calls * n as u64,
        "nothing refused under a roomy budget"
    );
    assert_eq!(
        level.spent_micros,
        granted * 800,
        "every settle counted once"
    );
    assert_eq!(level.reserved_micros, 0, "no hold left behind");
    let total = (calls * n as u64) as f64 / secs;
    println!(
        "{label}, {n} node(s) × {callers} callers, {calls} calls each: {total:.0} calls/s \
         ({:.0} per node); p50 {:.3} ms, p99 {:.3} ms, max {:.2} ms",
        total / n as f64,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    );
    drop(ledgers);
    for (s, _) in parts {
        s.close().await;
    }
    db.drop_db().await;

    // Overshoot: a 5 $ budget, far more asked (each caller keeps calling until refused).
    let limit = 5_000_000;
    let db = Db::create().await;
    let parts = nodes(&db, n, mode, callers as u32 + 2).await;
    let ledgers: Vec<_> = parts.iter().map(|(_, l)| l.clone()).collect();
    let asked = 2 * limit / 1_000 / n as u64;
    let (_, _, granted) = drive(&ledgers, asked, callers, limit, 1_000, 1_000).await;
    for l in &ledgers {
        l.release().await;
    }
    let level = parts[0]
        .0
        .ledger_level("acme/monthly", "tenant:acme", "2026-12")
        .await
        .unwrap();
    println!(
        "    exhaustion: {} calls asked, {granted} granted, spent {} of {limit} µ$, \
         overshoot {} µ$, unused at the end {} µ$",
        asked * n as u64,
        level.spent_micros,
        level.spent_micros.saturating_sub(limit),
        limit.saturating_sub(level.spent_micros),
    );
    assert!(level.spent_micros <= limit, "overshoot");
    assert_eq!(level.spent_micros, granted * 1_000);
    drop(ledgers);
    for (s, _) in parts {
        s.close().await;
    }
    db.drop_db().await;
}

fn main() {
    let node_counts: String = env("NODES", "1,2,4".to_string());
    let modes: String = env("MODES", "leased".to_string());
    let callers: u64 = env("CONCURRENCY", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for mode in modes.split(',') {
            let (mode, default_calls) = match mode.trim() {
                "leased" => (Mode::Leased, 200_000),
                "per-call" => (Mode::PerCall, 20_000),
                other => panic!("unknown mode {other}"),
            };
            let calls: u64 = env("CALLS", default_calls);
            for n in node_counts.split(',') {
                run(n.trim().parse().unwrap(), mode, calls, callers).await;
            }
        }
    });
}
