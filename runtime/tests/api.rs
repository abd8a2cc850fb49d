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
    let worker = sluice::worker::spawn(h.node.clone());

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
    let worker = sluice::worker::spawn(h.node.clone());
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
    let worker = sluice::worker::spawn(h.node.clone());
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
