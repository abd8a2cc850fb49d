//! The worker end to end on a real store (SQLite file, and Postgres when reachable) with
//! real components: jobs complete, failures retry with their effects and model calls
//! replayed from the journal, and bad handlers end up dead with a reason.

mod pg_support;
#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::time::Duration;

use pg_support::PgDb;
use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice_store::{JobStatus, NewJob, PluginSettings};

async fn node(dir: &std::path::Path) -> Node {
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.join("sluice.db").display()));
    config.database.data_dir = dir.to_path_buf();
    config.worker.lease_secs = 5;
    config.worker.poll_ms = 100;
    config.engine.max_instances = 64;
    Node::start(config).await.unwrap()
}

async fn deploy(node: &Node, name: &str, component: &str, settings: PluginSettings) {
    let bytes = plugins::component(component);
    node.plugins.load(bytes.clone()).await.unwrap();
    let digest = node.store.put_component(&bytes).await.unwrap();
    node.store
        .create_plugin_version("acme", name, &digest, &settings, true)
        .await
        .unwrap();
}

async fn wait_terminal(node: &Node, id: uuid::Uuid) -> sluice_store::JobRecord {
    for _ in 0..400 {
        let job = node.store.get_job(id).await.unwrap().unwrap();
        if matches!(
            job.status,
            JobStatus::Completed | JobStatus::Dead | JobStatus::Cancelled
        ) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_and_failures_retry_with_replay() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    deploy(&node, "noop", "noop", PluginSettings::default()).await;
    deploy(
        &node,
        "state-effects",
        "state-effects",
        PluginSettings::default(),
    )
    .await;
    let bad = PluginSettings {
        max_attempts: Some(2),
        ..PluginSettings::default()
    };
    deploy(&node, "trap", "trap", bad).await;
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();

    // A burst of trivial jobs all complete with their own output.
    let mut ids = Vec::new();
    for i in 0..50 {
        let job = NewJob::new("acme", "noop", serde_json::json!({ "i": i }));
        ids.push(node.store.enqueue(job).await.unwrap().id);
    }
    for (i, id) in ids.iter().enumerate() {
        let job = wait_terminal(&node, *id).await;
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.output.as_ref().unwrap()["i"], i);
    }

    // Fails retryably on attempt 1, completes on attempt 2: the effect ran once and the model
    // call was replayed from the journal at no cost.
    let input = serde_json::json!({ "fail_attempts": 1, "chat_model": "fast", "prefix": "t1/" });
    let id = node
        .store
        .enqueue(NewJob::new("acme", "state-effects", input))
        .await
        .unwrap()
        .id;
    let job = wait_terminal(&node, id).await;
    assert_eq!(job.status, JobStatus::Completed, "{job:?}");
    let out = job.output.unwrap();
    assert_eq!(out["attempt"], 2, "{out}");
    assert_eq!(out["effect"]["ran_on_attempt"], 1, "{out}");
    assert_eq!(out["effect_runs"], 1, "{out}");
    assert_eq!(out["chat"]["source"], "journal", "{out}");
    assert_eq!(out["chat"]["cost_micros"], 0, "{out}");

    // A handler that always traps ends dead after its attempts, with the reason kept.
    let id = node
        .store
        .enqueue(NewJob::new("acme", "trap", serde_json::json!({})))
        .await
        .unwrap()
        .id;
    let job = wait_terminal(&node, id).await;
    assert_eq!(job.status, JobStatus::Dead);
    assert_eq!(job.attempts.len(), 2, "{:?}", job.attempts);
    let reason = job
        .attempts
        .last()
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .message()
        .to_string();
    assert!(reason.contains("trap"), "{reason}");

    worker.shutdown(Duration::from_secs(5)).await;
}

