//! Operational alerts: rules in `[alerts]` evaluated by the runtime every `interval_secs`.
//!
//! Kinds: `dlq_depth` (dead jobs ≥ threshold), `dlq_growth` (jobs that died within the last
//! `window_secs` ≥ threshold), `error_rate` (a plugin's failed attempts / attempts over the
//! window ≥ threshold, once it has `min_attempts`), `p95_latency` (a plugin's attempt p95 in
//! seconds ≥ threshold, likewise) and `breaker_open` (a provider's circuit breaker is open).
//!
//! Each rule fires once per episode: on the evaluation where its condition becomes true it
//! logs a warning and queues an `alert.firing` delivery; on the one where it becomes false
//! again, an info line and an `alert.resolved` delivery. Deliveries go through the signed
//! webhook outbox (signed with the `_system` tenant's secret, `Sluice-Event: alert.firing |
//! alert.resolved`) to `[alerts] url`, else `[webhooks] alert_url`; with neither, the log only.
//!
//! Every node evaluates the rules (DLQ rules read the shared store, plugin rules the node's own
//! attempts, breaker rules its own breakers), and the episode is the cluster's: it lives in the
//! store's key/value state (tenant `_system`, plugin `_alerts`, out of every tenant's reach),
//! moved by compare-and-swap, so among nodes that see a rule go over at the same time exactly
//! one wins the swap and queues the `alert.firing`. Each node marks the rules it sees over
//! (a key that expires after [`mark_ttl`], so a node that died stops holding an episode open);
//! the episode resolves, once, when no node's mark is left.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sluice_store::NewDelivery;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::node::budgets::SYSTEM_TENANT;

/// Most rules a node evaluates.
pub const MAX_RULES: usize = 100;
/// Longest window of a rule.
pub const MAX_WINDOW_SECS: u64 = 7 * 24 * 3600;
/// Attempts remembered per watched plugin (the oldest are dropped past it).
pub const MAX_SAMPLES_PER_PLUGIN: usize = 10_000;

/// `[alerts]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Where alerts are POSTed; default `[webhooks] alert_url`.
    pub url: Option<String>,
    /// How often the rules are evaluated, in seconds (fractions allowed, at least 0.05).
    pub interval_secs: f64,
    /// The rules.
    pub rules: Vec<AlertRule>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            url: None,
            interval_secs: 30.0,
            rules: Vec::new(),
        }
    }
}

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Dead jobs (optionally of one tenant / plugin) ≥ threshold.
    DlqDepth,
    /// Growth of the dead-letter queue over the window ≥ threshold.
    DlqGrowth,
    /// Failed fraction of a plugin's attempts over the window ≥ threshold.
    ErrorRate,
    /// p95 of a plugin's attempt durations over the window, in seconds, ≥ threshold.
    P95Latency,
    /// A provider's breaker is open.
    BreakerOpen,
}

/// `[[alerts.rules]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Unique name, in the payload and the log.
    pub name: String,
    /// What it watches.
    pub kind: RuleKind,
    /// The value at or above which it fires (jobs, a fraction, or seconds).
    #[serde(default = "one")]
    pub threshold: f64,
    /// The window of `dlq_growth`, `error_rate` and `p95_latency`, in seconds.
    #[serde(default = "five_minutes")]
    pub window_secs: u64,
    /// The tenant of the plugin (`error_rate`, `p95_latency`; optional for DLQ rules).
    #[serde(default)]
    pub tenant: Option<String>,
    /// The plugin (`error_rate`, `p95_latency`; optional for DLQ rules).
    #[serde(default)]
    pub plugin: Option<String>,
    /// The provider (`breaker_open`).
    #[serde(default)]
    pub provider: Option<String>,
    /// Attempts needed in the window before `error_rate` / `p95_latency` can fire.
    #[serde(default = "ten")]
    pub min_attempts: u64,
}

fn one() -> f64 {
    1.0
}
fn five_minutes() -> u64 {
    300
}
fn ten() -> u64 {
    10
}

