//! The HTTP API through its router (no socket): `app(node)` on a temporary SQLite store.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use sluice::api::{app, auth};
use sluice::config::Config;
use sluice::node::Node;
use sluice_store::NewApiKey;
use tower::ServiceExt;

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;
use plugins::component;

struct Harness {
    app: Router,
    node: Node,
    _dir: tempfile::TempDir,
}

async fn harness_with(f: impl FnOnce(&mut Config)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    config.database.data_dir = dir.path().to_path_buf();
    config.engine.max_instances = 16;
    config.engine.pooling = false;
    f(&mut config);
    let node = Node::start(config).await.unwrap();
    Harness {
        app: app(node.clone()),
        node,
        _dir: dir,
    }
}

/// Keys required (not dev mode).
async fn harness() -> Harness {
    harness_with(|_| {}).await
}

impl Harness {
    async fn key(&self, tenant: &str, scopes: &[&str]) -> String {
        let secret = auth::generate_secret();
        self.node
            .store
            .create_api_key(&NewApiKey {
                tenant: tenant.into(),
                name: "test".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                secret_hash: auth::hash_secret(&secret),
            })
            .await
            .unwrap();
        secret
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, body.to_vec())
    }

    async fn json(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, headers, body) = self.send(req).await;
        if !status.is_success() {
            assert_eq!(
                headers[header::CONTENT_TYPE],
                "application/problem+json",
                "error without problem JSON: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("not JSON: {status} {}", String::from_utf8_lossy(&body)))
        };
        (status, v)
    }

    async fn upload(&self, key: &str, name: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        self.json(
            Request::put(format!("/v1/plugins/{name}"))
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/wasm")
                .body(Body::from(bytes))
                .unwrap(),
        )
        .await
    }

    async fn submit(
        &self,
        key: &str,
        plugin: &str,
        body: Value,
        idem: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::post(format!("/v1/plugins/{plugin}/jobs"))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json");
        if let Some(k) = idem {
            req = req.header("idempotency-key", k);
        }
        self.json(req.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn get(&self, key: &str, uri: &str) -> (StatusCode, Value) {
        self.json(
            Request::get(uri)
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }
}

#[tokio::test]
async fn upload_validates_components() {
    let h = harness().await;
    let key = h.key("acme", &["deploy", "read"]).await;

    let (status, v) = h.upload(&key, "noop", component("noop")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "noop");
    assert_eq!(v["version"], 1);
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));

    // Identical bytes: the same version, 200.
    let (status, again) = h.upload(&key, "noop", component("noop")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["version"], 1);
    assert_eq!(again["digest"], v["digest"]);

    let (status, v) = h
        .upload(&key, "junk", b"definitely not wasm".to_vec())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["kind"], "not_wasm");

    let (status, v) = h.upload(&key, "wrong", component("not-a-plugin")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["kind"], "wrong_world", "{v}");

    // Rejected uploads left nothing behind.
    let (status, list) = h.get(&key, "/v1/plugins").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["noop"]);

    let (status, v) = h.get(&key, "/v1/plugins/noop").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["active_version"], 1);
}

