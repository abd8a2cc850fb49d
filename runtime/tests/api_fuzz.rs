//! A property test of the HTTP API through its router (no socket), on SQLite: random methods,
//! paths built from the real route templates with random segments, random query strings
//! (huge, negative and fractional numbers, NaN, unicode, NUL), headers and bodies of random
//! shape and size, against a keyed node and a dev-mode node.
//!
//! Whatever arrives: no 5xx, no panic, no hang, and every 4xx is `application/problem+json`
//! whose `status` is the response's.
//!
//! `SLUICE_FUZZ_CASES` sets the number of cases (default 2048).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, header};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sluice::api::{app, auth};
use sluice::config::Config;
use sluice::node::Node;
use sluice_store::{NewApiKey, NewJob, PluginSettings};
use tower::ServiceExt;

/// A node, its router and what the cases may refer to.
struct Target {
    app: Router,
    _node: Node,
    _dir: tempfile::TempDir,
}

/// Keys of the keyed node, by what they may do.
struct Keys {
    admin: String,
    read: String,
    none: String,
}

async fn target(dev: bool) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
    config.database.data_dir = dir.path().to_path_buf();
    config.engine.max_instances = 4;
    config.engine.pooling = false;
    config.server.dev = dev;
    config.server.listen = "127.0.0.1:8080".into();
    // Small enough that random bodies reach the limits.
    config.server.limits.max_batch_body_bytes = 256 << 10;
    let node = Node::start(config).await.unwrap();
    Target {
        app: app(node.clone()),
        _node: node,
        _dir: dir,
    }
}

async fn key(node: &Node, scopes: &[&str]) -> String {
    let secret = auth::generate_secret();
    node.store
        .create_api_key(&NewApiKey {
            tenant: "acme".into(),
            name: "fuzz".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            secret_hash: auth::hash_secret(&secret),
        })
        .await
        .unwrap();
    secret
}

/// A plugin (`seeded`, not a real component: it never runs, no worker runs here) with a job
/// due in 2100, in tenant `acme` and the dev tenant, so that routes with real names and ids
/// reach their handlers' deeper code.
async fn seed(node: &Node, tenant: &str) -> uuid::Uuid {
    let digest = node.store.put_component(b"seeded").await.unwrap();
    node.store
        .create_plugin_version(tenant, "seeded", &digest, &PluginSettings::default(), true)
        .await
        .unwrap();
    let mut job = NewJob::new(tenant, "seeded", json!({"n": 1}));
    job.run_at = Some("2100-01-01T00:00:00Z".parse().unwrap());
    node.store.enqueue(job).await.unwrap().id
}

/// One random request.
#[derive(Debug, Clone)]
struct Case {
    dev: bool,
    method: String,
    path: Vec<String>,
    query: Vec<(String, String)>,
    auth: Auth,
    content_type: Option<String>,
    host: Option<String>,
    extra: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Admin,
    Read,
    NoScope,
    Raw(Vec<u8>),
}

/// Strings tenants send: numbers past every integer and duration, negative, fractional, NaN,
/// unicode, NUL, control characters, path tricks, very long.
fn nasty() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("30s".to_string()),
        Just("10ms".to_string()),
        Just("100000000000000000000".to_string()),
        Just("18446744073709551616".to_string()),
        Just("9223372036854775808".to_string()),
        Just("-9223372036854775809".to_string()),
        Just("4294967296".to_string()),
        Just("300000000000h".to_string()),
        Just("300000000000000000h".to_string()),
        Just("1e400".to_string()),
        Just("1.5.5".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-0".to_string()),
        Just("0x10".to_string()),
        Just("\u{0}".to_string()),
        Just("a\u{0}b".to_string()),
        Just("\u{1b}[31m".to_string()),
        Just("é😀\u{202e}".to_string()),
        Just("../../etc/passwd".to_string()),
        Just("tag:".to_string()),
        Just("tag:user".to_string()),
        Just("user:alice".to_string()),
        Just("2100-01-01T00:00:00Z".to_string()),
        Just("0000-01-01T00:00:00Z".to_string()),
        Just("9999-12-31T23:59:59Z".to_string()),
        Just("same".to_string()),
        Just("active".to_string()),
        Just("dead".to_string()),
        Just("queued".to_string()),
        (1usize..5000).prop_map(|n| "9".repeat(n)),
        (1usize..3000).prop_map(|n| "k".repeat(n)),
        proptest::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
    ]
    .boxed()
}

