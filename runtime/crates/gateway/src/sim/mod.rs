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
//!
//! Modules, along the request's path: [`settings`] (config, faults, counters: plain data, in
//! every build), and with the `sim` feature `server` (state, control, the running server),
//! `requests` (parsing and the generated reply), `errors` (error bodies, rate limits, injected
//! faults), `handlers` (the routes) and `frames` (wire bodies and SSE frames).

mod settings;

pub use settings::{Faults, Outage, SimConfig, SimStats};

#[cfg(feature = "sim")]
mod errors;
#[cfg(feature = "sim")]
mod frames;
#[cfg(feature = "sim")]
mod handlers;
#[cfg(feature = "sim")]
mod requests;
#[cfg(feature = "sim")]
mod server;
#[cfg(feature = "sim")]
pub mod text;

#[cfg(feature = "sim")]
pub use server::{SimControl, SimHandle, run, start, start_on};
