//! End to end, as a user runs Sluice: the real `sluice` binary (`sluice up` as a child
//! process, `sluice keys` for keys and webhook secrets), a real Postgres, components built from
//! `plugins/`, and the built-in simulated providers (no provider keys are configured), driven
//! over real HTTP.
//!
//! Needs PostgreSQL at 127.0.0.1:5432 with trust auth for `postgres` (or `SLUICE_TEST_PG_URL`):
//! each test creates a database of its own and drops it when it ends, even when it fails. A
//! missing Postgres fails these tests; it does not skip them.
//!
//! The servers run as in production: not in dev mode, so every request needs an API key, and
//! the webhook test's receiver on loopback is allowed with `webhooks.allow_private = true`
//! (`SLUICE_WEBHOOKS__ALLOW_PRIVATE=true`), the setting a user with a receiver on a private
//! network would use.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

mod e2e_support;

use std::time::Instant;

use e2e_support::{DEADLINE, Site, SseEvent};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

/// Build the plugins workspace (once per process) and read a component, off the runtime.
async fn component(name: &'static str) -> Vec<u8> {
    tokio::task::spawn_blocking(move || plugins::component(name))
        .await
        .unwrap()
}

/// What a webhook receiver does with `Sluice-Signature: t=…,v1=…`: recompute
/// `HMAC-SHA256(secret, "<t>.<body>")`, compare in constant time, and refuse stale
/// timestamps.
fn signature_valid(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

fn statuses(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.data["status"].as_str().unwrap().to_string())
        .collect()
}

/// Persisted events carry strictly increasing ids; live-only ones (statuses, the result)
/// carry none.
fn assert_ids_increase(events: &[SseEvent]) {
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "event ids out of order or repeated: {ids:?}"
    );
}

/// The stream ends with exactly one `result` event.
fn assert_ends_with_result<'a>(events: &'a [SseEvent], status: &str) -> &'a Value {
    let last = events.last().expect("no events");
    assert_eq!(last.event, "result", "{events:#?}");
    assert_eq!(last.data["status"], status, "{events:#?}");
    assert_eq!(events.iter().filter(|e| e.event == "result").count(), 1);
    &last.data
}