impl AlertsConfig {
    /// Check the rules (names unique, fields each kind needs, bounds).
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} alert rules"));
        }
        if !(0.05..=86_400.0).contains(&self.interval_secs) {
            return Err("alerts.interval_secs must be 0.05 to 86400".into());
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.rules {
            if r.name.is_empty() || r.name.len() > 64 || !names.insert(r.name.as_str()) {
                return Err(format!(
                    "alert rule names are unique, 1-64 characters: {:?}",
                    r.name
                ));
            }
            if !r.threshold.is_finite() || r.threshold < 0.0 {
                return Err(format!(
                    "alert {}: threshold must be a finite number ≥ 0",
                    r.name
                ));
            }
            if r.window_secs == 0 || r.window_secs > MAX_WINDOW_SECS {
                return Err(format!(
                    "alert {}: window_secs must be 1 to {MAX_WINDOW_SECS}",
                    r.name
                ));
            }
            let plugin_rule = matches!(r.kind, RuleKind::ErrorRate | RuleKind::P95Latency);
            if plugin_rule && (r.tenant.is_none() || r.plugin.is_none()) {
                return Err(format!("alert {}: needs `tenant` and `plugin`", r.name));
            }
            if r.kind == RuleKind::ErrorRate && r.threshold > 1.0 {
                return Err(format!(
                    "alert {}: an error rate threshold is 0 to 1",
                    r.name
                ));
            }
            if r.kind == RuleKind::BreakerOpen && r.provider.is_none() {
                return Err(format!("alert {}: needs `provider`", r.name));
            }
        }
        Ok(())
    }
}

/// One attempt: when it ended, whether it completed, how long it ran (seconds).
type Sample = (Instant, bool, f64);

/// Recent attempts of the plugins alert rules watch (only those: memory is bounded by the
/// rules, not by what tenants deploy).
#[derive(Default)]
struct Observations {
    watched: HashMap<(String, String), VecDeque<Sample>>,
}

fn observations() -> &'static Mutex<Observations> {
    static OBS: OnceLock<Mutex<Observations>> = OnceLock::new();
    OBS.get_or_init(Mutex::default)
}

fn lock_obs() -> std::sync::MutexGuard<'static, Observations> {
    observations().lock().unwrap_or_else(|p| p.into_inner())
}

/// An attempt of `tenant`/`plugin` ended (called by the worker). A no-op unless a rule
/// watches that plugin.
pub fn observe_attempt(tenant: &str, plugin: &str, ok: bool, seconds: f64) {
    let mut obs = lock_obs();
    if obs.watched.is_empty() {
        return;
    }
    if let Some(q) = obs
        .watched
        .get_mut(&(tenant.to_string(), plugin.to_string()))
    {
        if q.len() >= MAX_SAMPLES_PER_PLUGIN {
            q.pop_front();
        }
        q.push_back((Instant::now(), ok, seconds));
    }
}

/// The state of one rule between evaluations.
#[derive(Default)]
struct RuleState {
    /// Whether this node's mark (it saw the rule over) is set in the store.
    marked: bool,
    /// `(when, dead jobs)` samples of `dlq_growth`.
    depths: VecDeque<(Instant, u64)>,
}