/// Numbers and durations, in and far out of every range.
fn numberish() -> BoxedStrategy<String> {
    prop_oneof![
        proptest::sample::select(vec![
            "0",
            "-1",
            "1",
            "50",
            "1000",
            "30s",
            "10ms",
            "2m",
            "24h",
            "1000000h",
            "100000000000000000000",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775809",
            "4294967296",
            "300000000000h",
            "300000000000000000h",
            "1e400",
            "NaN",
            "inf",
            "-0",
            "1.5",
            ".5s",
            "0.0000001ms",
        ])
        .prop_map(str::to_string),
        (1usize..400).prop_map(|n| "9".repeat(n)),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (
            any::<u64>(),
            proptest::sample::select(vec!["ms", "s", "m", "h"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
    ]
    .boxed()
}

/// The query parameters the route at `path` reads.
fn params_of(path: &[String]) -> Vec<&'static str> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["v1", "plugins", _, "jobs"] => vec!["wait"],
        ["v1", "usage"] => vec!["since", "until", "group_by"],
        ["v1", "jobs"] => vec!["status", "plugin", "tag", "cursor", "limit"],
        ["v1", "dlq"] => vec!["plugin", "cursor", "limit"],
        ["v1", "webhooks", "deliveries"] => vec!["status", "cursor", "limit"],
        ["v1", "plugins", _] => vec![
            "timeout_ms",
            "memory_mb",
            "max_attempts",
            "concurrency",
            "allowed_models",
        ],
        _ => vec!["wait", "since", "limit", "cursor"],
    }
}

/// A JSON number tenants might send.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1e16)),
        Just(json!(u64::MAX)),
        Just(json!(u32::MAX)),
        Just(json!(1e308)),
    ]
    .boxed()
}

/// Any JSON value, nested a few levels.
fn value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        nasty().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((field(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Field names of the API's bodies, and others.
fn field() -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "input", "tags", "priority", "run_at", "timeout_ms", "max_attempts", "webhook", "url",
            "memory_mb", "concurrency", "allowed_models", "plugin", "ids", "limit", "target",
            "clear_journal", "version", "digest", "scope", "tag", "value", "period", "limit_usd",
            "alerts", "jobs", "idempotency_key", "user",
        ])
        .prop_map(str::to_string),
        1 => nasty(),
    ]
    .boxed()
}

/// Strings tenants send as tag keys and values: mostly fine, sometimes long or with NUL.
fn tag_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::collection::vec(proptest::char::range('a', 'z'), 1..12)
            .prop_map(String::from_iter),
        1 => nasty(),
        1 => (60usize..300).prop_map(|n| "t".repeat(n)),
    ]
    .boxed()
}

