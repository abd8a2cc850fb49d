//! Hard budgets: scopes (tenant, plugin, tag, job) × periods (day, month, total).
//!
//! Before a call its worst-case cost is *reserved* in every budget that applies; a reservation
//! that would take any of them past its limit is refused and nothing is reserved. After the call
//! the reservation is *settled* to the actual cost, **never more than was reserved**: a provider
//! that reports more usage than the worst case allowed cannot push a budget past its limit (the
//! gateway warns and keeps the reported tokens in the call's record). Because the check and the
//! reservation are one atomic step, concurrent calls cannot overshoot together.
//!
//! Amounts are [`Micros`]: every sum saturates instead of wrapping.
//!
//! Accounting sits behind [`Ledger`] so a node can keep it in memory ([`MemoryLedger`]) or in the
//! database. Alerts go to an [`AlertSink`] once per threshold per budget window.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sluice_types::{CallContext, Micros};

use crate::config::{BudgetConfig, BudgetScope, Period};

pub mod lease;
pub mod names;

/// One budget window: which rule, over what, in which period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BudgetKey {
    /// The rule's name.
    pub budget: String,
    /// What is counted: `tenant:acme`, `plugin:summarize`, `tag:user=alice`, `job:<uuid>`.
    pub scope: String,
    /// The period window: `2025-06-01` (day), `2025-06` (month) or `total`.
    pub window: String,
}

/// A budget window with its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetLine {
    /// The window.
    pub key: BudgetKey,
    /// Hard limit, micro-dollars.
    pub limit_micros: u64,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The budget that would be exceeded.
    pub key: BudgetKey,
    /// Its limit.
    pub limit_micros: u64,
    /// Spent so far in the window.
    pub spent_micros: u64,
    /// Held by calls in flight.
    pub reserved_micros: u64,
    /// What the refused call asked for.
    pub requested_micros: u64,
}

/// A budget window's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    /// Spent, micro-dollars.
    pub spent_micros: u64,
    /// Held by calls in flight.
    pub reserved_micros: u64,
}

/// A ledger failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// A budget would be exceeded.
    #[error("budget {} ({}, {}) would be exceeded: limit {} µ$, spent {} µ$, reserved {} µ$, requested {} µ$",
        .0.key.budget, .0.key.scope, .0.key.window, .0.limit_micros, .0.spent_micros,
        .0.reserved_micros, .0.requested_micros)]
    Refused(Refusal),
    /// The ledger's storage failed.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// Budget accounting. Implementations must make [`Ledger::reserve`] atomic across all lines.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// If every line has room for `amount` (spent + reserved + amount ≤ limit), hold `amount`
    /// in each and return a reservation id; otherwise hold nothing and say which line refused.
    async fn reserve(&self, lines: &[BudgetLine], amount: u64) -> Result<u64, LedgerError>;

    /// Release reservation `id` of `reserved` and record `actual` as spent in each line
    /// (saturating). [`Budgets`] never passes an `actual` above `reserved`; an implementation
    /// given one records it regardless. Returns the levels after, in line order.
    async fn settle(
        &self,
        id: u64,
        lines: &[BudgetLine],
        reserved: u64,
        actual: u64,
    ) -> Result<Vec<Level>, LedgerError>;

    /// Note that alert `marker` (e.g. `80%`) fired for `key`; true the first time only.
    async fn mark_alert(&self, key: &BudgetKey, marker: &str) -> Result<bool, LedgerError>;

    /// A window's state.
    async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError>;

    /// Give back whatever this node holds of a shared budget and has not spent (on shutdown;
    /// see [`lease::LeasedLedger`]). Ledgers that hold nothing ahead do nothing.
    async fn release(&self) {}
}

/// A ledger in memory: for one node, tests, and as the reference implementation.
#[derive(Default)]
pub struct MemoryLedger {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    levels: HashMap<BudgetKey, Level>,
    alerts: HashSet<(BudgetKey, String)>,
    next_id: u64,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        MemoryLedger::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn reserve(&self, lines: &[BudgetLine], amount: u64) -> Result<u64, LedgerError> {
        let mut g = self.lock();
        for line in lines {
            let l = g.levels.get(&line.key).copied().unwrap_or_default();
            let after =
                Micros::new(l.spent_micros) + Micros::new(l.reserved_micros) + Micros::new(amount);
            if after > Micros::new(line.limit_micros) {
                return Err(LedgerError::Refused(Refusal {
                    key: line.key.clone(),
                    limit_micros: line.limit_micros,
                    spent_micros: l.spent_micros,
                    reserved_micros: l.reserved_micros,
                    requested_micros: amount,
                }));
            }
        }
        for line in lines {
            let l = g.levels.entry(line.key.clone()).or_default();
            l.reserved_micros = (Micros::new(l.reserved_micros) + Micros::new(amount)).get();
        }
        g.next_id += 1;
        Ok(g.next_id)
    }

