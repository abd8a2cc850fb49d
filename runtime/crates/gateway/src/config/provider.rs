//! `[gateway.providers.NAME]`: one provider endpoint (its wire format, key, limits, retries,
//! breaker), or a simulated one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sim::SimConfig;

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

impl ProviderConfig {
    /// Check provider `name`'s settings on their own; the message says what is wrong.
    pub(super) fn validate(&self, name: &str) -> Result<(), String> {
        if name.is_empty() || name.contains('/') {
            return Err("a provider name must be non-empty and contain no '/'".into());
        }
        if self.kind == ProviderKind::Simulated {
            if self.base_url.is_some() {
                return Err("a simulated provider has no base_url (it starts its own \
                    server); use kind = \"openai\" to talk to a standalone simulator"
                    .into());
            }
        } else if self.simulator.is_some() {
            return Err("`simulator` settings need kind = \"simulated\"".into());
        }
        if let Some(url) = &self.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "base_url {url:?} must start with http:// or https://"
            ));
        }
        if self.api_key.is_some() && self.api_key_env.is_some() {
            return Err("set api_key or api_key_env, not both".into());
        }
        if self.timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err("timeouts must be positive".into());
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err("rpm and tpm must be positive (omit them for no limit)".into());
        }
        if !(1.0..=60.0).contains(&self.burst_secs) {
            return Err("burst_secs must be within 1..=60".into());
        }
        let b = &self.breaker;
        if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
            return Err("breaker.failure_rate must be within (0, 1]".into());
        }
        if b.min_calls == 0 || b.window_ms == 0 || b.cooldown_ms == 0 {
            return Err("breaker.min_calls, window_ms and cooldown_ms must be positive".into());
        }
        for (k, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return Err(format!("header {k:?} is not a valid HTTP header"));
            }
        }
        Ok(())
    }
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