/// A fresh Postgres database for one test, dropped when the guard goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_share_the_work_exactly_once() {
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut config = Config::default();
        config.database.url = Some(db.url.clone());
        config.database.data_dir = dir.path().join(format!("n{i}"));
        config.worker.poll_ms = 50;
        config.worker.slots = 16;
        config.engine.max_instances = 32;
        nodes.push(Node::start(config).await.unwrap());
    }
    deploy(&nodes[0], "noop", "noop", PluginSettings::default()).await;
    let mut workers = Vec::new();
    for n in &nodes {
        workers.push(n.start_roles(Roles::WORKER, None).await.unwrap());
    }
    let jobs: Vec<NewJob> = (0..300)
        .map(|i| NewJob::new("acme", "noop", serde_json::json!({ "i": i })))
        .collect();
    let ids: Vec<_> = nodes[1]
        .store
        .enqueue_batch(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut by_worker = std::collections::HashMap::<String, usize>::new();
    for (i, id) in ids.iter().enumerate() {
        let job = wait_terminal(&nodes[0], *id).await;
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        assert_eq!(job.output.as_ref().unwrap()["i"], i);
        assert_eq!(
            job.attempts.len(),
            1,
            "each job ran exactly once: {:?}",
            job.attempts
        );
        *by_worker
            .entry(job.attempts[0].worker_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 300);
    for w in workers {
        w.shutdown(std::time::Duration::from_secs(5)).await;
    }
    for n in nodes {
        n.store.close().await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_postgres_split_limits_and_share_budgets() {
    use sluice::node::cluster;
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut config = Config::default();
        config.database.url = Some(db.url.clone());
        config.database.data_dir = dir.path().join(format!("n{i}"));
        config.engine.max_instances = 8;
        nodes.push(Node::start(config).await.unwrap());
    }
    let members: Vec<_> = nodes
        .iter()
        .map(|n| cluster::join(n.clone(), "api,worker"))
        .collect();

    // Each node takes half of every provider limit once it sees the other.
    let halves = wait_for(|| async {
        nodes
            .iter()
            .all(|n| (n.gateway.limit_share() - 0.5).abs() < 1e-9)
    })
    .await;
    assert!(halves, "shares: {:?}", shares(&nodes));

    // A budget set through one node is enforced by the other, from the same ledger.
    let ctx = sluice_types::CallContext::new(
        sluice_types::JobInfo {
            id: uuid::Uuid::new_v4(),
            plugin: "summarize".into(),
            tenant: "acme".into(),
            attempt: 1,
            max_attempts: 1,
            idempotency_key: None,
            tags: Default::default(),
            deadline_unix_ms: u64::MAX,
        },
        "sha256:test",
    );
    assert_eq!(nodes[1].gateway.budget_remaining(&ctx).await, None);
    nodes[0]
        .store
        .put_budget(
            "acme",
            "daily",
            &serde_json::json!({"scope": "tenant", "period": "day", "limit_usd": 2.0}),
        )
        .await
        .unwrap();
    sluice::node::budgets::refresh(&nodes[0]).await.unwrap();
    nodes[0].gateway.charge_extra(&ctx, 500_000).await.unwrap();
    let seen =
        wait_for(|| async { nodes[1].gateway.budget_remaining(&ctx).await == Some(1_500_000) })
            .await;
    assert!(
        seen,
        "node 1 sees {:?}",
        nodes[1].gateway.budget_remaining(&ctx).await
    );
    // Over the limit on the other node: refused.
    assert!(
        nodes[1]
            .gateway
            .charge_extra(&ctx, 1_600_000)
            .await
            .is_err()
    );

    // A node that leaves gives its share back.
    let mut members = members.into_iter();
    let first = members.next().unwrap();
    members.next().unwrap().leave().await;
    let whole = wait_for(|| async { (nodes[0].gateway.limit_share() - 1.0).abs() < 1e-9 }).await;
    assert!(whole, "shares: {:?}", shares(&nodes));
    first.leave().await;
    for n in nodes {
        n.store.close().await;
    }
    db.drop_db().await;
}

fn shares(nodes: &[Node]) -> Vec<f64> {
    nodes.iter().map(|n| n.gateway.limit_share()).collect()
}

/// Poll `f` for up to 30 s (membership beats every 5 s).
async fn wait_for<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A usage backend that panics when asked for a job's spend: a host bug reachable from a
/// handler's call.
struct PanickingUsage;

#[async_trait::async_trait]
impl sluice_types::UsageBackend for PanickingUsage {
    async fn report_cost(
        &self,
        _ctx: &sluice_types::CallContext,
        _description: &str,
        _cost_micros: u64,
    ) -> Result<(), String> {
        Ok(())
    }
    async fn job_spend(&self, _ctx: &sluice_types::CallContext) -> sluice_types::backend::Spend {
        panic!("injected host bug")
    }
    async fn budget_remaining(&self, _ctx: &sluice_types::CallContext) -> Option<u64> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_panic_fails_only_its_own_job_and_releases_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node(dir.path()).await;
    node.services.usage = std::sync::Arc::new(PanickingUsage);
    let once = PluginSettings {
        max_attempts: Some(1),
        ..PluginSettings::default()
    };
    deploy(&node, "state-effects", "state-effects", once).await;
    deploy(&node, "noop", "noop", PluginSettings::default()).await;
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();

    let id = node
        .store
        .enqueue(NewJob::new(
            "acme",
            "state-effects",
            serde_json::json!({"prefix": "panic/"}),
        ))
        .await
        .unwrap()
        .id;
    // Dead at once under its lease (not renewed by a heartbeat forever, not waiting for the
    // lease to expire), with the panic as its reason.
    let job = wait_terminal(&node, id).await;
    assert_eq!(job.status, JobStatus::Dead, "{job:?}");
    let reason = job.error.as_ref().unwrap().message().to_string();
    assert!(reason.contains("injected host bug"), "{reason}");
    assert_eq!(job.attempts.len(), 1);

    // The worker goes on: other jobs run as before.
    for i in 0..20 {
        let id = node
            .store
            .enqueue(NewJob::new("acme", "noop", serde_json::json!({ "i": i })))
            .await
            .unwrap()
            .id;
        assert_eq!(wait_terminal(&node, id).await.status, JobStatus::Completed);
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_hold_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(format!(
        "sqlite://{}",
        dir.path().join("sluice.db").display()
    ));
    config.database.data_dir = dir.path().to_path_buf();
    config.worker.poll_ms = 100;
    config.worker.slots = 4;
    config.worker.tenant_share = 0.5;
    config.engine.max_instances = 16;
    let node = Node::start(config).await.unwrap();
    let bytes = plugins::component("busy-loop");
    let spin = node.store.put_component(&bytes).await.unwrap();
    let noop = node
        .store
        .put_component(&plugins::component("noop"))
        .await
        .unwrap();
    node.store
        .create_plugin_version("hog", "spin", &spin, &PluginSettings::default(), true)
        .await
        .unwrap();
    node.store
        .create_plugin_version("small", "noop", &noop, &PluginSettings::default(), true)
        .await
        .unwrap();
    // The hog fills the queue first with jobs that spin for a minute each.
    let mut hog = Vec::new();
    for _ in 0..12 {
        let mut job = NewJob::new("hog", "spin", serde_json::json!({}));
        job.timeout_ms = Some(60_000);
        job.max_attempts = Some(1);
        hog.push(node.store.enqueue(job).await.unwrap().id);
    }
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    // Wait until the hog holds what it may.
    let mut running = 0;
    for _ in 0..200 {
        running = node.store.queue_stats().await.unwrap().running;
        if running >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running, 2, "the hog holds half of the 4 slots");

    // Another tenant's jobs run at once in the slots left, long before any hog job ends.
    let mut small = Vec::new();
    for i in 0..10 {
        let job = NewJob::new("small", "noop", serde_json::json!({ "i": i }));
        small.push(node.store.enqueue(job).await.unwrap().id);
    }
    for id in small {
        let job = wait_terminal(&node, id).await;
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.attempts.len(), 1);
    }
    for id in &hog {
        let job = node.store.get_job(*id).await.unwrap().unwrap();
        assert!(
            matches!(job.status, JobStatus::Running | JobStatus::Queued),
            "hog job {id} is {:?}",
            job.status
        );
    }
    worker.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_job_replays_its_journal_unless_asked_fresh() {
    use sluice_store::{DeadFilter, RedriveOptions};
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let once = PluginSettings {
        max_attempts: Some(1),
        ..PluginSettings::default()
    };
    deploy(&node, "state-effects", "state-effects", once).await;
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();

    // Makes one model call, then fails on attempt 1: dead, with the call in its journal.
    let input = serde_json::json!({ "fail_attempts": 1, "chat_model": "fast", "prefix": "r/" });
    let id = node
        .store
        .enqueue(NewJob::new("acme", "state-effects", input))
        .await
        .unwrap()
        .id;
    assert_eq!(wait_terminal(&node, id).await.status, JobStatus::Dead);
    let outcomes = |events: Vec<sluice_store::StoredEvent>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| match e.event {
                sluice_types::JobEvent::ModelCall { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    };
    let filter = DeadFilter {
        ids: Some(vec![id]),
        ..DeadFilter::default()
    };
    let mut seen = node.store.events_after(id, 0, 1000).await.unwrap();
    assert_eq!(outcomes(seen.clone()), ["provider"]);

    // Redriven: attempt 1 again, and the call is answered from the journal (no new cost).
    node.store
        .redrive(&filter, &RedriveOptions::default())
        .await
        .unwrap();
    assert_eq!(wait_terminal(&node, id).await.status, JobStatus::Dead);
    let after = seen.last().map_or(0, |e| e.seq);
    seen = node.store.events_after(id, after, 1000).await.unwrap();
    assert_eq!(outcomes(seen.clone()), ["journal"]);

    // Redriven fresh: the journal is forgotten, so the call goes to the gateway again (where
    // the response cache may answer it: the cache is not the journal).
    let fresh = RedriveOptions {
        clear_journal: true,
        ..RedriveOptions::default()
    };
    node.store.redrive(&filter, &fresh).await.unwrap();
    assert_eq!(wait_terminal(&node, id).await.status, JobStatus::Dead);
    let after = seen.last().map_or(after, |e| e.seq);
    seen = node.store.events_after(id, after, 1000).await.unwrap();
    let fresh_outcomes = outcomes(seen);
    assert_eq!(fresh_outcomes.len(), 1);
    assert_ne!(fresh_outcomes[0], "journal");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Every hostile fixture at once from one tenant, on Postgres (where completions, events and
/// usage share batched statements), next to another tenant's 100 jobs: each hostile job ends
/// with its own classified outcome, the other tenant's jobs all complete on their first
/// attempt, and the node's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_fail_alone_and_another_tenant_is_untouched() {
    use sluice_store::Backend;
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(db.url.clone());
    config.database.data_dir = dir.path().to_path_buf();
    config.worker.poll_ms = 50;
    config.worker.slots = 16;
    config.engine.max_instances = 32;
    let node = Node::start(config).await.unwrap();
    assert_eq!(node.store.backend(), Backend::Postgres);
    let once = PluginSettings {
        max_attempts: Some(1),
        ..PluginSettings::default()
    };
    let hostile = [
        "event-flood",
        "huge-output",
        "nul-output",
        "cost-overflow",
        "list-amplification",
        "huge-chat-batch",
        "stack-overflow",
        "sleep-forever",
    ];
    for name in hostile.iter().copied().chain(["noop"]) {
        let bytes = plugins::component(name);
        let digest = node.store.put_component(&bytes).await.unwrap();
        let tenant = if name == "noop" { "good" } else { "evil" };
        node.store
            .create_plugin_version(tenant, name, &digest, &once, true)
            .await
            .unwrap();
    }
    let base = rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();

    let mut evil = std::collections::HashMap::new();
    for name in hostile {
        let mut job = NewJob::new("evil", name, serde_json::json!({}));
        job.timeout_ms = Some(120_000);
        evil.insert(name, node.store.enqueue(job).await.unwrap().id);
    }
    let good: Vec<_> = node
        .store
        .enqueue_batch(
            (0..100)
                .map(|i| NewJob::new("good", "noop", serde_json::json!({ "i": i })))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();

    // The sleeper is cancelled once it runs: cancel reaches a guest blocked in WASI.
    let sleeper = evil["sleep-forever"];
    for _ in 0..400 {
        let status = node.store.get_job(sleeper).await.unwrap().unwrap().status;
        if status == JobStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.store.cancel(sleeper).await.unwrap();

    for (i, id) in good.iter().enumerate() {
        let job = wait_terminal(&node, *id).await;
        assert_eq!(job.status, JobStatus::Completed, "good job {i}: {job:?}");
        assert_eq!(job.attempts.len(), 1, "good job {i} ran once");
        assert_eq!(job.output.as_ref().unwrap()["i"], i);
    }

    let reason = |job: &sluice_store::JobRecord| {
        job.error
            .as_ref()
            .map(|e| e.message().to_string())
            .unwrap_or_default()
    };
    let flood = wait_terminal(&node, evil["event-flood"]).await;
    assert_eq!(flood.status, JobStatus::Completed, "{}", reason(&flood));
    let events = node.store.events_after(flood.id, 0, 20_000).await.unwrap();
    assert!(events.len() <= 10_001, "{} events kept", events.len());
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, sluice_types::JobEvent::EventsTruncated { .. })),
        "one events_truncated event"
    );

    let out = wait_terminal(&node, evil["huge-output"]).await;
    assert_eq!(out.status, JobStatus::Dead);
    assert!(reason(&out).contains("output"), "{}", reason(&out));

    let nul = wait_terminal(&node, evil["nul-output"]).await;
    assert_eq!(nul.status, JobStatus::Dead);
    assert!(reason(&nul).contains("NUL"), "{}", reason(&nul));

    let cost = wait_terminal(&node, evil["cost-overflow"]).await;
    assert_eq!(cost.status, JobStatus::Completed, "{}", reason(&cost));
    let report = cost.output.unwrap();
    assert!(
        report["first"].is_string() && report["second"].is_string(),
        "{report}"
    );
    assert_eq!(report["spend_micros"], 1_000, "{report}");

    for name in ["list-amplification", "huge-chat-batch", "stack-overflow"] {
        let job = wait_terminal(&node, evil[name]).await;
        assert_eq!(job.status, JobStatus::Dead, "{name}: {}", reason(&job));
    }
    assert_eq!(
        wait_terminal(&node, sleeper).await.status,
        JobStatus::Cancelled
    );

    sampler.abort();
    let grown = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(base);
    eprintln!("hostile run: resident memory grew by {} MiB", grown >> 20);
    // Measured: well under this (the flood's 2,000,000 events are dropped in the engine).
    assert!(
        grown < 512 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    worker.shutdown(Duration::from_secs(5)).await;
    node.store.close().await;
    db.drop_db().await;
}

/// A plugin's settings lower the node's guest limits, and cannot raise them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_limits_only_tighten_the_node_defaults() {
    use sluice_store::PluginLimits;
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let tight = PluginSettings {
        limits: PluginLimits {
            max_events: Some(50),
            ..PluginLimits::default()
        },
        ..PluginSettings::default()
    };
    let loose = PluginSettings {
        limits: PluginLimits {
            max_events: Some(u32::MAX),
            ..PluginLimits::default()
        },
        ..PluginSettings::default()
    };
    deploy(&node, "tight", "event-flood", tight).await;
    deploy(&node, "loose", "event-flood", loose).await;
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    let node_cap = node.engine.config().default_limits.max_events;
    for (plugin, cap) in [("tight", 50), ("loose", node_cap)] {
        let input = serde_json::json!({ "n": node_cap + 500, "bytes": 1 });
        let id = node
            .store
            .enqueue(NewJob::new("acme", plugin, input))
            .await
            .unwrap()
            .id;
        let job = wait_terminal(&node, id).await;
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        let events = node.store.events_after(id, 0, 100_000).await.unwrap();
        let truncated = events.iter().find_map(|e| match e.event {
            sluice_types::JobEvent::EventsTruncated { max_events, .. } => Some(max_events),
            _ => None,
        });
        assert_eq!(truncated, Some(cap), "{plugin}");
        assert!(
            events.len() as u32 <= cap + 1,
            "{plugin}: {} events",
            events.len()
        );
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

/// While the store cannot take this node's job events and usage rows (their tables locked,
/// as a slow migration would), they wait in memory; at `worker.max_buffered_writes` the worker
/// claims no new job. Once the store takes them again every row is written and every job
/// runs once: back-pressure, nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_buffer_stops_claims_and_drops_nothing() {
    use sqlx::Connection;
    const CAP: usize = 3;
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(db.url.clone());
    config.database.data_dir = dir.path().to_path_buf();
    config.worker.poll_ms = 50;
    config.worker.slots = 16;
    config.worker.max_buffered_writes = CAP as u64;
    let node = Node::start(config).await.unwrap();
    deploy(
        &node,
        "state-effects",
        "state-effects",
        PluginSettings::default(),
    )
    .await;
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    let enqueue = |i: usize| {
        let input = serde_json::json!({ "prefix": format!("job-{i}/"), "chat_model": "fast" });
        let store = node.store.clone();
        async move {
            let job = NewJob::new("acme", "state-effects", input);
            store.enqueue(job).await.unwrap().id
        }
    };

    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE job_events, usage_records IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let mut ids = vec![enqueue(0).await];
    assert!(
        wait_for(|| async { node.backlog.len() >= CAP }).await,
        "the first job's events are held: {}",
        node.backlog.len()
    );
    for i in 1..6 {
        ids.push(enqueue(i).await);
    }
    // Unpaused, the worker (polling every 50 ms) would claim them at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    assert_eq!(running, 1, "only the first job was claimed");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

    for id in &ids {
        let job = wait_terminal(&node, *id).await;
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        assert_eq!(job.attempts.len(), 1, "{:?}", job.attempts);
        let events = node.store.events_after(*id, 0, 100).await.unwrap();
        // progress, progress, log, model_call, progress: none dropped.
        assert_eq!(events.len(), 5, "{events:?}");
    }
    assert!(wait_for(|| async { node.backlog.is_empty() }).await);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_records")
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    assert_eq!(rows, ids.len() as i64, "one usage row per chat call");
    worker.shutdown(Duration::from_secs(5)).await;
    node.store.close().await;
    drop(blocker);
    db.drop_db().await;
}
