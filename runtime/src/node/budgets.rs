//! Budgets at run time: the node's configured rules plus every tenant's rules from the store,
//! handed to the gateway; and alerts routed to the log and to webhooks through the outbox.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_gateway::budget::{AlertKind, AlertSink, BudgetAlert, LogAlertSink};
use sluice_gateway::{BudgetConfig, BudgetScope, Period};
use sluice_store::{BudgetRecord, JobStore, NewDelivery};
use sluice_types::Micros;
use tokio::sync::mpsc;

/// The tenant whose secret signs alerts of rules from the node's config
/// (`sluice keys webhook-secret --tenant _system`).
pub const SYSTEM_TENANT: &str = "_system";

/// Where a budget's alerts are POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    /// The receiver; signed like job webhooks with the owning tenant's secret.
    pub url: String,
}

/// A tenant's budget rule, as `PUT /v1/budgets/{name}` takes it and the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// What is counted: `tenant` (the whole tenant), `plugin`, `tag` or `job`.
    pub scope: BudgetScope,
    /// The tag key, for `scope = "tag"` (e.g. `user`).
    #[serde(default)]
    pub tag: Option<String>,
    /// Only this plugin / tag value; absent: each value has its own budget.
    #[serde(default)]
    pub value: Option<String>,
    /// When spend resets: `day`, `month` or `total`.
    pub period: Period,
    /// Hard limit in US dollars.
    pub limit_usd: f64,
    /// Fractions of the limit at which an alert fires, once per period each.
    #[serde(default = "default_alerts")]
    pub alerts: Vec<f64>,
    /// Also POST alerts here.
    #[serde(default)]
    pub webhook: Option<AlertWebhook>,
}

fn default_alerts() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

impl BudgetSpec {
    /// The gateway rule for `tenant`'s budget `name`.
    pub fn rule(&self, tenant: &str, name: &str) -> BudgetConfig {
        BudgetConfig {
            name: Some(name.to_string()),
            scope: self.scope,
            tag: self.tag.clone(),
            value: self.value.clone(),
            tenant: Some(tenant.to_string()),
            period: self.period,
            limit_usd: self.limit_usd,
            alerts: self.alerts.clone(),
        }
    }

    /// Check the rule as `tenant` would set it.
    pub fn validate(&self, tenant: &str, name: &str) -> Result<(), String> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(
                "a budget name is 1-64 characters of letters, digits, `-`, `_` and `.`".into(),
            );
        }
        if self.scope == BudgetScope::Tenant && self.value.as_ref().is_some_and(|v| v != tenant) {
            return Err("a tenant budget can only limit your own tenant; leave `value` out".into());
        }
        if self.alerts.len() > 10 {
            return Err("at most 10 alert thresholds".into());
        }
        self.rule(tenant, name).validate()
    }
}

/// Alert URLs by (owning tenant, rule name); `None` tenant: the node's config rules.
pub type AlertTargets = HashMap<(Option<String>, String), String>;

/// Turns alerts into log lines and, where the rule has a webhook, outbox deliveries.
pub struct AlertRouter {
    targets: RwLock<AlertTargets>,
    tx: mpsc::UnboundedSender<NewDelivery>,
}

impl AlertRouter {
    /// A router whose deliveries are written to `store` by a background task.
    pub fn spawn(store: Arc<dyn JobStore>) -> Arc<AlertRouter> {
        let (tx, mut rx) = mpsc::unbounded_channel::<NewDelivery>();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                // An alert that cannot be queued is still in the log (the router logs first).
                if let Err(e) = store.webhook_enqueue(&d).await {
                    tracing::error!(error = %e, url = %d.url, "queueing a budget alert webhook failed");
                }
            }
        });
        Arc::new(AlertRouter {
            targets: RwLock::new(HashMap::new()),
            tx,
        })
    }

    fn set_targets(&self, targets: AlertTargets) {
        *self.targets.write().unwrap_or_else(|p| p.into_inner()) = targets;
    }
}

