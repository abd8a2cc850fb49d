//! Failover, circuit breaking, retry-after, non-retryable errors, deadlines and rate limits,
//! against simulators over real HTTP.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ctx, ctx_with_deadline_ms, env};
use sluice_gateway::{BreakerState, Faults, SimConfig, Wire};
use sluice_types::model::{ChatRequest, Message, ModelError};

fn req() -> ChatRequest {
    let mut r = ChatRequest::new(
        "chain",
        vec![Message::user("Summarize the shipping delays report")],
    );
    r.no_cache = true;
    r.max_tokens = Some(40);
    r
}

fn failing(status: u16) -> SimConfig {
    SimConfig {
        faults: Faults {
            fail_all: Some(status),
            ..Faults::default()
        },
        ..SimConfig::instant()
    }
}

#[tokio::test]
async fn fails_over_when_the_first_provider_returns_500s() {
    let e = env(
        &[
            (Wire::OpenAi, failing(500)),
            (Wire::Anthropic, SimConfig::instant()),
        ],
        |_| {},
    )
    .await;
    let out =
        e.gw.chat(&ctx(), req(), None)
            .await
            .expect("second provider answers");
    assert_eq!(out.response.provider, "p1");
    assert_eq!(out.record.fallbacks, 1);
    let outcomes: Vec<_> = out
        .record
        .attempts
        .iter()
        .map(|a| (a.provider.as_str(), a.outcome.as_str(), a.status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("p0", "server_error", Some(500)),
            ("p0", "server_error", Some(500)),
            ("p1", "ok", None)
        ]
    );
    assert_eq!(out.record.retries, 1);
    assert_eq!(
        e.sim(0).stats().server_errors,
        2,
        "one try plus max_retries = 1"
    );
    assert_eq!(e.sim(1).stats().ok, 1);
}

#[tokio::test]
async fn fails_over_when_the_first_provider_is_down() {
    let e = env(
        &[
            (Wire::OpenAi, SimConfig::instant()),
            (Wire::OpenAi, SimConfig::instant()),
        ],
        |_| {},
    )
    .await;
    let mut sims = e.sims;
    let first = sims.remove(0);
    first.shutdown().await;
    let out =
        e.gw.chat(&ctx(), req(), None)
            .await
            .expect("second provider answers");
    assert_eq!(out.response.provider, "p1");
    assert_eq!(out.record.attempts[0].outcome, "connection");
}

#[tokio::test]
async fn a_scheduled_outage_fails_over_then_ends() {
    let outage = SimConfig {
        outages: vec![sluice_gateway::Outage {
            start_ms: 0,
            duration_ms: 400,
            status: 503,
        }],
        ..SimConfig::instant()
    };
    let e = env(
        &[(Wire::OpenAi, outage), (Wire::OpenAi, SimConfig::instant())],
        |_| {},
    )
    .await;
    let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
    assert_eq!(out.response.provider, "p1");
    assert_eq!(out.record.attempts[0].status, Some(503));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
    assert_eq!(out.response.provider, "p0");
}

#[tokio::test]
async fn every_provider_failing_is_unavailable() {
    let e = env(
        &[
            (Wire::OpenAi, failing(503)),
            (Wire::Anthropic, failing(529)),
        ],
        |_| {},
    )
    .await;
    let err = e.gw.chat(&ctx(), req(), None).await.unwrap_err();
    assert!(matches!(err.error, ModelError::Unavailable { .. }), "{err}");
    let outcomes: Vec<_> = err
        .record
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["server_error", "server_error", "overloaded", "overloaded"]
    );
    assert_eq!(err.record.outcome, "unavailable");
    assert!(
        err.to_string().contains("p1/m overloaded (HTTP 529) ×2"),
        "{err}"
    );
}

