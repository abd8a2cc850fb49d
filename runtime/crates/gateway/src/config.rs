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

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::simulated()
    }
}

/// Which wire format (and client) a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions and embeddings (OpenAI, vLLM, Ollama, llama.cpp,
    /// Groq, Together, …).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// A simulator started in-process; `simulator.wire` picks the format it is spoken to in.
    Simulated,
}

impl ProviderKind {
    /// Lower-case name, as in the config and in `gen_ai.provider.name`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Simulated => "simulated",
        }
    }
}

/// Wire format a simulated provider is spoken to in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// `/v1/chat/completions` and `/v1/embeddings`.
    #[default]
    OpenAi,
    /// `/v1/messages`.
    Anthropic,
}

/// An API key. Never printed: `Debug` and `Serialize` show `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a key.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The key itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// One provider endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Wire format / client.
    pub kind: ProviderKind,
    /// Base URL including the version path (`https://api.openai.com/v1`). Defaults to the
    /// vendor's public URL; ignored for `simulated`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// API key, inline. Prefer `api_key_env`.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Name of an environment variable holding the API key, read when the gateway starts.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra HTTP headers sent with every request (e.g. `OpenAI-Organization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-attempt timeout for the whole request (streaming included), ms.
    #[serde(default = "d_timeout_ms")]
    pub timeout_ms: u64,
    /// TCP/TLS connect timeout, ms.
    #[serde(default = "d_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Requests per minute this node may send (before its share is applied).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (input + output) per minute this node may send.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Seconds of quota that may be spent in one burst (1..=60; 60 = a full minute, like the
    /// providers' own buckets).
    #[serde(default = "d_burst_secs")]
    pub burst_secs: f64,
    /// Retries on this provider after the first attempt, for retryable failures.
    #[serde(default = "d_max_retries")]
    pub max_retries: u32,
    /// Circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The simulator's behaviour, for `kind = "simulated"`.
    #[serde(default)]
    pub simulator: Option<SimulatedProvider>,
}

impl ProviderConfig {
    /// A provider of `kind` with defaults for everything else.
    pub fn new(kind: ProviderKind) -> Self {
        ProviderConfig {
            kind,
            base_url: None,
            api_key: None,
            api_key_env: None,
            headers: BTreeMap::new(),
            timeout_ms: d_timeout_ms(),
            connect_timeout_ms: d_connect_timeout_ms(),
            rpm: None,
            tpm: None,
            burst_secs: d_burst_secs(),
            max_retries: d_max_retries(),
            breaker: BreakerConfig::default(),
            simulator: None,
        }
    }

    /// A provider speaking `kind`'s wire format at `base_url`.
    pub fn with_url(kind: ProviderKind, base_url: impl Into<String>) -> Self {
        ProviderConfig {
            base_url: Some(base_url.into()),
            ..ProviderConfig::new(kind)
        }
    }
}

/// A simulated provider: the wire format to speak and the simulator's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedProvider {
    /// Wire format.
    #[serde(default)]
    pub wire: Wire,
    /// The simulator's latency, limits and faults.
    #[serde(default)]
    pub config: SimConfig,
}

/// Circuit breaker settings (per provider).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Open when at least this fraction of the calls in the window failed…
    #[serde(default = "d_failure_rate")]
    pub failure_rate: f64,
    /// …and the window holds at least this many calls.
    #[serde(default = "d_min_calls")]
    pub min_calls: u32,
    /// Sliding window, ms.
    #[serde(default = "d_window_ms")]
    pub window_ms: u64,
    /// How long an open breaker refuses calls before letting one probe through, ms.
    #[serde(default = "d_cooldown_ms")]
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: d_failure_rate(),
            min_calls: d_min_calls(),
            window_ms: d_window_ms(),
            cooldown_ms: d_cooldown_ms(),
        }
    }
}

/// One model at one provider, with its prices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The provider's name for the model; defaults to the part of the id after `/`.
    #[serde(default)]
    pub name: Option<String>,
    /// US dollars per million input tokens (decimal). Required.
    pub input_usd_per_mtok: f64,
    /// US dollars per million output tokens. Required for chat models.
    #[serde(default)]
    pub output_usd_per_mtok: Option<f64>,
    /// US dollars per million cached input tokens; defaults to the input price.
    #[serde(default)]
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Output-token cap used when a request sets none.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Context window (input + output tokens); a request that cannot fit skips this model.
    #[serde(default)]
    pub context_tokens: Option<u32>,
    /// Requests per minute for this model, on top of the provider's limit.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute for this model, on top of the provider's limit.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// An embeddings model (no output price needed).
    #[serde(default)]
    pub embedding: bool,
}

impl ModelConfig {
    /// A chat model with these prices (USD per million tokens).
    pub fn chat(input: f64, output: f64) -> Self {
        ModelConfig {
            name: None,
            input_usd_per_mtok: input,
            output_usd_per_mtok: Some(output),
            cached_input_usd_per_mtok: None,
            max_tokens: None,
            context_tokens: None,
            rpm: None,
            tpm: None,
            embedding: false,
        }
    }