/// A body of the right shape for submissions and settings, with well-typed values that are
/// sometimes absurd: these get past parsing into the handlers' own checks.
fn typed_body() -> BoxedStrategy<Value> {
    let int = prop_oneof![
        4 => 0u64..10,
        2 => 1u64..5_000_000,
        1 => Just(u64::from(u32::MAX)),
        1 => Just(10_000_000_000_000_000u64),
        1 => Just(u64::MAX),
    ];
    let small_int = prop_oneof![4 => 0u64..10, 1 => Just(u64::from(u32::MAX))];
    let submit = (
        proptest::option::of(value()),
        proptest::option::of(proptest::collection::btree_map(
            tag_text(),
            tag_text(),
            0..40,
        )),
        proptest::option::of(int.clone()),
        proptest::option::of(small_int.clone()),
        proptest::option::of(nasty()),
        proptest::option::of(any::<i32>()),
    )
        .prop_map(
            |(input, tags, timeout_ms, max_attempts, run_at, priority)| {
                let mut v = json!({});
                if let Some(x) = input {
                    v["input"] = x;
                }
                if let Some(t) = tags {
                    v["tags"] = json!(t);
                }
                if let Some(t) = timeout_ms {
                    v["timeout_ms"] = json!(t);
                }
                if let Some(m) = max_attempts {
                    v["max_attempts"] = json!(m);
                }
                if let Some(r) = run_at {
                    v["run_at"] = json!(r);
                }
                if let Some(p) = priority {
                    v["priority"] = json!(p);
                }
                v
            },
        );
    let batch = proptest::collection::vec((submit.clone(), proptest::option::of(nasty())), 0..4)
        .prop_map(|jobs| {
            let jobs: Vec<Value> = jobs
                .into_iter()
                .map(|(mut j, key)| {
                    if let Some(k) = key {
                        j["idempotency_key"] = json!(k);
                    }
                    j
                })
                .collect();
            json!({ "jobs": jobs })
        });
    let settings = (
        proptest::option::of(int),
        proptest::option::of(small_int.clone()),
        proptest::option::of(small_int),
        proptest::option::of(proptest::collection::vec(nasty(), 0..3)),
    )
        .prop_map(|(timeout_ms, max_attempts, memory_mb, allowed_models)| {
            json!({
                "timeout_ms": timeout_ms,
                "max_attempts": max_attempts,
                "memory_mb": memory_mb,
                "allowed_models": allowed_models,
            })
        });
    prop_oneof![4 => submit, 1 => batch, 1 => settings].boxed()
}

fn body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        6 => typed_body().prop_map(|v| v.to_string().into_bytes()),
        4 => value().prop_map(|v| v.to_string().into_bytes()),
        // Bodies shaped like the API's, with random values.
        6 => proptest::collection::vec((field(), value()), 0..6).prop_map(|kv| {
            Value::Object(kv.into_iter().collect()).to_string().into_bytes()
        }),
        // Numbers serde_json's `Value` cannot hold.
        2 => proptest::sample::select(vec![
            r#"{"timeout_ms": 1e999}"#,
            r#"{"max_attempts": 18446744073709551616}"#,
            r#"{"timeout_ms": -0}"#,
            r#"{"priority": 1e16}"#,
            r#"{"jobs": [{"input": 1, "timeout_ms": 99999999999999999999999}]}"#,
            r#"{"input": "#,
            "\u{0}",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        // Large: past the small routes' limits, sometimes past the submission's.
        3 => (60usize << 10..1300 << 10).prop_map(|n| {
            json!({"input": {"text": "x".repeat(n)}}).to_string().into_bytes()
        }),
        1 => (1usize..200_000).prop_map(|n| format!("[{}0]", "0,".repeat(n)).into_bytes()),
        1 => (1usize..100_000).prop_map(|n| "[".repeat(n).into_bytes()),
    ]
    .boxed()
}

