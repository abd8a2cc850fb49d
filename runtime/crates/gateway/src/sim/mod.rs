//! The simulated provider: a real HTTP server speaking the OpenAI and Anthropic wire formats.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/embeddings` (OpenAI) and `POST /v1/messages`
//! (Anthropic), plain and SSE streaming; `GET /health`; and for tests and load runs
//! `GET /admin/stats`, `GET|PUT /admin/faults`, `POST /admin/reset`.
//!
//! - **Deterministic**: the reply is a pure function of the seed and the request (model,
//!   messages, `max_tokens`, JSON mode): summary-like prose built from the prompt's own
//!   distinctive words, or in JSON mode a valid JSON object — `{"label", "confidence"}` choosing
//!   among labels a classify-style prompt offers ("one of: a, b, c"), else `{"summary"}`.
//! - **Exact tokens**: [`crate::tokens`] is the tokenizer (4 characters a token, 3 per message,
//!   3 priming), for prompts and replies alike. A reply never exceeds `max_tokens`; when it is
//!   cut there it is exactly `max_tokens` long and the finish reason is `length`/`max_tokens`.
//! - **Latency**: `ttft_ms` to the first token, then `tokens_per_sec` (0 = instant).
//! - **Limits**: `rpm`/`tpm` token buckets (a request is charged prompt + reply tokens),
//!   enforced with 429, `retry-after` (+ `retry-after-ms`) and the `x-ratelimit-*` or
//!   `anthropic-ratelimit-*` headers.
//! - **Faults** ([`Faults`], switchable at run time through [`SimControl`] or
//!   `PUT /admin/faults`): fail everything with a status, a random error rate, Anthropic 529
//!   overload, forced 429s, malformed bodies, an error event mid-stream, usage on the last
//!   content chunk, added or multiplied latency (`latency_factor = 5.0`: a slow day); plus
//!   outage windows scheduled from start in [`SimConfig::outages`].

pub mod text;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::limiter::Bucket;
use crate::tokens;
use text::Rng;

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
    fn slowed(&self, d: Duration) -> Duration {
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

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    chat: AtomicU64,
    embed: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    client_errors: AtomicU64,
    broken: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
}

struct SimState {
    cfg: SimConfig,
    faults: RwLock<Faults>,
    started: Instant,
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    counters: Counters,
    seq: AtomicU64,
}

/// A handle to a simulator's state: switch faults, read counters. Cheap to clone.
#[derive(Clone)]
pub struct SimControl {
    state: Arc<SimState>,
}

