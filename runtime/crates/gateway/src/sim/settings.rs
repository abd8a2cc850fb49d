//! The simulator's settings, faults and counters: plain data, in every build (the gateway's
//! config names them), whether or not the `sim` feature brings the server.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The simulator's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed for replies, embeddings and injected faults.
    pub seed: u64,
    /// Time to first token, ms.
    pub ttft_ms: u64,
    /// Output speed after the first token; 0 = instant.
    pub tokens_per_sec: u32,
    /// Requests per minute accepted; none = unlimited.
    pub rpm: Option<u32>,
    /// Tokens (prompt + reply) per minute accepted; none = unlimited.
    pub tpm: Option<u32>,
    /// Seconds of quota the buckets hold (60 = a whole minute, as providers do).
    pub burst_secs: f64,
    /// Embedding dimensions.
    pub embedding_dims: usize,
    /// Fraction of prompt tokens reported as served from the provider's prompt cache.
    pub cached_input_fraction: f64,
    /// Scheduled outages, relative to the server's start.
    pub outages: Vec<Outage>,
    /// Initial faults.
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            ttft_ms: 10,
            tokens_per_sec: 2_000,
            rpm: None,
            tpm: None,
            burst_secs: 60.0,
            embedding_dims: 256,
            cached_input_fraction: 0.0,
            outages: Vec::new(),
            faults: Faults::default(),
        }
    }
}

impl SimConfig {
    /// No latency at all: for tests and overhead benchmarks.
    pub fn instant() -> Self {
        SimConfig {
            ttft_ms: 0,
            tokens_per_sec: 0,
            ..SimConfig::default()
        }
    }
}

/// A window in which every request fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Start, ms after the server started.
    pub start_ms: u64,
    /// Length, ms.
    pub duration_ms: u64,
    /// Status answered during the outage.
    #[serde(default = "d_503")]
    pub status: u16,
}

fn d_503() -> u16 {
    503
}

/// Faults to inject; replace them at run time with [`SimControl::set_faults`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Answer every model request with this status (e.g. 500, 503, 529, 401).
    pub fail_all: Option<u16>,
    /// Fraction of requests answered 500 (deterministic for the seed and request order).
    pub error_rate: f64,
    /// Fraction of requests answered "overloaded": 529 on the Anthropic route, 503 on OpenAI's.
    pub overload_rate: f64,
    /// Answer this many next requests 429 with `retry-after` = `retry_after_ms`.
    pub force_429: u32,
    /// The `retry-after` of forced 429s, ms.
    pub retry_after_ms: u64,
    /// Answer 200 with a body that is not the wire format.
    pub malformed: bool,
    /// In streams, send an error event after this many text chunks (after the 200).
    pub stream_error_after: Option<u32>,
    /// OpenAI streams: put `usage` on the last content chunk instead of a final usage chunk.
    pub usage_in_last_content_chunk: bool,
    /// Added to every request's latency, ms.
    pub extra_latency_ms: u64,
    /// Multiplies the latency (time to first token, `extra_latency_ms` and the time per
    /// output token): 5.0 is a slow day. 1.0 (the default) changes nothing; values outside
    /// [`Faults::MIN_LATENCY_FACTOR`, `Faults::MAX_LATENCY_FACTOR`] (or not a number) are
    /// clamped into that range.
    pub latency_factor: f64,
    /// A misreporting provider: when 2 or more, usage reports this many times the real prompt
    /// and reply token counts (saturating). 0 and 1 report honestly.
    pub overreport_factor: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_all: None,
            error_rate: 0.0,
            overload_rate: 0.0,
            force_429: 0,
            retry_after_ms: 1_000,
            malformed: false,
            stream_error_after: None,
            usage_in_last_content_chunk: false,
            extra_latency_ms: 0,
            latency_factor: 1.0,
            overreport_factor: 0,
        }
    }
}

impl Faults {
    /// The smallest `latency_factor` applied.
    pub const MIN_LATENCY_FACTOR: f64 = 0.0;
    /// The largest `latency_factor` applied: a 1000× slower provider is already a dead one.
    pub const MAX_LATENCY_FACTOR: f64 = 1000.0;

    /// `d` scaled by the latency factor in force.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(super) fn slowed(&self, d: Duration) -> Duration {
        let f = if self.latency_factor.is_nan() {
            1.0
        } else {
            self.latency_factor
                .clamp(Self::MIN_LATENCY_FACTOR, Self::MAX_LATENCY_FACTOR)
        };
        if f == 1.0 {
            return d;
        }
        Duration::try_from_secs_f64(d.as_secs_f64() * f).unwrap_or(Duration::MAX)
    }
}

/// What the simulator saw and answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    /// Model requests received (chat + embeddings).
    pub requests: u64,
    /// Chat requests (both wire formats).
    pub chat_requests: u64,
    /// Embedding requests.
    pub embed_requests: u64,
    /// Answered successfully (status 200, complete body).
    pub ok: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Answered 5xx or 529 (injected errors, outages, overload).
    pub server_errors: u64,
    /// Answered 4xx other than 429.
    pub client_errors: u64,
    /// Answered 200 with a malformed body or a mid-stream error.
    pub broken: u64,
    /// Prompt tokens of successful requests.
    pub input_tokens: u64,
    /// Reply tokens of successful requests.
    pub output_tokens: u64,
}