impl AlertSink for AlertRouter {
    fn alert(&self, a: &BudgetAlert) {
        LogAlertSink.alert(a);
        let url = self
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(a.tenant.clone(), a.name.clone()))
            .cloned();
        let Some(url) = url else { return };
        let (kind, fraction) = match a.kind {
            AlertKind::Threshold { fraction } => ("threshold", Some(fraction)),
            AlertKind::Refused => ("refused", None),
        };
        let payload = json!({
            "budget": a.name,
            "kind": kind,
            "threshold": fraction,
            "scope": a.key.scope,
            "window": a.key.window,
            "spent_usd": Micros::new(a.spent_micros).to_usd(),
            "limit_usd": Micros::new(a.limit_micros).to_usd(),
            "spent_micros": a.spent_micros,
            "limit_micros": a.limit_micros,
            "at": chrono::Utc::now(),
        });
        let _ = self.tx.send(NewDelivery {
            tenant: a.tenant.clone().unwrap_or_else(|| SYSTEM_TENANT.into()),
            job_id: None,
            url,
            event: "budget.alert".into(),
            payload: Some(payload),
        });
    }
}

/// The rules a node enforces: its config's plus every tenant's stored rule. A stored rule that
/// no longer parses is skipped (and logged) rather than dropping every budget.
pub fn compile(
    configured: &[BudgetConfig],
    alert_url: Option<&str>,
    stored: &[BudgetRecord],
) -> (Vec<BudgetConfig>, AlertTargets) {
    let mut rules = configured.to_vec();
    let mut targets = HashMap::new();
    if let Some(url) = alert_url {
        for r in configured {
            targets.insert((None, r.display_name()), url.to_string());
        }
    }
    for rec in stored {
        match serde_json::from_value::<BudgetSpec>(rec.spec.clone()) {
            Ok(spec) => {
                if let Some(w) = &spec.webhook {
                    targets.insert((Some(rec.tenant.clone()), rec.name.clone()), w.url.clone());
                }
                rules.push(spec.rule(&rec.tenant, &rec.name));
            }
            Err(e) => tracing::error!(
                tenant = %rec.tenant, budget = %rec.name, error = %e,
                "a stored budget rule does not parse; it is not enforced"
            ),
        }
    }
    (rules, targets)
}

/// Load the stored rules and apply them to the node's gateway and alert routing.
pub async fn refresh(node: &super::Node) -> anyhow::Result<()> {
    let stored = node.store.list_budgets(None).await?;
    let (rules, targets) = compile(
        &node.config.gateway.budgets,
        node.config.webhooks.alert_url.as_deref(),
        &stored,
    );
    node.gateway.set_budgets(&rules)?;
    node.alerts.set_targets(targets);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Result<BudgetSpec, serde_json::Error> {
        serde_json::from_value(v)
    }

    #[test]
    fn specs_are_checked_for_the_owner() {
        let ok =
            spec(json!({"scope": "tag", "tag": "user", "period": "day", "limit_usd": 5})).unwrap();
        assert!(ok.validate("acme", "per-user").is_ok());
        assert!(ok.validate("acme", "bad name!").is_err());
        let other =
            spec(json!({"scope": "tenant", "value": "globex", "period": "day", "limit_usd": 5}))
                .unwrap();
        assert!(other.validate("acme", "steal").is_err());
        let no_tag = spec(json!({"scope": "tag", "period": "day", "limit_usd": 5})).unwrap();
        assert!(no_tag.validate("acme", "x").unwrap_err().contains("tag"));
        assert!(
            spec(json!({"scope": "tenant", "period": "day", "limit_usd": 5, "extra": 1})).is_err()
        );
        let rule = ok.rule("acme", "per-user");
        assert_eq!(rule.tenant.as_deref(), Some("acme"));
    }
}