/// Evaluate `node`'s `[alerts]` rules every `interval_secs` until `stop` (returns at once
/// when there are no rules). The caller validates the rules first ([`AlertsConfig::validate`];
/// [`crate::node::Node::start_roles`] does).
pub async fn run(node: Node, stop: CancellationToken) {
    let cfg = node.config.alerts.clone();
    if cfg.rules.is_empty() {
        return;
    }
    {
        let mut obs = lock_obs();
        for r in &cfg.rules {
            if let (Some(t), Some(p)) = (&r.tenant, &r.plugin)
                && matches!(r.kind, RuleKind::ErrorRate | RuleKind::P95Latency)
            {
                obs.watched.entry((t.clone(), p.clone())).or_default();
            }
        }
    }
    let url = cfg
        .url
        .clone()
        .or_else(|| node.config.webhooks.alert_url.clone());
    let cluster = Cluster {
        node_id: uuid::Uuid::new_v4().simple().to_string(),
        mark_ttl: mark_ttl(cfg.interval_secs),
    };
    let mut states: Vec<RuleState> = cfg.rules.iter().map(|_| RuleState::default()).collect();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(cfg.interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (rule, state) in cfg.rules.iter().zip(states.iter_mut()) {
            match evaluate(&node, rule, state).await {
                Ok(value) => {
                    if let Err(e) =
                        transition(&node, &cluster, url.as_deref(), rule, state, value).await
                    {
                        tracing::warn!(alert = %rule.name, error = %e, "recording an alert's episode failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(alert = %rule.name, error = %e, "evaluating an alert rule failed")
                }
            }
        }
    }
}

/// The rule's current value and whether it is at or over its threshold.
async fn evaluate(
    node: &Node,
    rule: &AlertRule,
    state: &mut RuleState,
) -> anyhow::Result<(f64, bool)> {
    let window = Duration::from_secs(rule.window_secs);
    Ok(match rule.kind {
        RuleKind::DlqDepth => {
            let n = dead(node, rule).await? as f64;
            (n, n >= rule.threshold)
        }
        RuleKind::DlqGrowth => {
            let now = Instant::now();
            let n = dead(node, rule).await?;
            state.depths.push_back((now, n));
            // Keep one sample at or before the window's start to measure from.
            while state.depths.len() > 1
                && state
                    .depths
                    .get(1)
                    .is_some_and(|(t, _)| now.duration_since(*t) >= window)
            {
                state.depths.pop_front();
            }
            let base = state.depths.front().map_or(n, |(_, d)| *d);
            let growth = n.saturating_sub(base) as f64;
            (growth, growth >= rule.threshold && growth > 0.0)
        }
        RuleKind::ErrorRate | RuleKind::P95Latency => {
            let key = (
                rule.tenant.clone().unwrap_or_default(),
                rule.plugin.clone().unwrap_or_default(),
            );
            let mut obs = lock_obs();
            let q = obs.watched.entry(key).or_default();
            let now = Instant::now();
            while q
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > window)
            {
                q.pop_front();
            }
            if (q.len() as u64) < rule.min_attempts.max(1) {
                return Ok((0.0, false));
            }
            let value = if rule.kind == RuleKind::ErrorRate {
                q.iter().filter(|(_, ok, _)| !ok).count() as f64 / q.len() as f64
            } else {
                let mut d: Vec<f64> = q.iter().map(|(_, _, s)| *s).collect();
                d.sort_by(f64::total_cmp);
                d[((d.len() as f64 * 0.95).ceil() as usize).clamp(1, d.len()) - 1]
            };
            (value, value >= rule.threshold)
        }
        RuleKind::BreakerOpen => {
            let open = rule
                .provider
                .as_deref()
                .and_then(|p| node.gateway.breaker_state(p))
                .is_some_and(|s| s == sluice_gateway::breaker::BreakerState::Open);
            (f64::from(u8::from(open)), open)
        }
    })
}

async fn dead(node: &Node, rule: &AlertRule) -> anyhow::Result<u64> {
    Ok(match (&rule.tenant, &rule.plugin) {
        (None, None) => node.store.queue_stats().await?.dead,
        (t, p) => node.store.count_dead(t.as_deref(), p.as_deref()).await?,
    })
}

/// This node in the cluster's alert state.
struct Cluster {
    /// Names this node's marks (a random id per process).
    node_id: String,
    mark_ttl: Duration,
}

/// How long a node's mark outlives its last evaluation: three intervals, at least 3 s.
pub fn mark_ttl(interval_secs: f64) -> Duration {
    Duration::from_secs_f64((interval_secs * 3.0).max(3.0))
}

/// Where episodes and marks live.
fn scope() -> sluice_types::StateScope {
    sluice_types::StateScope {
        tenant: SYSTEM_TENANT.into(),
        plugin: "_alerts".into(),
    }
}

/// The episode key of a rule, and the prefix of its nodes' marks (the name hex-encoded, so
/// one rule's prefix never covers another's keys).
fn keys(rule: &AlertRule) -> (String, String) {
    let name = hex::encode(rule.name.as_bytes());
    (format!("episode/{name}"), format!("over/{name}/"))
}

/// A rule's episode as stored: firing since `since`, or resolved (the last one's `since`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Episode {
    firing: bool,
    since: chrono::DateTime<chrono::Utc>,
}