/// Upload a component, submit a job, follow its events to the end, read the job; resume its
/// events; an outcome webhook, verified like a receiver would; idempotent submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_end_to_end_over_http() {
    let site = Site::new(&[("SLUICE_WEBHOOKS__ALLOW_PRIVATE", "true")]).await;
    let secret = site.create_key("acme", "deploy,invoke,read").await;
    // Fetched before the server starts, as a receiver's operator would; the node secret it
    // is derived from is created once in the data directory and shared with the server.
    let hook_secret = site.webhook_secret("acme").await;
    let server = site.up("127.0.0.1:0").await;
    let key = Some(secret.as_str());

    // Upload: validated, stored by digest, active.
    let chat = component("chat").await;
    let up = server.upload(key, "chat", chat.clone()).await;
    let plugin = up.ok(201);
    assert_eq!(plugin["version"], 1);
    assert!(plugin["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(plugin["size"], chat.len());
    let again = server.upload(key, "chat", chat).await;
    assert_eq!(again.ok(200)["existing"], true, "same bytes: same version");
    assert_eq!(again.body["version"], 1);

    // Submit for a moment from now, so the stream below sees the job from `scheduled` on.
    let run_at = (chrono::Utc::now() + chrono::Duration::seconds(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let submitted = server
        .submit(
            key,
            "chat",
            &json!({
                "input": {"conversation_id": "e2e-1", "message": "What does a sluice do?"},
                "tags": {"user": "ann", "feature": "support"},
                "run_at": run_at,
            }),
        )
        .await;
    let body = submitted.ok(202);
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(body["status"], "scheduled");
    assert_eq!(
        submitted.headers["location"].to_str().unwrap(),
        format!("/v1/jobs/{id}")
    );

    let events = server.events(&secret, &id, None).await;
    let seen = statuses(&events);
    assert_eq!(
        seen.first().map(String::as_str),
        Some("scheduled"),
        "{events:#?}"
    );
    assert!(seen.contains(&"running".to_string()), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("completed"),
        "{seen:?}"
    );
    let first_token = events.iter().position(|e| e.event == "token_delta");
    let running = events
        .iter()
        .position(|e| e.event == "status" && e.data["status"] == "running");
    assert!(
        first_token.is_some() && running < first_token,
        "the reply's tokens stream after the job starts running: {events:#?}"
    );
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "token_delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    let calls: Vec<&SseEvent> = events.iter().filter(|e| e.event == "model_call").collect();
    assert_eq!(calls.len(), 1, "{events:#?}");
    assert_eq!(calls[0].data["outcome"], "provider");
    assert!(calls[0].data["cost_micros"].as_u64().unwrap() > 0);
    assert!(
        events
            .iter()
            .any(|e| e.event == "log" && e.data["message"] == "new conversation"),
        "{events:#?}"
    );
    assert_ids_increase(&events);
    assert!(
        events
            .iter()
            .filter(|e| matches!(e.event.as_str(), "token_delta" | "model_call" | "log"))
            .all(|e| e.id.is_some()),
        "persisted events carry ids"
    );
    let result = assert_ends_with_result(&events, "completed");
    let reply = result["output"]["reply"].as_str().unwrap();
    assert!(!reply.is_empty());
    assert_eq!(streamed.trim(), reply, "the tokens streamed make the reply");

    // The job: output, usage and cost, attributed.
    let job = server.get(key, &format!("/v1/jobs/{id}")).await;
    let job = job.ok(200);
    assert_eq!(job["status"], "completed");
    assert_eq!(job["output"], result["output"]);
    assert_eq!(job["output"]["turns"], 1);
    assert_eq!(job["output"]["notified"], true);
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["tags"]["user"], "ann");
    assert!(job.get("tenant").is_none(), "{job}");
    let usage = &job["usage"];
    assert_eq!(usage["model_calls"], 1, "{job}");
    assert_eq!(usage["input_tokens"], calls[0].data["input_tokens"]);
    assert_eq!(usage["output_tokens"], calls[0].data["output_tokens"]);
    assert_eq!(usage["cost_micros"], calls[0].data["cost_micros"]);
    assert!(usage["cost_usd"].as_f64().unwrap() > 0.0);

    // Resume after an event in the middle: only what came after it.
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    let middle = ids[ids.len() / 2];
    let resumed = server.events(&secret, &id, Some(&middle.to_string())).await;
    let resumed_ids: Vec<u64> = resumed.iter().filter_map(|e| e.id).collect();
    let later: Vec<u64> = ids.iter().copied().filter(|i| *i > middle).collect();
    assert_eq!(
        resumed_ids, later,
        "exactly the persisted events after {middle}"
    );
    assert_eq!(statuses(&resumed), ["completed"]);
    assert_eq!(
        assert_ends_with_result(&resumed, "completed")["output"],
        job["output"]
    );
    // Resuming after the last event: nothing but the status and the result.
    let tail = server
        .events(&secret, &id, Some(&ids.last().unwrap().to_string()))
        .await;
    assert_eq!(
        tail.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["status", "result"]
    );
    // An id this stream never sent, and one that is not a number: the documented 400.
    for bad in ["999999", "abc"] {
        let res = server
            .send(
                server
                    .request(Method::GET, &format!("/v1/jobs/{id}/events"), key)
                    .header("last-event-id", bad),
            )
            .await;
        res.problem(400, "invalid-last-event-id");
    }

    // An outcome webhook, to a receiver on loopback.
    let mut receiver = e2e_support::Receiver::start().await;
    let hooked = server
        .submit(
            key,
            "chat",
            &json!({
                "input": {"conversation_id": "e2e-2", "message": "Ping"},
                "webhook": {"url": receiver.url},
            }),
        )
        .await;
    let hooked_id = hooked.ok(202)["id"].as_str().unwrap().to_string();
    let delivery = receiver.next().await;
    let signature = delivery.headers["sluice-signature"].to_str().unwrap();
    assert!(
        signature_valid(&hook_secret, signature, &delivery.body),
        "Sluice-Signature {signature} does not verify with the tenant secret"
    );
    let other_tenant = site.webhook_secret("someone-else").await;
    assert_ne!(other_tenant, hook_secret);
    assert!(!signature_valid(&other_tenant, signature, &delivery.body));
    let delivery_id = delivery.headers["sluice-delivery"].to_str().unwrap();
    uuid::Uuid::parse_str(delivery_id).expect("Sluice-Delivery is a UUID");
    assert_eq!(delivery.headers["sluice-event"], "job.completed");
    assert_eq!(delivery.headers["content-type"], "application/json");
    let outcome: Value = serde_json::from_slice(&delivery.body).unwrap();
    let finished = server.wait_finished(&secret, &hooked_id).await;
    assert_eq!(outcome["id"], hooked_id);
    assert_eq!(outcome["status"], "completed");
    assert_eq!(outcome["plugin"], "chat");
    assert_eq!(outcome["output"], finished["output"]);
    assert_eq!(outcome["digest"], plugin["digest"]);

    // Idempotent submission: same key and body, the same job; another body, 409.
    let body = json!({"input": {"conversation_id": "e2e-3", "message": "Once"}});
    let submit = |body: Value| {
        let req = server
            .request(Method::POST, "/v1/plugins/chat/jobs", key)
            .header("idempotency-key", "order-17")
            .json(&body);
        server.send(req)
    };
    let first = submit(body.clone()).await;
    let first_id = first.ok(202)["id"].clone();
    assert_eq!(first.body["existing"], false);
    let second = submit(body.clone()).await;
    assert_eq!(second.ok(200)["id"], first_id);
    assert_eq!(second.body["existing"], true);
    let conflict = submit(json!({"input": {"conversation_id": "e2e-3", "message": "Twice"}})).await;
    let problem = conflict.problem(409, "idempotency-conflict");
    assert_eq!(problem["idempotency_key"], "order-17");
    assert_eq!(problem["job_id"], first_id);
    let listed = server.get(key, "/v1/jobs?plugin=chat&limit=100").await;
    let with_key = listed.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["id"] == first_id)
        .count();
    assert_eq!(with_key, 1, "one job for the key");
}

/// Two tenants with keys made by `sluice keys create`: neither sees the other's jobs,
/// events, plugins or usage; a wrong key is 401 and a missing scope 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_keys_are_checked() {
    let site = Site::new(&[]).await;
    let a = site.create_key("tenant-a", "deploy,invoke,read").await;
    let a_read = site.create_key("tenant-a", "read").await;
    let b = site.create_key("tenant-b", "admin").await;
    let server = site.up("127.0.0.1:0").await;
    let (a, a_read, b) = (Some(a.as_str()), Some(a_read.as_str()), Some(b.as_str()));

    server
        .upload(a, "summarize", component("summarize").await)
        .await
        .ok(201);
    let done = server
        .send(
            server
                .request(Method::POST, "/v1/plugins/summarize/jobs?wait=60s", a)
                .json(&json!({
                    "input": {"text": "Sluice owns the queue. It also owns retries and budgets."},
                    "tags": {"user": "ann"},
                })),
        )
        .await;
    let job = done.ok(200);
    assert_eq!(job["status"], "completed", "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(job["usage"]["cost_micros"].as_u64().unwrap() > 0, "{job}");

    // Tenant A sees its own things.
    server.get(a, &format!("/v1/jobs/{id}")).await.ok(200);
    server.get(a_read, &format!("/v1/jobs/{id}")).await.ok(200);
    server.get(a, "/v1/plugins/summarize").await.ok(200);
    // Usage rows are written in batches after the calls: wait until the job's calls are in.
    let started = Instant::now();
    loop {
        let usage_a = server.get(a, "/v1/usage?group_by=plugin").await;
        let items = usage_a.ok(200)["items"].as_array().unwrap().clone();
        if items.len() == 1 && items[0]["calls"] == job["usage"]["model_calls"] {
            assert_eq!(items[0]["key"], "summarize");
            assert_eq!(items[0]["cost_micros"], job["usage"]["cost_micros"]);
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "usage never matched the job's {}: {items:?}",
            job["usage"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Tenant B, even with `admin`, does not.
    let not_found = [
        server.get(b, &format!("/v1/jobs/{id}")).await,
        server.get(b, &format!("/v1/jobs/{id}/events")).await,
        server.get(b, "/v1/plugins/summarize").await,
        server
            .submit(b, "summarize", &json!({"input": {"text": "x"}}))
            .await,
        server
            .send(server.request(Method::POST, &format!("/v1/jobs/{id}/cancel"), b))
            .await,
        server
            .send(server.request(Method::DELETE, "/v1/plugins/summarize", b))
            .await,
    ];
    for res in &not_found {
        res.problem(404, "not-found");
    }
    let jobs_b = server.get(b, "/v1/jobs").await;
    assert_eq!(jobs_b.ok(200)["items"], json!([]));
    let plugins_b = server.get(b, "/v1/plugins").await;
    assert_eq!(plugins_b.ok(200)["items"], json!([]));
    for group in ["plugin", "user", "model"] {
        let usage_b = server.get(b, &format!("/v1/usage?group_by={group}")).await;
        assert_eq!(usage_b.ok(200)["items"], json!([]), "group_by={group}");
    }
    // A's things are still there after B's attempts.
    server.get(a, "/v1/plugins/summarize").await.ok(200);
    let jobs_a = server.get(a, "/v1/jobs").await;
    assert_eq!(jobs_a.ok(200)["items"][0]["id"], id.as_str());

    // No key, a malformed header, an unknown key: 401 with a challenge.
    let unauthorized = [
        server.get(None, "/v1/jobs").await,
        server
            .send(
                server
                    .request(Method::GET, "/v1/jobs", None)
                    .header("authorization", "Token abc"),
            )
            .await,
        server.get(Some("sk_not-a-key"), "/v1/jobs").await,
    ];
    for res in &unauthorized {
        res.problem(401, "unauthorized");
        assert_eq!(res.headers["www-authenticate"], "Bearer realm=\"sluice\"");
    }
    // A read-only key cannot submit or deploy.
    let forbidden = server
        .submit(a_read, "summarize", &json!({"input": {"text": "x"}}))
        .await;
    assert_eq!(
        forbidden.problem(403, "forbidden")["required_scope"],
        "invoke"
    );
    let forbidden = server
        .upload(a_read, "other", component("noop").await)
        .await;
    assert_eq!(
        forbidden.problem(403, "forbidden")["required_scope"],
        "deploy"
    );
    let plugins_a = server.get(a, "/v1/plugins").await;
    assert_eq!(plugins_a.ok(200)["items"].as_array().unwrap().len(), 1);
}

/// Bad input of every kind is answered with problem JSON and the right status, and leaves
/// nothing half-written behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_json_and_changes_nothing() {
    let noop = component("noop").await;
    let wrong_world = component("not-a-plugin").await;
    // A small body limit that still takes the components this test uploads.
    let limit = noop.len().max(wrong_world.len()) + 16 * 1024;
    let site = Site::new(&[("SLUICE_SERVER__MAX_BODY_BYTES", &limit.to_string())]).await;
    let key = site.create_key("acme", "deploy,invoke,read").await;
    let server = site.up("127.0.0.1:0").await;
    let key = Some(key.as_str());
    server.upload(key, "noop", noop).await.ok(201);
    let plugins_before = server.get(key, "/v1/plugins").await.ok(200).clone();

    // Uploads: not wasm, a core module, a component of another world, too large.
    let garbage = server
        .upload(key, "broken", b"definitely not wasm".to_vec())
        .await;
    assert_eq!(
        garbage.problem(422, "invalid-component")["kind"],
        "not_wasm"
    );
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let core = server.upload(key, "broken", core_module).await;
    let problem = core.problem(422, "invalid-component");
    assert_eq!(problem["kind"], "core_module");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not a component"),
        "{problem}"
    );
    let world = server.upload(key, "broken", wrong_world).await;
    let problem = world.problem(422, "invalid-component");
    assert_eq!(problem["kind"], "wrong_world");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("sluice:plugin"),
        "{problem}"
    );
    let huge = server.upload(key, "broken", vec![0u8; limit + 1024]).await;
    huge.problem(413, "body-too-large");
    // A bad upload under an existing plugin's name leaves that plugin as it was.
    let replaced = server
        .upload(key, "noop", b"definitely not wasm".to_vec())
        .await;
    replaced.problem(422, "invalid-component");
    let bad_name = server.upload(key, "Not_A_Name!", vec![1]).await;
    bad_name.problem(400, "bad-request");
    assert_eq!(
        server.get(key, "/v1/plugins").await.ok(200),
        &plugins_before,
        "rejected uploads leave the plugin list as it was"
    );
    server
        .get(key, "/v1/plugins/broken")
        .await
        .problem(404, "not-found");

    // Submissions.
    let raw = |body: &'static str| {
        server.send(
            server
                .request(Method::POST, "/v1/plugins/noop/jobs", key)
                .header("content-type", "application/json")
                .body(body),
        )
    };
    raw("{\"input\": ").await.problem(400, "malformed-json");
    raw("{\"input\": {\"text\": \"never closed")
        .await
        .problem(400, "malformed-json");
    raw("not json at all").await.problem(400, "malformed-json");
    raw("{\"input\": {}, \"colour\": \"red\"}")
        .await
        .problem(422, "invalid-body");
    let no_type = server
        .send(
            server
                .request(Method::POST, "/v1/plugins/noop/jobs", key)
                .body("{}"),
        )
        .await;
    no_type.problem(415, "unsupported-media-type");
    let big_input = json!({"input": {"text": "x".repeat(limit + 1024)}});
    server
        .submit(key, "noop", &big_input)
        .await
        .problem(413, "body-too-large");
    let unknown = server
        .submit(key, "no-such-plugin", &json!({"input": {}}))
        .await;
    assert!(
        unknown.problem(404, "not-found")["detail"]
            .as_str()
            .unwrap()
            .contains("no-such-plugin")
    );
    let bad_time = server
        .submit(key, "noop", &json!({"input": {}, "run_at": "next tuesday"}))
        .await;
    assert_eq!(
        bad_time.problem(400, "invalid-run-at")["run_at"],
        "next tuesday"
    );
    server
        .submit(key, "noop", &json!({"input": {}, "max_attempts": 0}))
        .await
        .problem(400, "bad-request");
    let private_hook = server
        .submit(
            key,
            "noop",
            &json!({"input": {}, "webhook": {"url": "http://127.0.0.1:9/hook"}}),
        )
        .await;
    assert!(
        private_hook.problem(400, "bad-request")["detail"]
            .as_str()
            .unwrap()
            .contains("webhook url rejected"),
        "without webhooks.allow_private, loopback targets are refused"
    );
    let bad_wait = server
        .send(
            server
                .request(Method::POST, "/v1/plugins/noop/jobs?wait=soon", key)
                .json(&json!({"input": {}})),
        )
        .await;
    bad_wait.problem(400, "bad-request");
    let bad_key = server
        .send(
            server
                .request(Method::POST, "/v1/plugins/noop/jobs", key)
                .header("idempotency-key", "k".repeat(1000))
                .json(&json!({"input": {}})),
        )
        .await;
    bad_key.problem(400, "bad-request");

    // Other routes.
    server
        .get(key, "/v1/jobs/not-a-uuid")
        .await
        .problem(404, "not-found");
    server
        .get(key, &format!("/v1/jobs/{}", uuid::Uuid::new_v4()))
        .await
        .problem(404, "not-found");
    server
        .get(key, "/v1/jobs?status=sleeping")
        .await
        .problem(400, "bad-request");
    server
        .get(key, "/v1/usage?group_by=colour")
        .await
        .problem(400, "bad-request");
    server
        .get(key, "/v1/nothing-here")
        .await
        .problem(404, "not-found");
    server
        .send(server.request(Method::DELETE, "/v1/jobs", key))
        .await
        .problem(405, "method-not-allowed");

    // None of that made a job.
    let jobs = server.get(key, "/v1/jobs").await;
    assert_eq!(
        jobs.ok(200)["items"],
        json!([]),
        "rejected submissions made jobs"
    );
    // And the server still works.
    let ok = server
        .send(
            server
                .request(Method::POST, "/v1/plugins/noop/jobs?wait=30s", key)
                .json(&json!({"input": {"still": "fine"}})),
        )
        .await;
    assert_eq!(ok.ok(200)["output"], json!({"still": "fine"}));
}

