//! Providers behind one trait: the OpenAI-compatible client and the Anthropic Messages client,
//! both over real HTTP with reqwest. The simulated provider is a server ([`crate::sim`]) that
//! these clients talk to.
//!
//! A provider does one attempt; retries, limits, breakers and failover are the gateway's.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sluice_types::model::{Message, Usage};

use crate::config::{ProviderConfig, Secret};

pub mod anthropic;
pub mod openai;

pub use anthropic::AnthropicProvider;
pub use openai::OpenAiProvider;

/// Receives streamed text as it arrives. If an attempt fails after streaming some text and
/// the gateway retries, the next attempt's text is streamed from its start.
pub type DeltaFn<'a> = dyn Fn(&str) + Send + Sync + 'a;

/// One chat attempt, as the gateway hands it to a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderChatRequest {
    /// The provider's model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Output cap.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Ask for one JSON object.
    pub json: bool,
    /// Use the streaming wire format.
    pub stream: bool,
}

/// A successful chat attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderChatReply {
    /// Reply text.
    pub content: String,
    /// The model the provider says answered.
    pub model: String,
    /// Tokens, normalized: `input_tokens` includes cached tokens.
    pub usage: Usage,
    /// `stop`, `length`, `content_filter`, or the provider's own word.
    pub finish_reason: String,
    /// Time to the first streamed text, when streaming.
    pub ttft: Option<Duration>,
}

/// A successful embeddings attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderEmbedReply {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// The model the provider says answered.
    pub model: String,
    /// Tokens.
    pub usage: Usage,
}

/// What kind of failure an attempt had; decides retry, failover and the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// 400/404/422: the request is wrong. Never retried, no failover.
    InvalidRequest,
    /// 401/403: bad key. Not retried; the next provider is tried.
    Auth,
    /// Out of credit (`insufficient_quota`, 402). Not retried; the next provider is tried.
    QuotaExhausted,
    /// 429: retried after `retry-after`.
    RateLimited,
    /// 529 / `overloaded_error`: retried.
    Overloaded,
    /// Other 5xx: retried.
    Server,
    /// The attempt timed out: retried.
    Timeout,
    /// Connect or transport failure: retried.
    Connection,
    /// A 200 whose body is not the wire format. Not retried; the next provider is tried.
    Malformed,
    /// The provider refused the content.
    ContentFiltered,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::InvalidRequest,
        FailureKind::Auth,
        FailureKind::QuotaExhausted,
        FailureKind::RateLimited,
        FailureKind::Overloaded,
        FailureKind::Server,
        FailureKind::Timeout,
        FailureKind::Connection,
        FailureKind::Malformed,
        FailureKind::ContentFiltered,
    ];

    /// Whether another attempt at the same provider may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            FailureKind::RateLimited
                | FailureKind::Overloaded
                | FailureKind::Server
                | FailureKind::Timeout
                | FailureKind::Connection
        )
    }

    /// Whether the next provider in the chain should be tried after this failure.
    pub fn fails_over(self) -> bool {
        !matches!(
            self,
            FailureKind::InvalidRequest | FailureKind::ContentFiltered
        )
    }

    /// Whether this counts against the provider's health (circuit breaker).
    pub fn is_health_failure(self) -> bool {
        matches!(
            self,
            FailureKind::Overloaded
                | FailureKind::Server
                | FailureKind::Timeout
                | FailureKind::Connection
                | FailureKind::Malformed
                | FailureKind::Auth
                | FailureKind::QuotaExhausted
        )
    }

    /// Short name for metrics and usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidRequest => "invalid_request",
            FailureKind::Auth => "auth",
            FailureKind::QuotaExhausted => "quota_exhausted",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Server => "server_error",
            FailureKind::Timeout => "timeout",
            FailureKind::Connection => "connection",
            FailureKind::Malformed => "malformed",
            FailureKind::ContentFiltered => "content_filtered",
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", kind.as_str(), status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
pub struct ProviderError {
    /// The class of failure.
    pub kind: FailureKind,
    /// HTTP status, when there was one.
    pub status: Option<u16>,
    /// What the provider said.
    pub message: String,
    /// The provider's `retry-after`, if any.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure without status or retry hint.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn malformed(what: impl std::fmt::Display) -> Self {
        ProviderError::new(
            FailureKind::Malformed,
            format!("malformed provider response: {what}"),
        )
    }
}

