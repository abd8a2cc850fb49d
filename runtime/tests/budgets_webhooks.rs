//! Tenants' budgets and the webhook outbox through the HTTP API, with a worker, the webhook
//! dispatcher and a real receiver on loopback that verifies every signature.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};
use sluice::api::{app, auth};
use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice_store::NewApiKey;
use tokio::sync::mpsc;
use tower::ServiceExt;

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;
use plugins::component;

struct Harness {
    app: Router,
    node: Node,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
        config.database.data_dir = dir.path().to_path_buf();
        config.engine.max_instances = 16;
        config.engine.pooling = false;
        // The receiver is on loopback, as a developer's would be.
        config.webhooks.allow_private = true;
        config.webhooks.max_attempts = 3;
        let node = Node::start(config).await.unwrap();
        Harness {
            app: app(node.clone()),
            node,
            _dir: dir,
        }
    }

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

    async fn call(
        &self,
        method: &str,
        uri: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let ct = res.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        if !status.is_success() {
            assert_eq!(
                ct.as_ref().map(|c| c.to_str().unwrap()),
                Some("application/problem+json"),
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, v)
    }

    async fn upload(&self, key: &str, name: &str) {
        let res = self
            .app
            .clone()
            .oneshot(
                Request::put(format!("/v1/plugins/{name}"))
                    .header("authorization", format!("Bearer {key}"))
                    .header("content-type", "application/wasm")
                    .body(Body::from(component(name)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }

    /// Submit and wait for the job to finish.
    async fn run(&self, key: &str, plugin: &str, body: Value) -> Value {
        let (status, job) = self
            .call(
                "POST",
                &format!("/v1/plugins/{plugin}/jobs?wait=30s"),
                key,
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    fn tenant_secret(&self, tenant: &str) -> String {
        let node_secret = sluice::webhooks::node_secret(
            &self.node.config.webhooks,
            &self.node.config.database.data_dir,
        )
        .unwrap();
        sluice::webhooks::tenant_secret(&node_secret, tenant)
    }
}

/// What the receiver saw of one POST.
struct Hit {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on loopback answering with `status` (changeable while it runs).
async fn receiver() -> (String, Arc<AtomicU16>, mpsc::UnboundedReceiver<Hit>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            let answer = answer.clone();
            async move {
                // Decide the answer before the test hears of the hit, so a test that changes
                // the answer after a hit changes the next one, not this one.
                let status = StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap();
                let _ = tx.send(Hit {
                    headers,
                    body: body.to_vec(),
                });
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, status, rx)
}

async fn next_hit(rx: &mut mpsc::UnboundedReceiver<Hit>) -> Hit {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no webhook within 30 s")
        .unwrap()
}

fn verify(secret: &str, hit: &Hit) -> Value {
    let sig = hit.headers["sluice-signature"].to_str().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        sluice::webhooks::verify(secret, sig, &hit.body, now, 300),
        "bad signature {sig}"
    );
    serde_json::from_slice(&hit.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_refuse_calls_and_send_alerts() {
    let h = Harness::start().await;
    let worker = h.node.start_roles(Roles::WORKER, None).await.unwrap();
    let (url, _, mut hits) = receiver().await;
    let admin = h.key("acme", &["admin"]).await;
    let reader = h.key("acme", &["read", "invoke"]).await;
    let other = h.key("globex", &["admin"]).await;
    h.upload(&admin, "summarize").await;

    // Bad rules are refused with the reason, and nothing is stored.
    let (status, v) = h
        .call(
            "PUT",
            "/v1/budgets/per-user",
            &admin,
            Some(json!({"scope": "tag", "period": "day", "limit_usd": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("tag"), "{v}");
    let (status, _) = h
        .call(
            "PUT",
            "/v1/budgets/x",
            &admin,
            Some(json!({"scope": "tenant", "period": "week", "limit_usd": 1})),
        )
        .await;
    assert!(status.is_client_error());
    let (status, _) = h
        .call(
            "PUT",
            "/v1/budgets/x",
            &reader,
            Some(json!({"scope": "tenant", "period": "day", "limit_usd": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = h.call("GET", "/v1/budgets", &admin, None).await;
    assert_eq!(list["budgets"], json!([]));

    // A roomy budget whose first alert fires at the first spend.
    let (status, v) = h
        .call(
            "PUT",
            "/v1/budgets/roomy",
            &admin,
            Some(
                json!({"scope": "tenant", "period": "month", "limit_usd": 100,
                        "alerts": [0.000001], "webhook": {"url": url}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let job = h
        .run(
            &reader,
            "summarize",
            json!({"input": {"text": "Budgets keep bills small."}}),
        )
        .await;
    assert_eq!(job["status"], "completed", "{job}");

    let alert = next_hit(&mut hits).await;
    assert_eq!(alert.headers["sluice-event"], "budget.alert");
    let body = verify(&h.tenant_secret("acme"), &alert);
    assert_eq!(body["budget"], "roomy");
    assert_eq!(body["kind"], "threshold");
    assert!(body["spent_micros"].as_u64().unwrap() > 0, "{body}");

    let (status, v) = h.call("GET", "/v1/budgets/roomy", &reader, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["windows"][0]["scope"], "tenant:acme", "{v}");
    assert!(v["windows"][0]["spent_usd"].as_f64().unwrap() > 0.0, "{v}");
    // Another tenant does not see it.
    let (status, _) = h.call("GET", "/v1/budgets/roomy", &other, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = h.call("GET", "/v1/budgets", &other, None).await;
    assert_eq!(theirs["budgets"], json!([]));

    // A budget with no room: the call is refused before any provider sees it, the handler
    // fails the job, and the refusal is alerted once.
    let (status, _) = h
        .call(
            "PUT",
            "/v1/budgets/tight",
            &admin,
            Some(json!({"scope": "tenant", "period": "day", "limit_usd": 0, "webhook": {"url": url}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let job = h
        .run(
            &reader,
            "summarize",
            json!({"input": {"text": "This one is over budget."}}),
        )
        .await;
    assert_eq!(job["status"], "dead", "{job}");
    assert!(job.to_string().contains("budget"), "{job}");
    let refused = next_hit(&mut hits).await;
    let body = verify(&h.tenant_secret("acme"), &refused);
    assert_eq!(
        (body["budget"].as_str(), body["kind"].as_str()),
        (Some("tight"), Some("refused"))
    );

    // The other tenant's jobs are not limited by acme's budgets.
    h.upload(&other, "summarize").await;
    let job = h
        .run(
            &other,
            "summarize",
            json!({"input": {"text": "Someone else's money."}}),
        )
        .await;
    assert_eq!(job["status"], "completed", "{job}");

    // Deleted: enforced no more.
    let (status, _) = h.call("DELETE", "/v1/budgets/tight", &admin, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = h.call("DELETE", "/v1/budgets/tight", &admin, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let job = h
        .run(
            &reader,
            "summarize",
            json!({"input": {"text": "Room again."}}),
        )
        .await;
    assert_eq!(job["status"], "completed", "{job}");

    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_webhooks_are_kept_and_can_be_retried() {
    let h = Harness::start().await;
    let worker = h.node.start_roles(Roles::WORKER, None).await.unwrap();
    let (url, answer, mut hits) = receiver().await;
    let key = h.key("acme", &["admin"]).await;
    let other = h.key("globex", &["admin"]).await;
    h.upload(&key, "noop").await;

    // The receiver is gone for good (410): not retried, dead-lettered.
    answer.store(410, Ordering::SeqCst);
    let job = h
        .run(
            &key,
            "noop",
            json!({"input": {"n": 1}, "webhook": {"url": url}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let first = next_hit(&mut hits).await;
    let secret = h.tenant_secret("acme");
    let body = verify(&secret, &first);
    assert_eq!(body["id"], id.as_str());
    assert_eq!(first.headers["sluice-event"], "job.completed");

    let dead = poll(|| async {
        let (_, v) = h
            .call("GET", "/v1/webhooks/deliveries?status=dead", &key, None)
            .await;
        v["deliveries"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(dead["job_id"], id.as_str());
    assert_eq!(dead["attempts"], 1);
    assert!(
        dead["last_error"].as_str().unwrap().contains("410"),
        "{dead}"
    );
    let delivery = dead["id"].as_i64().unwrap();

    // The dead letter shows in the job's own event stream too.
    let events = h
        .app
        .clone()
        .oneshot(
            Request::get(format!("/v1/jobs/{id}/events"))
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = axum::body::to_bytes(events.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&text).contains("webhook_dead"));

    // Not visible to, nor retryable by, another tenant.
    let uri = format!("/v1/webhooks/deliveries/{delivery}");
    assert_eq!(
        h.call("GET", &uri, &other, None).await.0,
        StatusCode::NOT_FOUND
    );
    let retry = format!("{uri}/retry");
    assert_eq!(
        h.call("POST", &retry, &other, None).await.0,
        StatusCode::NOT_FOUND
    );

    // The receiver is back: a retry delivers the same delivery id, signed anew.
    answer.store(200, Ordering::SeqCst);
    let (status, v) = h.call("POST", &retry, &key, None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let second = next_hit(&mut hits).await;
    verify(&secret, &second);
    assert_eq!(
        first.headers["sluice-delivery"],
        second.headers["sluice-delivery"]
    );
    let delivered = poll(|| async {
        let (_, v) = h.call("GET", &uri, &key, None).await;
        (v["status"] == "delivered").then_some(v)
    })
    .await;
    assert_eq!(delivered["attempts"], 2);
    // Only dead deliveries can be retried.
    assert_eq!(
        h.call("POST", &retry, &key, None).await.0,
        StatusCode::CONFLICT
    );

    // A flaky receiver (503, then 200) is retried with backoff until it takes the delivery.
    answer.store(503, Ordering::SeqCst);
    h.run(
        &key,
        "noop",
        json!({"input": {"n": 2}, "webhook": {"url": url}}),
    )
    .await;
    let failed = next_hit(&mut hits).await;
    answer.store(200, Ordering::SeqCst);
    let retried = next_hit(&mut hits).await;
    assert_eq!(
        failed.headers["sluice-delivery"],
        retried.headers["sluice-delivery"]
    );
    verify(&secret, &retried);

    worker.shutdown(Duration::from_secs(5)).await;
}

/// Poll `f` until it yields, for up to 30 s.
async fn poll<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