fn case(
    routes: Vec<(&'static str, &'static str)>,
    ids: Vec<String>,
) -> impl Strategy<Value = Case> {
    let segment = {
        let ids = ids.clone();
        prop_oneof![
            3 => proptest::sample::select(ids),
            2 => Just("seeded".to_string()),
            2 => Just("absent".to_string()),
            1 => Just(uuid::Uuid::nil().to_string()),
            1 => Just("1".to_string()),
            3 => nasty(),
        ]
    };
    let any_method = proptest::sample::select(vec![
        "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "BREW",
    ])
    .prop_map(str::to_string);
    // Mostly a real route with its own method and random segments; sometimes another method
    // on it, or a path of random segments.
    let route = prop_oneof![
        8 => (proptest::sample::select(routes), proptest::collection::vec(segment.clone(), 2))
            .prop_map(|((method, template), segs)| {
                let mut segs = segs.into_iter();
                let path = template
                    .trim_start_matches('/')
                    .split('/')
                    .map(|part| {
                        if part.starts_with('{') {
                            segs.next().unwrap_or_default()
                        } else {
                            part.to_string()
                        }
                    })
                    .collect::<Vec<_>>();
                (Some(method.to_uppercase()), path)
            }),
        1 => proptest::collection::vec(segment, 0..5).prop_map(|p| (None, p)),
    ];
    let method_and_path =
        (route, any_method, 0u8..10).prop_map(|((own, path), other, roll)| match own {
            Some(m) if roll < 8 => (m, path),
            _ => (other, path),
        });
    // Query parameters the route reads (mostly), with numbers and durations (mostly).
    let method_path_query = method_and_path.prop_flat_map(|(method, path)| {
        let key = prop_oneof![
            4 => proptest::sample::select(params_of(&path)).prop_map(str::to_string),
            1 => nasty(),
        ];
        let value = prop_oneof![2 => numberish(), 1 => nasty()];
        (
            Just((method, path)),
            proptest::collection::vec((key, value), 0..4),
        )
    });
    let auth = prop_oneof![
        2 => Just(Auth::None),
        8 => Just(Auth::Admin),
        2 => Just(Auth::Read),
        1 => Just(Auth::NoScope),
        1 => proptest::sample::select(vec![
            "Bearer sk_wrong", "Bearer ", "Basic YWxhZGRpbjpvcGVu", "bearer x", "Bearer \u{7f}",
        ])
        .prop_map(|s| Auth::Raw(s.as_bytes().to_vec())),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Auth::Raw),
    ];
    let content_type = prop_oneof![
        2 => Just(None),
        10 => Just(Some("application/json".to_string())),
        1 => Just(Some("application/wasm".to_string())),
        1 => Just(Some("text/plain".to_string())),
        1 => Just(Some("application/json; charset=utf-8".to_string())),
        1 => Just(Some("application/x-www-form-urlencoded".to_string())),
        1 => nasty().prop_map(Some),
    ];
    let host = prop_oneof![
        10 => Just(Some("127.0.0.1:8080".to_string())),
        1 => Just(Some("localhost:8080".to_string())),
        1 => Just(Some("attacker.example".to_string())),
        1 => Just(None),
        1 => nasty().prop_map(Some),
    ];
    let extra_name = proptest::sample::select(vec![
        "idempotency-key",
        "last-event-id",
        "content-length",
        "accept",
        "x-forwarded-host",
    ])
    .prop_map(str::to_string);
    let extra_value = prop_oneof![
        nasty().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    let extra = proptest::collection::vec((extra_name, extra_value), 0..3);
    (
        any::<bool>(),
        method_path_query,
        auth,
        content_type,
        host,
        extra,
        body(),
    )
        .prop_map(
            |(dev, ((method, path), query), auth, content_type, host, extra, body)| Case {
                dev,
                method,
                path,
                query,
                auth,
                content_type,
                host,
                extra,
                body,
            },
        )
}