/// One provider endpoint.
#[async_trait]
pub trait Provider: Send + Sync {
    /// One chat attempt. Streamed text goes to `on_delta` when `request.stream` is set.
    async fn chat(
        &self,
        request: &ProviderChatRequest,
        on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<ProviderChatReply, ProviderError>;

    /// One embeddings attempt.
    async fn embed(
        &self,
        model: &str,
        inputs: &[String],
    ) -> Result<ProviderEmbedReply, ProviderError>;
}

/// Build the HTTP client for a provider: its timeouts and extra headers.
pub(crate) fn http_client(
    cfg: &ProviderConfig,
    auth: &[(&'static str, String)],
) -> Result<reqwest::Client, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
        headers.insert(name, value);
    }
    for (k, v) in auth {
        let mut value =
            HeaderValue::from_str(v).map_err(|_| format!("{k} is not a valid header"))?;
        value.set_sensitive(true);
        headers.insert(*k, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .timeout(Duration::from_millis(cfg.timeout_ms))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())
}

/// The API key of a provider: inline, or from the named environment variable.
pub(crate) fn api_key(cfg: &ProviderConfig) -> Result<Option<Secret>, String> {
    if let Some(k) = &cfg.api_key {
        return Ok(Some(k.clone()));
    }
    match &cfg.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(format!(
                "environment variable {var} (api_key_env) is not set"
            )),
        },
        None => Ok(None),
    }
}

/// A transport error from reqwest as an attempt failure.
pub(crate) fn transport_error(e: reqwest::Error) -> ProviderError {
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else {
        FailureKind::Connection
    };
    // reqwest's Display includes the URL, never headers, so no key leaks here.
    ProviderError::new(kind, format!("{e}"))
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<serde_json::Value>,
}

/// The `(message, type, code)` of an error body in either wire format.
pub(crate) fn error_details(body: &str) -> (String, String, String) {
    match serde_json::from_str::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope { error: Some(e), .. }) => (
            e.message.unwrap_or_default(),
            e.kind.unwrap_or_default(),
            match e.code {
                Some(serde_json::Value::String(s)) => s,
                Some(v) if !v.is_null() => v.to_string(),
                _ => String::new(),
            },
        ),
        Ok(ErrorEnvelope {
            message: Some(m), ..
        }) => (m, String::new(), String::new()),
        _ => {
            let snippet: String = body.chars().take(200).collect();
            (snippet, String::new(), String::new())
        }
    }
}

/// Classify an error `type`/`code` reported inside a body (an error event after a 200, or an
/// error status), falling back to `fallback`.
pub(crate) fn kind_from_type(kind: &str, code: &str, fallback: FailureKind) -> FailureKind {
    match (kind, code) {
        (_, "insufficient_quota") | ("insufficient_quota", _) => FailureKind::QuotaExhausted,
        (_, "content_filter" | "content_policy_violation") => FailureKind::ContentFiltered,
        ("overloaded_error", _) => FailureKind::Overloaded,
        ("rate_limit_error" | "rate_limit_exceeded", _) | (_, "rate_limit_exceeded") => {
            FailureKind::RateLimited
        }
        ("invalid_request_error" | "not_found_error", _) => FailureKind::InvalidRequest,
        ("authentication_error" | "permission_error", _) => FailureKind::Auth,
        ("api_error" | "server_error", _) => FailureKind::Server,
        _ => fallback,
    }
}

/// Map a non-success HTTP answer to an attempt failure.
pub(crate) fn classify_status(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let (message, kind_s, code) = error_details(body);
    let by_status = match status {
        400 | 404 | 413 | 422 => FailureKind::InvalidRequest,
        401 | 403 => FailureKind::Auth,
        402 => FailureKind::QuotaExhausted,
        408 => FailureKind::Timeout,
        429 => FailureKind::RateLimited,
        529 => FailureKind::Overloaded,
        500..=599 => FailureKind::Server,
        _ => FailureKind::InvalidRequest,
    };
    let kind = match by_status {
        // A 429 may mean "out of credit" (OpenAI's insufficient_quota): never retried.
        FailureKind::RateLimited => match kind_from_type(&kind_s, &code, by_status) {
            FailureKind::QuotaExhausted => FailureKind::QuotaExhausted,
            _ => FailureKind::RateLimited,
        },
        FailureKind::InvalidRequest => match kind_from_type(&kind_s, &code, by_status) {
            FailureKind::ContentFiltered => FailureKind::ContentFiltered,
            _ => FailureKind::InvalidRequest,
        },
        other => other,
    };
    // Rate-limit reset headers come with every answer; only a 429 means "wait for them".
    let retry_after = retry_after(headers).or_else(|| {
        if status == 429 {
            rate_limit_reset(headers)
        } else {
            None
        }
    });
    let message = if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    };
    ProviderError {
        kind,
        status: Some(status),
        message,
        retry_after,
    }
}

