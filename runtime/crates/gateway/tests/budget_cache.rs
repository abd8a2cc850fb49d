//! Budgets, alerts and the response cache.

mod common;

use std::sync::Arc;

use common::{Alerts, ctx, env, env_with};
use sluice_gateway::{
    AlertKind, BudgetConfig, BudgetKey, BudgetScope, Ledger, MemoryLedger, Period, SimConfig, Wire,
};
use sluice_types::model::{ChatRequest, Message, ModelError, ResponseSource};

fn req(text: &str) -> ChatRequest {
    let mut r = ChatRequest::new("chain", vec![Message::user(text)]);
    r.max_tokens = Some(100);
    r
}

/// Replies are always cut at 20 tokens, so a call's actual cost is close to its worst case.
fn short(text: &str) -> ChatRequest {
    ChatRequest {
        max_tokens: Some(20),
        ..req(text)
    }
}

fn budget(scope: BudgetScope, limit_usd: f64) -> BudgetConfig {
    BudgetConfig {
        name: Some("b".into()),
        scope,
        tag: None,
        value: None,
        tenant: None,
        period: Period::Day,
        limit_usd,
        alerts: vec![0.5, 0.8, 1.0],
    }
}

#[tokio::test]
async fn a_call_that_could_exceed_the_budget_is_refused_before_any_request() {
    // Worst case of one call: (prompt + 16) × $1/M + 100 × $2/M ≈ 220 µ$.
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        c.budgets.push(budget(BudgetScope::Tenant, 0.000_1));
    })
    .await;
    let err =
        e.gw.chat(&ctx(), req("Summarize the report"), None)
            .await
            .unwrap_err();
    assert!(
        matches!(err.error, ModelError::BudgetExceeded { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("tenant:acme"), "{err}");
    assert_eq!(e.sim(0).stats().requests, 0);
    assert_eq!(err.record.outcome, "budget_exceeded");
}

#[tokio::test]
async fn fifty_concurrent_calls_never_overshoot_and_alerts_fire_once() {
    let ledger = Arc::new(MemoryLedger::new());
    let alerts = Arc::new(Alerts::default());
    // Worst case of one call ≈ (13 + 16) × 1 µ$ + 20 × 2 µ$ = 69 µ$, actual ≈ 53 µ$: 2000 µ$
    // holds 28 reservations, and what they spend crosses the 50% alert.
    let limit_usd = 0.002;
    let (l, a) = (ledger.clone(), alerts.clone());
    let sim = SimConfig {
        ttft_ms: 100,
        tokens_per_sec: 0,
        ..SimConfig::default()
    };
    let e = env_with(
        &[(Wire::OpenAi, sim)],
        |c| {
            let mut b = budget(BudgetScope::Tag, limit_usd);
            b.tag = Some("user".into());
            c.budgets.push(b);
        },
        move |b| b.ledger(l).alert_sink(a),
    )
    .await;
    let gw = e.gw.clone();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            gw.chat(&ctx(), short(&format!("Summarize report no {i:02}")), None)
                .await
        }));
    }
    let (mut ok, mut refused, mut spent) = (0, 0, 0u64);
    for t in tasks {
        match t.await.unwrap() {
            Ok(out) => {
                ok += 1;
                spent += out.response.cost_micros;
            }
            Err(err) => {
                assert!(
                    matches!(err.error, ModelError::BudgetExceeded { .. }),
                    "{err}"
                );
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    assert!(spent <= 2_000, "spent {spent} µ$ of 2000");
    let key = BudgetKey {
        budget: "b".into(),
        scope: "tag:user=alice".into(),
        window: chrono::Utc::now().format("%Y-%m-%d").to_string(),
    };
    let level = ledger.level(&key).await.unwrap();
    assert_eq!(level.spent_micros, spent);
    assert_eq!(level.reserved_micros, 0, "every reservation settled");
    assert_eq!(
        e.sim(0).stats().requests,
        ok as u64,
        "refused calls sent nothing"
    );

    let fired = alerts.0.lock().unwrap().clone();
    let refusals = fired
        .iter()
        .filter(|a| a.kind == AlertKind::Refused)
        .count();
    assert_eq!(refusals, 1, "one refusal alert per period: {fired:?}");
    let halves = fired
        .iter()
        .filter(|a| a.kind == AlertKind::Threshold { fraction: 0.5 })
        .count();
    assert_eq!(halves, 1, "{fired:?}");
}

#[tokio::test]
async fn budgets_by_plugin_and_job_apply_only_to_their_scope() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        let mut b = budget(BudgetScope::Plugin, 0.000_1);
        b.value = Some("other-plugin".into());
        c.budgets.push(b);
        let mut j = budget(BudgetScope::Job, 0.01);
        j.name = Some("per-job".into());
        j.period = Period::Total;
        c.budgets.push(j);
    })
    .await;
    let ctx = ctx();
    e.gw.chat(&ctx, req("Summarize the plan"), None)
        .await
        .expect("other plugin's budget does not apply");
    let left = e.gw.budget_remaining(&ctx).await.unwrap();
    assert!(left < 10_000 && left > 9_000, "{left}");
    let err = e.gw.charge_extra(&ctx, left + 1).await.unwrap_err();
    assert!(matches!(err, ModelError::BudgetExceeded { .. }));
    e.gw.charge_extra(&ctx, left).await.unwrap();
    assert_eq!(e.gw.budget_remaining(&ctx).await, Some(0));
}

