//! `/metrics` after real jobs: job histograms and counters, the GenAI metrics, and labels that
//! never carry a job id, a tenant or a plugin name. The recorder is global to the process, so
//! this binary holds one test and the values are exact.

#[path = "../crates/engine/tests/support/plugins.rs"]
mod plugins;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use sluice::api::app;
use sluice::config::Config;
use sluice::node::{Node, Roles};
use sluice_store::{JobStatus, NewJob, PluginSettings};
use tower::ServiceExt;

/// One sample line: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let mut map = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",") {
                    if pair.is_empty() {
                        continue;
                    }
                    let (k, v) = pair.split_once("=\"").unwrap();
                    map.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (n.to_string(), map)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

/// The sum of the samples of `name` whose labels include all of `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
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

async fn wait_terminal(node: &Node, id: uuid::Uuid) -> JobStatus {
    for _ in 0..600 {
        let job = node.store.get_job(id).await.unwrap().unwrap();
        if matches!(
            job.status,
            JobStatus::Completed | JobStatus::Dead | JobStatus::Cancelled
        ) {
            return job.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    config.database.data_dir = dir.path().to_path_buf();
    config.engine.max_instances = 16;
    config.engine.pooling = false;
    config.worker.poll_ms = 50;
    config.server.dev = true;
    config.server.gauges_refresh_secs = 1;
    // Only this plugin name may become a label; every other plugin is `other`.
    config.metrics.plugin_labels = vec!["summarize".into()];
    let started = chrono::Utc::now();
    let node = Node::start(config).await.unwrap();
    let router = app(node.clone());
    deploy(&node, "summarize", "summarize", PluginSettings::default()).await;
    let dies = PluginSettings {
        max_attempts: Some(2),
        ..PluginSettings::default()
    };
    deploy(&node, "trap", "trap", dies).await;
    let kills = |s: PluginSettings| PluginSettings {
        max_attempts: Some(1),
        ..s
    };
    deploy(
        &node,
        "busy-loop",
        "busy-loop",
        kills(PluginSettings {
            timeout_ms: Some(300),
            ..PluginSettings::default()
        }),
    )
    .await;
    deploy(
        &node,
        "memory-bomb",
        "memory-bomb",
        kills(PluginSettings {
            memory_limit_bytes: Some(16 << 20),
            ..PluginSettings::default()
        }),
    )
    .await;
    deploy(
        &node,
        "state-effects",
        "state-effects",
        PluginSettings::default(),
    )
    .await;
    let worker = node.start_roles(Roles::WORKER, None).await.unwrap();

    let text = "Sluice runs AI jobs and measures them. ".repeat(12);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let input = serde_json::json!({ "text": text, "chunk_chars": 200 });
        ids.push(
            node.store
                .enqueue(NewJob::new("acme", "summarize", input))
                .await
                .unwrap()
                .id,
        );
    }
    let dead = node
        .store
        .enqueue(NewJob::new("acme", "trap", serde_json::json!({})))
        .await
        .unwrap()
        .id;
    for id in &ids {
        assert_eq!(wait_terminal(&node, *id).await, JobStatus::Completed);
    }
    assert_eq!(wait_terminal(&node, dead).await, JobStatus::Dead);

    let (body, m) = scrape(&router, &node).await;

    // Attempts by outcome and error kind: two completed, two trapped (the dead job's).
    let attempts = |o, k| {
        value(
            &m,
            "sluice_job_attempts_total",
            &[("outcome", o), ("error_kind", k)],
        )
    };
    assert_eq!(attempts("completed", "none"), 2.0, "{body}");
    assert_eq!(attempts("failed", "trap"), 2.0);
    assert_eq!(
        value(&m, "sluice_job_attempt_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_job_queue_wait_seconds_count",
            &[("attempt", "first")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_job_queue_wait_seconds_count",
            &[("attempt", "retry")]
        ),
        1.0
    );
    // End to end and attempts per job, by terminal status.
    assert_eq!(
        value(
            &m,
            "sluice_job_duration_seconds_count",
            &[("status", "completed")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_job_duration_seconds_count",
            &[("status", "dead")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_job_attempts_bucket",
            &[("status", "dead"), ("le", "1")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_job_attempts_bucket",
            &[("status", "dead"), ("le", "2")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "sluice_job_attempts_sum", &[("status", "completed")]),
        2.0
    );
    assert_eq!(value(&m, "sluice_dlq_depth", &[]), 1.0);
    // Every attempt instantiated its component once.
    assert_eq!(
        value(&m, "sluice_engine_instantiate_seconds_count", &[]),
        4.0
    );

    // GenAI: each summarize job makes three map calls and one reduce call.
    let calls = value(
        &m,
        "sluice_model_calls_total",
        &[("source", "provider"), ("outcome", "ok")],
    );
    assert_eq!(calls, 8.0);
    let usage = |t| {
        value(
            &m,
            "gen_ai_client_token_usage_count",
            &[("gen_ai_token_type", t)],
        )
    };
    assert_eq!(usage("input"), calls);
    assert_eq!(usage("output"), calls);
    let input_tokens = value(
        &m,
        "gen_ai_client_token_usage_sum",
        &[("gen_ai_token_type", "input")],
    );
    assert_eq!(
        input_tokens,
        value(&m, "sluice_model_tokens_total", &[("kind", "input")]),
        "the histogram and the counter agree"
    );
    assert!(input_tokens > 0.0);
    assert_eq!(
        value(
            &m,
            "gen_ai_client_operation_duration_seconds_count",
            &[("gen_ai_operation_name", "chat"), ("error_type", "")]
        ),
        calls
    );
    let usd = value(&m, "sluice_model_cost_usd_sum", &[]);
    let micros = value(&m, "sluice_model_cost_micros_total", &[]);
    assert!(
        (usd - micros / 1e6).abs() < 1e-9,
        "{usd} USD vs {micros} µ$"
    );
    for (name, labels, _) in &m {
        if name.starts_with("gen_ai_") {
            assert!(
                labels.contains_key("gen_ai_provider_name"),
                "{name} {labels:?}"
            );
            assert!(
                labels.contains_key("gen_ai_request_model"),
                "{name} {labels:?}"
            );
        }
    }

    // The queue by plugin: only the allow-listed name is a label, the trap is `other`.
    let depth = |plugin, state| {
        value(
            &m,
            "sluice_plugin_queue_depth",
            &[("plugin", plugin), ("state", state)],
        )
    };
    assert_eq!(depth("other", "dead"), 1.0, "{body}");
    assert_eq!(depth("summarize", "dead"), 0.0);
    for state in ["scheduled", "queued", "retrying", "running"] {
        assert_eq!(depth("summarize", state), 0.0, "{state}");
        assert_eq!(depth("other", state), 0.0, "{state}");
    }
    // The dead job has been in the DLQ since it died, which was after this test started.
    let age = value(&m, "sluice_dlq_oldest_age_seconds", &[]);
    let bound = (chrono::Utc::now() - started).num_milliseconds() as f64 / 1000.0;
    assert!(age > 0.0 && age <= bound, "{age} s, test running {bound} s");
    // Peak linear memory of every attempt.
    assert_eq!(value(&m, "sluice_engine_memory_peak_bytes_count", &[]), 4.0);
    assert!(value(&m, "sluice_engine_memory_peak_bytes_sum", &[]) > 0.0);

    // Every metric scraped is documented.
    let docs = observability_doc();
    for (name, _, _) in &m {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            docs.contains(&format!("`{base}`")),
            "{base} is not in docs/observability.md"
        );
    }

    // Bounded labels: no job id, tenant or plugin name anywhere in a label, but the one
    // plugin name the operator allow-listed.
    bounded_labels(&m);

    // Then: a deadline kill, a memory-limit kill, and a job whose retry replays its model
    // call from the journal.
    let mut more = Vec::new();
    for (plugin, input) in [
        ("busy-loop", serde_json::json!({})),
        ("memory-bomb", serde_json::json!({})),
        (
            "state-effects",
            serde_json::json!({"fail_attempts": 1, "chat_model": "fast"}),
        ),
    ] {
        more.push(
            node.store
                .enqueue(NewJob::new("acme", plugin, input))
                .await
                .unwrap()
                .id,
        );
    }
    assert_eq!(wait_terminal(&node, more[0]).await, JobStatus::Dead);
    assert_eq!(wait_terminal(&node, more[1]).await, JobStatus::Dead);
    assert_eq!(wait_terminal(&node, more[2]).await, JobStatus::Completed);
    worker.shutdown(Duration::from_secs(5)).await;
    // The gauges are read in the background: wait for a reading that has the new dead jobs.
    let mut scraped = scrape(&router, &node).await;
    for _ in 0..100 {
        if value(&scraped.1, "sluice_dlq_depth", &[]) == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scraped = scrape(&router, &node).await;
    }
    let (body, m) = scraped;
    let kills = |reason| value(&m, "sluice_engine_kills_total", &[("reason", reason)]);
    assert_eq!(kills("deadline"), 1.0, "{body}");
    assert_eq!(kills("memory"), 1.0);
    assert_eq!(
        value(
            &m,
            "sluice_job_attempts_total",
            &[("outcome", "failed"), ("error_kind", "timeout")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_job_attempts_total",
            &[("outcome", "failed"), ("error_kind", "memory_limit")]
        ),
        1.0
    );
    // Two more attempts for state-effects and one each for the killed jobs.
    assert_eq!(value(&m, "sluice_engine_memory_peak_bytes_count", &[]), 8.0);
    // The memory bomb was stopped at its 16 MiB: its peak is within the limit.
    assert!(
        value(
            &m,
            "sluice_engine_memory_peak_bytes_bucket",
            &[("le", "16777216")]
        ) >= 1.0
    );
    // The retry answered its model call from the journal: counted as a replay, not a
    // provider call.
    assert_eq!(
        value(
            &m,
            "sluice_model_calls_total",
            &[("source", "journal"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sluice_model_calls_total",
            &[("source", "provider"), ("outcome", "ok")]
        ),
        9.0
    );
    assert_eq!(value(&m, "sluice_dlq_depth", &[]), 3.0);
    assert_eq!(depth_of(&m, "other", "dead"), 3.0);
    assert_eq!(depth_of(&m, "summarize", "dead"), 0.0);
    bounded_labels(&m);
    let docs = observability_doc();
    for (name, _, _) in &m {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            docs.contains(&format!("`{base}`")),
            "{base} is not in docs/observability.md"
        );
    }
}

fn depth_of(m: &[Sample], plugin: &str, state: &str) -> f64 {
    value(
        m,
        "sluice_plugin_queue_depth",
        &[("plugin", plugin), ("state", state)],
    )
}

async fn scrape(router: &axum::Router, node: &Node) -> (String, Vec<Sample>) {
    let res = router
        .clone()
        .oneshot(
            Request::get("/metrics")
                // Dev mode answers only requests that name its listen address.
                .header("host", node.config.server.listen.as_str())
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = axum::body::to_bytes(res.into_body(), 8 << 20)
        .await
        .unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let m = parse(&body);
    (body, m)
}

/// No job id, tenant or plugin name in any label value, but the allow-listed `summarize` as
/// the plugin of the per-plugin queue gauge.
fn bounded_labels(m: &[Sample]) {
    let chosen = [
        "acme",
        "summarize",
        "trap",
        "busy-loop",
        "memory-bomb",
        "state-effects",
    ];
    for (name, labels, _) in m {
        for (k, v) in labels {
            let allowed = name == "sluice_job_attempts_total" && v == "trap"
                || name == "sluice_plugin_queue_depth" && k == "plugin" && v == "summarize";
            assert!(
                allowed || !chosen.iter().any(|c| v.contains(c)),
                "{name} has a tenant-chosen label value {v:?}"
            );
            assert!(
                uuid::Uuid::parse_str(v).is_err(),
                "{name} has an id label {v:?}"
            );
        }
    }
}

fn observability_doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/observability.md"
    ))
    .unwrap()
}

/// The Grafana dashboard only queries documented metrics.
#[test]
fn the_dashboard_uses_documented_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let docs = observability_doc();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("sluice_") || word.starts_with("gen_ai_client") {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    assert!(
                        docs.contains(&format!("`{base}`")),
                        "{base} (panel {})",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 20, "{checked}");
}
