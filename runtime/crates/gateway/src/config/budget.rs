//! `[[gateway.budgets]]` and `[gateway.budget_lease]`: hard budget rules, and how nodes that
//! share a database lease them in slices.

use serde::{Deserialize, Serialize};

/// `[gateway.budget_lease]`: nodes that share a database lease hard budgets in slices, so a
/// call spends from memory and the database sees one write per slice. Off: every call
/// reserves and settles in the database (two writes per call, serialised per window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetLeaseConfig {
    /// Lease budget in slices (default true).
    pub enabled: bool,
    /// A slice asks for this many calls' worth of the call that needs it (default 256).
    pub calls_per_slice: u64,
    /// A slice is at most 1/`share` of what is left in the window (default 8), so other nodes
    /// still find room; near the limit slices shrink to the call that needs them.
    pub share: u64,
    /// A lease unused this long gives its unspent rest back (default 2000).
    pub idle_ms: u64,
}

impl Default for BudgetLeaseConfig {
    fn default() -> Self {
        let d = crate::budget::lease::LeaseConfig::default();
        BudgetLeaseConfig {
            enabled: true,
            calls_per_slice: d.calls_per_slice,
            share: d.share,
            idle_ms: d.idle.as_millis() as u64,
        }
    }
}

impl BudgetLeaseConfig {
    /// The ledger's settings (zeros count as 1; the sweep runs four times per idle period).
    pub fn lease_config(&self) -> crate::budget::lease::LeaseConfig {
        let idle = std::time::Duration::from_millis(self.idle_ms.max(1));
        crate::budget::lease::LeaseConfig {
            calls_per_slice: self.calls_per_slice.max(1),
            share: self.share.max(1),
            idle,
            sweep: idle / 4,
        }
    }
}

/// What a budget is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetScope {
    /// A tenant.
    Tenant,
    /// A plugin.
    Plugin,
    /// A job tag (`tag = "user"`).
    Tag,
    /// One job (all its attempts).
    Job,
}

/// When a budget's spend resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// UTC calendar day.
    Day,
    /// UTC calendar month.
    Month,
    /// Never.
    Total,
}

/// One hard budget rule.
///
/// `scope = "tag", tag = "user"` with no `value` gives every user their own budget;
/// `value = "alice"` limits only alice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// A name for alerts and errors; defaults to a description of the rule.
    #[serde(default)]
    pub name: Option<String>,
    /// What is counted.
    pub scope: BudgetScope,
    /// The tag key, for `scope = "tag"`.
    #[serde(default)]
    pub tag: Option<String>,
    /// Only this tenant / plugin / tag value; absent: each value has its own budget.
    #[serde(default)]
    pub value: Option<String>,
    /// Only jobs of this tenant. Rules a tenant sets through the API carry it; its ledger
    /// entries are kept apart from other tenants' rules of the same name.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Reset period.
    pub period: Period,
    /// Hard limit, US dollars.
    pub limit_usd: f64,
    /// Fractions of the limit at which an alert fires (once per period each).
    #[serde(default = "d_alerts")]
    pub alerts: Vec<f64>,
}

impl BudgetConfig {
    /// The rule's name: as given, or a description of what it counts (`tag:user=*/day`).
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => crate::budget::names::rule_name(
                self.scope,
                self.tag.as_deref(),
                self.value.as_deref(),
                self.period,
            ),
        }
    }

    /// Check the rule on its own: a usable limit, `tag` exactly for tag scope, sane alerts.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.limit_usd.is_finite() && self.limit_usd >= 0.0) {
            return Err("limit_usd must be finite and non-negative".into());
        }
        if self.limit_usd > 1e12 {
            return Err("limit_usd is larger than any budget can be (1e12)".into());
        }
        match (self.scope, &self.tag) {
            (BudgetScope::Tag, None) => return Err("scope = \"tag\" needs `tag`".into()),
            (BudgetScope::Tag, Some(_)) => {}
            (_, Some(_)) => return Err("`tag` is only for scope = \"tag\"".into()),
            _ => {}
        }
        if self.scope == BudgetScope::Job && self.value.is_some() {
            return Err("a job budget applies to every job; it takes no `value`".into());
        }
        if self
            .alerts
            .iter()
            .any(|a| !(a.is_finite() && *a > 0.0 && *a <= 10.0))
        {
            return Err("alert thresholds must be positive fractions (0.8 = 80%)".into());
        }
        Ok(())
    }
}

fn d_alerts() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}