#[tokio::test]
async fn a_cache_hit_costs_nothing_and_sends_nothing() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |_| {}).await;
    let r = req("Summarize the onboarding survey");
    let first = e.gw.chat(&ctx(), r.clone(), None).await.unwrap();
    assert!(first.response.cost_micros > 0);
    let second = e.gw.chat(&ctx(), r.clone(), None).await.unwrap();
    assert_eq!(second.response.source, ResponseSource::Cache);
    assert_eq!(second.record.source, ResponseSource::Cache);
    assert_eq!(second.response.cost_micros, 0);
    assert_eq!(second.record.cost_micros, 0);
    assert_eq!(second.response.content, first.response.content);
    assert_eq!(e.sim(0).stats().requests, 1);

    let mut opt_out = r;
    opt_out.no_cache = true;
    let third = e.gw.chat(&ctx(), opt_out, None).await.unwrap();
    assert_eq!(third.response.source, ResponseSource::Provider);
    assert_eq!(e.sim(0).stats().requests, 2);
}

#[tokio::test]
async fn the_cache_can_be_disabled() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        c.cache.enabled = false
    })
    .await;
    let r = req("Summarize the onboarding survey");
    e.gw.chat(&ctx(), r.clone(), None).await.unwrap();
    e.gw.chat(&ctx(), r, None).await.unwrap();
    assert_eq!(e.sim(0).stats().requests, 2);
}

fn tenant_ctx(tenant: &str) -> sluice_types::CallContext {
    let mut c = ctx();
    std::sync::Arc::make_mut(&mut c.job).tenant = tenant.into();
    c
}

#[tokio::test]
async fn the_cache_is_sealed_per_tenant() {
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |_| {}).await;
    let r = req("Summarize the board minutes of March");
    let a = e.gw.chat(&tenant_ctx("a"), r.clone(), None).await.unwrap();
    assert_eq!(a.response.source, ResponseSource::Provider);
    // Same request, another tenant: a paid provider call of its own, not A's reply.
    let b = e.gw.chat(&tenant_ctx("b"), r.clone(), None).await.unwrap();
    assert_eq!(b.response.source, ResponseSource::Provider);
    assert_eq!(b.record.source, ResponseSource::Provider);
    assert!(b.response.cost_micros > 0);
    assert_eq!(e.sim(0).stats().requests, 2);
    // Each tenant's own repeat is a hit.
    for t in ["a", "b"] {
        let again = e.gw.chat(&tenant_ctx(t), r.clone(), None).await.unwrap();
        assert_eq!(again.response.source, ResponseSource::Cache, "tenant {t}");
    }
    assert_eq!(e.sim(0).stats().requests, 2);

    // Embeddings too.
    let er = sluice_types::model::EmbedRequest {
        model: "p0/e".into(),
        inputs: vec!["quarterly revenue".into()],
    };
    let ea = e.gw.embed(&tenant_ctx("a"), er.clone()).await.unwrap();
    let eb = e.gw.embed(&tenant_ctx("b"), er.clone()).await.unwrap();
    assert_eq!(ea.response.source, ResponseSource::Provider);
    assert_eq!(eb.response.source, ResponseSource::Provider);
    let ea2 = e.gw.embed(&tenant_ctx("a"), er).await.unwrap();
    assert_eq!(ea2.response.source, ResponseSource::Cache);
}