    async fn settle(
        &self,
        _id: u64,
        lines: &[BudgetLine],
        reserved: u64,
        actual: u64,
    ) -> Result<Vec<Level>, LedgerError> {
        let mut g = self.lock();
        Ok(lines
            .iter()
            .map(|line| {
                let l = g.levels.entry(line.key.clone()).or_default();
                l.reserved_micros = l.reserved_micros.saturating_sub(reserved);
                l.spent_micros = (Micros::new(l.spent_micros) + Micros::new(actual)).get();
                *l
            })
            .collect())
    }

    async fn mark_alert(&self, key: &BudgetKey, marker: &str) -> Result<bool, LedgerError> {
        Ok(self.lock().alerts.insert((key.clone(), marker.to_string())))
    }

    async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError> {
        Ok(self.lock().levels.get(key).copied().unwrap_or_default())
    }
}

/// Why an alert fired.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertKind {
    /// Spend reached this fraction of the limit.
    Threshold {
        /// E.g. 0.8.
        fraction: f64,
    },
    /// A call was refused because it would exceed the budget.
    Refused,
}

/// A budget alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetAlert {
    /// The tenant that owns the rule (`None`: a rule from the node's config).
    pub tenant: Option<String>,
    /// The rule's name as its owner gave it.
    pub name: String,
    /// The budget window.
    pub key: BudgetKey,
    /// What happened.
    pub kind: AlertKind,
    /// Spent in the window, micro-dollars.
    pub spent_micros: u64,
    /// The limit.
    pub limit_micros: u64,
}

/// Where alerts go (webhook, log, …). Called inline: must not block.
pub trait AlertSink: Send + Sync {
    /// Deliver one alert.
    fn alert(&self, alert: &BudgetAlert);
}

/// Alerts to the log, at `warn`.
pub struct LogAlertSink;

impl AlertSink for LogAlertSink {
    fn alert(&self, a: &BudgetAlert) {
        match a.kind {
            AlertKind::Threshold { fraction } => tracing::warn!(
                budget = %a.key.budget, scope = %a.key.scope, window = %a.key.window,
                spent_micros = a.spent_micros, limit_micros = a.limit_micros,
                "budget {:.0}% spent", fraction * 100.0
            ),
            AlertKind::Refused => tracing::warn!(
                budget = %a.key.budget, scope = %a.key.scope, window = %a.key.window,
                spent_micros = a.spent_micros, limit_micros = a.limit_micros,
                "budget exhausted: a call was refused"
            ),
        }
    }
}

/// Alerts to several sinks.
pub struct FanoutAlertSink(pub Vec<Arc<dyn AlertSink>>);

impl AlertSink for FanoutAlertSink {
    fn alert(&self, a: &BudgetAlert) {
        for s in &self.0 {
            s.alert(a);
        }
    }
}

struct Rule {
    /// The owner's name for it.
    name: String,
    /// Its name in the ledger: the owner's name, prefixed by the tenant for tenant rules so
    /// two tenants' rules of the same name never share spend.
    key: String,
    tenant: Option<String>,
    scope: BudgetScope,
    tag: Option<String>,
    value: Option<String>,
    period: Period,
    limit_micros: u64,
    alerts: Vec<f64>,
}

/// A reservation held for one call.
#[derive(Debug)]
pub struct Hold {
    id: u64,
    lines: Vec<BudgetLine>,
    amount: Micros,
}

impl Hold {
    /// The amount held.
    pub fn amount(&self) -> Micros {
        self.amount
    }
}

/// The budget rules (from config, and tenants' rules set at run time), applied through a
/// ledger.
pub struct Budgets {
    rules: std::sync::RwLock<Arc<Vec<Rule>>>,
    ledger: Arc<dyn Ledger>,
    sink: Arc<dyn AlertSink>,
}

impl Budgets {
    /// Rules from config (validated), over `ledger`, alerting to `sink`.
    pub fn new(cfg: &[BudgetConfig], ledger: Arc<dyn Ledger>, sink: Arc<dyn AlertSink>) -> Self {
        Budgets {
            rules: std::sync::RwLock::new(Arc::new(Self::compile(cfg))),
            ledger,
            sink,
        }
    }

    /// Replace the rules (e.g. after a tenant changed theirs). Calls in flight settle against
    /// the windows they reserved in.
    pub fn set_rules(&self, cfg: &[BudgetConfig]) {
        let rules = Arc::new(Self::compile(cfg));
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }

