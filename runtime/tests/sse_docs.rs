//! The SSE example in `docs/events.md` against a real streamed job: every event of the example
//! is sent by the server under the same name with at least the example's fields, and every
//! event's name is the `type` of its data.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::Value;
use sluice::api::{app, auth};
use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice_store::{JobStatus, NewApiKey, NewJob, PluginSettings};
use tower::ServiceExt;

/// `(event name, data)` of each event of an SSE text.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let (mut event, mut data) = (String::from("message"), String::new());
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        } else if line.is_empty() && !data.is_empty() {
            let v = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}"));
            out.push((std::mem::replace(&mut event, "message".into()), v));
            data.clear();
        }
    }
    out
}

/// The example block of `docs/events.md`.
fn documented() -> Vec<(String, Value)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.md")).unwrap();
    let example = doc.split("## Example").nth(1).expect("an Example section");
    let block = example
        .split("```text")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    parse_sse(block)
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_stream_is_what_the_server_sends() {
    let doc = documented();
    assert!(
        doc.iter().any(|(e, _)| e == "token_delta"),
        "the example streams tokens"
    );
    for (event, data) in &doc {
        if let Some(t) = data.get("type") {
            assert_eq!(t, event.as_str(), "the documented name is the data's type");
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    config.database.data_dir = dir.path().to_path_buf();
    config.engine.max_instances = 16;
    config.engine.pooling = false;
    config.worker.poll_ms = 50;
    let node = Node::start(config).await.unwrap();
    let bytes = plugins::component("chat");
    node.plugins.load(bytes.clone()).await.unwrap();
    let digest = node.store.put_component(&bytes).await.unwrap();
    node.store
        .create_plugin_version("acme", "chat", &digest, &PluginSettings::default(), true)
        .await
        .unwrap();
    let secret = auth::generate_secret();
    node.store
        .create_api_key(&NewApiKey {
            tenant: "acme".into(),
            name: "t".into(),
            scopes: vec!["read".into()],
            secret_hash: auth::hash_secret(&secret),
        })
        .await
        .unwrap();
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    let input = serde_json::json!({"conversation_id": "docs", "message": "Say hello."});
    let id = node
        .store
        .enqueue(NewJob::new("acme", "chat", input))
        .await
        .unwrap()
        .id;
    let mut done = false;
    for _ in 0..400 {
        if node.store.get_job(id).await.unwrap().unwrap().status == JobStatus::Completed {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the chat job did not complete");
    worker.shutdown(Duration::from_secs(5)).await;

    // The job is finished, so the stream is finite: persisted events, status, result.
    let req = Request::get(format!("/v1/jobs/{id}/events"))
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .body(Body::empty())
        .unwrap();
    let res = app(node.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = tokio::time::timeout(
        Duration::from_secs(30),
        axum::body::to_bytes(res.into_body(), 8 << 20),
    )
    .await
    .expect("the stream of a finished job ends")
    .unwrap();
    let sent = parse_sse(std::str::from_utf8(&body).unwrap());

    for (event, data) in &sent {
        if let Some(t) = data.get("type") {
            assert_eq!(t, event.as_str(), "the server's name is the data's type");
        }
    }
    for (event, data) in &doc {
        let same: Vec<&Value> = sent
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, d)| d)
            .collect();
        assert!(
            !same.is_empty(),
            "the server sent no {event:?} event: {sent:?}"
        );
        assert!(
            same.iter().any(|d| keys(data).is_subset(&keys(d))),
            "no {event:?} event has the documented fields {:?}: {same:?}",
            keys(data)
        );
    }
    assert_eq!(sent.last().map(|(e, _)| e.as_str()), Some("result"));
}