/// Mark or unmark this node, then move the cluster's episode if it must change: fire when a
/// node sees the rule over and no episode is open, resolve when one is open and no node's
/// mark is left. The change is a compare-and-swap on the episode: of the nodes that try it
/// at once, one wins and queues the delivery; the others see it done.
async fn transition(
    node: &Node,
    cluster: &Cluster,
    url: Option<&str>,
    rule: &AlertRule,
    state: &mut RuleState,
    (value, over): (f64, bool),
) -> anyhow::Result<()> {
    let kv = &node.services.state;
    let scope = scope();
    let (episode_key, marks) = keys(rule);
    let mark = format!("{marks}{}", cluster.node_id);
    if over {
        kv.set(&scope, &mark, "1", Some(cluster.mark_ttl)).await?;
        state.marked = true;
    } else if state.marked {
        kv.delete(&scope, &mark).await?;
        state.marked = false;
    }
    let raw = kv.get(&scope, &episode_key).await?;
    let current: Option<Episode> = raw.as_deref().and_then(|r| serde_json::from_str(r).ok());
    let open = current.as_ref().is_some_and(|e| e.firing);
    let now = chrono::Utc::now();
    let (event, next) = match (open, over) {
        (false, true) => (
            "alert.firing",
            Episode {
                firing: true,
                since: now,
            },
        ),
        (true, false) if kv.list_keys(&scope, &marks, 1).await?.is_empty() => (
            "alert.resolved",
            Episode {
                firing: false,
                since: current.as_ref().map_or(now, |e| e.since),
            },
        ),
        _ => return Ok(()),
    };
    let next_raw = serde_json::to_string(&next)?;
    if !kv
        .compare_and_swap(&scope, &episode_key, raw.as_deref(), &next_raw)
        .await?
    {
        // Another node moved the episode first; it queues the delivery.
        return Ok(());
    }
    if event == "alert.firing" {
        tracing::warn!(alert = %rule.name, kind = ?rule.kind, value, threshold = rule.threshold, "alert firing");
    } else {
        tracing::info!(alert = %rule.name, kind = ?rule.kind, value, firing_since = %next.since, "alert resolved");
    }
    metrics::counter!("sluice_alerts_total", "event" => event).increment(1);
    let Some(url) = url else { return Ok(()) };
    let payload = json!({
        "alert": rule.name,
        "kind": rule.kind,
        "status": if event == "alert.firing" { "firing" } else { "resolved" },
        "value": value,
        "threshold": rule.threshold,
        "window_secs": rule.window_secs,
        "tenant": rule.tenant,
        "plugin": rule.plugin,
        "provider": rule.provider,
        "since": next.since,
        "at": now,
    });
    let delivery = NewDelivery {
        tenant: SYSTEM_TENANT.into(),
        job_id: None,
        url: url.to_string(),
        event: event.into(),
        payload: Some(payload),
    };
    if let Err(e) = node.store.webhook_enqueue(&delivery).await {
        tracing::error!(alert = %rule.name, error = %e, "queueing an alert webhook failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind) -> AlertRule {
        AlertRule {
            name: "r".into(),
            kind,
            threshold: 1.0,
            window_secs: 60,
            tenant: None,
            plugin: None,
            provider: None,
            min_attempts: 10,
        }
    }

    #[test]
    fn the_sections_parse_and_typos_are_errors() {
        let c: crate::config::Config = toml::from_str(
            "[telemetry]\nendpoint = \"http://c:4318\"\n[alerts]\ninterval_secs = 5\n\
             [[alerts.rules]]\nname = \"d\"\nkind = \"dlq_depth\"\nthreshold = 3\n",
        )
        .unwrap();
        assert_eq!(c.alerts.rules[0].kind, RuleKind::DlqDepth);
        assert_eq!(c.telemetry.endpoint.as_deref(), Some("http://c:4318"));
        assert!(c.alerts.validate().is_ok());
        for bad in [
            "[telemetry]\nendpont = \"x\"\n",
            "[[alerts.rules]]\nname = \"d\"\nkind = \"dlq_depht\"\n",
            "[[alerts.rules]]\nname = \"d\"\nkind = \"dlq_depth\"\nthreshhold = 1\n",
        ] {
            assert!(
                toml::from_str::<crate::config::Config>(bad).is_err(),
                "{bad}"
            );
        }
        let inf: crate::config::Config = toml::from_str("[alerts]\ninterval_secs = inf\n").unwrap();
        assert!(inf.alerts.validate().is_err());
    }

    /// Two nodes on one store: the first to see the rule over fires; the second, over too,
    /// does not fire again; the episode resolves once, only when neither node is over.
    #[tokio::test]
    async fn an_episode_is_the_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.database.url = Some(format!("sqlite://{}", dir.path().join("db").display()));
        config.database.data_dir = dir.path().to_path_buf();
        config.engine.pooling = false;
        let node = Node::start(config).await.unwrap();
        let cluster = |id: &str| Cluster {
            node_id: id.into(),
            mark_ttl: Duration::from_secs(60),
        };
        let (a, b) = (cluster("a"), cluster("b"));
        let (mut sa, mut sb) = (RuleState::default(), RuleState::default());
        let r = rule(RuleKind::BreakerOpen);
        let url = Some("http://127.0.0.1:9/alerts");
        let sent = || async {
            let list = node
                .store
                .webhook_list(SYSTEM_TENANT, None, None, 100)
                .await
                .unwrap();
            let mut events: Vec<String> = list.iter().map(|d| d.event.clone()).collect();
            events.reverse();
            events
        };
        transition(&node, &a, url, &r, &mut sa, (1.0, true))
            .await
            .unwrap();
        transition(&node, &b, url, &r, &mut sb, (1.0, true))
            .await
            .unwrap();
        transition(&node, &a, url, &r, &mut sa, (1.0, true))
            .await
            .unwrap();
        assert_eq!(sent().await, ["alert.firing"]);
        // `a` recovers; `b` still sees it: the episode stays open.
        transition(&node, &a, url, &r, &mut sa, (0.0, false))
            .await
            .unwrap();
        assert_eq!(sent().await, ["alert.firing"]);
        transition(&node, &b, url, &r, &mut sb, (0.0, false))
            .await
            .unwrap();
        transition(&node, &a, url, &r, &mut sa, (0.0, false))
            .await
            .unwrap();
        assert_eq!(sent().await, ["alert.firing", "alert.resolved"]);
        // A new episode is a new firing.
        transition(&node, &b, url, &r, &mut sb, (1.0, true))
            .await
            .unwrap();
        transition(&node, &a, url, &r, &mut sa, (1.0, true))
            .await
            .unwrap();
        assert_eq!(
            sent().await,
            ["alert.firing", "alert.resolved", "alert.firing"]
        );
        let firings: Vec<_> = node
            .store
            .webhook_list(SYSTEM_TENANT, None, None, 100)
            .await
            .unwrap();
        let since = |i: usize| firings[i].payload.as_ref().unwrap()["since"].clone();
        // Newest first: the resolve carries its episode's `since`; the new episode its own.
        assert_eq!(since(1), since(2));
        assert_ne!(since(0), since(1));
    }

    #[test]
    fn rules_are_checked() {
        let ok = AlertsConfig {
            rules: vec![rule(RuleKind::DlqGrowth)],
            ..AlertsConfig::default()
        };
        assert!(ok.validate().is_ok());
        let no_plugin = AlertsConfig {
            rules: vec![rule(RuleKind::ErrorRate)],
            ..AlertsConfig::default()
        };
        assert!(no_plugin.validate().unwrap_err().contains("plugin"));
        let no_provider = AlertsConfig {
            rules: vec![rule(RuleKind::BreakerOpen)],
            ..AlertsConfig::default()
        };
        assert!(no_provider.validate().unwrap_err().contains("provider"));
        let twice = AlertsConfig {
            rules: vec![rule(RuleKind::DlqDepth), rule(RuleKind::DlqGrowth)],
            ..AlertsConfig::default()
        };
        assert!(twice.validate().is_err());
        let mut long = rule(RuleKind::DlqGrowth);
        long.window_secs = MAX_WINDOW_SECS + 1;
        let long = AlertsConfig {
            rules: vec![long],
            ..AlertsConfig::default()
        };
        assert!(long.validate().is_err());
    }
}