    fn rules(&self) -> Arc<Vec<Rule>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn compile(cfg: &[BudgetConfig]) -> Vec<Rule> {
        cfg.iter()
            .map(|b| {
                let mut alerts = b.alerts.clone();
                alerts.sort_by(f64::total_cmp);
                let name = b.display_name();
                Rule {
                    key: names::ledger_name(b.tenant.as_deref(), &name),
                    name,
                    tenant: b.tenant.clone(),
                    scope: b.scope,
                    tag: b.tag.clone(),
                    value: b.value.clone(),
                    period: b.period,
                    // Validated finite and non-negative; a bad value would mean "no room".
                    limit_micros: Micros::from_usd(b.limit_usd).unwrap_or(Micros::ZERO).get(),
                    alerts,
                }
            })
            .collect()
    }

    /// Whether any rule exists (the fast path skips the ledger otherwise).
    pub fn is_empty(&self) -> bool {
        self.rules().is_empty()
    }

    /// The budget windows that apply to a call made by `ctx`'s job at `now`.
    pub fn lines_for(&self, ctx: &CallContext, now: DateTime<Utc>) -> Vec<BudgetLine> {
        let job = &ctx.job;
        self.rules()
            .iter()
            .filter(|r| r.tenant.as_ref().is_none_or(|t| *t == job.tenant))
            .filter_map(|r| {
                let value = match r.scope {
                    BudgetScope::Tenant => job.tenant.clone(),
                    BudgetScope::Plugin => job.plugin.clone(),
                    BudgetScope::Tag => job.tags.get(r.tag.as_deref()?)?.clone(),
                    BudgetScope::Job => job.id.to_string(),
                };
                if r.value.as_ref().is_some_and(|v| *v != value) {
                    return None;
                }
                let scope = names::scope_name(r.scope, r.tag.as_deref(), &value);
                Some(BudgetLine {
                    key: BudgetKey::at(&r.key, scope, r.period, now),
                    limit_micros: r.limit_micros,
                })
            })
            .collect()
    }

    /// Hold `amount` in every budget that applies to `ctx`. `Ok(None)` when none applies.
    pub async fn reserve(
        &self,
        ctx: &CallContext,
        amount: Micros,
    ) -> Result<Option<Hold>, LedgerError> {
        if self.rules().is_empty() {
            return Ok(None);
        }
        let lines = self.lines_for(ctx, Utc::now());
        if lines.is_empty() {
            return Ok(None);
        }
        match self.ledger.reserve(&lines, amount.get()).await {
            Ok(id) => Ok(Some(Hold { id, lines, amount })),
            Err(LedgerError::Refused(r)) => {
                metrics::counter!("sluice_budget_refusals_total", "budget" => self.metric_label(&r.key.budget))
                    .increment(1);
                if self
                    .ledger
                    .mark_alert(&r.key, "refused")
                    .await
                    .unwrap_or(false)
                {
                    let (tenant, name) = self.owner(&r.key.budget);
                    self.sink.alert(&BudgetAlert {
                        tenant,
                        name,
                        key: r.key.clone(),
                        kind: AlertKind::Refused,
                        spent_micros: r.spent_micros,
                        limit_micros: r.limit_micros,
                    });
                }
                Err(LedgerError::Refused(r))
            }
            Err(e) => Err(e),
        }
    }

