//! Instantiate + call of the smallest handler (`plugins/fixtures/noop`) with the pooling
//! allocator: a fresh `Store`, WASI context and instance per call, as a job gets.
//!
//! Run: `cargo bench -p sluice-engine --bench instantiate`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_engine::{Engine, EngineConfig, JobLimits, memory};
use sluice_types::{CallContext, JobInfo};

#[path = "../tests/support/plugins.rs"]
mod plugins;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let services = memory::services();
    let limits = JobLimits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(10),
        ..JobLimits::default()
    };
    let job = JobInfo {
        id: uuid::Uuid::new_v4(),
        plugin: "noop".into(),
        tenant: "bench".into(),
        attempt: 1,
        max_attempts: 1,
        idempotency_key: None,
        tags: Default::default(),
        deadline_unix_ms: u64::MAX / 2,
    };

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
criterion_main!(benches);