/// Percent-encode everything but unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Case {
    fn request(&self, keys: &Keys) -> Option<Request<Body>> {
        let mut uri = String::new();
        for seg in &self.path {
            uri.push('/');
            uri.push_str(&encode(seg));
        }
        if uri.is_empty() {
            uri.push('/');
        }
        if !self.query.is_empty() {
            uri.push('?');
            let pairs: Vec<String> = self
                .query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            uri.push_str(&pairs.join("&"));
        }
        let mut req = Request::builder().method(self.method.as_str()).uri(uri);
        let auth = match &self.auth {
            Auth::None => None,
            Auth::Admin => Some(format!("Bearer {}", keys.admin).into_bytes()),
            Auth::Read => Some(format!("Bearer {}", keys.read).into_bytes()),
            Auth::NoScope => Some(format!("Bearer {}", keys.none).into_bytes()),
            Auth::Raw(raw) => Some(raw.clone()),
        };
        let mut headers: Vec<(HeaderName, Vec<u8>)> = Vec::new();
        if let Some(a) = auth {
            headers.push((header::AUTHORIZATION, a));
        }
        if let Some(t) = &self.content_type {
            headers.push((header::CONTENT_TYPE, t.clone().into_bytes()));
        }
        if let Some(h) = &self.host {
            headers.push((header::HOST, h.clone().into_bytes()));
        }
        for (name, value) in &self.extra {
            headers.push((HeaderName::from_bytes(name.as_bytes()).ok()?, value.clone()));
        }
        for (name, value) in headers {
            // What no HTTP parser would hand over is not a request this server can get.
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                req = req.header(name, v);
            }
        }
        req.body(Body::from(self.body.clone())).ok()
    }
}

async fn check(
    app: &Router,
    keys: &Keys,
    case: &Case,
    seen: &Mutex<BTreeMap<u16, usize>>,
) -> Result<(), TestCaseError> {
    let Some(req) = case.request(keys) else {
        return Ok(());
    };
    let res = tokio::time::timeout(Duration::from_secs(20), app.clone().oneshot(req))
        .await
        .map_err(|_| TestCaseError::fail("no answer within 20 s"))?
        .unwrap();
    let status = res.status();
    *seen.lock().unwrap().entry(status.as_u16()).or_default() += 1;
    prop_assert!(!status.is_server_error(), "{status}");
    if status.is_client_error() {
        let ctype = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        prop_assert_eq!(&ctype, "application/problem+json", "{}", status);
        if case.method == "HEAD" {
            // Answered as the GET would be, without its body.
            return Ok(());
        }
        let body = tokio::time::timeout(
            Duration::from_secs(20),
            axum::body::to_bytes(res.into_body(), 1 << 20),
        )
        .await
        .map_err(|_| TestCaseError::fail("problem body not finished within 20 s"))?
        .map_err(|e| TestCaseError::fail(format!("problem body: {e}")))?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("problem is not JSON: {e}")))?;
        prop_assert_eq!(doc["status"].as_u64(), Some(u64::from(status.as_u16())));
        prop_assert!(
            doc["type"].is_string() && doc["detail"].is_string(),
            "{}",
            doc
        );
    }
    // Success bodies (event streams among them) are not read: dropping one ends it.
    Ok(())
}

#[test]
fn random_requests_get_problem_json_and_never_a_5xx() {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let (keyed, dev, keys, ids) = rt.block_on(async {
        let keyed = target(false).await;
        let dev = target(true).await;
        let keys = Keys {
            admin: key(&keyed._node, &["admin"]).await,
            read: key(&keyed._node, &["read"]).await,
            none: key(&keyed._node, &["none"]).await,
        };
        let ids = vec![
            seed(&keyed._node, "acme").await.to_string(),
            seed(&dev._node, auth::DEV_TENANT).await.to_string(),
        ];
        (keyed, dev, keys, ids)
    });
    let cases = std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        // Shrinking re-runs requests; a few hundred steps find the small case quickly enough.
        max_shrink_iters: 512,
        ..RunnerConfig::default()
    });
    let routes = sluice::api::ROUTES.to_vec();
    let seen = Mutex::new(BTreeMap::new());
    let result = runner.run(&case(routes, ids), |c| {
        let target = if c.dev { &dev } else { &keyed };
        rt.block_on(check(&target.app, &keys, &c, &seen))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The cases reached past the front door: handlers answered, and refused in many ways.
    let seen = seen.into_inner().unwrap();
    eprintln!("statuses: {seen:?}");
    if cases >= 1024 {
        for status in [200, 400, 401, 403, 404, 405, 415, 422] {
            assert!(seen.contains_key(&status), "no {status} in {seen:?}");
        }
    }
}