/// The longest wait a provider's `retry-after`, `retry-after-ms` or `x-ratelimit-reset-*`
/// can impose: longer values (`1e30`, `inf`, a date in the year 9999) are clamped to it. A
/// call whose deadline comes first skips the provider as `throttled` instead of waiting.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A provider-given wait in seconds as a duration: NaN and negative values are ignored
/// (`None`), anything longer than [`MAX_RETRY_AFTER`] (infinity included) is clamped to it.
pub fn clamp_wait_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    if secs >= MAX_RETRY_AFTER.as_secs_f64() {
        return Some(MAX_RETRY_AFTER);
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// The wait a provider asks for: `retry-after-ms`, or `retry-after` (seconds or an HTTP date),
/// at most [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(d) = get("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| clamp_wait_secs(ms / 1000.0))
    {
        return Some(d);
    }
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            return clamp_wait_secs(secs);
        } else if let Ok(at) = httpdate::parse_http_date(v) {
            let d = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            return Some(d.min(MAX_RETRY_AFTER));
        }
    }
    None
}

/// The longest of OpenAI's `x-ratelimit-reset-*` durations (`1s`, `6m0s`, `20ms`): when a 429
/// carries no `retry-after`, the time until the exhausted limit resets.
pub fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|h| {
            headers
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_go_duration)
        })
        .max()
}

/// Parse durations like `1s`, `6m0s`, `1h2m3.5s`, `20ms`, at most [`MAX_RETRY_AFTER`].
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_end..];
    }
    clamp_wait_secs(total)
}

/// Map a provider's stop reason to the shared vocabulary.
pub(crate) fn normalize_finish(reason: &str) -> String {
    match reason {
        "end_turn" | "stop_sequence" | "stop" => "stop".into(),
        "max_tokens" | "length" => "length".into(),
        "refusal" | "content_filter" => "content_filter".into(),
        "" => "stop".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        h.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("20ms"),
        );
        assert_eq!(retry_after(&h), None);
        assert_eq!(rate_limit_reset(&h), Some(Duration::from_secs(360)));
        assert_eq!(
            classify_status(429, &h, "").retry_after,
            Some(Duration::from_secs(360))
        );
        assert_eq!(classify_status(500, &h, "").retry_after, None);
        assert_eq!(
            parse_go_duration("2m3.5s"),
            Some(Duration::from_secs_f64(123.5))
        );
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_go_duration("abc"), None);
    }

    #[test]
    fn hostile_waits_are_clamped_never_panic() {
        let max = Some(MAX_RETRY_AFTER);
        let one = |name: &'static str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(v).unwrap());
            h
        };
        for v in [
            "1e30",
            "inf",
            "+inf",
            "Infinity",
            "99999999999999999999999999",
            "601",
        ] {
            assert_eq!(retry_after(&one("retry-after", v)), max, "retry-after: {v}");
            assert_eq!(
                retry_after(&one("retry-after-ms", v)).map(|d| d <= MAX_RETRY_AFTER),
                Some(true),
                "retry-after-ms: {v}"
            );
        }
        assert_eq!(retry_after(&one("retry-after-ms", "1e300")), max);
        for v in ["-1", "-1e30", "NaN", "-inf", "nope", ""] {
            assert_eq!(
                retry_after(&one("retry-after", v)),
                None,
                "retry-after: {v}"
            );
            assert_eq!(
                retry_after(&one("retry-after-ms", v)),
                None,
                "retry-after-ms: {v}"
            );
        }
        // An HTTP date far in the future, and one in the past.
        assert_eq!(
            retry_after(&one("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")),
            max
        );
        assert_eq!(
            retry_after(&one("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT")),
            Some(Duration::ZERO)
        );
        let h = one("x-ratelimit-reset-tokens", "99999999999999999999h");
        assert_eq!(rate_limit_reset(&h), max);
        assert_eq!(classify_status(429, &h, "").retry_after, max);
        assert_eq!(parse_go_duration("1e400s"), None, "not a Go duration");
    }

    #[test]
    fn status_mapping() {
        let h = HeaderMap::new();
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            classify_status(429, &h, quota).kind,
            FailureKind::QuotaExhausted
        );
        assert_eq!(classify_status(429, &h, "").kind, FailureKind::RateLimited);
        assert_eq!(
            classify_status(400, &h, "{}").kind,
            FailureKind::InvalidRequest
        );
        assert_eq!(
            classify_status(422, &h, "x").kind,
            FailureKind::InvalidRequest
        );
        assert_eq!(classify_status(401, &h, "x").kind, FailureKind::Auth);
        assert_eq!(classify_status(529, &h, "x").kind, FailureKind::Overloaded);
        assert_eq!(classify_status(503, &h, "x").kind, FailureKind::Server);
        let anth = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: required"}}"#;
        let e = classify_status(400, &h, anth);
        assert_eq!(e.message, "max_tokens: required");
        assert!(!e.kind.retryable() && !e.kind.fails_over());
    }
}