#[tokio::test]
async fn unknown_plugin_is_404() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let (status, v) = h.get(&key, "/v1/plugins/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["status"], 404);
    let (status, v) = h.submit(&key, "nope", json!({"input": {}}), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn bad_bodies_get_problem_json() {
    let h = harness_with(|c| c.server.max_body_bytes = 64 * 1024).await;
    let key = h.key("acme", &["admin"]).await;
    h.upload(&key, "noop", component("noop")).await;

    let (status, v) = h
        .json(
            Request::post("/v1/plugins/noop/jobs")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from("{\"input\": "))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["type"], "https://sluice.dev/problems/malformed-json");

    let (status, _) = h
        .json(
            Request::post("/v1/plugins/noop/jobs")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "text/plain")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let big = json!({ "input": { "text": "x".repeat(100 * 1024) } });
    let (status, v) = h.submit(&key, "noop", big, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    let (status, v) = h.upload(&key, "big", vec![0u8; 100 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    let (status, v) = h
        .submit(
            &key,
            "noop",
            json!({"input": {}, "run_at": "tomorrow"}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["type"], "https://sluice.dev/problems/invalid-run-at");

    let (status, _) = h
        .submit(&key, "noop", json!({"input": {}, "unknown_field": 1}), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, _) = h
        .submit(
            &key,
            "noop",
            json!({"input": {}, "webhook": {"url": "http://169.254.169.254/"}}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = h.get(&key, "/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn idempotent_submit() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    h.upload(&key, "noop", component("noop")).await;

    let body = json!({"input": {"n": 1}, "run_at": "2100-01-01T00:00:00Z"});
    let (status, first) = h.submit(&key, "noop", body.clone(), Some("k-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "scheduled");
    assert!(
        first["links"]["events"]
            .as_str()
            .unwrap()
            .ends_with("/events")
    );

    let (status, again) = h.submit(&key, "noop", body, Some("k-1")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"]);

    let (status, v) = h
        .submit(&key, "noop", json!({"input": {"n": 2}}), Some("k-1"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["idempotency_key"], "k-1");
    assert!(v["detail"].as_str().unwrap().contains("k-1"));

    // The job is listed and can be read and cancelled.
    let id = first["id"].as_str().unwrap();
    let (status, list) = h.get(&key, "/v1/jobs?status=scheduled&plugin=noop").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], id);
    let (status, job) = h.get(&key, &format!("/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "scheduled");
    assert!(job.get("tenant").is_none());
    let (status, v) = h
        .json(
            Request::post(format!("/v1/jobs/{id}/cancel"))
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled");
}

#[tokio::test]
async fn keys_are_required_and_checked() {
    let h = harness().await;
    let (status, headers, _) = h
        .send(Request::get("/v1/plugins").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let (status, _) = h.get("sk_wrong", "/v1/plugins").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let reader = h.key("acme", &["read"]).await;
    let (status, _) = h.upload(&reader, "noop", component("noop")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Health endpoints need no key.
    let (status, _, _) = h
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = h
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = h
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("sluice_dlq_depth"));
    let (status, _, body) = h
        .send(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["paths"]["/v1/plugins/{name}/jobs"].is_object());
}

#[tokio::test]
async fn dev_mode_needs_no_key() {
    let h = harness_with(|c| c.server.dev = true).await;
    let (status, _, _) = h
        .send(Request::get("/v1/plugins").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    // Not on loopback: keys again.
    let h = harness_with(|c| {
        c.server.dev = true;
        c.server.listen = "0.0.0.0:8080".into();
    })
    .await;
    let (status, _, _) = h
        .send(Request::get("/v1/plugins").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tenants_are_isolated() {
    let h = harness().await;
    let a = h.key("tenant-a", &["admin"]).await;
    let b = h.key("tenant-b", &["admin"]).await;
    h.upload(&a, "noop", component("noop")).await;
    let (status, job) = h
        .submit(
            &a,
            "noop",
            json!({"input": {}, "run_at": "2100-01-01T00:00:00Z"}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap();

    for uri in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/events"),
        "/v1/plugins/noop".to_string(),
    ] {
        let (status, _) = h.get(&b, &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
    let (status, _) = h.submit(&b, "noop", json!({"input": {}}), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = h.get(&b, "/v1/jobs").await;
    assert_eq!(list["items"], json!([]));
    let (_, list) = h.get(&b, "/v1/plugins").await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn sse_checks_job_and_resume_id() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let (status, _) = h
        .get(&key, &format!("/v1/jobs/{}/events", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    h.upload(&key, "noop", component("noop")).await;
    let (_, job) = h
        .submit(
            &key,
            "noop",
            json!({"input": {}, "run_at": "2100-01-01T00:00:00Z"}),
            None,
        )
        .await;
    let id = job["id"].as_str().unwrap();
    for bad in ["abc", "999"] {
        let (status, _) = h
            .json(
                Request::get(format!("/v1/jobs/{id}/events"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("last-event-id", bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }

    // A finished job's stream replays, reports the status and ends.
    h.json(
        Request::post(format!("/v1/jobs/{id}/cancel"))
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let (status, headers, body) = h
        .send(
            Request::get(format!("/v1/jobs/{id}/events"))
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("event: status"), "{text}");
    assert!(text.contains("event: result"), "{text}");
    assert!(text.contains("cancelled"), "{text}");
}

#[tokio::test]
async fn end_to_end_with_the_worker() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let worker = sluice::worker::spawn(h.node.clone());
    let (status, _) = h.upload(&key, "noop", component("noop")).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, job) = h
        .json(
            Request::post("/v1/plugins/noop/jobs?wait=10s")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from(json!({"input": {"hello": "world"}}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "completed", "{job}");
    assert!(!job["output"].is_null(), "{job}");

    let id = job["id"].as_str().unwrap();
    let (_, _, body) = h
        .send(
            Request::get(format!("/v1/jobs/{id}/events"))
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("event: result"), "{text}");
    worker.shutdown(Duration::from_secs(5)).await;
}
