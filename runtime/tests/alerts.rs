//! Alert rules evaluated by the runtime: a growing dead-letter queue fires one signed
//! `alert.firing` webhook for the episode (however many jobs die in it), then one
//! `alert.resolved` once the window passes without new dead jobs.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sluice::alerts::{AlertRule, AlertsConfig, RuleKind};
use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice_store::{JobStatus, NewJob, PluginSettings};
use tokio::sync::mpsc;

async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Vec<u8>)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body.to_vec()));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(HeaderMap, Vec<u8>)>) -> (String, Value) {
    let (headers, body) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no alert within 30 s")
        .unwrap();
    let secret = sluice::webhooks::tenant_secret("node-secret", "_system");
    let sig = headers["sluice-signature"].to_str().unwrap();
    assert!(
        sluice::webhooks::verify(&secret, sig, &body, chrono::Utc::now().timestamp(), 300),
        "signed with the _system tenant's secret"
    );
    let event = headers["sluice-event"].to_str().unwrap().to_string();
    (event, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_growth_fires_once_per_episode_and_resolves() {
    let (url, mut rx) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    config.database.data_dir = dir.path().to_path_buf();
    config.engine.max_instances = 16;
    config.engine.pooling = false;
    config.worker.poll_ms = 50;
    config.webhooks.allow_private = true;
    config.webhooks.secret = Some("node-secret".into());
    config.alerts = AlertsConfig {
        url: Some(url),
        interval_secs: 0.1,
        rules: vec![AlertRule {
            name: "dlq-growing".into(),
            kind: RuleKind::DlqGrowth,
            threshold: 1.0,
            window_secs: 2,
            tenant: None,
            plugin: None,
            provider: None,
            min_attempts: 10,
        }],
    };
    let node = Node::start(config).await.unwrap();
    let bytes = plugins::component("trap");
    node.plugins.load(bytes.clone()).await.unwrap();
    let digest = node.store.put_component(&bytes).await.unwrap();
    let once = PluginSettings {
        max_attempts: Some(1),
        ..PluginSettings::default()
    };
    node.store
        .create_plugin_version("acme", "trap", &digest, &once, true)
        .await
        .unwrap();
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    // Let the rule take its first sample of an empty DLQ.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = NewJob::new("acme", "trap", serde_json::json!({}));
        ids.push(node.store.enqueue(job).await.unwrap().id);
    }
    for id in ids {
        for _ in 0..400 {
            if node.store.get_job(id).await.unwrap().unwrap().status == JobStatus::Dead {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    let (event, firing) = next(&mut rx).await;
    assert_eq!(event, "alert.firing", "{firing}");
    assert_eq!(firing["alert"], "dlq-growing");
    assert_eq!(firing["kind"], "dlq_growth");
    assert_eq!(firing["status"], "firing");
    assert!(firing["value"].as_f64().unwrap() >= 1.0);
    // Three deaths, one episode: the next delivery is the resolve, not another firing.
    let (event, resolved) = next(&mut rx).await;
    assert_eq!(event, "alert.resolved", "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["since"], firing["since"]);
    assert_eq!(resolved["value"].as_f64(), Some(0.0));
    // Nothing more while the queue does not grow again.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), rx.recv())
            .await
            .is_err(),
        "no delivery after the resolve"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A fresh Postgres database for one test (`SLUICE_TEST_PG_URL`, default the local server).
async fn pg_database() -> (String, String, String) {
    use sqlx::Connection;
    let admin = std::env::var("SLUICE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("Postgres for tests");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin.clone());
    let url = format!("{base}/{name}");
    (admin, name, url)
}

/// Two nodes on one Postgres, both evaluating the same rule against the same dead-letter
/// queue every 100 ms: the cluster sends one `alert.firing` and one `alert.resolved` for the
/// episode, not one per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_one_alert_per_episode() {
    let (url, mut rx) = receiver().await;
    let (admin, db, db_url) = pg_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut config = Config::default();
        config.database.url = Some(db_url.clone());
        config.database.data_dir = dir.path().join(format!("n{i}"));
        config.engine.max_instances = 16;
        config.engine.pooling = false;
        config.worker.poll_ms = 50;
        config.webhooks.allow_private = true;
        config.webhooks.secret = Some("node-secret".into());
        config.alerts = AlertsConfig {
            url: Some(url.clone()),
            interval_secs: 0.1,
            rules: vec![AlertRule {
                name: "dlq-growing".into(),
                kind: RuleKind::DlqGrowth,
                threshold: 1.0,
                window_secs: 2,
                tenant: None,
                plugin: None,
                provider: None,
                min_attempts: 10,
            }],
        };
        nodes.push(Node::start(config).await.unwrap());
    }
    let bytes = plugins::component("trap");
    let digest = nodes[0].store.put_component(&bytes).await.unwrap();
    let once = PluginSettings {
        max_attempts: Some(1),
        ..PluginSettings::default()
    };
    nodes[0]
        .store
        .create_plugin_version("acme", "trap", &digest, &once, true)
        .await
        .unwrap();
    let mut workers = Vec::new();
    for node in &nodes {
        node.plugins.load(bytes.clone()).await.unwrap();
        workers.push(node.start_roles(Roles::WORKER, None).await.unwrap());
    }
    // Let both nodes take their first sample of an empty DLQ.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let job = NewJob::new("acme", "trap", serde_json::json!({}));
        ids.push(nodes[0].store.enqueue(job).await.unwrap().id);
    }
    for id in ids {
        for _ in 0..400 {
            if nodes[0].store.get_job(id).await.unwrap().unwrap().status == JobStatus::Dead {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    let (event, firing) = next(&mut rx).await;
    assert_eq!(event, "alert.firing", "{firing}");
    let (event, resolved) = next(&mut rx).await;
    assert_eq!(
        event, "alert.resolved",
        "the second node did not fire again: {resolved}"
    );
    assert_eq!(resolved["since"], firing["since"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), rx.recv())
            .await
            .is_err(),
        "nothing after the resolve"
    );
    // The outbox holds the two deliveries and no more.
    let sent = nodes[1]
        .store
        .webhook_list("_system", None, None, 100)
        .await
        .unwrap();
    let mut events: Vec<&str> = sent.iter().map(|d| d.event.as_str()).collect();
    events.sort_unstable();
    assert_eq!(events, ["alert.firing", "alert.resolved"]);
    for w in workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
    for n in &nodes {
        n.store.close().await;
    }
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}
