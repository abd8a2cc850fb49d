//! Budget ledger bench: what a hard budget costs a model call. Each call reserves its
//! worst case in two windows (its tenant's, and its user's among 100 users) and settles to the
//! actual cost, as the gateway does; concurrent callers all contend on the one tenant window,
//! which is the worst case a real tenant produces.
//!
//! ```text
//! cargo bench -p sluice-store --bench ledger
//! ```
//!
//! Environment: `SLUICE_BENCH_PG_URL` (admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; a fresh database is created and dropped),
//! `CALLS` (20000), `CONCURRENCY` (16), `BACKENDS` (`postgres,sqlite`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_store::*;
mod support;
use support::{BenchDb, env, pct};

async fn run(name: &str, store: Arc<dyn JobStore>, calls: u64, concurrency: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (store, next, refused) = (store.clone(), next.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return lat;
                }
                let lines = [
                    LedgerLine {
                        budget: "acme/monthly".into(),
                        scope: "tenant:acme".into(),
                        window: "2026-11".into(),
                        limit_micros: u64::MAX / 4,
                    },
                    LedgerLine {
                        budget: "acme/per-user".into(),
                        scope: format!("tag:user=u{}", i % 100),
                        window: "2026-11-27".into(),
                        limit_micros: u64::MAX / 4,
                    },
                ];
                let t = Instant::now();
                let hold = i as i64 + 1;
                match store
                    .ledger_reserve(hold, &lines, 1_000, Duration::from_secs(600))
                    .await
                    .unwrap()
                {
                    Ok(()) => {
                        store.ledger_settle(hold, &lines, 800).await.unwrap();
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    let level = store
        .ledger_level("acme/monthly", "tenant:acme", "2026-11")
        .await
        .unwrap();
    assert_eq!(level.spent_micros, calls * 800, "every settle counted once");
    assert_eq!(level.reserved_micros, 0, "no hold left behind");
    println!(
        "{name}: {calls} reserve+settle pairs, {concurrency} concurrent: {:.0} calls/s; \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; refused {}",
        calls as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        refused.load(Ordering::Relaxed),
    );
}

async fn postgres(calls: u64, concurrency: usize) {
    let db = BenchDb::create().await;
    let config = StoreConfig {
        max_connections: concurrency as u32 + 2,
        ..StoreConfig::default()
    };
    let store = open(&db.url, config).await.unwrap();
    run("postgres", store.clone(), calls, concurrency).await;
    store.close().await;
    db.drop_db().await;
}

async fn sqlite(calls: u64, concurrency: usize) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = open(&url, StoreConfig::default()).await.unwrap();
    run("sqlite", store.clone(), calls, concurrency).await;
    store.close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let calls: u64 = env("CALLS", 20_000);
    let concurrency: usize = env("CONCURRENCY", 16);
    let backends: String = env("BACKENDS", "postgres,sqlite".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for b in backends.split(',') {
            match b.trim() {
                "postgres" => postgres(calls, concurrency).await,
                "sqlite" => sqlite(calls, concurrency).await,
                other => eprintln!("unknown backend {other}"),
            }
        }
    });
}
