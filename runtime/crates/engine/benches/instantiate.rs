//! Instantiate + call of the smallest handler (`plugins/fixtures/noop`) with the pooling
//! allocator: a fresh `Store`, WASI context and instance per call, as a job gets.
//!
//! Run: `cargo bench -p sluice-engine --bench instantiate`
//!
//! `SLUICE_BENCH_ITERS=N` skips criterion and runs N iterations with the pooling allocator in a
//! plain loop, printing the median and p90: what `valgrind --tool=callgrind` is pointed at
//! (instruction counts are deterministic where wall time on a shared machine is not).

use std::time::Duration;

use criterion::{Criterion, criterion_group};
use sluice_engine::{Engine, EngineConfig, JobLimits, memory};
use sluice_types::{CallContext, JobInfo};

#[path = "../tests/support/plugins.rs"]
mod plugins;

fn limits() -> JobLimits {
    JobLimits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(10),
        ..JobLimits::default()
    }
}

fn job() -> JobInfo {
    JobInfo {
        id: uuid::Uuid::new_v4(),
        plugin: "noop".into(),
        tenant: "bench".into(),
        attempt: 1,
        max_attempts: 1,
        idempotency_key: None,
        tags: Default::default(),
        deadline_unix_ms: u64::MAX / 2,
    }
}

/// `iters` jobs in a loop, timed one by one.
fn plain_loop(iters: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let services = memory::services();
    // `SLUICE_BENCH_KEEP_RESIDENT=0` measures the pool as it was before keep-resident slots.
    let keep_resident = std::env::var("SLUICE_BENCH_KEEP_RESIDENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(sluice_engine::DEFAULT_KEEP_RESIDENT_BYTES);
    let engine = Engine::new(EngineConfig {
        max_instances: 64,
        keep_resident_bytes: keep_resident,
        ..EngineConfig::default()
    })
    .unwrap();
    let plugin = engine.load(&plugins::component("noop")).unwrap();
    let ctx = CallContext::new(job(), plugin.digest());
    let mut times = Vec::with_capacity(iters);
    rt.block_on(async {
        for _ in 0..iters {
            let started = std::time::Instant::now();
            engine
                .run(&plugin, ctx.clone(), "{}", limits(), services.clone())
                .await
                .unwrap();
            times.push(started.elapsed());
        }
    });
    times.sort_unstable();
    if let (Some(median), Some(p90)) = (times.get(iters / 2), times.get(iters * 9 / 10)) {
        println!(
            "{iters} iterations (pooling, keep resident {keep_resident} B): \
             median {median:?}, p90 {p90:?}"
        );
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let services = memory::services();
    let limits = limits();
    let job = job();

    let mut group = c.benchmark_group("instantiate_and_call");
    for pooling in [true, false] {
        let engine = Engine::new(EngineConfig {
            pooling,
            max_instances: 64,
            ..EngineConfig::default()
        })
        .unwrap();
        let plugin = engine.load(&plugins::component("noop")).unwrap();
        let ctx = CallContext::new(job.clone(), plugin.digest());
        let name = if engine.is_pooling() {
            "pooling"
        } else {
            "on_demand"
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let engine = &engine;
                let plugin = &plugin;
                let ctx = ctx.clone();
                let services = services.clone();
                async move {
                    engine
                        .run(plugin, ctx, "{}", limits, services)
                        .await
                        .unwrap()
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
fn main() {
    if let Some(iters) = std::env::var("SLUICE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        plain_loop(iters);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
