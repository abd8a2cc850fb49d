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