impl SimControl {
    /// A simulator's state, not yet serving; see [`SimControl::router`].
    pub fn new(cfg: SimConfig) -> Self {
        let faults = RwLock::new(cfg.faults.clone());
        let rpm = cfg.rpm.map(|r| Bucket::new(r, cfg.burst_secs));
        let tpm = cfg.tpm.map(|t| Bucket::new(t, cfg.burst_secs));
        SimControl {
            state: Arc::new(SimState {
                cfg,
                faults,
                started: Instant::now(),
                rpm,
                tpm,
                counters: Counters::default(),
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// The simulator's routes, to serve or to drive without a socket.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(openai_chat))
            .route("/v1/embeddings", post(openai_embed))
            .route("/v1/messages", post(anthropic_messages))
            .route("/health", get(|| async { "ok" }))
            .route("/admin/stats", get(admin_stats))
            .route("/admin/faults", get(admin_get_faults).put(admin_put_faults))
            .route("/admin/reset", post(admin_reset))
            .with_state(self.state.clone())
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.state
            .faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.write().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Change the faults in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.faults.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// Zero the counters.
    pub fn reset_stats(&self) {
        self.state.reset();
    }
}

impl SimState {
    fn stats(&self) -> SimStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            requests: l(&c.requests),
            chat_requests: l(&c.chat),
            embed_requests: l(&c.embed),
            ok: l(&c.ok),
            rate_limited: l(&c.rate_limited),
            server_errors: l(&c.server_errors),
            client_errors: l(&c.client_errors),
            broken: l(&c.broken),
            input_tokens: l(&c.input_tokens),
            output_tokens: l(&c.output_tokens),
        }
    }

    fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.requests,
            &c.chat,
            &c.embed,
            &c.ok,
            &c.rate_limited,
            &c.server_errors,
            &c.client_errors,
            &c.broken,
            &c.input_tokens,
            &c.output_tokens,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn bump(&self, a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running simulator. Stops when dropped or on [`SimHandle::shutdown`].
pub struct SimHandle {
    addr: SocketAddr,
    control: SimControl,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the base URL for either client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Its control handle.
    pub fn control(&self) -> &SimControl {
        &self.control
    }

    /// Stop serving and wait until the listener is closed.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl std::ops::Deref for SimHandle {
    type Target = SimControl;
    fn deref(&self) -> &SimControl {
        &self.control
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Start a simulator in-process on `127.0.0.1` at a free port.
pub async fn start(cfg: SimConfig) -> std::io::Result<SimHandle> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), cfg).await
}

/// Start a simulator in-process on `addr`.
pub async fn start_on(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let control = SimControl::new(cfg);
    let app = control.router();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr,
        control,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Serve a simulator on `addr` until the returned future is dropped (for `sluice sim-provider`).
pub async fn run(addr: SocketAddr, cfg: SimConfig) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "simulated provider listening");
    axum::serve(listener, SimControl::new(cfg).router()).await
}

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

/// A chat request in either format, reduced to what the simulator needs.
struct SimChat {
    model: String,
    /// Message texts in order (system first), for token counting and hashing.
    contents: Vec<(String, String)>,
    max_tokens: Option<u32>,
    json: bool,
    /// Anthropic JSON mode: the reply was prefilled with `{`.
    prefilled: bool,
    stream: bool,
    include_usage: bool,
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
            Some(out)
        }
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn parse_chat(wire: Wire, body: &[u8]) -> Result<SimChat, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("model: field required")?
        .to_string();
    let mut contents = Vec::new();
    if wire == Wire::Anthropic
        && let Some(sys) = v.get("system")
    {
        contents.push((
            "system".into(),
            text_of(sys).ok_or("system: expected text")?,
        ));
    }
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("messages: field required")?;
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    for m in messages {
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or("messages: role required")?;
        let ok_roles: &[&str] = match wire {
            Wire::OpenAi => &["system", "developer", "user", "assistant", "tool"],
            Wire::Anthropic => &["user", "assistant"],
        };
        if !ok_roles.contains(&role) {
            return Err(format!("messages: invalid role {role:?}"));
        }
        let content = m.get("content").ok_or("messages: content required")?;
        contents.push((
            role.to_string(),
            text_of(content).ok_or("messages: bad content")?,
        ));
    }
    let max_tokens = match v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(x) => Some(
            x.as_u64()
                .filter(|n| *n >= 1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("max_tokens: must be a positive integer")?,
        ),
    };
    if wire == Wire::Anthropic && max_tokens.is_none() {
        return Err("max_tokens: Field required".into());
    }
    if let Some(t) = v.get("temperature").filter(|t| !t.is_null()) {
        let t = t.as_f64().ok_or("temperature: must be a number")?;
        let max = if wire == Wire::Anthropic { 1.0 } else { 2.0 };
        if !(0.0..=max).contains(&t) {
            return Err(format!("temperature: must be within [0, {max}]"));
        }
    }
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (json, prefilled) = match wire {
        Wire::OpenAi => {
            let kind = v.pointer("/response_format/type").and_then(Value::as_str);
            (matches!(kind, Some("json_object" | "json_schema")), false)
        }
        Wire::Anthropic => {
            let prefilled = contents
                .last()
                .is_some_and(|(r, c)| r == "assistant" && c.trim() == "{");
            (prefilled, prefilled)
        }
    };
    Ok(SimChat {
        model,
        contents,
        max_tokens,
        json,
        prefilled,
        stream,
        include_usage,
    })
}

/// A generated reply.
struct Reply {
    text: String,
    truncated: bool,
    input_tokens: u32,
    output_tokens: u32,
    cached_tokens: u32,
}

fn generate(cfg: &SimConfig, chat: &SimChat) -> Reply {
    let mut parts: Vec<&[u8]> = vec![chat.model.as_bytes()];
    for (role, content) in &chat.contents {
        parts.push(role.as_bytes());
        parts.push(content.as_bytes());
    }
    let max = chat
        .max_tokens
        .map(|m| m.to_le_bytes())
        .unwrap_or([0xff; 4]);
    parts.push(&max);
    parts.push(if chat.json { b"json" } else { b"text" });
    let mut rng = Rng::new(text::hash(cfg.seed, &parts));

    let input_tokens = tokens::prompt_tokens(chat.contents.iter().map(|(_, c)| c.as_str()));
    let natural = 20 + rng.below(40) + (input_tokens as usize / 5).min(150);
    let max_chars = chat.max_tokens.unwrap_or(4096) as usize * 4;
    let last_user = chat
        .contents
        .iter()
        .rev()
        .find(|(r, _)| r == "user")
        .map(|(_, c)| c.as_str())
        .unwrap_or("");
    let (text, truncated) = if chat.json {
        let prompt: Vec<&str> = chat.contents.iter().map(|(_, c)| c.as_str()).collect();
        let (mut t, cut) = text::json_reply(&mut rng, &prompt.join("\n"), natural * 4, max_chars);
        if chat.prefilled && t.starts_with('{') {
            t.remove(0);
        }
        (t, cut)
    } else {
        let mut topics = text::topics(last_user);
        if topics.is_empty() {
            let all: Vec<&str> = chat.contents.iter().map(|(_, c)| c.as_str()).collect();
            topics = text::topics(&all.join(" "));
        }
        let mut t = text::prose(&mut rng, &topics, natural * 4);
        let cut = text::truncate(&mut t, max_chars);
        (t, cut)
    };
    let output_tokens = tokens::text_tokens(&text);
    let cached_tokens =
        (f64::from(input_tokens) * cfg.cached_input_fraction.clamp(0.0, 1.0)) as u32;
    Reply {
        text,
        truncated,
        input_tokens,
        output_tokens,
        cached_tokens,
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and limits

fn error_response(wire: Wire, status: u16, kind: &str, message: &str) -> Response {
    let body = match wire {
        Wire::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn server_error(state: &SimState, wire: Wire, status: u16) -> Response {
    state.bump(&state.counters.server_errors, 1);
    let (kind, msg) = match (wire, status) {
        (Wire::Anthropic, 529) => ("overloaded_error", "Overloaded"),
        (Wire::Anthropic, _) => ("api_error", "Internal server error"),
        (Wire::OpenAi, 503) => (
            "server_error",
            "The engine is currently overloaded, please try again later",
        ),
        (Wire::OpenAi, _) => (
            "server_error",
            "The server had an error while processing your request",
        ),
    };
    error_response(wire, status, kind, msg)
}

fn client_error(state: &SimState, wire: Wire, status: u16, message: &str) -> Response {
    state.bump(&state.counters.client_errors, 1);
    let kind = match (wire, status) {
        (Wire::Anthropic, 401) => "authentication_error",
        (Wire::Anthropic, 403) => "permission_error",
        (Wire::Anthropic, 404) => "not_found_error",
        (Wire::Anthropic, _) => "invalid_request_error",
        (Wire::OpenAi, _) => "invalid_request_error",
    };
    error_response(wire, status, kind, message)
}

fn hv(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

fn rfc3339_after(d: Duration) -> String {
    let at: chrono::DateTime<chrono::Utc> = (SystemTime::now() + d).into();
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The rate-limit headers of `wire` for the current bucket levels.
fn rate_headers(state: &SimState, wire: Wire, headers: &mut HeaderMap) {
    let buckets = [
        ("requests", &state.rpm, state.cfg.rpm),
        ("tokens", &state.tpm, state.cfg.tpm),
    ];
    for (what, bucket, limit) in buckets {
        let (Some(b), Some(limit)) = (bucket, limit) else {
            continue;
        };
        let remaining = b.level().max(0.0).floor() as u64;
        let reset = b.time_to_full();
        let (names, reset) = match wire {
            Wire::OpenAi => (
                [
                    format!("x-ratelimit-limit-{what}"),
                    format!("x-ratelimit-remaining-{what}"),
                    format!("x-ratelimit-reset-{what}"),
                ],
                go_duration(reset),
            ),
            Wire::Anthropic => (
                [
                    format!("anthropic-ratelimit-{what}-limit"),
                    format!("anthropic-ratelimit-{what}-remaining"),
                    format!("anthropic-ratelimit-{what}-reset"),
                ],
                rfc3339_after(reset),
            ),
        };
        let values = [limit.to_string(), remaining.to_string(), reset];
        for (name, value) in names.iter().zip(values) {
            if let Ok(name) = header::HeaderName::from_bytes(name.as_bytes()) {
                headers.insert(name, hv(value));
            }
        }
    }
}

fn too_many(state: &SimState, wire: Wire, wait: Duration, what: &str) -> Response {
    state.bump(&state.counters.rate_limited, 1);
    let msg = format!(
        "Rate limit reached for {what}. Please try again in {}.",
        go_duration(wait)
    );
    let kind = match wire {
        Wire::OpenAi => "rate_limit_exceeded",
        Wire::Anthropic => "rate_limit_error",
    };
    let mut resp = error_response(wire, 429, kind, &msg);
    if wire == Wire::OpenAi {
        // OpenAI puts the reason in `type` and `rate_limit_exceeded` in `code`.
        let body = json!({"error": {"message": msg, "type": what, "param": null, "code": "rate_limit_exceeded"}});
        *resp.body_mut() = Body::from(body.to_string());
    }
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, hv(wait.as_secs_f64().ceil() as u64));
    h.insert("retry-after-ms", hv(wait.as_millis().max(1)));
    rate_headers(state, wire, h);
    resp
}

/// Faults that answer before any work: outages, fail_all, forced 429s, random errors.
fn injected(state: &SimState, wire: Wire, faults: &Faults) -> Option<Response> {
    let since = state.started.elapsed().as_millis() as u64;
    if let Some(o) = state
        .cfg
        .outages
        .iter()
        .find(|o| since >= o.start_ms && since < o.start_ms + o.duration_ms)
    {
        return Some(status_fault(state, wire, o.status));
    }
    if let Some(status) = faults.fail_all {
        return Some(status_fault(state, wire, status));
    }
    if faults.force_429 > 0 {
        let mut f = state.faults.write().unwrap_or_else(|p| p.into_inner());
        if f.force_429 > 0 {
            f.force_429 -= 1;
            let wait = Duration::from_millis(f.retry_after_ms);
            drop(f);
            return Some(too_many(state, wire, wait, "requests"));
        }
    }
    if faults.error_rate > 0.0 || faults.overload_rate > 0.0 {
        let n = state.seq.fetch_add(1, Ordering::Relaxed);
        let mut rng = Rng::new(text::hash(state.cfg.seed, &[b"fault", &n.to_le_bytes()]));
        let draw = rng.unit();
        if draw < faults.error_rate {
            return Some(server_error(state, wire, 500));
        }
        if draw < faults.error_rate + faults.overload_rate {
            let status = if wire == Wire::Anthropic { 529 } else { 503 };
            return Some(server_error(state, wire, status));
        }
    }
    None
}

fn status_fault(state: &SimState, wire: Wire, status: u16) -> Response {
    match status {
        429 => too_many(state, wire, Duration::from_secs(1), "requests"),
        400..=499 => client_error(state, wire, status, "simulated client error"),
        _ => server_error(state, wire, status),
    }
}

/// Charge one request and `tokens` tokens, or answer 429 (`Some`).
fn admit(state: &SimState, wire: Wire, tokens: u32) -> Option<Response> {
    if let Some(t) = &state.tpm
        && f64::from(tokens) > t.capacity()
    {
        return Some(client_error(
            state,
            wire,
            if wire == Wire::OpenAi { 429 } else { 413 },
            &format!("Request too large: {tokens} tokens exceed the tokens-per-minute limit"),
        ));
    }
    if let Some(r) = &state.rpm
        && let Err(wait) = r.try_take(1.0)
    {
        return Some(too_many(state, wire, wait, "requests"));
    }
    if let Some(t) = &state.tpm
        && let Err(wait) = t.try_take(f64::from(tokens))
    {
        if let Some(r) = &state.rpm {
            r.refund(1.0);
        }
        return Some(too_many(state, wire, wait, "tokens"));
    }
    None
}

fn malformed(state: &SimState) -> Response {
    state.bump(&state.counters.broken, 1);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"id\": \"sim\", \"choices\": [{\"message\": <html>upstream garbage</html>",
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Handlers

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reply_id(prefix: &str, state: &SimState, reply: &Reply) -> String {
    let h = text::hash(state.cfg.seed, &[reply.text.as_bytes()]);
    format!("{prefix}{h:016x}")
}

fn latency(state: &SimState, faults: &Faults, output_tokens: u32) -> (Duration, Duration) {
    let ttft = Duration::from_millis(state.cfg.ttft_ms.saturating_add(faults.extra_latency_ms));
    let per_token = match state.cfg.tokens_per_sec {
        0 => Duration::ZERO,
        tps => Duration::from_secs_f64(1.0 / f64::from(tps)),
    };
    (
        faults.slowed(ttft),
        faults.slowed(per_token * output_tokens),
    )
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Split `text` into stream chunks of `tokens_per_chunk` tokens (4 characters each).
fn chunks(text: &str, tokens_per_chunk: usize) -> Vec<String> {
    let per = tokens_per_chunk.max(1) * 4;
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(per).map(|c| c.iter().collect()).collect()
}

fn tokens_per_chunk(cfg: &SimConfig) -> usize {
    match cfg.tokens_per_sec {
        0 => 16,
        tps => (tps as usize / 100).max(1),
    }
}

type Frame = (Duration, Bytes);

/// A streaming response that sends each frame at its offset from now.
fn sse_response(frames: Vec<Frame>, mut headers: HeaderMap) -> Response {
    let start = tokio::time::Instant::now();
    let stream = futures::stream::unfold(frames.into_iter(), move |mut it| async move {
        let (at, bytes) = it.next()?;
        tokio::time::sleep_until(start + at).await;
        Some((Ok::<Bytes, Infallible>(bytes), it))
    });
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.headers_mut() = headers;
    resp
}

fn data_frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn event_frame(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

fn count_ok(state: &SimState, reply: &Reply) {
    state.bump(&state.counters.ok, 1);
    state.bump(&state.counters.input_tokens, u64::from(reply.input_tokens));
    state.bump(
        &state.counters.output_tokens,
        u64::from(reply.output_tokens),
    );
}

async fn openai_chat(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    chat(state, Wire::OpenAi, body).await
}

async fn anthropic_messages(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    chat(state, Wire::Anthropic, body).await
}

async fn chat(state: Arc<SimState>, wire: Wire, body: Bytes) -> Response {
    state.bump(&state.counters.requests, 1);
    state.bump(&state.counters.chat, 1);
    let req = match parse_chat(wire, &body) {
        Ok(r) => r,
        Err(msg) => return client_error(&state, wire, 400, &msg),
    };
    let faults = state.faults();
    if let Some(resp) = injected(&state, wire, &faults) {
        return resp;
    }
    let mut reply = generate(&state.cfg, &req);
    if let Some(resp) = admit(
        &state,
        wire,
        reply.input_tokens.saturating_add(reply.output_tokens),
    ) {
        return resp;
    }
    let mut headers = HeaderMap::new();
    rate_headers(&state, wire, &mut headers);
    let (ttft, gen_time) = latency(&state, &faults, reply.output_tokens);
    // Misreporting changes what usage says, not how long the reply takes.
    if faults.overreport_factor >= 2 {
        let k = faults.overreport_factor;
        reply.input_tokens = reply.input_tokens.saturating_mul(k);
        reply.output_tokens = reply.output_tokens.saturating_mul(k);
        reply.cached_tokens = reply
            .cached_tokens
            .saturating_mul(k)
            .min(reply.input_tokens);
    }
    if faults.malformed {
        sleep(ttft).await;
        return malformed(&state);
    }
    if !req.stream {
        sleep(ttft + gen_time).await;
        count_ok(&state, &reply);
        let body = match wire {
            Wire::OpenAi => openai_body(&state, &req, &reply),
            Wire::Anthropic => anthropic_body(&state, &req, &reply),
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return (StatusCode::OK, headers, body.to_string()).into_response();
    }
    let frames = match wire {
        Wire::OpenAi => openai_frames(&state, &req, &reply, &faults, ttft),
        Wire::Anthropic => anthropic_frames(&state, &req, &reply, &faults, ttft),
    };
    if faults.stream_error_after.is_some() {
        state.bump(&state.counters.broken, 1);
    } else {
        count_ok(&state, &reply);
    }
    sse_response(frames, headers)
}

fn openai_usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens.saturating_add(reply.output_tokens),
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
    })
}

fn openai_body(state: &SimState, req: &SimChat, reply: &Reply) -> Value {
    json!({
        "id": reply_id("chatcmpl-sim", state, reply),
        "object": "chat.completion",
        "created": unix_now(),
        "model": req.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.text},
            "logprobs": null,
            "finish_reason": if reply.truncated { "length" } else { "stop" },
        }],
        "usage": openai_usage(reply),
    })
}

fn openai_frames(
    state: &SimState,
    req: &SimChat,
    reply: &Reply,
    faults: &Faults,
    ttft: Duration,
) -> Vec<Frame> {
    let id = reply_id("chatcmpl-sim", state, reply);
    let created = unix_now();
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut v = json!({
            "id": id, "object": "chat.completion.chunk", "created": created,
            "model": req.model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    };
    let per_chunk = tokens_per_chunk(&state.cfg);
    let token_time = faults.slowed(match state.cfg.tokens_per_sec {
        0 => Duration::ZERO,
        tps => Duration::from_secs_f64(1.0 / f64::from(tps)),
    });
    let mut frames = vec![(
        Duration::ZERO,
        data_frame(&chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            None,
        )),
    )];
    let pieces = chunks(&reply.text, per_chunk);
    let finish = if reply.truncated { "length" } else { "stop" };
    let mut at = ttft;
    let n = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        if faults.stream_error_after == Some(i as u32) {
            let err = json!({"error": {"message": "The server had an error while processing your request", "type": "server_error", "param": null, "code": null}});
            frames.push((at, data_frame(&err)));
            return frames;
        }
        let last = i + 1 == n;
        let usage_here = last && faults.usage_in_last_content_chunk;
        let v = chunk(
            json!([{"index": 0, "delta": {"content": piece}, "finish_reason": if usage_here { Value::from(finish) } else { Value::Null }}]),
            usage_here.then(|| openai_usage(reply)),
        );
        frames.push((at, data_frame(&v)));
        at += token_time * per_chunk as u32;
    }
    if faults.stream_error_after.is_some_and(|k| k as usize >= n) {
        let err = json!({"error": {"message": "stream interrupted", "type": "server_error"}});
        frames.push((at, data_frame(&err)));
        return frames;
    }
    if !faults.usage_in_last_content_chunk || n == 0 {
        frames.push((
            at,
            data_frame(&chunk(
                json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
                None,
            )),
        ));
        if req.include_usage {
            frames.push((at, data_frame(&chunk(json!([]), Some(openai_usage(reply))))));
        }
    }
    frames.push((at, Bytes::from_static(b"data: [DONE]\n\n")));
    frames
}

fn anthropic_usage(reply: &Reply) -> Value {
    json!({
        "input_tokens": reply.input_tokens - reply.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": reply.output_tokens,
    })
}

fn anthropic_body(state: &SimState, req: &SimChat, reply: &Reply) -> Value {
    json!({
        "id": reply_id("msg_sim", state, reply),
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": if reply.truncated { "max_tokens" } else { "end_turn" },
        "stop_sequence": null,
        "usage": anthropic_usage(reply),
    })
}

fn anthropic_frames(
    state: &SimState,
    req: &SimChat,
    reply: &Reply,
    faults: &Faults,
    ttft: Duration,
) -> Vec<Frame> {
    let id = reply_id("msg_sim", state, reply);
    let mut start_usage = anthropic_usage(reply);
    start_usage["output_tokens"] = json!(1);
    let mut frames = vec![
        (
            Duration::ZERO,
            event_frame(
                "message_start",
                &json!({
                    "type": "message_start",
                    "message": {"id": id, "type": "message", "role": "assistant", "model": req.model,
                        "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage},
                }),
            ),
        ),
        (
            Duration::ZERO,
            event_frame(
                "content_block_start",
                &json!({
                    "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""},
                }),
            ),
        ),
        (
            Duration::ZERO,
            event_frame("ping", &json!({"type": "ping"})),
        ),
    ];
    let per_chunk = tokens_per_chunk(&state.cfg);
    let token_time = faults.slowed(match state.cfg.tokens_per_sec {
        0 => Duration::ZERO,
        tps => Duration::from_secs_f64(1.0 / f64::from(tps)),
    });
    let mut at = ttft;
    for (i, piece) in chunks(&reply.text, per_chunk).into_iter().enumerate() {
        if faults.stream_error_after == Some(i as u32) {
            break;
        }
        frames.push((at, event_frame("content_block_delta", &json!({
            "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece},
        }))));
        at += token_time * per_chunk as u32;
    }
    if faults.stream_error_after.is_some() {
        frames.push((
            at,
            event_frame(
                "error",
                &json!({
                    "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                }),
            ),
        ));
        return frames;
    }
    frames.push((
        at,
        event_frame(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
    ));
    frames.push((at, event_frame("message_delta", &json!({
        "type": "message_delta",
        "delta": {"stop_reason": if reply.truncated { "max_tokens" } else { "end_turn" }, "stop_sequence": null},
        "usage": {"output_tokens": reply.output_tokens},
    }))));
    frames.push((
        at,
        event_frame("message_stop", &json!({"type": "message_stop"})),
    ));
    frames
}

async fn openai_embed(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let wire = Wire::OpenAi;
    state.bump(&state.counters.requests, 1);
    state.bump(&state.counters.embed, 1);
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return client_error(&state, wire, 400, &format!("invalid JSON body: {e}")),
    };
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => {
            return client_error(
                &state,
                wire,
                400,
                "input: a string or a non-empty array of strings",
            );
        }
    };
    if model.is_empty() {
        return client_error(&state, wire, 400, "model: field required");
    }
    let faults = state.faults();
    if let Some(resp) = injected(&state, wire, &faults) {
        return resp;
    }
    let input_tokens = inputs
        .iter()
        .fold(0u32, |a, i| a.saturating_add(tokens::text_tokens(i)));
    if let Some(resp) = admit(&state, wire, input_tokens) {
        return resp;
    }
    let mut headers = HeaderMap::new();
    rate_headers(&state, wire, &mut headers);
    sleep(faults.slowed(Duration::from_millis(
        state.cfg.ttft_ms.saturating_add(faults.extra_latency_ms),
    )))
    .await;
    if faults.malformed {
        return malformed(&state);
    }
    let dims = state.cfg.embedding_dims;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"object": "embedding", "index": i, "embedding": text::embedding(state.cfg.seed, t, dims)})
        })
        .collect();
    state.bump(&state.counters.ok, 1);
    state.bump(&state.counters.input_tokens, u64::from(input_tokens));
    let body = json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens},
    });
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, headers, body.to_string()).into_response()
}

