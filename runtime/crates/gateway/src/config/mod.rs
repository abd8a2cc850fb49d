//! Configuration: the `[gateway]` table of `sluice.toml`.
//!
//! Strict: unknown keys are errors, every alias entry must name a configured model, every model
//! a configured provider, and every chat model must have input and output prices (an unknown
//! price is an error at load, never a silent zero; a free model says `0`).
//!
//! ```toml
//! [gateway.providers.openai]
//! kind = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//! rpm = 500
//! tpm = 200000
//!
//! [gateway.models."openai/gpt-4o-mini"]
//! input_usd_per_mtok = 0.15
//! output_usd_per_mtok = 0.60
//! cached_input_usd_per_mtok = 0.075
//! context_tokens = 128000
//!
//! [gateway.aliases]
//! fast = ["openai/gpt-4o-mini"]
//! ```
//!
//! One module per section: [`provider`] (endpoints, keys, breakers, the simulated provider),
//! [`model`] (models and prices), [`budget`] (budget rules and leasing); the table itself,
//! its cache and retry settings and the cross-reference checks are here.

mod budget;
mod model;
mod provider;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use budget::{BudgetConfig, BudgetLeaseConfig, BudgetScope, Period};
pub use model::ModelConfig;
pub use provider::{BreakerConfig, ProviderConfig, ProviderKind, Secret, SimulatedProvider, Wire};

use crate::sim::SimConfig;

/// Why a gateway configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A provider's settings are unusable.
    #[error("gateway.providers.{provider}: {message}")]
    Provider {
        /// The provider's name.
        provider: String,
        /// What is wrong.
        message: String,
    },
    /// A model's settings are unusable.
    #[error("gateway.models.\"{model}\": {message}")]
    Model {
        /// The model id (`provider/model`).
        model: String,
        /// What is wrong.
        message: String,
    },
    /// An alias names something that does not exist.
    #[error("gateway.aliases.{alias}: {message}")]
    Alias {
        /// The alias.
        alias: String,
        /// What is wrong.
        message: String,
    },
    /// A budget rule is unusable.
    #[error("gateway.budgets[{index}]: {message}")]
    Budget {
        /// Position in the `budgets` array.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Anything else.
    #[error("gateway: {0}")]
    Other(String),
    /// A simulated provider's server could not start.
    #[error("gateway.providers.{provider}: simulator failed to start: {message}")]
    Simulator {
        /// The provider's name.
        provider: String,
        /// The I/O error.
        message: String,
    },
}

/// The model gateway's configuration.
///
/// When `providers`, `models` and `aliases` are all empty the built-in simulated setup of
/// [`GatewayConfig::simulated`] is used, so a `[gateway]` table that only tunes the cache still
/// works without keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Providers by name (the part before `/` in a model id).
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Models by id, `provider/model`.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Aliases (`fast`, `smart`, `embed`, …) → ordered fallback chains of model ids.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Response cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Backoff between attempts.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Hard budgets.
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    /// Upper bound on one call's total time (all waits, attempts and fallbacks), used as the
    /// deadline when the job has none and as a cap otherwise.
    #[serde(default = "d_max_call_ms")]
    pub max_call_ms: u64,
    /// Output-token cap for models that set none and requests that set none.
    #[serde(default = "d_default_max_tokens")]
    pub default_max_tokens: u32,
    /// How nodes sharing a database take budget in slices (see [`crate::budget::lease`]).
    #[serde(default)]
    pub budget_lease: BudgetLeaseConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::simulated()
    }
}

/// Response cache settings (`[gateway.cache]`).
///
/// The cache is exact-match and **per tenant**: an entry is keyed by the tenant and the
/// request's fingerprint (model, messages, `max_tokens`, temperature, format), so one tenant
/// never receives another's reply nor learns from a hit that another sent a prompt. Only
/// successful provider replies are stored; hits cost nothing and are marked `source: cache`.
///
/// Sampled requests (`temperature > 0`) are not cached unless `sampled = true`: a handler that
/// asks for a temperature expects varied replies. A request that sets no temperature is
/// cached (it asked for nothing); a handler opts a call out with `no_cache`.
///
/// ```toml
/// [gateway.cache]
/// enabled = true      # default true
/// ttl_secs = 3600     # default 1 h; at most 30 days
/// max_entries = 10000 # default 10000; the oldest go first
/// sampled = false     # default false: temperature > 0 is never served from the cache
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether responses are cached at all.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// How long an entry lives, seconds (at most [`CacheConfig::MAX_TTL_SECS`]).
    #[serde(default = "d_cache_ttl")]
    pub ttl_secs: u64,
    /// Entries kept; the oldest go first.
    #[serde(default = "d_cache_entries")]
    pub max_entries: usize,
    /// Also cache replies to requests with `temperature > 0` (default false).
    #[serde(default)]
    pub sampled: bool,
}

impl CacheConfig {
    /// The longest `ttl_secs` accepted: 30 days.
    pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl_secs: d_cache_ttl(),
            max_entries: d_cache_entries(),
            sampled: false,
        }
    }
}

/// Backoff between attempts: exponential with full jitter, `retry-after` honoured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff ceiling, ms (the wait is uniform in `0..=ceiling`).
    #[serde(default = "d_base_delay")]
    pub base_delay_ms: u64,
    /// Largest backoff ceiling, ms.
    #[serde(default = "d_max_delay")]
    pub max_delay_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base_delay_ms: d_base_delay(),
            max_delay_ms: d_max_delay(),
        }
    }
}