    /// Settle a hold to the actual cost and fire threshold alerts that are now due. At most
    /// the amount held is charged: the reservation was checked against every limit, more was
    /// not (a larger `actual` is logged and cut to the hold).
    pub async fn settle(&self, hold: Hold, actual: Micros) {
        let actual = if actual > hold.amount {
            tracing::warn!(
                actual = actual.get(),
                held = hold.amount.get(),
                "a call cost more than its reservation; charging the reservation"
            );
            hold.amount
        } else {
            actual
        };
        let levels = match self
            .ledger
            .settle(hold.id, &hold.lines, hold.amount.get(), actual.get())
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "budget ledger failed to settle a reservation");
                return;
            }
        };
        let rules = self.rules();
        for (line, level) in hold.lines.iter().zip(levels) {
            let Some(rule) = rules.iter().find(|r| r.key == line.key.budget) else {
                continue;
            };
            for &t in &rule.alerts {
                let due = line.limit_micros == 0
                    || level.spent_micros as f64 >= t * line.limit_micros as f64;
                if !due || level.spent_micros == 0 {
                    continue;
                }
                let marker = format!("{:.0}%", t * 100.0);
                if self
                    .ledger
                    .mark_alert(&line.key, &marker)
                    .await
                    .unwrap_or(false)
                {
                    self.sink.alert(&BudgetAlert {
                        tenant: rule.tenant.clone(),
                        name: rule.name.clone(),
                        key: line.key.clone(),
                        kind: AlertKind::Threshold { fraction: t },
                        spent_micros: level.spent_micros,
                        limit_micros: line.limit_micros,
                    });
                }
            }
        }
    }

    /// Give back budget this node holds and has not spent (on shutdown).
    pub async fn release(&self) {
        self.ledger.release().await;
    }

    /// The `budget` label of a refusal: the name of a rule from the node's config (the
    /// operator's, so bounded), `tenant` for any tenant's own rule (tenants choose those names:
    /// they never become labels), `unknown` for a rule replaced meanwhile.
    fn metric_label(&self, key: &str) -> String {
        match self.rules().iter().find(|r| r.key == key) {
            Some(r) if r.tenant.is_none() => r.name.clone(),
            Some(_) => "tenant".into(),
            None => "unknown".into(),
        }
    }

    /// The owner and owner's name of the rule with ledger name `key`.
    fn owner(&self, key: &str) -> (Option<String>, String) {
        self.rules()
            .iter()
            .find(|r| r.key == key)
            .map(|r| (r.tenant.clone(), r.name.clone()))
            .unwrap_or_else(|| (None, key.to_string()))
    }

    /// The least room left in any budget that applies to `ctx` (`None`: no budget applies).
    pub async fn remaining(&self, ctx: &CallContext) -> Option<u64> {
        let mut least: Option<u64> = None;
        for line in self.lines_for(ctx, Utc::now()) {
            let l = self.ledger.level(&line.key).await.unwrap_or_default();
            let used = Micros::new(l.spent_micros) + Micros::new(l.reserved_micros);
            let left = line.limit_micros.saturating_sub(used.get());
            least = Some(least.map_or(left, |x| x.min(left)));
        }
        least
    }

    /// Record a cost the gateway did not see (e.g. a paid API the handler called), refusing it
    /// when it would exceed a budget.
    pub async fn charge(&self, ctx: &CallContext, cost_micros: Micros) -> Result<(), LedgerError> {
        if let Some(hold) = self.reserve(ctx, cost_micros).await? {
            self.settle(hold, cost_micros).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(limit: u64) -> BudgetLine {
        BudgetLine {
            key: BudgetKey {
                budget: "b".into(),
                scope: "tenant:t".into(),
                window: "total".into(),
            },
            limit_micros: limit,
        }
    }

    #[tokio::test]
    async fn huge_amounts_saturate_and_are_refused() {
        let l = MemoryLedger::new();
        // The largest limit config accepts: $1e12.
        let limit = 1_000_000_000_000_000_000;
        let a = line(limit);
        let lines = [a.clone()];
        assert!(matches!(
            l.reserve(&lines, u64::MAX).await,
            Err(LedgerError::Refused(_))
        ));
        let id = l.reserve(&lines, limit).await.unwrap();
        assert!(
            matches!(
                l.reserve(&lines, u64::MAX).await,
                Err(LedgerError::Refused(_))
            ),
            "spent + reserved + amount saturates instead of wrapping to a small sum"
        );
        l.settle(id, &lines, limit, u64::MAX).await.unwrap();
        let err = l.reserve(&lines, 0).await.unwrap_err();
        assert!(matches!(err, LedgerError::Refused(_)), "over the limit");
        l.settle(0, &lines, 0, u64::MAX).await.unwrap();
        assert_eq!(
            l.level(&a.key).await.unwrap(),
            Level {
                spent_micros: u64::MAX,
                reserved_micros: 0
            },
            "saturated, not wrapped"
        );
    }

    #[tokio::test]
    async fn reserve_is_all_or_nothing() {
        let l = MemoryLedger::new();
        let a = line(100);
        let mut b = line(50);
        b.key.budget = "other".into();
        let lines = [a.clone(), b.clone()];
        let id = l.reserve(&lines, 40).await.unwrap();
        assert!(
            matches!(l.reserve(&lines, 20).await, Err(LedgerError::Refused(r)) if r.key == b.key)
        );
        assert_eq!(l.level(&a.key).await.unwrap().reserved_micros, 40);
        l.settle(id, &lines, 40, 10).await.unwrap();
        assert_eq!(
            l.level(&b.key).await.unwrap(),
            Level {
                spent_micros: 10,
                reserved_micros: 0
            }
        );
        assert!(l.mark_alert(&a.key, "50%").await.unwrap());
        assert!(!l.mark_alert(&a.key, "50%").await.unwrap());
    }
}
