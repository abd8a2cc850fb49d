//! The HTTP API through its router (no socket): `app(node)` on a temporary SQLite store.
//!
//! Why one file over 800 lines: the whole HTTP contract in one place, one test per behaviour
//! a user relies on, grouped by route; the shared setup lives at the top.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use sluice::api::{app, auth};
use sluice::config::Config;
use sluice::node::{Node, Roles};
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
    // Metrics are node-wide: a key with the `read` scope.
    let (status, _, _) = h
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = h
        .send(
            Request::get("/metrics")
                .header("authorization", format!("Bearer {reader}"))
                .body(Body::empty())
                .unwrap(),
        )
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
        .send(
            Request::get("/v1/plugins")
                .header(header::HOST, "127.0.0.1:8080")
                .body(Body::empty())
                .unwrap(),
        )
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
    let worker = h.node.start_roles(Roles::WORKER, None).await.unwrap();
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

impl Harness {
    async fn patch(&self, key: &str, name: &str, body: &str) -> (StatusCode, Value) {
        self.json(
            Request::patch(format!("/v1/plugins/{name}"))
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn post(&self, key: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        self.json(
            Request::post(uri)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    async fn openapi(&self) -> Value {
        let (status, headers, body) = self
            .send(Request::get("/openapi.json").body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        serde_json::from_slice(&body).expect("/openapi.json is not JSON")
    }
}

/// The schema named `name` in the document's components.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema `{name}` in the document");
    s
}

/// `value` has exactly the fields the schema `name` documents: nothing undocumented, nothing
/// required missing. Top level only: nested shapes have their own checks where they matter.
fn assert_fits(doc: &Value, name: &str, value: &Value) {
    let s = schema(doc, name);
    let props = s["properties"]
        .as_object()
        .expect("schema without properties");
    let got = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    for k in got.keys() {
        assert!(
            props.contains_key(k),
            "`{k}` is not documented in `{name}`: {value}"
        );
    }
    for k in s["required"].as_array().into_iter().flatten() {
        let k = k.as_str().unwrap();
        assert!(
            got.contains_key(k),
            "`{name}` requires `{k}` but the answer lacks it: {value}"
        );
    }
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let h = harness().await;
    let doc = h.openapi().await;

    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert!(
        doc["security"]
            .as_array()
            .unwrap()
            .contains(&json!({"bearer": []})),
        "bearer is not the default requirement: {}",
        doc["security"]
    );

    let methods = ["get", "put", "post", "patch", "delete"];
    let paths = doc["paths"].as_object().unwrap();
    let mut operation_ids = std::collections::HashSet::new();
    for &(method, path) in sluice::api::ROUTES {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{} {path} is routed but not documented",
            method.to_uppercase()
        );
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {path} has no summary"
        );
        // Client generators name functions after these.
        let id = op["operationId"].as_str().unwrap();
        assert!(
            operation_ids.insert(id.to_string()),
            "operationId `{id}` is used twice"
        );
        // Every path parameter is declared.
        for name in path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        {
            let declared = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true);
            assert!(
                declared,
                "{method} {path} does not declare path parameter `{name}`"
            );
        }
        // Errors are documented as problem documents.
        for (code, res) in op["responses"].as_object().unwrap() {
            if code.starts_with('4') || code.starts_with('5') {
                assert!(
                    res["content"]["application/problem+json"].is_object(),
                    "{method} {path} {code} is not documented as application/problem+json"
                );
            }
        }
        // API operations need a key; only the ops endpoints may waive it.
        if path.starts_with("/v1/") {
            assert!(
                op.get("security").is_none(),
                "{method} {path} overrides the bearer requirement"
            );
        }
    }
    // Nothing is documented that is not routed.
    for (path, item) in paths {
        for method in methods {
            if item.get(method).is_some() {
                assert!(
                    sluice::api::ROUTES.contains(&(method, path.as_str())),
                    "{method} {path} is documented but not routed"
                );
            }
        }
    }
    // And the router agrees with the list: every other method on a routed path is a 405, so a
    // method routed outside the list would show up here.
    let mut routed_paths: Vec<&str> = sluice::api::ROUTES.iter().map(|r| r.1).collect();
    routed_paths.dedup();
    for path in routed_paths {
        let uri = path
            .replace("{name}", "noop")
            .replace("{id}", &uuid::Uuid::now_v7().to_string());
        for method in methods {
            let routed = sluice::api::ROUTES.contains(&(method, path));
            let (status, _, _) = h
                .send(
                    Request::builder()
                        .method(method.to_uppercase().as_str())
                        .uri(&uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(
                status == StatusCode::METHOD_NOT_ALLOWED,
                !routed,
                "{method} {path}: {status} (listed in ROUTES: {routed})"
            );
        }
    }
    assert!(sluice::api::ROUTES.contains(&("patch", "/v1/plugins/{name}")));
}

#[tokio::test]
async fn answers_fit_their_documented_schemas() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let doc = h.openapi().await;
    let worker = h.node.start_roles(Roles::WORKER, None).await.unwrap();

    let (_, uploaded) = h.upload(&key, "noop", component("noop")).await;
    assert_fits(&doc, "DeployedVersion", &uploaded);
    let (_, patched) = h.patch(&key, "noop", r#"{"timeout_ms": 5000}"#).await;
    assert_fits(&doc, "DeployedVersion", &patched);
    let (_, plugin) = h.get(&key, "/v1/plugins/noop").await;
    assert_fits(&doc, "PluginView", &plugin);
    assert_fits(&doc, "VersionView", &plugin["versions"][1]);
    assert_fits(&doc, "SettingsView", &plugin["versions"][1]["settings"]);

    let (_, submitted) = h
        .submit(
            &key,
            "noop",
            json!({"input": {}, "run_at": "2100-01-01T00:00:00Z"}),
            None,
        )
        .await;
    assert_fits(&doc, "Submitted", &submitted);
    let (status, job) = h
        .post(
            &key,
            "/v1/plugins/noop/jobs?wait=10s",
            json!({"input": {"a": 1}, "tags": {"user": "u1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_fits(&doc, "Job", &job);
    assert_fits(&doc, "Attempt", &job["attempts"][0]);
    assert_fits(&doc, "Timings", &job["timings"]);
    assert_fits(&doc, "JobUsage", &job["usage"]);
    let (_, page) = h.get(&key, "/v1/jobs").await;
    assert_fits(&doc, "JobPage", &page);
    assert_fits(&doc, "JobSummary", &page["items"][0]);
    let (_, dead) = h.get(&key, "/v1/dlq").await;
    assert_fits(&doc, "DeadPage", &dead);
    let (_, usage) = h.get(&key, "/v1/usage").await;
    assert_fits(&doc, "UsageReport", &usage);
    let (_, problem) = h.get(&key, "/v1/plugins/nope").await;
    assert_fits(&doc, "Problem", &problem);
    let (_, problem) = h.patch(&key, "noop", r#"{"memory_mb": 0}"#).await;
    assert_fits(&doc, "Problem", &problem);
    let (_, problem) = h
        .post(
            &key,
            &format!("/v1/jobs/{}/cancel", job["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_fits(&doc, "Problem", &problem);
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn patching_settings_makes_a_new_active_version() {
    let h = harness().await;
    let key = h.key("acme", &["deploy", "invoke", "read"]).await;
    let (_, v1) = h.upload(&key, "noop", component("noop")).await;

    let (status, v2) = h
        .patch(
            &key,
            "noop",
            r#"{"timeout_ms": 1234, "memory_mb": 32, "max_attempts": 2, "allowed_models": ["fast"]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["digest"], v1["digest"], "same code, new settings");
    assert_eq!(v2["existing"], false);
    assert_eq!(v2["settings"]["timeout_ms"], 1234);
    assert_eq!(v2["settings"]["memory_limit_bytes"], 32 << 20);
    assert_eq!(v2["settings"]["allowed_models"], json!(["fast"]));

    let (_, plugin) = h.get(&key, "/v1/plugins/noop").await;
    assert_eq!(plugin["active_version"], 2);
    assert_eq!(plugin["versions"].as_array().unwrap().len(), 2);
    assert!(
        plugin["versions"][0]["settings"]
            .get("timeout_ms")
            .is_none(),
        "v1 is unchanged"
    );
    assert_eq!(plugin["versions"][1]["settings"]["max_attempts"], 2);

    // A merge: absent fields are kept, `null` resets one to the default.
    let (status, v3) = h.patch(&key, "noop", r#"{"max_attempts": null}"#).await;
    assert_eq!(status, StatusCode::OK, "{v3}");
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["settings"]["timeout_ms"], 1234);
    assert!(v3["settings"].get("max_attempts").is_none(), "{v3}");

    // Nothing to change: no new version.
    let (status, same) = h.patch(&key, "noop", r#"{"timeout_ms": 1234}"#).await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(same["version"], 3);
    assert_eq!(same["existing"], true);

    // New jobs get the new settings.
    let later = json!({"input": {}, "run_at": "2100-01-01T00:00:00Z"});
    let (_, job) = h.submit(&key, "noop", later.clone(), None).await;
    let (_, job) = h.get(&key, job["links"]["self"].as_str().unwrap()).await;
    assert_eq!(job["plugin_version"], 3);
    assert_eq!(job["timeout_ms"], 1234);

    // Rolling back to the upload brings back its settings.
    let (status, plugin) = h
        .post(&key, "/v1/plugins/noop/activate", json!({"version": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{plugin}");
    let (_, job) = h.submit(&key, "noop", later, None).await;
    let (_, job) = h.get(&key, job["links"]["self"].as_str().unwrap()).await;
    assert_eq!(job["plugin_version"], 1);
    assert_ne!(job["timeout_ms"], 1234);
}

#[tokio::test]
async fn bad_settings_patches_are_rejected() {
    let h = harness().await;
    let key = h.key("acme", &["deploy", "read"]).await;
    h.upload(&key, "noop", component("noop")).await;

    for (body, status, kind) in [
        (r#"{"timeout": 5}"#, 422, "invalid-body"),
        (r#"{"timeout_ms": "soon"}"#, 422, "invalid-body"),
        (r#"{"timeout_ms": 0}"#, 422, "invalid-settings"),
        (r#"{"max_attempts": 0}"#, 422, "invalid-settings"),
        (r#"{"concurrency": 0}"#, 422, "invalid-settings"),
        (r#"{"memory_mb": 1}"#, 422, "invalid-settings"),
        // Above `engine.max_memory_mb` (256 by default), and so large it would wrap as bytes.
        (r#"{"memory_mb": 257}"#, 422, "invalid-settings"),
        (
            r#"{"memory_mb": 18446744073709551615}"#,
            422,
            "invalid-settings",
        ),
        (r#"{"allowed_models": [""]}"#, 422, "invalid-settings"),
        (r#"{"timeout_ms": "#, 400, "malformed-json"),
    ] {
        let (got, v) = h.patch(&key, "noop", body).await;
        assert_eq!(got.as_u16(), status, "{body}: {v}");
        assert_eq!(
            v["type"],
            format!("https://sluice.dev/problems/{kind}"),
            "{body}: {v}"
        );
    }
    let (_, plugin) = h.get(&key, "/v1/plugins/noop").await;
    assert_eq!(
        plugin["versions"].as_array().unwrap().len(),
        1,
        "a rejected patch changed nothing"
    );

    // Uploads take the same settings as query parameters, checked the same way.
    let (status, v) = h
        .json(
            Request::put("/v1/plugins/noop?timeout_ms=0")
                .header("authorization", format!("Bearer {key}"))
                .body(Body::from(component("noop")))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "timeout_ms");

    let (status, _) = h.patch(&key, "nope", r#"{"timeout_ms": 5}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Another tenant's plugin does not exist for you.
    let other = h.key("someone-else", &["admin"]).await;
    let (status, v) = h.patch(&other, "noop", r#"{"timeout_ms": 5}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    // Reading is not deploying.
    let reader = h.key("acme", &["read"]).await;
    let (status, _) = h.patch(&reader, "noop", r#"{"timeout_ms": 5}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, plugin) = h.get(&key, "/v1/plugins/noop").await;
    assert_eq!(plugin["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn jobs_run_with_patched_limits() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let worker = h.node.start_roles(Roles::WORKER, None).await.unwrap();
    h.upload(&key, "spin", component("busy-loop")).await;
    h.upload(&key, "bomb", component("memory-bomb")).await;

    // The time limit comes with the job; the memory cap from the node's per-version settings.
    let (status, v) = h
        .patch(&key, "spin", r#"{"timeout_ms": 300, "max_attempts": 1}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, v) = h
        .patch(&key, "bomb", r#"{"memory_mb": 16, "max_attempts": 1}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    for (plugin, expected) in [
        ("spin", "exceeded its time limit of "),
        ("bomb", "exceeded its memory limit of 16777216 bytes"),
    ] {
        let (status, job) = h
            .post(
                &key,
                &format!("/v1/plugins/{plugin}/jobs?wait=30s"),
                json!({"input": {}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{plugin}: {job}");
        assert_eq!(job["status"], "dead", "{plugin}: {job}");
        assert_eq!(job["plugin_version"], 2, "{plugin}: {job}");
        let message = job["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{plugin}: {message}");
        if plugin == "spin" {
            assert_eq!(job["timeout_ms"], 300, "{job}");
            // The limit counts down from the deadline set at claim, so it can be a few ms
            // under 300; the default would be 300000.
            let limit: u64 = message
                .split("time limit of ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no limit in `{message}`"));
            assert!(limit <= 300, "{message}");
        }
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn plugins_call_only_their_allowed_models() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let worker = h.node.start_roles(Roles::WORKER, None).await.unwrap();
    // summarize calls `smart` for a short text; this version may only call `fast`.
    let (status, v) = h.upload(&key, "summarize", component("summarize")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = h
        .patch(
            &key,
            "summarize",
            r#"{"allowed_models": ["fast"], "max_attempts": 1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let input = json!({"input": {"text": "Allowed models keep a plugin on the cheap ones."}});
    let (status, job) = h
        .post(&key, "/v1/plugins/summarize/jobs?wait=30s", input.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "dead", "{job}");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`smart` is not allowed"),
        "the refusal names the model: {message}"
    );
    // Nothing was spent on the refused call.
    assert_eq!(job["usage"]["model_calls"], 0, "{job}");

    let (status, v) = h
        .patch(
            &key,
            "summarize",
            r#"{"allowed_models": ["fast", "smart"]}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, job) = h
        .post(&key, "/v1/plugins/summarize/jobs?wait=30s", input)
        .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["usage"]["model_calls"], 1, "{job}");
    worker.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Bounds: every tenant-controlled number, string and body has a named limit (issue 9).
// ---------------------------------------------------------------------------------------------

impl Harness {
    /// A request with a key, a JSON content type and `body`.
    async fn call(
        &self,
        method: &str,
        uri: &str,
        key: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        self.json(
            Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(body.into())
                .unwrap(),
        )
        .await
    }
}

/// Assert a problem document: status, type and the field it names.
#[track_caller]
fn assert_problem(got: &(StatusCode, Value), status: u16, kind: &str, field: &str) {
    let (s, v) = got;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(
        v["type"],
        format!("https://sluice.dev/problems/{kind}"),
        "{v}"
    );
    assert_eq!(v["field"], field, "{v}");
}

#[tokio::test]
async fn numbers_from_tenants_never_overflow() {
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let submit = |query: &'static str, body: Value| {
        let uri = format!("/v1/plugins/absent/jobs{query}");
        let key = key.clone();
        let h = &h;
        async move { h.call("POST", &uri, &key, body.to_string()).await }
    };

    // `?wait=` beyond what a duration can hold: a 400 naming `wait`, not a panic.
    for wait in [
        "100000000000000000000",
        "300000000000000000h",
        "18446744073709551616s",
        "1e400",
        "NaN",
        "-1",
        "%00",
    ] {
        let got = h
            .call(
                "POST",
                &format!("/v1/plugins/absent/jobs?wait={wait}"),
                &key,
                "{}",
            )
            .await;
        assert_problem(&got, 400, "bad-request", "wait");
    }
    // Long but representable: capped at 60s, so the request goes on (to the missing plugin).
    let got = submit("?wait=300000000000h", json!({})).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "{}", got.1);

    // `timeout_ms`: a float is the wrong type; a huge integer is past the server's cap.
    let got = submit("", json!({"timeout_ms": 1e16})).await;
    assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", got.1);
    assert_eq!(got.1["type"], "https://sluice.dev/problems/invalid-body");
    let got = submit("", json!({"timeout_ms": 10_000_000_000_000_000u64})).await;
    assert_problem(&got, 422, "limit-exceeded", "timeout_ms");
    assert_eq!(got.1["limit"], 3_600_000);
    let got = submit("", json!({"timeout_ms": u64::MAX})).await;
    assert_problem(&got, 422, "limit-exceeded", "timeout_ms");
    let got = submit("", json!({"max_attempts": u32::MAX})).await;
    assert_problem(&got, 422, "limit-exceeded", "max_attempts");
    let got = submit("", json!({"max_attempts": 0})).await;
    assert_problem(&got, 400, "bad-request", "max_attempts");
    let got = submit("", json!({"priority": i64::MAX})).await;
    assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY, "{}", got.1);

    // `/v1/usage?since=` reaching back before the calendar: 400 naming the parameter.
    for (q, field) in [
        ("since=300000000000h", "since"),
        ("until=300000000000h", "until"),
        ("since=100000000000000000000", "since"),
        ("since=9999999999999999999999999999ms", "since"),
        ("since=yesterday", "since"),
        ("group_by=tag:", "group_by"),
    ] {
        let got = h.get(&key, &format!("/v1/usage?{q}")).await;
        assert_problem(&got, 400, "bad-request", field);
    }
    let got = h.get(&key, "/v1/usage?since=1000000h").await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    let long_tag = format!("/v1/usage?group_by=tag:{}", "k".repeat(65));
    assert_problem(
        &h.get(&key, &long_tag).await,
        400,
        "bad-request",
        "group_by",
    );

    // Other numbers in queries and headers.
    for uri in [
        "/v1/jobs?limit=99999999999",
        "/v1/jobs?limit=-1",
        "/v1/dlq?limit=4294967296",
        "/v1/webhooks/deliveries?cursor=9223372036854775808",
        "/v1/webhooks/deliveries?limit=NaN",
    ] {
        let (status, v) = h.get(&key, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
    let (status, v) = h
        .get(&key, "/v1/webhooks/deliveries/99999999999999999999999")
        .await;
    assert!(status.is_client_error(), "{status} {v}");
}

#[tokio::test]
async fn tags_are_bounded() {
    let h = harness_with(|c| c.server.limits.max_tags = 3).await;
    let key = h.key("acme", &["admin"]).await;
    let submit = |body: Value| {
        let key = key.clone();
        let h = &h;
        async move {
            h.call("POST", "/v1/plugins/absent/jobs", &key, body.to_string())
                .await
        }
    };
    let tags = |n: usize| -> Value {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    // At the limits the submission goes on (to the missing plugin).
    let ok = json!({"tags": {"k".repeat(64): "é".repeat(128), "a": "", "b": "c"}});
    let got = submit(ok).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "{}", got.1);

    let got = submit(json!({"tags": tags(4)})).await;
    assert_problem(&got, 422, "limit-exceeded", "tags");
    assert_eq!(got.1["limit"], 3);
    let got = submit(json!({"tags": {"k".repeat(65): "v"}})).await;
    assert_problem(&got, 422, "limit-exceeded", "tags");
    assert_eq!(got.1["limit"], 64);
    assert!(
        got.1["detail"].as_str().unwrap().len() < 300,
        "the key is not echoed whole: {}",
        got.1
    );
    let got = submit(json!({"tags": {"user": "v".repeat(257)}})).await;
    assert_problem(&got, 422, "limit-exceeded", "tags");
    assert_eq!(got.1["limit"], 256);
    for bad in [
        json!({"user": "nul\u{0}byte"}),
        json!({"us\u{1b}er": "escape"}),
        json!({"user": "new\nline"}),
        json!({"": "empty key"}),
    ] {
        let got = submit(json!({ "tags": bad })).await;
        assert_problem(&got, 400, "bad-request", "tags");
    }
    // Batches check every job and say which one failed.
    let body = json!({"jobs": [{"input": {}}, {"input": {}, "tags": tags(4)}]});
    let got = h
        .call(
            "POST",
            "/v1/plugins/absent/jobs/batch",
            &key,
            body.to_string(),
        )
        .await;
    assert_problem(&got, 422, "limit-exceeded", "tags");
    assert_eq!(got.1["index"], 1);
}

#[tokio::test]
async fn timeouts_attempts_and_keys_are_capped() {
    let h = harness_with(|c| {
        c.server.limits.max_timeout_ms = 600_000;
        c.server.limits.max_attempts = 10;
        c.server.limits.max_idempotency_key_bytes = 16;
        c.server.limits.max_batch_jobs = 2;
    })
    .await;
    let key = h.key("acme", &["admin"]).await;
    let (status, v) = h.upload(&key, "noop", component("noop")).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let later = "2100-01-01T00:00:00Z";

    // At submit.
    let post = |body: Value| {
        let key = key.clone();
        let h = &h;
        async move {
            h.call("POST", "/v1/plugins/noop/jobs", &key, body.to_string())
                .await
        }
    };
    let got = post(json!({"run_at": later, "timeout_ms": 600_001})).await;
    assert_problem(&got, 422, "limit-exceeded", "timeout_ms");
    assert_eq!(got.1["limit"], 600_000);
    let got = post(json!({"run_at": later, "max_attempts": 11})).await;
    assert_problem(&got, 422, "limit-exceeded", "max_attempts");
    assert_eq!(got.1["limit"], 10);
    let (status, v) =
        post(json!({"run_at": later, "timeout_ms": 600_000, "max_attempts": 10})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "at the caps: {v}");

    // In plugin settings, by PATCH and by upload.
    let got = h.patch(&key, "noop", r#"{"timeout_ms": 600001}"#).await;
    assert_problem(&got, 422, "invalid-settings", "timeout_ms");
    assert_eq!(got.1["limit"], 600_000);
    let got = h
        .patch(&key, "noop", r#"{"max_attempts": 4294967295}"#)
        .await;
    assert_problem(&got, 422, "invalid-settings", "max_attempts");
    let got = h
        .patch(
            &key,
            "noop",
            r#"{"timeout_ms": 600000, "max_attempts": 10}"#,
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "at the caps: {}", got.1);
    for query in ["timeout_ms=18446744073709551615", "max_attempts=11"] {
        let got = h
            .json(
                Request::put(format!("/v1/plugins/noop?{query}"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/wasm")
                    .body(Body::from(component("noop")))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            got.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            got.1
        );
        assert_eq!(
            got.1["type"],
            "https://sluice.dev/problems/invalid-settings"
        );
    }

    // Idempotency keys: header and batch.
    let with_key = |k: String| {
        let key = key.clone();
        let h = &h;
        async move {
            h.json(
                Request::post("/v1/plugins/noop/jobs")
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", k)
                    .body(Body::from(json!({"run_at": later}).to_string()))
                    .unwrap(),
            )
            .await
        }
    };
    let got = with_key("k".repeat(17)).await;
    assert_problem(&got, 400, "bad-request", "Idempotency-Key");
    assert_eq!(got.1["limit"], 16);
    let got = with_key("k\tey".into()).await;
    assert_problem(&got, 400, "bad-request", "Idempotency-Key");
    let (status, v) = with_key("k".repeat(16)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let batch = |jobs: Value| {
        let key = key.clone();
        let h = &h;
        async move {
            h.call(
                "POST",
                "/v1/plugins/noop/jobs/batch",
                &key,
                json!({ "jobs": jobs }).to_string(),
            )
            .await
        }
    };
    let got =
        batch(json!([{"run_at": later}, {"run_at": later, "idempotency_key": "k".repeat(17)}]))
            .await;
    assert_problem(&got, 400, "bad-request", "idempotency_key");
    assert_eq!(got.1["index"], 1);
    let got = batch(json!([{"run_at": later, "idempotency_key": "a\u{0}b"}])).await;
    assert_problem(&got, 400, "bad-request", "idempotency_key");
    let got = batch(json!([{"run_at": later}, {"run_at": later}, {"run_at": later}])).await;
    assert_problem(&got, 400, "bad-request", "jobs");
    assert_eq!(got.1["limit"], 2);
    let (status, v) = batch(json!([{"run_at": later}, {"run_at": later}])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
}

#[tokio::test]
async fn scopes_are_checked_before_bodies_are_read() {
    let h = harness().await;
    // A valid key with no scope any route accepts.
    let nobody = h.key("acme", &["none"]).await;
    // Larger than every route's limit, and not JSON: reading or parsing it would be a 413 or
    // a 400, so a 401/403 proves the key was checked first.
    let huge = bytes::Bytes::from(vec![b'x'; 40 << 20]);
    let mut checked = 0;
    for &(method, path) in sluice::api::ROUTES {
        if !path.starts_with("/v1/") && path != "/metrics" {
            continue;
        }
        let uri = path
            .replace("{name}", "noop")
            .replace("{id}", &uuid::Uuid::now_v7().to_string());
        for key in [None, Some(&nobody)] {
            let mut req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .header("content-length", huge.len());
            if let Some(k) = key {
                req = req.header("authorization", format!("Bearer {k}"));
            }
            let (status, v) = h.json(req.body(Body::from(huge.clone())).unwrap()).await;
            let want = if key.is_some() { 403 } else { 401 };
            assert_eq!(status.as_u16(), want, "{method} {path}: {v}");
            checked += 1;
        }
    }
    assert!(checked >= 40, "{checked}");
    // The unread body stays on the connection: it must not carry another request.
    let (status, headers, _) = h
        .send(
            Request::put("/v1/plugins/noop")
                .header("content-type", "application/wasm")
                .header("content-length", huge.len())
                .body(Body::from(huge.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONNECTION], "close");
    // Without a body there is nothing left unread.
    let (status, headers, _) = h
        .send(Request::get("/v1/plugins").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::CONNECTION).is_none());
}

#[tokio::test]
async fn bodies_have_per_route_limits() {
    let h = harness_with(|c| c.server.limits.max_batch_body_bytes = 256 << 10).await;
    let key = h.key("acme", &["admin"]).await;
    let id = uuid::Uuid::now_v7();
    let padded = |n: usize| json!({ "pad": "x".repeat(n) }).to_string();
    let limit = |v: &Value| v["limit"].as_u64().unwrap_or_default();

    // Small JSON routes: 64 KiB.
    for (method, uri) in [
        ("PATCH", "/v1/plugins/noop".to_string()),
        ("POST", "/v1/plugins/noop/activate".to_string()),
        ("PUT", "/v1/budgets/b".to_string()),
        ("POST", "/v1/dlq/redrive".to_string()),
        ("POST", format!("/v1/jobs/{id}/redrive")),
    ] {
        let got = h.call(method, &uri, &key, padded(64 << 10)).await;
        assert_eq!(
            got.0,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{method} {uri}: {}",
            got.1
        );
        assert_eq!(got.1["type"], "https://sluice.dev/problems/body-too-large");
        assert_eq!(limit(&got.1), 64 << 10, "{method} {uri}");
    }
    // A submission: its input's limit plus room for the rest.
    let input = json!({"input": {"text": "x".repeat((1 << 20) + (64 << 10))}}).to_string();
    let got = h.call("POST", "/v1/plugins/noop/jobs", &key, input).await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.1);
    assert_eq!(limit(&got.1), (1 << 20) + (64 << 10));
    // An input just over its own limit fits the body: the store's check names it.
    let input = json!({"input": {"text": "x".repeat(1 << 20)}}).to_string();
    let got = h.call("POST", "/v1/plugins/noop/jobs", &key, input).await;
    assert_problem(&got, 413, "input-too-large", "input");
    // A batch: `server.limits.max_batch_body_bytes`.
    let jobs: Vec<Value> = (0..10)
        .map(|_| json!({"input": {"text": "x".repeat(30 << 10)}}))
        .collect();
    let got = h
        .call(
            "POST",
            "/v1/plugins/noop/jobs/batch",
            &key,
            json!({ "jobs": jobs }).to_string(),
        )
        .await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.1);
    assert_eq!(limit(&got.1), 256 << 10);
    // A body that declares a length past the limit is refused before it is read.
    let got = h
        .json(
            Request::patch("/v1/plugins/noop")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .header("content-length", "1000000000")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(got.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", got.1);
}

/// A request to a dev-mode harness: `Host`, optional content type.
fn dev_req(method: &str, uri: &str, host: Option<&str>, ctype: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(h) = host {
        req = req.header(header::HOST, h);
    }
    if let Some(t) = ctype {
        req = req.header(header::CONTENT_TYPE, t);
    }
    req.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn dev_mode_checks_host_and_content_type() {
    let h = harness_with(|c| {
        c.server.dev = true;
        c.server.listen = "127.0.0.1:8080".into();
    })
    .await;
    let id = uuid::Uuid::now_v7();
    let here = Some("127.0.0.1:8080");

    // DNS rebinding: another name, another port or no Host at all is a 403.
    for host in [
        Some("localhost:8080"),
        Some("127.0.0.1:8080"),
        Some("[::1]:8080"),
    ] {
        let (status, v) = h.json(dev_req("GET", "/v1/plugins", host, None)).await;
        assert_eq!(status, StatusCode::OK, "{host:?}: {v}");
    }
    for host in [
        Some("attacker.example:8080"),
        Some("attacker.example"),
        Some("localhost:9999"),
        Some("127.0.0.1.attacker.example:8080"),
        None,
    ] {
        for uri in ["/v1/plugins", "/metrics", "/healthz", "/nothing-here"] {
            let got = h.json(dev_req("GET", uri, host, None)).await;
            assert_problem(&got, 403, "forbidden", "Host");
        }
    }

    // State changes need a JSON content type, with a body or without.
    for (method, uri) in [
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("POST", "/v1/dlq/redrive".to_string()),
        ("POST", format!("/v1/jobs/{id}/redrive")),
        ("POST", "/v1/webhooks/deliveries/1/retry".to_string()),
        ("DELETE", "/v1/budgets/b".to_string()),
        ("DELETE", "/v1/plugins/noop".to_string()),
        ("POST", "/v1/plugins/noop/jobs".to_string()),
        ("PATCH", "/v1/plugins/noop".to_string()),
    ] {
        for ctype in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let got = h.json(dev_req(method, &uri, here, ctype)).await;
            assert_problem(&got, 415, "unsupported-media-type", "Content-Type");
        }
        let (status, v) = h
            .json(dev_req(method, &uri, here, Some("application/json")))
            .await;
        assert_ne!(status.as_u16(), 415, "{method} {uri}: {v}");
        assert_ne!(status.as_u16(), 403, "{method} {uri}: {v}");
    }
    // The redrive of the DLQ with a JSON content type and no body redrives nothing.
    let (status, v) = h
        .json(dev_req(
            "POST",
            "/v1/dlq/redrive",
            here,
            Some("application/json"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 0);
    // An upload must say it is wasm.
    for ctype in [None, Some("application/json"), Some("text/plain")] {
        let got = h
            .json(dev_req("PUT", "/v1/plugins/noop", here, ctype))
            .await;
        assert_problem(&got, 415, "unsupported-media-type", "Content-Type");
    }
    let (status, v) = h
        .json(dev_req(
            "PUT",
            "/v1/plugins/noop",
            here,
            Some("application/wasm"),
        ))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "an empty component: {v}"
    );
    assert_eq!(v["type"], "https://sluice.dev/problems/invalid-component");
    // Reads need no content type.
    let (status, _) = h.json(dev_req("GET", "/v1/jobs", here, None)).await;
    assert_eq!(status, StatusCode::OK);

    // With keys (not dev mode) neither check applies: the key is the guard.
    let h = harness().await;
    let key = h.key("acme", &["admin"]).await;
    let (status, v) = h
        .json(
            Request::post(format!("/v1/jobs/{id}/cancel"))
                .header(header::HOST, "anything.example")
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn metrics_need_a_read_key_and_come_from_cached_gauges() {
    let h = harness_with(|c| c.server.gauges_refresh_secs = 3600).await;
    let admin = h.key("acme", &["admin"]).await;
    let reader = h.key("acme", &["read"]).await;
    let invoker = h.key("acme", &["invoke"]).await;
    let scrape = |key: Option<&str>| {
        let mut req = Request::get("/metrics");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let h = &h;
        let req = req.body(Body::empty()).unwrap();
        async move {
            let (status, headers, body) = h.send(req).await;
            (status, headers, String::from_utf8(body).unwrap())
        }
    };
    let (status, headers, _) = scrape(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let (status, _, _) = scrape(Some(&invoker)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, first) = scrape(Some(&reader)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(
        first.contains("sluice_queue_depth{state=\"scheduled\"} 0"),
        "{first}"
    );
    assert!(first.contains("sluice_gauges_age_seconds"), "{first}");

    // A job queued now is not counted until the next reading, an hour away: scrapes do not
    // count rows themselves.
    h.upload(&admin, "noop", component("noop")).await;
    let (status, v) = h
        .submit(
            &admin,
            "noop",
            json!({"input": {}, "run_at": "2100-01-01T00:00:00Z"}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(h.node.store.queue_stats().await.unwrap().scheduled, 1);
    let (_, _, second) = scrape(Some(&admin)).await;
    assert!(
        second.contains("sluice_queue_depth{state=\"scheduled\"} 0"),
        "{second}"
    );
    // Probes read the same gauges, with no key.
    let (status, _, _) = h
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);

    // A fresh router reads afresh.
    let again = app(h.node.clone());
    let res = again
        .oneshot(
            Request::get("/metrics")
                .header("authorization", format!("Bearer {reader}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("sluice_queue_depth{state=\"scheduled\"} 1"),
        "{text}"
    );

    // Dev mode on loopback: open, as the rest of the API.
    let h = harness_with(|c| c.server.dev = true).await;
    let (status, _, body) = h
        .send(dev_req("GET", "/metrics", Some("127.0.0.1:8080"), None))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("sluice_dlq_depth"));
}

#[tokio::test]
async fn a_tenant_past_its_waiting_jobs_quota_gets_429_and_others_do_not() {
    let h = harness_with(|c| c.server.limits.max_waiting_jobs_per_tenant = 2).await;
    let acme = h.key("acme", &["admin"]).await;
    let other = h.key("other", &["admin"]).await;
    for key in [&acme, &other] {
        let (status, v) = h.upload(key, "noop", component("noop")).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    // Far in the future: nothing runs them (no worker here anyway).
    let body = json!({"input": {}, "run_at": "2100-01-01T00:00:00Z"});
    for _ in 0..2 {
        let (status, v) = h.submit(&acme, "noop", body.clone(), None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    }
    let (status, v) = h.submit(&acme, "noop", body.clone(), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(
        v["type"].as_str().unwrap().rsplit('/').next(),
        Some("quota-exceeded")
    );
    assert_eq!(v["limit"], 2);
    let (status, v) = h.submit(&other, "noop", body, None).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "another tenant is not affected: {v}"
    );
}

#[tokio::test]
async fn redrive_is_bounded_and_says_fresh() {
    let h = harness_with(|c| c.server.limits.max_attempts = 10).await;
    let key = h.key("acme", &["admin"]).await;
    let redrive = |body: &str| {
        h.json(
            Request::post("/v1/dlq/redrive")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
    };
    let (status, v) = redrive(r#"{"max_attempts": 11}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["field"], "max_attempts");
    let (status, v) = redrive(r#"{"max_attempts": 0}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    for body in [r#"{"fresh": true}"#, r#"{"clear_journal": true}"#, "{}"] {
        let (status, v) = redrive(body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {v}");
        assert_eq!(v["count"], 0);
    }
}