impl GatewayConfig {
    /// The built-in setup that needs no keys: two in-process simulated providers, `sim`
    /// (OpenAI wire format) and `sim-b` (Anthropic wire format), and aliases `fast` and
    /// `smart` that fail over from the first to the second, plus `embed`.
    pub fn simulated() -> Self {
        let mut providers = BTreeMap::new();
        for (name, wire, seed) in [("sim", Wire::OpenAi, 1), ("sim-b", Wire::Anthropic, 2)] {
            let mut p = ProviderConfig::new(ProviderKind::Simulated);
            p.simulator = Some(SimulatedProvider {
                wire,
                config: SimConfig {
                    seed,
                    ..SimConfig::default()
                },
            });
            providers.insert(name.to_string(), p);
        }
        let mut models = BTreeMap::new();
        for p in ["sim", "sim-b"] {
            models.insert(
                format!("{p}/sim-fast"),
                ModelConfig {
                    cached_input_usd_per_mtok: Some(0.075),
                    context_tokens: Some(128_000),
                    ..ModelConfig::chat(0.15, 0.60)
                },
            );
            models.insert(
                format!("{p}/sim-smart"),
                ModelConfig {
                    cached_input_usd_per_mtok: Some(1.25),
                    context_tokens: Some(200_000),
                    ..ModelConfig::chat(2.50, 10.0)
                },
            );
        }
        models.insert("sim/sim-embed".into(), ModelConfig::embedding(0.02));
        let chain = |m: &str| vec![format!("sim/{m}"), format!("sim-b/{m}")];
        let aliases = BTreeMap::from([
            ("fast".to_string(), chain("sim-fast")),
            ("smart".to_string(), chain("sim-smart")),
            ("embed".to_string(), vec!["sim/sim-embed".to_string()]),
        ]);
        GatewayConfig {
            providers,
            models,
            aliases,
            ..GatewayConfig::empty()
        }
    }

    /// No providers, models or aliases; default settings otherwise.
    pub fn empty() -> Self {
        GatewayConfig {
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            cache: CacheConfig::default(),
            retry: RetryConfig::default(),
            budgets: Vec::new(),
            max_call_ms: d_max_call_ms(),
            default_max_tokens: d_default_max_tokens(),
            budget_lease: BudgetLeaseConfig::default(),
        }
    }

    /// This config, or the simulated setup (keeping cache, retry, budget and limit settings)
    /// when it names no providers, models or aliases.
    pub fn or_simulated(self) -> Self {
        if self.providers.is_empty() && self.models.is_empty() && self.aliases.is_empty() {
            let sim = GatewayConfig::simulated();
            GatewayConfig {
                providers: sim.providers,
                models: sim.models,
                aliases: sim.aliases,
                ..self
            }
        } else {
            self
        }
    }

    /// Check every cross-reference and value; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.providers.is_empty() {
            return Err(ConfigError::Other("no providers configured".into()));
        }
        if self.max_call_ms == 0 {
            return Err(ConfigError::Other("max_call_ms must be positive".into()));
        }
        if self.cache.ttl_secs > CacheConfig::MAX_TTL_SECS {
            return Err(ConfigError::Other(format!(
                "cache.ttl_secs must be at most {} (30 days)",
                CacheConfig::MAX_TTL_SECS
            )));
        }
        if self.default_max_tokens == 0 {
            return Err(ConfigError::Other(
                "default_max_tokens must be positive".into(),
            ));
        }
        for (name, p) in &self.providers {
            p.validate(name).map_err(|message| ConfigError::Provider {
                provider: name.clone(),
                message,
            })?;
        }
        for (id, m) in &self.models {
            m.validate(id, &self.providers)
                .map_err(|message| ConfigError::Model {
                    model: id.clone(),
                    message,
                })?;
        }
        for (alias, chain) in &self.aliases {
            let err = |message: String| ConfigError::Alias {
                alias: alias.clone(),
                message,
            };
            if alias.is_empty() || alias.contains('/') {
                return Err(err("an alias must be non-empty and contain no '/'".into()));
            }
            if chain.is_empty() {
                return Err(err("an alias needs at least one model".into()));
            }
            let embedding = self.models.get(&chain[0]).map(|m| m.embedding);
            for id in chain {
                let Some(m) = self.models.get(id) else {
                    let hint = match id.split_once('/') {
                        Some((p, _)) if !self.providers.contains_key(p) => {
                            format!("unknown provider {p:?} in {id:?}")
                        }
                        Some(_) => format!("unknown model {id:?} (add it under gateway.models)"),
                        None => format!("{id:?} is not a `provider/model` id"),
                    };
                    return Err(err(hint));
                };
                if Some(m.embedding) != embedding {
                    return Err(err("an alias mixes chat and embedding models".into()));
                }
            }
        }
        for (index, b) in self.budgets.iter().enumerate() {
            b.validate()
                .map_err(|message| ConfigError::Budget { index, message })?;
        }
        Ok(())
    }
}

fn d_true() -> bool {
    true
}
fn d_max_call_ms() -> u64 {
    300_000
}
fn d_default_max_tokens() -> u32 {
    1024
}
fn d_cache_ttl() -> u64 {
    3_600
}
fn d_cache_entries() -> usize {
    10_000
}
fn d_base_delay() -> u64 {
    250
}
fn d_max_delay() -> u64 {
    20_000
}
