//! Shared helpers: simulators over real HTTP on 127.0.0.1 and a gateway wired to them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sluice_gateway::sim::{self, SimConfig, SimHandle};
use sluice_gateway::{
    AlertSink, BudgetAlert, Gateway, GatewayConfig, Ledger, ModelConfig, ProviderConfig,
    ProviderKind, Wire,
};
use sluice_types::{CallContext, JobInfo};

pub struct Env {
    pub gw: Gateway,
    pub sims: Vec<SimHandle>,
}

impl Env {
    pub fn sim(&self, i: usize) -> &SimHandle {
        &self.sims[i]
    }
}

/// Provider `p{i}` speaks `wire` to its own simulator; model `p{i}/m` costs $1/$2 per Mtok
/// (cached input $0.5); alias `chain` tries them in order.
pub async fn env(specs: &[(Wire, SimConfig)], tweak: impl FnOnce(&mut GatewayConfig)) -> Env {
    env_with(specs, tweak, |b| b).await
}

pub async fn env_with(
    specs: &[(Wire, SimConfig)],
    tweak: impl FnOnce(&mut GatewayConfig),
    build: impl FnOnce(sluice_gateway::GatewayBuilder) -> sluice_gateway::GatewayBuilder,
) -> Env {
    let mut cfg = GatewayConfig::empty();
    cfg.retry.base_delay_ms = 5;
    cfg.retry.max_delay_ms = 50;
    let mut sims = Vec::new();
    let mut chain = Vec::new();
    for (i, (wire, sc)) in specs.iter().enumerate() {
        let handle = sim::start(sc.clone()).await.expect("start simulator");
        let kind = match wire {
            Wire::OpenAi => ProviderKind::OpenAi,
            Wire::Anthropic => ProviderKind::Anthropic,
        };
        let mut p = ProviderConfig::with_url(kind, handle.base_url());
        p.max_retries = 1;
        p.timeout_ms = 10_000;
        let name = format!("p{i}");
        cfg.providers.insert(name.clone(), p);
        cfg.models.insert(
            format!("{name}/m"),
            ModelConfig {
                cached_input_usd_per_mtok: Some(0.5),
                ..ModelConfig::chat(1.0, 2.0)
            },
        );
        if *wire == Wire::OpenAi {
            cfg.models
                .insert(format!("{name}/e"), ModelConfig::embedding(0.1));
        }
        chain.push(format!("{name}/m"));
        sims.push(handle);
    }
    cfg.aliases.insert("chain".into(), chain);
    tweak(&mut cfg);
    let gw = build(Gateway::builder(cfg)).build().await.expect("gateway");
    Env { gw, sims }
}

pub fn ctx() -> CallContext {
    ctx_with_deadline_ms(30_000)
}

pub fn ctx_with_deadline_ms(ms: u64) -> CallContext {
    CallContext::new(
        JobInfo {
            id: uuid::Uuid::new_v4(),
            plugin: "summarize".into(),
            tenant: "acme".into(),
            attempt: 1,
            max_attempts: 3,
            idempotency_key: None,
            tags: BTreeMap::from([("user".to_string(), "alice".to_string())]),
            deadline_unix_ms: sluice_types::job::now_unix_ms() + ms,
        },
        "sha256:test",
    )
}

/// Records alerts for assertions.
#[derive(Default)]
pub struct Alerts(pub Mutex<Vec<BudgetAlert>>);

impl AlertSink for Alerts {
    fn alert(&self, alert: &BudgetAlert) {
        self.0.lock().unwrap().push(alert.clone());
    }
}

pub fn shared_ledger() -> Arc<sluice_gateway::MemoryLedger> {
    Arc::new(sluice_gateway::MemoryLedger::new())
}

pub fn as_ledger(l: &Arc<sluice_gateway::MemoryLedger>) -> Arc<dyn Ledger> {
    l.clone()
}
