//! A collector that accepts connections and never answers must not slow jobs: the production
//! OTLP provider (batch processor, bounded queue, per-request timeout) exports in the
//! background while every job completes, and shutting it down is bounded.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice::telemetry::{self, TelemetryConfig};
use sluice_store::{JobStatus, NewJob, PluginSettings};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_collector_never_blocks_jobs() {
    // The "collector": accepts, reads nothing, answers nothing, keeps the sockets open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });

    let config = TelemetryConfig {
        endpoint: Some(format!("http://{addr}")),
        timeout_secs: 1,
        // Smaller than the spans the jobs make: the overflow is dropped, not waited for.
        max_queue_size: 16,
        ..TelemetryConfig::default()
    };
    let resolved = config.resolve(|_| None).unwrap().unwrap();
    let provider =
        telemetry::otlp_provider(&config, &resolved, tokio::runtime::Handle::current()).unwrap();
    tracing_subscriber::registry()
        .with(
            telemetry::layer(&provider)
                .with_filter(tracing_subscriber::EnvFilter::new(&config.filter)),
        )
        .init();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    cfg.database.data_dir = dir.path().to_path_buf();
    cfg.engine.max_instances = 16;
    cfg.engine.pooling = false;
    cfg.worker.poll_ms = 50;
    let node = Node::start(cfg).await.unwrap();
    let bytes = plugins::component("noop");
    node.plugins.load(bytes.clone()).await.unwrap();
    let digest = node.store.put_component(&bytes).await.unwrap();
    node.store
        .create_plugin_version("acme", "noop", &digest, &PluginSettings::default(), true)
        .await
        .unwrap();
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..60 {
        let job = NewJob::new("acme", "noop", serde_json::json!({ "i": i }));
        ids.push(node.store.enqueue(job).await.unwrap().id);
    }
    // Hang guard only: with export blocking jobs, they would wait on a collector that never
    // answers.
    tokio::time::timeout(Duration::from_secs(60), async {
        for id in &ids {
            loop {
                let job = node.store.get_job(*id).await.unwrap().unwrap();
                if job.status == JobStatus::Completed {
                    break;
                }
                assert!(job.status != JobStatus::Dead, "{:?}", job.error);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .expect("jobs finished while the collector hung");
    worker.shutdown(Duration::from_secs(5)).await;

    // The exporter did try the collector (so the jobs above ran with export in flight).
    tokio::time::timeout(Duration::from_secs(30), async {
        while connections.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the exporter never connected");
    // Shutdown flushes against the silent collector: bounded by the export timeout.
    let shutdown = tokio::task::spawn_blocking(move || provider.shutdown());
    let _ = tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown is bounded");
}
