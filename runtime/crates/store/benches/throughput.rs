//! Store-only burn-down bench: insert jobs in batches, then claim and complete them with
//! concurrent simulated workers (no wasm), using batched completion.
//!
//! ```text
//! cargo bench -p sluice-store --bench throughput
//! ```
//!
//! Environment: `SLUICE_BENCH_PG_URL` (admin URL; default
//! `postgres://postgres@127.0.0.1:5432/postgres`; a fresh `sluice_bench_<uuid>` database is
//! created and dropped), `JOBS` (100000), `WORKERS` (4), `CLAIM` (jobs per claim, 500),
//! `INSERT_BATCH` (1000), `INSERTERS` (4), `BACKENDS` (`postgres,sqlite`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_store::*;
mod support;
use support::{BenchDb, env, pct};

struct Params {
    jobs: usize,
    workers: usize,
    claim: u32,
    insert_batch: usize,
    inserters: usize,
}

async fn burn(name: &str, store: Arc<dyn JobStore>, p: &Params) {
    let digest = store.put_component(b"noop").await.unwrap();
    store
        .create_plugin_version("bench", "noop", &digest, &PluginSettings::default(), true)
        .await
        .unwrap();

    // Insert.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let batches = p.jobs.div_ceil(p.insert_batch) as u64;
    let mut tasks = Vec::new();
    for _ in 0..p.inserters {
        let store = store.clone();
        let next = next.clone();
        let (jobs, size) = (p.jobs, p.insert_batch);
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    break;
                }
                let from = b as usize * size;
                let to = (from + size).min(jobs);
                let batch: Vec<NewJob> = (from..to)
                    .map(|i| NewJob::new("bench", "noop", json!({ "i": i })))
                    .collect();
                store.enqueue_batch(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let insert_secs = started.elapsed().as_secs_f64();

    // Burn down.
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..p.workers {
        let store = store.clone();
        let done = done.clone();
        let total = p.jobs as u64;
        let req = ClaimRequest::new(format!("bench-{w}"), p.claim, Duration::from_secs(60));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut in_claim, mut in_complete) = (Duration::ZERO, Duration::ZERO);
            let mut signal = store.work_signal();
            while done.load(Ordering::Relaxed) < total {
                let t0 = Instant::now();
                let claimed = store.claim(&req).await.unwrap();
                if claimed.is_empty() {
                    signal.wait(Duration::from_millis(5)).await;
                    continue;
                }
                let t1 = Instant::now();
                in_claim += t1 - t0;
                let items: Vec<Completion> = claimed
                    .iter()
                    .map(|c| Completion {
                        lease: c.lease,
                        output: json!(null),
                    })
                    .collect();
                let out = store.complete_many(&items).await.unwrap();
                in_complete += t1.elapsed();
                let lat = t0.elapsed();
                assert!(out.iter().all(|f| *f == Finalized::Completed));
                latencies.extend(std::iter::repeat_n(lat, out.len()));
                done.fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            (latencies, in_claim, in_complete)
        }));
    }
    let mut latencies = Vec::new();
    let (mut in_claim, mut in_complete) = (Duration::ZERO, Duration::ZERO);
    for t in tasks {
        let (l, a, b) = t.await.unwrap();
        latencies.extend(l);
        in_claim += a;
        in_complete += b;
    }
    let burn_secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats, QueueStats::default(), "everything completed");
    println!(
        "{name:>8}: {jobs} jobs | insert {ins:>8.0} jobs/s ({insert_secs:.2} s) | claim+complete {burn:>8.0} jobs/s ({burn_secs:.2} s) \
         | claim→complete latency p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms, max {max:.1} ms \
         | workers {w}, claim {c} | per job: claim {cj:.1} µs, complete {fj:.1} µs (wall, summed over workers)",
        jobs = p.jobs,
        ins = p.jobs as f64 / insert_secs,
        burn = p.jobs as f64 / burn_secs,
        p50 = pct(&latencies, 0.50).as_secs_f64() * 1e3,
        p95 = pct(&latencies, 0.95).as_secs_f64() * 1e3,
        p99 = pct(&latencies, 0.99).as_secs_f64() * 1e3,
        max = latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        w = p.workers,
        c = p.claim,
        cj = in_claim.as_secs_f64() * 1e6 / p.jobs as f64,
        fj = in_complete.as_secs_f64() * 1e6 / p.jobs as f64,
    );
}

async fn postgres(p: &Params) {
    let db = BenchDb::create().await;
    let config = StoreConfig {
        max_connections: (p.workers + p.inserters + 4) as u32,
        ..StoreConfig::default()
    };
    let store = open(&db.url, config).await.unwrap();
    burn("postgres", store.clone(), p).await;
    store.close().await;
    db.drop_db().await;
}

async fn sqlite(p: &Params) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = open(&url, StoreConfig::default()).await.unwrap();
    burn("sqlite", store.clone(), p).await;
    store.close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let p = Params {
        jobs: env("JOBS", 100_000),
        workers: env("WORKERS", 4),
        claim: env("CLAIM", 500),
        insert_batch: env("INSERT_BATCH", 1000),
        inserters: env("INSERTERS", 4),
    };
    let backends: String = env("BACKENDS", "postgres,sqlite".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for b in backends.split(',') {
            match b.trim() {
                "postgres" => postgres(&p).await,
                "sqlite" => sqlite(&p).await,
                other => eprintln!("unknown backend {other}"),
            }
        }
    });
}