#[tokio::test]
async fn sampled_requests_are_not_cached_unless_configured() {
    let sampled = ChatRequest {
        temperature: Some(0.7),
        ..req("Write a product tagline")
    };
    let greedy = ChatRequest {
        temperature: Some(0.0),
        ..req("Write a product tagline")
    };
    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |_| {}).await;
    for _ in 0..2 {
        let out = e.gw.chat(&ctx(), sampled.clone(), None).await.unwrap();
        assert_eq!(out.response.source, ResponseSource::Provider);
    }
    assert_eq!(e.sim(0).stats().requests, 2);
    e.gw.chat(&ctx(), greedy.clone(), None).await.unwrap();
    let hit = e.gw.chat(&ctx(), greedy, None).await.unwrap();
    assert_eq!(
        hit.response.source,
        ResponseSource::Cache,
        "temperature 0 is cached"
    );
    assert_eq!(e.sim(0).stats().requests, 3);

    let e = env(&[(Wire::OpenAi, SimConfig::instant())], |c| {
        c.cache.sampled = true
    })
    .await;
    e.gw.chat(&ctx(), sampled.clone(), None).await.unwrap();
    let hit = e.gw.chat(&ctx(), sampled, None).await.unwrap();
    assert_eq!(hit.response.source, ResponseSource::Cache, "sampled = true");
    assert_eq!(e.sim(0).stats().requests, 1);
}

/// A hard budget, prompts of CJK and emoji (characters/4 undercounts them 3-4×), and a
/// provider that reports 50× the tokens it used: spend never passes the limit.
#[tokio::test]
async fn a_hard_budget_never_overshoots_with_multibyte_prompts_and_a_misreporting_provider() {
    let ledger = Arc::new(MemoryLedger::new());
    let l = ledger.clone();
    let sim = SimConfig {
        faults: sluice_gateway::Faults {
            overreport_factor: 50,
            ..Default::default()
        },
        ..SimConfig::instant()
    };
    let limit_micros = 20_000u64;
    let e = env_with(
        &[(Wire::OpenAi, sim)],
        |c| {
            let mut b = budget(BudgetScope::Tenant, limit_micros as f64 / 1e6);
            b.period = Period::Total;
            c.budgets.push(b);
        },
        move |b| b.ledger(l),
    )
    .await;
    let prompts = [
        "請總結這份季度財務報告的要點和風險。",
        "四半期の売上報告を要約してください。🚀📈💹",
        "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀 summarize the crabs 🦀🦀🦀🦀🦀",
        "분기별 재무 보고서를 요약해 주세요",
    ];
    let ctx = ctx();
    let (mut ok, mut refused, mut charged, mut misreported) = (0, 0, 0u64, 0);
    for i in 0..200 {
        let mut r = req(prompts[i % prompts.len()]);
        r.max_tokens = Some(50);
        r.no_cache = true;
        match e.gw.chat(&ctx, r.clone(), None).await {
            Ok(out) => {
                ok += 1;
                // Never charged more than reserved; the reserve covers a byte-level tokenizer.
                assert!(out.record.cost_micros <= out.record.reserved_micros);
                let bytes: u64 = r.messages.iter().map(|m| m.content.len() as u64).sum();
                assert!(out.record.reserved_micros >= bytes + 2 * 50, "{out:?}");
                let reported = u64::from(out.record.usage.input_tokens)
                    + 2 * u64::from(out.record.usage.output_tokens);
                if reported > out.record.cost_micros {
                    misreported += 1;
                }
                charged += out.record.cost_micros;
            }
            Err(err) => {
                assert!(
                    matches!(err.error, ModelError::BudgetExceeded { .. }),
                    "{err}"
                );
                refused += 1;
                if refused > 3 {
                    break;
                }
            }
        }
    }
    let level = ledger
        .level(&BudgetKey {
            budget: "b".into(),
            scope: "tenant:acme".into(),
            window: "total".into(),
        })
        .await
        .unwrap();
    assert!(ok >= 10 && refused >= 1, "ok {ok}, refused {refused}");
    assert!(misreported > 0, "the provider's inflated usage was seen");
    assert_eq!(level.reserved_micros, 0);
    assert_eq!(level.spent_micros, charged);
    assert!(
        level.spent_micros <= limit_micros,
        "spent {} µ$ of {limit_micros}",
        level.spent_micros
    );
}