/// Beyond loopback a server without any API key would refuse every request: it does not
/// start, and says how to create a key. With a key it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_without_keys_refuses_to_start() {
    let site = Site::new(&[]).await;
    let (code, stderr) = site.up_refused(&["--listen", "0.0.0.0:0"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("sluice keys create"), "{stderr}");
    assert!(stderr.contains("0.0.0.0:0"), "{stderr}");
    // Dev mode does not open a public address either.
    let dev = ["--dev", "--listen", "0.0.0.0:0", "--plugins", "none"];
    let (code, stderr) = site.up_refused(&dev).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("sluice keys create"), "{stderr}");

    let key = site.create_key("default", "admin").await;
    let server = site.up("0.0.0.0:0").await;
    server
        .get(None, "/v1/plugins")
        .await
        .problem(401, "unauthorized");
    server.get(Some(&key), "/v1/plugins").await.ok(200);
}

/// Two servers on one database, as a small cluster runs: they see each other (and split the
/// provider limits between them), a job's webhook is delivered once by whichever node claims
/// it from the outbox, and a node stopped with SIGTERM leaves cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_database() {
    let site = Site::new(&[("SLUICE_WEBHOOKS__ALLOW_PRIVATE", "true")]).await;
    let key = site.create_key("acme", "admin").await;
    let key = Some(key.as_str());
    let a = site.up("127.0.0.1:0").await;
    let mut b = site.up("127.0.0.1:0").await;

    let deadline = Instant::now() + DEADLINE;
    let nodes = loop {
        let nodes = a.get(key, "/v1/nodes").await.ok(200).clone();
        if nodes["nodes"].as_array().map(Vec::len) == Some(2) {
            break nodes;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes never saw each other: {nodes}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["roles"], "api,worker", "{nodes}");
    }
    // A read-only key may not list nodes.
    let reader = site.create_key("acme", "read").await;
    a.get(Some(&reader), "/v1/nodes")
        .await
        .problem(403, "forbidden");

    // A webhook job submitted through one node: delivered once, whichever node claims it.
    let mut receiver = e2e_support::Receiver::start().await;
    b.upload(key, "noop", component("noop").await).await.ok(201);
    let job = a
        .send(
            a.request(Method::POST, "/v1/plugins/noop/jobs?wait=60s", key)
                .json(&json!({"input": {"n": 1}, "webhook": {"url": receiver.url}})),
        )
        .await;
    let id = job.ok(200)["id"].as_str().unwrap().to_string();
    let got = receiver.next().await;
    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["id"], id.as_str());
    let delivered = loop {
        let list = b.get(key, "/v1/webhooks/deliveries").await.ok(200).clone();
        let first = list["deliveries"][0].clone();
        if first["status"] == "delivered" {
            break first;
        }
        assert!(Instant::now() < deadline, "never marked delivered: {list}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(delivered["attempts"], 1, "one attempt in all: {delivered}");
    assert_eq!(
        got.headers["sluice-delivery"].to_str().unwrap(),
        delivered["delivery_id"].as_str().unwrap()
    );

    // SIGTERM: b finishes its work, leaves the node list, and exits 0.
    assert_eq!(b.terminate().await, Some(0));
    let nodes = a.get(key, "/v1/nodes").await.ok(200).clone();
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
}
