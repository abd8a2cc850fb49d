//! Building a [`Gateway`] from its config: validate, start simulated providers, build clients,
//! breakers and the provider and model rate limiters.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Gateway, Inner, ModelEntry, ProviderEntry};
use crate::breaker::Breaker;
use crate::budget::{AlertSink, Budgets, Ledger, LogAlertSink, MemoryLedger};
use crate::cache::ResponseCache;
use crate::config::{ConfigError, GatewayConfig, ProviderConfig, ProviderKind};
use crate::limiter::LimiterSet;
use crate::provider::{AnthropicProvider, OpenAiProvider, Provider};
use crate::tokens::Price;

/// Builds a [`Gateway`] with a ledger, an alert sink or hand-made providers.
pub struct GatewayBuilder {
    cfg: GatewayConfig,
    ledger: Option<Arc<dyn Ledger>>,
    sink: Option<Arc<dyn AlertSink>>,
    clients: HashMap<String, Arc<dyn Provider>>,
}

impl GatewayBuilder {
    /// Keep budget accounting in `ledger` (default: in memory).
    pub fn ledger(mut self, ledger: Arc<dyn Ledger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Send budget alerts to `sink` (default: the log).
    pub fn alert_sink(mut self, sink: Arc<dyn AlertSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Use `client` for provider `name` instead of building one from its config.
    pub fn provider_client(mut self, name: impl Into<String>, client: Arc<dyn Provider>) -> Self {
        self.clients.insert(name.into(), client);
        self
    }

    /// Validate the config, start simulated providers, build clients and limiters.
    pub async fn build(mut self) -> Result<Gateway, ConfigError> {
        let cfg = self.cfg.or_simulated();
        cfg.validate()?;
        let mut sims = Sims::default();
        let mut providers = HashMap::new();
        let mut provider_limits = HashMap::new();
        for (name, p) in &cfg.providers {
            let perr = |message: String| ConfigError::Provider {
                provider: name.clone(),
                message,
            };
            let client: Arc<dyn Provider> = match self.clients.remove(name) {
                Some(c) => c,
                None => match p.kind {
                    ProviderKind::OpenAi => Arc::new(OpenAiProvider::new(p).map_err(perr)?),
                    ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(p).map_err(perr)?),
                    ProviderKind::Simulated => start_simulator(name, p, &mut sims).await?,
                },
            };
            let mut limits = LimiterSet::default();
            limits.add(p.rpm, p.tpm, p.burst_secs);
            provider_limits.insert(name.clone(), (limits, p.burst_secs));
            providers.insert(
                name.clone(),
                ProviderEntry {
                    name: name.clone(),
                    kind: p.kind.as_str(),
                    client,
                    breaker: Breaker::new(p.breaker.clone()),
                    max_retries: p.max_retries,
                    timeout: Duration::from_millis(p.timeout_ms),
                    hold_until: Mutex::new(None),
                    typical_us: AtomicU64::new(0),
                    recent: Default::default(),
                },
            );
            metrics::gauge!("sluice_breaker_state", "provider" => name.clone()).set(0.0);
        }
        let mut models = HashMap::new();
        for (id, m) in &cfg.models {
            let (provider, rest) = id.split_once('/').unwrap_or((id.as_str(), ""));
            let (plimits, burst) = &provider_limits[provider];
            let mut own_limits = LimiterSet::default();
            own_limits.add(m.rpm, m.tpm, *burst);
            let mut limits = plimits.clone();
            limits.extend(&own_limits);
            models.insert(
                id.clone(),
                ModelEntry {
                    id: id.clone(),
                    provider: provider.to_string(),
                    name: m.name.clone().unwrap_or_else(|| rest.to_string()),
                    price: Price::of(m),
                    max_tokens: m.max_tokens,
                    context_tokens: m.context_tokens,
                    embedding: m.embedding,
                    limits,
                    own_limits,
                },
            );
        }
        let ttl = Duration::from_secs(cfg.cache.ttl_secs);
        let (chat_cache, embed_cache) = if cfg.cache.enabled {
            (
                Some(ResponseCache::new(ttl, cfg.cache.max_entries)),
                Some(ResponseCache::new(ttl, cfg.cache.max_entries)),
            )
        } else {
            (None, None)
        };
        let ledger = self.ledger.unwrap_or_else(|| Arc::new(MemoryLedger::new()));
        let sink = self.sink.unwrap_or_else(|| Arc::new(LogAlertSink));
        Ok(Gateway {
            inner: Arc::new(Inner {
                providers,
                models,
                aliases: cfg.aliases.clone().into_iter().collect(),
                chat_cache,
                cache_sampled: cfg.cache.sampled,
                abandoned: std::sync::RwLock::new(None),
                embed_cache,
                budgets: Budgets::new(&cfg.budgets, ledger, sink),
                retry: cfg.retry.clone(),
                max_call: Duration::from_millis(cfg.max_call_ms),
                default_max_tokens: cfg.default_max_tokens,
                provider_limits: provider_limits.into_values().map(|(l, _)| l).collect(),
                limit_share: std::sync::atomic::AtomicU64::new(1.0f64.to_bits()),
                sims,
            }),
        })
    }
}

impl Gateway {
    /// A gateway from config, with the in-memory ledger and log alerts.
    pub async fn new(cfg: GatewayConfig) -> Result<Gateway, ConfigError> {
        Gateway::builder(cfg).build().await
    }

    /// A builder, to plug in a ledger, an alert sink or provider clients.
    pub fn builder(cfg: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            cfg,
            ledger: None,
            sink: None,
            clients: HashMap::new(),
        }
    }
}

/// The simulators a gateway started for its `simulated` providers, by provider name.
#[cfg(feature = "sim")]
pub(super) type Sims = Vec<(String, crate::sim::SimHandle)>;
/// Without the `sim` feature a gateway starts no simulator: the list cannot hold one.
#[cfg(not(feature = "sim"))]
pub(super) type Sims = Vec<(String, std::convert::Infallible)>;

/// Start the simulator of `simulated` provider `name` in-process and a client of the wire
/// format it is set to speak.
#[cfg(feature = "sim")]
async fn start_simulator(
    name: &str,
    p: &ProviderConfig,
    sims: &mut Sims,
) -> Result<Arc<dyn Provider>, ConfigError> {
    use crate::config::Wire;
    let perr = |message: String| ConfigError::Provider {
        provider: name.to_string(),
        message,
    };
    let s = p.simulator.clone().unwrap_or_default();
    let handle = crate::sim::start(s.config)
        .await
        .map_err(|e| ConfigError::Simulator {
            provider: name.to_string(),
            message: e.to_string(),
        })?;
    let mut pc = p.clone();
    pc.base_url = Some(handle.base_url());
    let client: Arc<dyn Provider> = match s.wire {
        Wire::OpenAi => Arc::new(OpenAiProvider::new(&pc).map_err(perr)?),
        Wire::Anthropic => Arc::new(AnthropicProvider::new(&pc).map_err(perr)?),
    };
    sims.push((name.to_string(), handle));
    Ok(client)
}

/// A build without the simulator refuses `simulated` providers (and so the default config,
/// which falls back to them) at start, rather than talking to nothing.
#[cfg(not(feature = "sim"))]
async fn start_simulator(
    name: &str,
    _: &ProviderConfig,
    _: &mut Sims,
) -> Result<Arc<dyn Provider>, ConfigError> {
    Err(ConfigError::Simulator {
        provider: name.to_string(),
        message: "this build has no simulator (sluice-gateway's `sim` feature is off); \
                  configure real providers"
            .into(),
    })
}
