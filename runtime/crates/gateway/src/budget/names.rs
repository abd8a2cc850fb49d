//! The names budget windows have in the ledger, in one place: the gateway writes them, the
//! store keeps them (`budget_ledger` rows), the API reads a tenant's spend back by them and
//! alerts name them. A name changed here orphans the spend recorded under the old one.
//!
//! A window is a [`BudgetKey`]: the rule's ledger name ([`ledger_name`]), what it counts
//! ([`scope_name`]) and the period window ([`window_name`]).

use chrono::{DateTime, Utc};

use super::BudgetKey;
use crate::config::{BudgetScope, Period};

/// A rule's name in the ledger: its owner's name, prefixed by the tenant for a tenant's rule
/// (`acme/monthly`), so two tenants' rules of the same name never share spend.
pub fn ledger_name(tenant: Option<&str>, rule: &str) -> String {
    match tenant {
        Some(t) => format!("{t}/{rule}"),
        None => rule.to_string(),
    }
}

/// The name of a rule given none: what it counts and its period (`tag:user=*/day`,
/// `tenant:acme/month`, `job/total`).
pub fn rule_name(
    scope: BudgetScope,
    tag: Option<&str>,
    value: Option<&str>,
    period: Period,
) -> String {
    let what = match (scope, tag) {
        (BudgetScope::Job, _) => "job".to_string(),
        (BudgetScope::Tag, None) => "tag".to_string(),
        _ => scope_name(scope, tag, value.unwrap_or("*")),
    };
    let period = match period {
        Period::Day => "day",
        Period::Month => "month",
        Period::Total => "total",
    };
    format!("{what}/{period}")
}

/// What a window counts: `tenant:acme`, `plugin:summarize`, `tag:user=alice`, `job:<uuid>`.
/// `tag` is the tag's key (tag scope only); `value` the tenant, plugin, tag value or job id.
pub fn scope_name(scope: BudgetScope, tag: Option<&str>, value: &str) -> String {
    match scope {
        BudgetScope::Tenant => format!("tenant:{value}"),
        BudgetScope::Plugin => format!("plugin:{value}"),
        BudgetScope::Tag => format!("tag:{}={value}", tag.unwrap_or_default()),
        BudgetScope::Job => format!("job:{value}"),
    }
}

/// The period window containing `now`: `2025-06-01` (day), `2025-06` (month) or `total`.
pub fn window_name(period: Period, now: DateTime<Utc>) -> String {
    match period {
        Period::Day => now.format("%Y-%m-%d").to_string(),
        Period::Month => now.format("%Y-%m").to_string(),
        Period::Total => "total".into(),
    }
}

impl BudgetKey {
    /// The window of the rule with ledger name `budget` over `scope` for the period at `now`.
    pub fn at(budget: &str, scope: String, period: Period, now: DateTime<Utc>) -> Self {
        BudgetKey {
            budget: budget.to_string(),
            scope,
            window: window_name(period, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable() {
        // These are stored: a change here orphans recorded spend.
        assert_eq!(ledger_name(Some("acme"), "monthly"), "acme/monthly");
        assert_eq!(ledger_name(None, "monthly"), "monthly");
        assert_eq!(
            rule_name(BudgetScope::Tag, Some("user"), None, Period::Day),
            "tag:user=*/day"
        );
        assert_eq!(
            rule_name(BudgetScope::Tag, Some("user"), Some("al"), Period::Day),
            "tag:user=al/day"
        );
        assert_eq!(
            rule_name(BudgetScope::Tag, None, None, Period::Day),
            "tag/day"
        );
        assert_eq!(
            rule_name(BudgetScope::Tenant, None, Some("acme"), Period::Month),
            "tenant:acme/month"
        );
        assert_eq!(
            rule_name(BudgetScope::Plugin, None, None, Period::Total),
            "plugin:*/total"
        );
        assert_eq!(
            rule_name(BudgetScope::Job, None, Some("x"), Period::Total),
            "job/total"
        );
        assert_eq!(
            scope_name(BudgetScope::Tag, Some("user"), "al"),
            "tag:user=al"
        );
        assert_eq!(scope_name(BudgetScope::Job, None, "j1"), "job:j1");
        let now = "2025-06-03T10:00:00Z".parse().unwrap();
        assert_eq!(window_name(Period::Day, now), "2025-06-03");
        assert_eq!(window_name(Period::Month, now), "2025-06");
        assert_eq!(window_name(Period::Total, now), "total");
    }
}
