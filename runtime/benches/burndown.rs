//! Queue burn-down through the whole pipeline: insert N trivial jobs in batches, then let a
//! real node work them — claim, a fresh wasm instance of `plugins/fixtures/noop` per job,
//! lease-guarded batched completion — and report jobs/s inserted and worked, and the
//! claim → finish latency percentiles.
//!
//! ```text
//! cargo bench -p sluice --bench burndown                      # Postgres, 100,000 jobs
//! SLUICE_BENCH_JOBS=20000 cargo bench -p sluice --bench burndown -- --sqlite
//! SLUICE_BENCH_SLOTS=512 ...                                  # worker slots (default 256)
//! ```
//! Postgres: a fresh database is created on the server at SLUICE_TEST_PG_URL
//! (default postgres://postgres@127.0.0.1:5432/postgres) and dropped afterwards.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::time::{Duration, Instant};

use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice_store::{NewJob, PluginSettings};
use sqlx::Connection;

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// CPU seconds Postgres has used, when its processes are in the cpuacct cgroup named by
/// `SLUICE_BENCH_PG_CPUACCT` (a `cpuacct.usage` file; bench/queue-vs-graphile.sh sets it up),
/// so a run can say which side of the queue the two cores went to.
fn pg_cpu_secs() -> Option<f64> {
    let path = std::env::var("SLUICE_BENCH_PG_CPUACCT").ok()?;
    let ns: u64 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Some(ns as f64 / 1e9)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let sqlite = std::env::args().any(|a| a == "--sqlite");
    let jobs = env_num("SLUICE_BENCH_JOBS", 100_000);
    let slots = env_num("SLUICE_BENCH_SLOTS", 256) as u32;
    let batch = 1_000u64;
    let admin = std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let dir = tempfile::tempdir().unwrap();
    let db_name = format!("sluice_bench_{}", uuid::Uuid::new_v4().simple());

    let url = if sqlite {
        format!("sqlite://{}", dir.path().join("bench.db").display())
    } else {
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connecting to Postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        format!("{base}/{db_name}")
    };

    let mut config = Config::default();
    config.database.url = Some(url.clone());
    config.database.data_dir = dir.path().to_path_buf();
    config.database.max_connections = 16;
    config.worker.slots = slots;
    config.worker.poll_ms = 50;
    config.engine.max_instances = slots.max(64);
    let node = Node::start(config).await.unwrap();
    let bytes = plugins::component("noop");
    node.plugins.load(bytes.clone()).await.unwrap();
    let digest = node.store.put_component(&bytes).await.unwrap();
    node.store
        .create_plugin_version("bench", "noop", &digest, &PluginSettings::default(), true)
        .await
        .unwrap();

    println!(
        "burn-down: {jobs} jobs on {}, {slots} worker slots",
        if sqlite { "SQLite" } else { "Postgres" }
    );
    let started = Instant::now();
    let mut inserted = 0;
    while inserted < jobs {
        let n = batch.min(jobs - inserted);
        let batch: Vec<NewJob> = (0..n)
            .map(|i| NewJob::new("bench", "noop", serde_json::json!({ "n": inserted + i })))
            .collect();
        node.store.enqueue_batch(batch).await.unwrap();
        inserted += n;
        if inserted % 20_000 == 0 {
            eprintln!("  inserted {inserted}/{jobs}");
        }
    }
    let insert_secs = started.elapsed().as_secs_f64();
    println!(
        "insert: {jobs} jobs in {insert_secs:.2} s = {:.0} jobs/s",
        jobs as f64 / insert_secs
    );

    let started = Instant::now();
    let (cpu0, pg0) = (own_cpu_secs(), pg_cpu_secs());
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    let mut last_report = Instant::now();
    // The monitor asks what graphile-burndown.js asks of its peer, every 50 ms: how many rows
    // are left in the queue table. (`queue_stats` counts four states by scanning the table;
    // polled every 20 ms it cost Postgres more than the work being measured; at 20 ms even the
    // plain count took a third of Postgres's CPU in the run, on both sides.)
    let mut monitor = if sqlite {
        None
    } else {
        Some(sqlx::PgConnection::connect(&url).await.unwrap())
    };
    loop {
        let left = match monitor.as_mut() {
            Some(conn) => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs")
                .fetch_one(conn)
                .await
                .unwrap() as u64,
            None => {
                let stats = node.store.queue_stats().await.unwrap();
                stats.queued + stats.running + stats.retrying + stats.scheduled
            }
        };
        if left == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {} left, {:.0} jobs/s so far",
                left,
                (jobs - left) as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let work_secs = started.elapsed().as_secs_f64();
    drop(monitor);
    let (cpu1, pg1) = (own_cpu_secs(), pg_cpu_secs());
    let dead = node.store.queue_stats().await.unwrap().dead;
    println!(
        "work:   {jobs} jobs in {work_secs:.2} s = {:.0} jobs/s (dead: {dead})",
        jobs as f64 / work_secs
    );
    let per_job = |secs: f64| secs * 1e6 / jobs as f64;
    match (pg0, pg1) {
        (Some(a), Some(b)) => println!(
            "cpu:    sluice {:.1} µs/job, postgres {:.1} µs/job",
            per_job(cpu1 - cpu0),
            per_job(b - a)
        ),
        _ => println!("cpu:    sluice {:.1} µs/job", per_job(cpu1 - cpu0)),
    }
    worker.shutdown(Duration::from_secs(5)).await;

    if !sqlite {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let row: (f64, f64, f64, f64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY ms), \
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)::float8 \
             FROM (SELECT (extract(epoch FROM finished_at - attempted_at) * 1000)::float8 AS ms \
                   FROM job_history WHERE state = 'completed') t",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        println!(
            "claim→finish latency: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            row.0, row.1, row.2, row.3
        );
        drop(conn);
        node.store.close().await;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db_name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}
