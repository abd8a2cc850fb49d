//! Traces of real jobs: the OpenTelemetry pipeline wired as in production (the `tracing`
//! layer, the batch span processor, the sampler and resource from the resolved config) with
//! the SDK's in-memory exporter in place of OTLP. A job submitted with a W3C `traceparent`
//! runs on a worker; the exported spans must form submitter → job → attempt → handler →
//! model call → provider attempt, with the GenAI attributes on the model calls.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{BatchSpanProcessor, InMemorySpanExporter, SpanData};
use sluice::api::{app, auth};
use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice::telemetry::{self, TelemetryConfig};
use sluice_store::{JobStatus, NewApiKey, PluginSettings};
use tower::ServiceExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The trace of the second job (state, effects, a retry and a journal replay).
const TRACE2: &str = "5c0a1b2c3d4e5f60718293a4b5c6d7e8";
const PARENT: &str = "00f067aa0ba902b7";

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_one_trace_from_its_submitter_to_its_provider_attempts() {
    // Production wiring, with an in-memory exporter behind the batch processor.
    let config = TelemetryConfig {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..TelemetryConfig::default()
    };
    let resolved = config.resolve(|_| None).unwrap().unwrap();
    let exporter = InMemorySpanExporter::default();
    let provider = telemetry::provider_with(
        BatchSpanProcessor::builder(exporter.clone()).build(),
        &resolved,
    )
    .unwrap();
    tracing_subscriber::registry()
        .with(
            telemetry::layer(&provider)
                .with_filter(tracing_subscriber::EnvFilter::new(&config.filter)),
        )
        .init();
    assert!(telemetry::enabled());

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    cfg.database.data_dir = dir.path().to_path_buf();
    cfg.engine.max_instances = 16;
    cfg.engine.pooling = false;
    cfg.worker.poll_ms = 50;
    cfg.webhooks.allow_private = true;
    // Two requests a second at provider `sim`, one at a time: the summary's batch of three
    // calls waits for Sluice's own rate limiter.
    let sim = cfg.gateway.providers.get_mut("sim").unwrap();
    sim.rpm = Some(120);
    sim.burst_secs = 1.0;
    let node = Node::start(cfg).await.unwrap();
    for plugin in ["summarize", "state-effects"] {
        let bytes = plugins::component(plugin);
        node.plugins.load(bytes.clone()).await.unwrap();
        let digest = node.store.put_component(&bytes).await.unwrap();
        node.store
            .create_plugin_version("acme", plugin, &digest, &PluginSettings::default(), true)
            .await
            .unwrap();
    }
    let secret = auth::generate_secret();
    node.store
        .create_api_key(&NewApiKey {
            tenant: "acme".into(),
            name: "t".into(),
            scopes: vec!["invoke".into(), "read".into()],
            secret_hash: auth::hash_secret(&secret),
        })
        .await
        .unwrap();
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();
    // A webhook receiver that reports each delivery's `traceparent`.
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let tx = hook_tx.clone();
            async move {
                let tp = headers
                    .get("traceparent")
                    .map(|v| v.to_str().unwrap().to_string());
                let _ = tx.send(tp);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let req = Request::post("/v1/plugins/summarize/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(Body::from(
            serde_json::json!({
                // Three chunks: three `fast` calls in one batch, then one `smart` call.
                "input": {"text": "Sluice runs AI jobs and traces them end to end. ".repeat(12), "chunk_chars": 200},
                "tags": {"feature": "digest"},
                "webhook": {"url": hook_url},
            })
            .to_string(),
        ))
        .unwrap();
    let res = app(node.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let id: uuid::Uuid = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The second job fails its first attempt on purpose after state, an effect and a model
    // call; the retry replays the call from the journal and the effect from its record.
    let req = Request::post("/v1/plugins/state-effects/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("traceparent", format!("00-{TRACE2}-{PARENT}-01"))
        .body(Body::from(
            serde_json::json!({
                "input": {"prefix": "traced/", "fail_attempts": 1, "chat_model": "fast"},
                "max_attempts": 3,
            })
            .to_string(),
        ))
        .unwrap();
    let res = app(node.clone()).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let id2: uuid::Uuid = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for job_id in [id, id2] {
        let mut done = false;
        for _ in 0..400 {
            let job = node.store.get_job(job_id).await.unwrap().unwrap();
            if job.status == JobStatus::Completed {
                done = true;
                break;
            }
            assert!(job.status != JobStatus::Dead, "{:?}", job.error);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done, "job {job_id} did not finish");
    }
    let delivered = tokio::time::timeout(Duration::from_secs(30), hook_rx.recv())
        .await
        .expect("no webhook within 30 s")
        .unwrap();
    worker.shutdown(Duration::from_secs(5)).await;
    // The stored context is the job span's, in the submitter's trace.
    let stored = node.store.job_trace(id).await.unwrap().unwrap();
    assert!(stored.starts_with(&format!("00-{TRACE}-")), "{stored}");

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let ours: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == TRACE)
        .collect();
    let by_id: HashMap<String, &SpanData> = ours
        .iter()
        .map(|s| (s.span_context.span_id().to_string(), *s))
        .collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_ref()).collect();
    let one = |name: &str| -> &SpanData {
        let found: Vec<&&SpanData> = ours.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one span {name:?} in {names:?}");
        found[0]
    };
    let job = one("job summarize");
    assert_eq!(
        job.parent_span_id.to_string(),
        PARENT,
        "the job span is the submitter's child"
    );
    assert_eq!(
        attr(job, "sluice.job.id"),
        Some(Value::from(id.to_string()))
    );
    assert_eq!(
        stored,
        format!("00-{TRACE}-{}-01", job.span_context.span_id())
    );
    assert_eq!(
        delivered.as_deref(),
        Some(stored.as_str()),
        "the webhook carries the job's context"
    );
    let attempt = one("job.attempt summarize");
    assert_eq!(
        attempt.parent_span_id,
        job.span_context.span_id(),
        "attempt parent; spans: {:?}",
        ours.iter()
            .map(|s| (
                s.name.as_ref(),
                s.span_context.span_id().to_string(),
                s.parent_span_id.to_string()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        attr(attempt, "sluice.outcome"),
        Some(Value::from("completed"))
    );
    // Unsigned fields are exported as their decimal text by tracing-opentelemetry.
    let num = |v: Option<Value>| v.and_then(|v| v.as_str().parse::<i64>().ok());
    assert_eq!(num(attr(attempt, "sluice.attempt")), Some(1));
    let run = one("handler.run");
    assert_eq!(run.parent_span_id, attempt.span_context.span_id());
    // The handler's log line is an event of its run.
    let log = run
        .events
        .iter()
        .find(|e| e.name == "log")
        .unwrap_or_else(|| panic!("a log event on handler.run: {:?}", run.events));
    assert!(
        log.attributes
            .iter()
            .any(|kv| kv.key.as_str() == "sluice.log.message"
                && kv.value.as_str() == "summarizing in chunks"),
        "{:?}",
        log.attributes
    );

    // Model calls: under the handler run (directly or through host-call spans), with the
    // GenAI attributes; each has its provider attempts under it.
    let under = |s: &SpanData, ancestor: &SpanData| {
        let mut p = s.parent_span_id;
        while let Some(parent) = by_id.get(&p.to_string()) {
            if parent.span_context.span_id() == ancestor.span_context.span_id() {
                return true;
            }
            p = parent.parent_span_id;
        }
        false
    };
    let calls: Vec<&&SpanData> = ours
        .iter()
        .filter(|s| attr(s, "gen_ai.operation.name") == Some(Value::from("chat")))
        .collect();
    assert!(calls.len() >= 3, "map calls and a reduce call: {names:?}");
    for call in &calls {
        assert!(under(call, run), "{} is under handler.run", call.name);
        assert!(call.name.starts_with("chat "), "{}", call.name);
        for key in [
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "gen_ai.response.model",
            "gen_ai.request.max_tokens",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.response.finish_reasons",
            "sluice.cost_micros",
            "sluice.tenant",
            "sluice.plugin",
            "sluice.tags",
        ] {
            assert!(
                attr(call, key).is_some(),
                "{key} on {}: {:?}",
                call.name,
                call.attributes
            );
        }
        assert_eq!(attr(call, "sluice.plugin"), Some(Value::from("summarize")));
        assert!(num(attr(call, "gen_ai.usage.output_tokens")).unwrap() > 0);
        assert_eq!(
            call.span_kind,
            opentelemetry::trace::SpanKind::Client,
            "{}",
            call.name
        );
        let attempts = ours
            .iter()
            .filter(|s| {
                s.name == "gen_ai.attempt" && s.parent_span_id == call.span_context.span_id()
            })
            .count();
        assert!(attempts >= 1, "provider attempts under {}", call.name);
        assert_eq!(attr(call, "sluice.source"), Some(Value::from("provider")));
        assert_eq!(
            attr(call, "sluice.journal_replay"),
            Some(Value::from(false))
        );
    }
    // The batch waited for the rate limiter: an event of its call's span, the wait as an
    // attribute of the call and of the provider attempt that followed it.
    let waited: Vec<&&SpanData> = calls
        .iter()
        .filter(|c| c.events.iter().any(|e| e.name == "rate_limit.wait"))
        .copied()
        .collect();
    assert!(
        !waited.is_empty(),
        "a rate-limit wait among {:?}",
        calls.iter().map(|c| &c.events).collect::<Vec<_>>()
    );
    let mut longest = 0;
    for call in &waited {
        let waits: Vec<_> = call
            .events
            .iter()
            .filter(|e| e.name == "rate_limit.wait")
            .collect();
        let field = |e: &opentelemetry::trace::Event, key: &str| {
            e.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.clone())
        };
        let mut total = 0;
        for w in &waits {
            assert_eq!(
                field(w, "sluice.reason"),
                Some(Value::from("limiter")),
                "{:?}",
                w.attributes
            );
            total += num(field(w, "sluice.wait_ms")).unwrap();
        }
        // The call's attribute is the sum of its waits (whole milliseconds each).
        assert_eq!(num(attr(call, "sluice.rate_limit_wait_ms")), Some(total));
        longest = longest.max(total);
        let attempts: i64 = ours
            .iter()
            .filter(|s| {
                s.name == "gen_ai.attempt" && s.parent_span_id == call.span_context.span_id()
            })
            .map(|a| num(attr(a, "sluice.rate_limit_wait_ms")).unwrap())
            .sum();
        assert_eq!(attempts, total, "each attempt carries the wait before it");
    }
    // Two calls a second: the batch's third call waited a good part of a second.
    assert!(longest > 0, "no wait of a millisecond or more");
    assert!(
        num(attr(run, "sluice.memory.peak_bytes")).unwrap() > 0,
        "the run's peak memory: {:?}",
        run.attributes
    );

    // The second job: two attempts in one trace, each with its host calls.
    let second: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == TRACE2)
        .collect();
    let names2: Vec<&str> = second.iter().map(|s| s.name.as_ref()).collect();
    let by_id2: HashMap<String, &SpanData> = second
        .iter()
        .map(|s| (s.span_context.span_id().to_string(), *s))
        .collect();
    let run_of = |s: &SpanData| -> Option<u32> {
        // The attempt number of the `job.attempt` above `s`.
        let mut p = s.parent_span_id;
        while let Some(parent) = by_id2.get(&p.to_string()) {
            if parent.name.starts_with("job.attempt") {
                return num(attr(parent, "sluice.attempt")).map(|n| n as u32);
            }
            p = parent.parent_span_id;
        }
        None
    };
    let named = |name: &str, attempt: u32| -> Vec<&SpanData> {
        second
            .iter()
            .copied()
            .filter(|s| s.name == name && run_of(s) == Some(attempt))
            .collect()
    };
    let attempts2: Vec<&SpanData> = second
        .iter()
        .copied()
        .filter(|s| s.name == "job.attempt state-effects")
        .collect();
    assert_eq!(attempts2.len(), 2, "{names2:?}");
    for attempt in [1, 2] {
        let runs = named("handler.run", attempt);
        assert_eq!(runs.len(), 1, "attempt {attempt}: {names2:?}");
        let run = runs[0];
        // State calls are spans of the run, with the key and how they ended.
        let gets = named("state.get", attempt);
        assert!(gets.len() >= 2, "attempt {attempt}: {names2:?}");
        for g in &gets {
            assert_eq!(g.parent_span_id, run.span_context.span_id());
        }
        let value_key = Value::from("traced/value");
        let first_get = gets
            .iter()
            .filter(|g| attr(g, "sluice.state.key") == Some(value_key.clone()))
            .min_by_key(|g| g.start_time)
            .unwrap();
        // Before this attempt wrote it: absent on the first, there on the retry.
        let expect = if attempt == 1 { "miss" } else { "hit" };
        assert_eq!(attr(first_get, "sluice.outcome"), Some(Value::from(expect)));
        for op in [
            "state.set",
            "state.compare_and_swap",
            "state.list_keys",
            "state.delete",
        ] {
            let found = named(op, attempt);
            assert!(!found.is_empty(), "{op} in attempt {attempt}: {names2:?}");
            assert!(found.iter().all(|s| attr(s, "sluice.outcome").is_some()));
        }
        // The effect runs on the first attempt and is replayed from its record on the retry.
        let begins = named("effect.begin", attempt);
        assert_eq!(begins.len(), 1, "attempt {attempt}: {names2:?}");
        assert_eq!(
            attr(begins[0], "sluice.effect.key"),
            Some(Value::from("state-effects-once"))
        );
        let (status, commits) = if attempt == 1 {
            ("pending", 1)
        } else {
            ("committed", 0)
        };
        assert_eq!(attr(begins[0], "sluice.outcome"), Some(Value::from(status)));
        assert_eq!(named("effect.commit", attempt).len(), commits);
        // Progress reports are events of the run.
        assert!(
            run.events.iter().any(|e| e.name == "progress"
                && e.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "sluice.progress.message"
                        && kv.value.as_str() == "effect")),
            "{:?}",
            run.events
        );
        // The model call: from the provider, then replayed from the journal.
        let chats = named("chat fast", attempt);
        assert_eq!(chats.len(), 1, "attempt {attempt}: {names2:?}");
        let chat = chats[0];
        let provider_attempts = second
            .iter()
            .filter(|s| {
                s.name == "gen_ai.attempt" && s.parent_span_id == chat.span_context.span_id()
            })
            .count();
        if attempt == 1 {
            assert_eq!(attr(chat, "sluice.source"), Some(Value::from("provider")));
            assert!(provider_attempts >= 1);
        } else {
            assert_eq!(attr(chat, "sluice.source"), Some(Value::from("journal")));
            assert_eq!(attr(chat, "sluice.journal_replay"), Some(Value::from(true)));
            assert!(chat.events.iter().any(|e| e.name == "journal.replay"));
            assert_eq!(provider_attempts, 0, "a replay calls no provider");
            assert_eq!(num(attr(chat, "sluice.cost_micros")), Some(0));
            assert!(num(attr(chat, "gen_ai.usage.output_tokens")).unwrap() > 0);
            assert_eq!(
                attr(chat, "gen_ai.operation.name"),
                Some(Value::from("chat"))
            );
        }
    }
    let failed = attempts2
        .iter()
        .find(|a| num(attr(a, "sluice.attempt")) == Some(1))
        .unwrap();
    assert_eq!(attr(failed, "sluice.outcome"), Some(Value::from("failed")));
    assert_eq!(
        attr(failed, "sluice.error.kind"),
        Some(Value::from("retryable"))
    );
}