    /// An embeddings model with this input price.
    pub fn embedding(input: f64) -> Self {
        ModelConfig {
            embedding: true,
            output_usd_per_mtok: None,
            ..ModelConfig::chat(input, 0.0)
        }
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
        if let Some(n) = &self.name {
            return n.clone();
        }
        let what = match (self.scope, &self.tag, &self.value) {
            (BudgetScope::Tag, Some(t), Some(v)) => format!("tag:{t}={v}"),
            (BudgetScope::Tag, Some(t), None) => format!("tag:{t}=*"),
            (BudgetScope::Job, _, _) => "job".to_string(),
            (BudgetScope::Tenant, _, v) => format!("tenant:{}", v.as_deref().unwrap_or("*")),
            (BudgetScope::Plugin, _, v) => format!("plugin:{}", v.as_deref().unwrap_or("*")),
            (BudgetScope::Tag, None, _) => "tag".to_string(),
        };
        let period = match self.period {
            Period::Day => "day",
            Period::Month => "month",
            Period::Total => "total",
        };
        format!("{what}/{period}")
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
            let err = |message: String| ConfigError::Provider {
                provider: name.clone(),
                message,
            };
            if name.is_empty() || name.contains('/') {
                return Err(err(
                    "a provider name must be non-empty and contain no '/'".into()
                ));
            }
            if p.kind == ProviderKind::Simulated {
                if p.base_url.is_some() {
                    return Err(err(
                        "a simulated provider has no base_url (it starts its own \
                        server); use kind = \"openai\" to talk to a standalone simulator"
                            .into(),
                    ));
                }
            } else if p.simulator.is_some() {
                return Err(err("`simulator` settings need kind = \"simulated\"".into()));
            }
            if let Some(url) = &p.base_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(err(format!(
                    "base_url {url:?} must start with http:// or https://"
                )));
            }
            if p.api_key.is_some() && p.api_key_env.is_some() {
                return Err(err("set api_key or api_key_env, not both".into()));
            }
            if p.timeout_ms == 0 || p.connect_timeout_ms == 0 {
                return Err(err("timeouts must be positive".into()));
            }
            if p.rpm == Some(0) || p.tpm == Some(0) {
                return Err(err(
                    "rpm and tpm must be positive (omit them for no limit)".into()
                ));
            }
            if !(1.0..=60.0).contains(&p.burst_secs) {
                return Err(err("burst_secs must be within 1..=60".into()));
            }
            let b = &p.breaker;
            if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
                return Err(err("breaker.failure_rate must be within (0, 1]".into()));
            }
            if b.min_calls == 0 || b.window_ms == 0 || b.cooldown_ms == 0 {
                return Err(err(
                    "breaker.min_calls, window_ms and cooldown_ms must be positive".into(),
                ));
            }
            for (k, v) in &p.headers {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(v).is_err()
                {
                    return Err(err(format!("header {k:?} is not a valid HTTP header")));
                }
            }
        }
        for (id, m) in &self.models {
            let err = |message: String| ConfigError::Model {
                model: id.clone(),
                message,
            };
            let Some((provider, rest)) = id.split_once('/') else {
                return Err(err("a model id is `provider/model`".into()));
            };
            if rest.is_empty() {
                return Err(err("a model id is `provider/model`".into()));
            }
            let Some(p) = self.providers.get(provider) else {
                return Err(err(format!("unknown provider {provider:?}")));
            };
            let price_ok = |v: f64| v.is_finite() && v >= 0.0;
            if !price_ok(m.input_usd_per_mtok)
                || !m.output_usd_per_mtok.is_none_or(price_ok)
                || !m.cached_input_usd_per_mtok.is_none_or(price_ok)
            {
                return Err(err("prices must be finite and non-negative".into()));
            }
            if !m.embedding && m.output_usd_per_mtok.is_none() {
                return Err(err(
                    "output_usd_per_mtok is required for a chat model (an unknown \
                    price is an error; write 0 for a free model)"
                        .into(),
                ));
            }
            if m.embedding {
                let wire = match p.kind {
                    ProviderKind::Anthropic => Wire::Anthropic,
                    ProviderKind::OpenAi => Wire::OpenAi,
                    ProviderKind::Simulated => {
                        p.simulator.as_ref().map(|s| s.wire).unwrap_or_default()
                    }
                };
                if wire == Wire::Anthropic {
                    return Err(err(
                        "the Anthropic wire format has no embeddings endpoint".into()
                    ));
                }
            }
            if m.max_tokens == Some(0) || m.context_tokens == Some(0) {
                return Err(err("max_tokens and context_tokens must be positive".into()));
            }
            if m.rpm == Some(0) || m.tpm == Some(0) {
                return Err(err(
                    "rpm and tpm must be positive (omit them for no limit)".into()
                ));
            }
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
fn d_timeout_ms() -> u64 {
    120_000
}
fn d_connect_timeout_ms() -> u64 {
    5_000
}
fn d_burst_secs() -> f64 {
    60.0
}
fn d_max_retries() -> u32 {
    2
}
fn d_failure_rate() -> f64 {
    0.5
}
fn d_min_calls() -> u32 {
    5
}
fn d_window_ms() -> u64 {
    30_000
}
fn d_cooldown_ms() -> u64 {
    10_000
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
fn d_alerts() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}
