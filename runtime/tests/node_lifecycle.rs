//! A node started through `Node::start_roles` runs what its roles name and stops in order:
//! the API stops answering, running work drains, and the node leaves the cluster's list.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::time::Duration;

use sluice::config::Config;
use sluice::node::{Node, Roles, StartError};
use sluice_store::{JobStatus, NewJob, PluginSettings};

async fn sqlite_node(dir: &std::path::Path) -> Node {
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.join("db").display()));
    config.database.data_dir = dir.to_path_buf();
    config.engine.max_instances = 8;
    config.engine.pooling = false;
    config.worker.poll_ms = 50;
    Node::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_its_roles_and_stops_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = sqlite_node(dir.path()).await;
    let bytes = plugins::component("noop");
    let digest = node.store.put_component(&bytes).await.unwrap();
    node.store
        .create_plugin_version("acme", "noop", &digest, &PluginSettings::default(), true)
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = node.start_roles(Roles::ALL, Some(listener)).await.unwrap();
    let addr = running.api_addr().expect("the api role listens");
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert!(health.status().is_success());

    // The worker role runs jobs.
    let id = node
        .store
        .enqueue(NewJob::new("acme", "noop", serde_json::json!({})))
        .await
        .unwrap()
        .id;
    let mut status = None;
    for _ in 0..200 {
        status = node.store.get_job(id).await.unwrap().map(|j| j.status);
        if status == Some(JobStatus::Completed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(JobStatus::Completed));

    // Membership: the node is listed with both roles.
    let ttl = Duration::from_secs(15);
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = node.store.list_nodes(ttl).await.unwrap();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].roles, "api,worker");

    running.shutdown(Duration::from_secs(5)).await;
    assert!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err(),
        "the API stopped answering"
    );
    assert!(
        node.store.list_nodes(ttl).await.unwrap().is_empty(),
        "the node left the list"
    );
    node.store.close().await;
}

#[tokio::test]
async fn the_api_role_needs_a_listener_and_the_alert_rules_must_be_valid() {
    let dir = tempfile::tempdir().unwrap();
    let node = sqlite_node(dir.path()).await;
    assert!(matches!(
        node.start_roles(Roles::API, None).await,
        Err(StartError::NoListener)
    ));
    node.store.close().await;

    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.path().join("db2").display()));
    config.database.data_dir = dir.path().to_path_buf();
    // Alert rules evaluated 0 times a second: refused before anything starts.
    config.alerts.interval_secs = 0.0;
    let node = Node::start(config).await.unwrap();
    let err = node.start_roles(Roles::WORKER, None).await.err();
    assert!(matches!(err, Some(StartError::Alerts(_))), "{err:?}");
    node.store.close().await;
}