#[tokio::test]
async fn breaker_opens_skips_and_closes_after_a_probe() {
    let e = env(
        &[
            (Wire::OpenAi, failing(500)),
            (Wire::OpenAi, SimConfig::instant()),
        ],
        |c| {
            let p = c.providers.get_mut("p0").unwrap();
            p.max_retries = 0;
            p.breaker.min_calls = 3;
            p.breaker.failure_rate = 0.5;
            p.breaker.cooldown_ms = 300;
        },
    )
    .await;
    for _ in 0..3 {
        let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
        assert_eq!(out.response.provider, "p1");
    }
    assert_eq!(e.gw.breaker_state("p0"), Some(BreakerState::Open));
    assert_eq!(e.sim(0).stats().requests, 3);

    // Open: the first provider is skipped without a request.
    let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
    assert_eq!(out.record.attempts[0].outcome, "circuit_open");
    assert_eq!(e.sim(0).stats().requests, 3);

    // After the cooldown one probe goes through; the provider has recovered, so it closes.
    e.sim(0).set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
    assert_eq!(out.response.provider, "p0");
    assert_eq!(e.gw.breaker_state("p0"), Some(BreakerState::Closed));
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let e = env(
        &[
            (Wire::OpenAi, failing(500)),
            (Wire::OpenAi, SimConfig::instant()),
        ],
        |c| {
            let p = c.providers.get_mut("p0").unwrap();
            p.max_retries = 0;
            p.breaker.min_calls = 2;
            p.breaker.cooldown_ms = 200;
        },
    )
    .await;
    for _ in 0..2 {
        e.gw.chat(&ctx(), req(), None).await.unwrap();
    }
    assert_eq!(e.gw.breaker_state("p0"), Some(BreakerState::Open));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
    assert_eq!(
        out.record.attempts[0].outcome, "server_error",
        "the probe was sent"
    );
    assert_eq!(e.gw.breaker_state("p0"), Some(BreakerState::Open));
    assert_eq!(e.sim(0).stats().requests, 3);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let sim = SimConfig {
        faults: Faults {
            force_429: 1,
            retry_after_ms: 800,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(&[(Wire::OpenAi, sim)], |_| {}).await;
    let started = Instant::now();
    let out =
        e.gw.chat(&ctx(), req(), None)
            .await
            .expect("succeeds after the wait");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(780), "waited only {took:?}");
    assert_eq!(out.record.retries, 1);
    assert_eq!(out.record.attempts[0].outcome, "rate_limited");
    assert_eq!(out.record.attempts[0].status, Some(429));
    assert_eq!(e.sim(0).stats().rate_limited, 1);
    assert_eq!(e.sim(0).stats().ok, 1);
}

#[tokio::test]
async fn anthropic_429_retry_after_is_honoured() {
    let sim = SimConfig {
        faults: Faults {
            force_429: 1,
            retry_after_ms: 500,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(&[(Wire::Anthropic, sim)], |_| {}).await;
    let started = Instant::now();
    e.gw.chat(&ctx(), req(), None)
        .await
        .expect("succeeds after the wait");
    assert!(started.elapsed() >= Duration::from_millis(480));
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_is_rate_limited_not_waited_for() {
    let sim = SimConfig {
        faults: Faults {
            force_429: 5,
            retry_after_ms: 10_000,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(&[(Wire::OpenAi, sim)], |_| {}).await;
    let started = Instant::now();
    let err =
        e.gw.chat(&ctx_with_deadline_ms(2_000), req(), None)
            .await
            .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    match err.error {
        ModelError::RateLimited { retry_after_ms, .. } => {
            assert!(retry_after_ms.unwrap_or(0) >= 9_000, "{retry_after_ms:?}")
        }
        other => panic!("expected rate limited, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_requests_are_not_retried_nor_failed_over() {
    let e = env(
        &[
            (Wire::OpenAi, SimConfig::instant()),
            (Wire::Anthropic, SimConfig::instant()),
        ],
        |_| {},
    )
    .await;
    let mut bad = req();
    bad.temperature = Some(5.0); // the simulator, like OpenAI, allows 0..=2
    let err = e.gw.chat(&ctx(), bad, None).await.unwrap_err();
    assert!(
        matches!(err.error, ModelError::InvalidRequest { .. }),
        "{err}"
    );
    assert_eq!(e.sim(0).stats().requests, 1);
    assert_eq!(e.sim(0).stats().client_errors, 1);
    assert_eq!(e.sim(1).stats().requests, 0);
}

#[tokio::test]
async fn auth_failures_fail_over_without_retry() {
    let e = env(
        &[
            (Wire::OpenAi, failing(401)),
            (Wire::OpenAi, SimConfig::instant()),
        ],
        |_| {},
    )
    .await;
    let out = e.gw.chat(&ctx(), req(), None).await.unwrap();
    assert_eq!(out.response.provider, "p1");
    assert_eq!(e.sim(0).stats().requests, 1);
}

#[tokio::test]
async fn unknown_alias_is_an_invalid_request() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |_| {}).await;
    let err =
        e.gw.chat(
            &ctx(),
            ChatRequest::new("nope", vec![Message::user("x")]),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err.error, ModelError::InvalidRequest { .. }));
    assert!(
        err.to_string().contains("unknown model or alias \"nope\""),
        "{err}"
    );
    // A configured `provider/model` id works directly.
    let direct = ChatRequest::new("p0/m", vec![Message::user("x")]);
    e.gw.chat(&ctx(), direct, None).await.unwrap();
}

#[tokio::test]
async fn the_deadline_bounds_a_slow_provider() {
    let slow = SimConfig {
        faults: Faults {
            extra_latency_ms: 5_000,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = env(&[(Wire::OpenAi, slow)], |_| {}).await;
    let started = Instant::now();
    let err =
        e.gw.chat(&ctx_with_deadline_ms(400), req(), None)
            .await
            .unwrap_err();
    assert!(matches!(err.error, ModelError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn the_tpm_limiter_makes_calls_wait_instead_of_failing() {
    // 6000 tokens/min = 100/s with a 1 s burst; each call reserves its prompt + 16 + 40.
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        let p = c.providers.get_mut("p0").unwrap();
        p.tpm = Some(6_000);
        p.burst_secs = 1.0;
    })
    .await;
    let started = Instant::now();
    let mut waited = 0;
    for _ in 0..3 {
        let out =
            e.gw.chat(&ctx(), req(), None)
                .await
                .expect("waits for capacity");
        waited += out.record.rate_limit_wait_ms;
    }
    assert!(
        waited > 0 && started.elapsed() >= Duration::from_millis(200),
        "waited {waited} ms"
    );
    assert_eq!(e.sim(0).stats().rate_limited, 0);

    // A call whose turn would come after its deadline is refused at once.
    let mut big = req();
    big.max_tokens = Some(90);
    let _ = e.gw.chat(&ctx(), big.clone(), None).await;
    let err =
        e.gw.chat(&ctx_with_deadline_ms(100), big, None)
            .await
            .unwrap_err();
    assert!(
        matches!(
            err.error,
            ModelError::RateLimited {
                retry_after_ms: Some(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.record.attempts[0].outcome, "throttled");
}

#[tokio::test]
async fn the_rpm_limiter_spaces_requests() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        let p = c.providers.get_mut("p0").unwrap();
        p.rpm = Some(600); // 10/s, burst 10 with burst_secs = 1
        p.burst_secs = 1.0;
    })
    .await;
    let started = Instant::now();
    for _ in 0..13 {
        e.gw.chat(&ctx(), req(), None).await.unwrap();
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn simulator_rate_limits_are_enforced_with_headers() {
    let sim = sluice_gateway::sim::start(SimConfig {
        rpm: Some(60),
        burst_secs: 1.0,
        ..SimConfig::instant()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/chat/completions", sim.base_url());
    let ok = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-limit-requests"], "60");
    let limited = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let ra: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&ra));
    assert!(limited.headers().contains_key("x-ratelimit-reset-requests"));
    assert_eq!(limited.headers()["x-ratelimit-remaining-requests"], "0");

    let url = format!("{}/messages", sim.base_url());
    let body = serde_json::json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let limited = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(
        limited
            .headers()
            .contains_key("anthropic-ratelimit-requests-reset")
    );
    let v: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

// ---------------------------------------------------------------------------------------------
// Hostile providers and requests: no panic, no overflow, money settled.

/// A provider that answers every chat request 429 with `header: value`.
async fn hostile_429(header: &'static str, value: &'static str) -> sluice_gateway::Gateway {
    use axum::http::StatusCode;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || async move {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header, value)],
                r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut cfg = sluice_gateway::GatewayConfig::empty();
    cfg.retry.base_delay_ms = 5;
    cfg.retry.max_delay_ms = 20;
    let mut p = sluice_gateway::ProviderConfig::with_url(
        sluice_gateway::ProviderKind::OpenAi,
        format!("http://{addr}/v1"),
    );
    p.max_retries = 1;
    cfg.providers.insert("h".into(), p);
    cfg.models
        .insert("h/m".into(), sluice_gateway::ModelConfig::chat(1.0, 2.0));
    cfg.aliases.insert("chain".into(), vec!["h/m".into()]);
    sluice_gateway::Gateway::new(cfg).await.unwrap()
}

#[tokio::test]
async fn hostile_retry_after_values_are_clamped_never_a_panic() {
    let max_ms = sluice_gateway::provider::MAX_RETRY_AFTER.as_millis() as u64;
    let cases: [(&'static str, &'static str, Option<u64>); 9] = [
        ("retry-after", "1e30", Some(max_ms)),
        ("retry-after", "inf", Some(max_ms)),
        ("retry-after", "99999999999999999999999999999", Some(max_ms)),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", Some(max_ms)),
        ("retry-after-ms", "1e300", Some(max_ms)),
        ("x-ratelimit-reset-tokens", "99999999999999h", Some(max_ms)),
        ("retry-after", "-5", None),
        ("retry-after", "NaN", None),
        ("retry-after-ms", "-1e30", None),
    ];
    for (header, value, want) in cases {
        let gw = hostile_429(header, value).await;
        let started = Instant::now();
        let err = gw
            .chat(&ctx_with_deadline_ms(3_000), req(), None)
            .await
            .unwrap_err();
        match err.error {
            ModelError::RateLimited { retry_after_ms, .. } => {
                assert_eq!(retry_after_ms, want, "{header}: {value}")
            }
            other => panic!("{header}: {value}: {other:?}"),
        }
        // A clamped wait past the deadline is not slept: the call ends at once.
        assert!(started.elapsed() < Duration::from_secs(10), "hang guard");
    }
}

#[tokio::test]
async fn max_tokens_u32_max_and_huge_prompts_are_arithmetic_not_panics() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        c.models.get_mut("p0/m").unwrap().context_tokens = Some(128_000);
    })
    .await;
    let mut r = req();
    r.max_tokens = Some(u32::MAX);
    let err = e.gw.chat(&ctx(), r.clone(), None).await.unwrap_err();
    assert!(
        matches!(err.error, ModelError::InvalidRequest { .. }),
        "past the context window: {err}"
    );
    assert_eq!(
        err.record.reserved_micros,
        8 + 36 + 8 + 16 + 2 * u64::from(u32::MAX)
    );

    // Without a context window the call goes out (the simulator stops where it likes).
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        c.budgets.push(sluice_gateway::BudgetConfig {
            name: Some("b".into()),
            scope: sluice_gateway::BudgetScope::Tenant,
            tag: None,
            value: None,
            tenant: None,
            period: sluice_gateway::Period::Total,
            limit_usd: 1.0,
            alerts: vec![],
        })
    })
    .await;
    let err = e.gw.chat(&ctx(), r, None).await.unwrap_err();
    assert!(
        matches!(err.error, ModelError::BudgetExceeded { .. }),
        "u32::MAX × $2/M is $8590: {err}"
    );
    // 200,000 messages: the bound saturates nothing, overflows nothing.
    let mut many = req();
    many.messages = vec![Message::user("多"); 200_000];
    let err = e.gw.chat(&ctx(), many, None).await.unwrap_err();
    assert!(
        matches!(err.error, ModelError::BudgetExceeded { .. }),
        "{err}"
    );
    assert_eq!(
        err.record.reserved_micros,
        8 + 200_000 * (3 + 8) + 16 + 2 * 40
    );
    assert_eq!(e.sim(0).stats().requests, 0);
}

fn total_budget(limit_usd: f64) -> sluice_gateway::BudgetConfig {
    sluice_gateway::BudgetConfig {
        name: Some("b".into()),
        scope: sluice_gateway::BudgetScope::Tenant,
        tag: None,
        value: None,
        tenant: None,
        period: sluice_gateway::Period::Total,
        limit_usd,
        alerts: vec![],
    }
}

fn total_key() -> sluice_gateway::BudgetKey {
    sluice_gateway::BudgetKey {
        budget: "b".into(),
        scope: "tenant:acme".into(),
        window: "total".into(),
    }
}

/// Wait until no reservation is held (the dropped call's guard settles in a spawned task).
async fn settled(ledger: &sluice_gateway::MemoryLedger) -> sluice_gateway::Level {
    use sluice_gateway::Ledger;
    for _ in 0..500 {
        let l = ledger.level(&total_key()).await.unwrap();
        if l.reserved_micros == 0 {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reservation was never settled");
}

/// The prompt's upper bound in µ$ at $1/M (bytes + 8 per message + 8 priming + 16 margin).
fn prompt_bound(r: &ChatRequest) -> u64 {
    r.messages
        .iter()
        .map(|m| m.content.len() as u64 + 8)
        .sum::<u64>()
        + 8
        + 16
}

#[tokio::test]
async fn a_streamed_call_dropped_midway_is_charged_what_was_streamed() {
    let ledger = common::shared_ledger();
    let l = common::as_ledger(&ledger);
    let slow = SimConfig {
        ttft_ms: 0,
        tokens_per_sec: 20,
        ..SimConfig::default()
    };
    let e = common::env_with(
        &[(Wire::OpenAi, slow)],
        |c| c.budgets.push(total_budget(1.0)),
        move |b| b.ledger(l),
    )
    .await;
    let abandoned = Arc::new(Mutex::new(Vec::new()));
    let a = abandoned.clone();
    e.gw.set_abandoned_sink(Arc::new(move |call| a.lock().unwrap().push(call)));
    let mut r = req();
    r.max_tokens = Some(200);
    let reserved = prompt_bound(&r) + 2 * 200;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (gw, c, r2) = (e.gw.clone(), ctx(), r.clone());
    let call = tokio::spawn(async move {
        let on_delta = move |d: &str| {
            let _ = tx.send(d.to_string());
        };
        gw.chat(&c, r2, Some(&on_delta)).await
    });
    let mut got = String::new();
    while got.len() < 12 {
        got.push_str(&rx.recv().await.expect("deltas before the cut"));
    }
    // The job's timeout or cancel drops the call's future mid-stream.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let level = settled(&ledger).await;
    assert!(
        level.spent_micros >= prompt_bound(&r) + 2 * got.len() as u64,
        "at least the prompt and what was read: {} µ$",
        level.spent_micros
    );
    assert!(level.spent_micros < reserved, "{} µ$", level.spent_micros);
    // The host hears of it, for the usage row: same charge.
    let calls = abandoned.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].record.outcome, "abandoned");
    assert_eq!(calls[0].record.cost_micros, level.spent_micros);
    assert_eq!(calls[0].record.reserved_micros, reserved);
    assert!(calls[0].record.usage.output_tokens as usize >= got.len());
}

#[tokio::test]
async fn a_dropped_call_without_a_budget_is_still_reported_with_its_charge() {
    let slow = SimConfig {
        ttft_ms: 5_000,
        ..SimConfig::instant()
    };
    let e = env(&[(Wire::OpenAi, slow)], |_| {}).await;
    let abandoned = Arc::new(Mutex::new(Vec::new()));
    let a = abandoned.clone();
    e.gw.set_abandoned_sink(Arc::new(move |call| a.lock().unwrap().push(call)));
    let (gw, c) = (e.gw.clone(), ctx());
    let call = tokio::spawn(async move { gw.chat(&c, req(), None).await });
    let t0 = Instant::now();
    while e.sim(0).stats().requests == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "hang guard");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    let _ = call.await;
    let calls = abandoned.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].record.cost_micros, prompt_bound(&req()) + 2 * 40);
}

#[tokio::test]
async fn a_plain_call_dropped_while_its_request_is_out_is_charged_the_reservation() {
    let ledger = common::shared_ledger();
    let l = common::as_ledger(&ledger);
    let slow = SimConfig {
        ttft_ms: 5_000,
        ..SimConfig::instant()
    };
    let e = common::env_with(
        &[(Wire::OpenAi, slow)],
        |c| c.budgets.push(total_budget(1.0)),
        move |b| b.ledger(l),
    )
    .await;
    let r = req();
    let (gw, c, r2) = (e.gw.clone(), ctx(), r.clone());
    let call = tokio::spawn(async move { gw.chat(&c, r2, None).await });
    let t0 = Instant::now();
    while e.sim(0).stats().requests == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "hang guard");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    let _ = call.await;
    let level = settled(&ledger).await;
    assert_eq!(level.spent_micros, prompt_bound(&r) + 2 * 40);
}

#[tokio::test]
async fn a_stream_that_breaks_after_text_was_read_is_not_free() {
    let ledger = common::shared_ledger();
    let l = common::as_ledger(&ledger);
    let broken = SimConfig {
        faults: Faults {
            stream_error_after: Some(2),
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = common::env_with(
        &[(Wire::OpenAi, broken)],
        |c| c.budgets.push(total_budget(1.0)),
        move |b| b.ledger(l),
    )
    .await;
    let seen = std::sync::Mutex::new(0usize);
    let on_delta = |d: &str| *seen.lock().unwrap() += d.len();
    let err = e.gw.chat(&ctx(), req(), Some(&on_delta)).await.unwrap_err();
    let seen = *seen.lock().unwrap();
    assert!(seen > 0);
    assert!(err.record.cost_micros >= prompt_bound(&req()) + 2 * seen.min(40) as u64);
    let level = settled(&ledger).await;
    assert_eq!(level.spent_micros, err.record.cost_micros);
}

#[tokio::test]
async fn a_call_dropped_while_waiting_out_a_429_is_charged_nothing() {
    let ledger = common::shared_ledger();
    let l = common::as_ledger(&ledger);
    let limited = SimConfig {
        faults: Faults {
            force_429: 1,
            retry_after_ms: 5_000,
            ..Faults::default()
        },
        ..SimConfig::instant()
    };
    let e = common::env_with(
        &[(Wire::OpenAi, limited)],
        |c| c.budgets.push(total_budget(1.0)),
        move |b| b.ledger(l),
    )
    .await;
    let abandoned = Arc::new(Mutex::new(Vec::new()));
    let a = abandoned.clone();
    e.gw.set_abandoned_sink(Arc::new(move |call| a.lock().unwrap().push(call)));
    let (gw, c) = (e.gw.clone(), ctx());
    let call = tokio::spawn(async move { gw.chat(&c, req(), None).await });
    let t0 = Instant::now();
    while e.sim(0).stats().rate_limited == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "hang guard");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The 429 was answered; the call now waits out its retry-after. A refused request was not
    // processed, so dropping the call now charges nothing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    call.abort();
    let _ = call.await;
    let level = settled(&ledger).await;
    assert_eq!(level.spent_micros, 0);
    assert!(abandoned.lock().unwrap().is_empty());
}