async fn admin_stats(State(state): State<Arc<SimState>>) -> Response {
    axum::Json(state.stats()).into_response()
}

async fn admin_get_faults(State(state): State<Arc<SimState>>) -> Response {
    axum::Json(state.faults()).into_response()
}

async fn admin_put_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            *state.faults.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
            axum::Json(f).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid faults: {e}")).into_response(),
    }
}

async fn admin_reset(State(state): State<Arc<SimState>>) -> Response {
    state.reset();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_req(body: Value, wire: Wire) -> SimChat {
        parse_chat(wire, body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn deterministic_and_bounded() {
        let cfg = SimConfig::default();
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "Summarize the annual financial statement of the company"}], "max_tokens": 7});
        let a = generate(&cfg, &chat_req(body.clone(), Wire::OpenAi));
        let b = generate(&cfg, &chat_req(body, Wire::OpenAi));
        assert_eq!(a.text, b.text);
        assert_eq!(a.output_tokens, 7);
        assert!(a.truncated);
        assert_eq!(a.text.len(), 28);
        let other = SimConfig {
            seed: 9,
            ..SimConfig::default()
        };
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "Summarize the annual financial statement of the company"}]});
        let c = generate(&other, &chat_req(body, Wire::OpenAi));
        assert!(!c.truncated);
        assert_eq!(c.output_tokens, tokens::text_tokens(&c.text));
        assert!(c.text.ends_with('.'));
    }

    #[test]
    fn a_slow_day_multiplies_every_latency() {
        let sim = SimControl::new(SimConfig {
            ttft_ms: 100,
            tokens_per_sec: 10,
            ..SimConfig::default()
        });
        let at = |latency_factor: f64| {
            let f = Faults {
                latency_factor,
                ..Faults::default()
            };
            latency(&sim.state, &f, 10)
        };
        let ms = Duration::from_millis;
        assert_eq!(at(1.0), (ms(100), ms(1000)));
        assert_eq!(at(5.0), (ms(500), ms(5000)));
        assert_eq!(at(f64::NAN), (ms(100), ms(1000)), "not a number: unchanged");
        assert_eq!(at(-3.0), (ms(0), ms(0)), "clamped at 0");
        assert_eq!(at(1e9), (ms(100_000), ms(1_000_000)), "clamped at 1000×");
        let slow = Faults {
            latency_factor: 5.0,
            ..Faults::default()
        };
        assert_eq!(slow.slowed(Duration::MAX), Duration::MAX, "saturates");
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(parse_chat(Wire::OpenAi, b"{").is_err());
        assert!(parse_chat(Wire::OpenAi, br#"{"model":"m","messages":[]}"#).is_err());
        assert!(
            parse_chat(
                Wire::Anthropic,
                br#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#
            )
            .is_err()
        );
        assert!(
            parse_chat(
                Wire::OpenAi,
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":5}"#
            )
            .is_err()
        );
    }
}
