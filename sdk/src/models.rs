//! Model calls: chat (one or many at once) and embeddings.
//!
//! Every call goes through the host's gateway, which applies the job's journal (a retried job
//! gets the recorded reply instead of paying again), the response cache, budgets, rate limits,
//! retries and provider failover. A model is named by an alias from the host's configuration
//! (`fast`, `smart`, …) or explicitly as `provider/model`.
//!
//! ```no_run
//! use sluice_sdk::models;
//!
//! # fn run() -> sluice_sdk::Result<()> {
//! let reply = models::chat("fast")
//!     .system("You answer in one short sentence.")
//!     .user("Why is the sky blue?")
//!     .max_tokens(60)
//!     .send()?;
//! println!("{} ({} via {}, {} µ$)", reply.content, reply.model, reply.provider, reply.cost_micros);
//!
//! // Several calls at once: the host runs them concurrently within its rate limits.
//! let replies = models::chat_all(vec![
//!     models::chat("fast").user("Summarize part one: …"),
//!     models::chat("fast").user("Summarize part two: …"),
//! ]);
//! for reply in replies {
//!     println!("{}", reply?.content);
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bindings::models as wit;
use crate::error::Error;

/// Who wrote a message in a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The end user's words.
    User,
    /// The model's earlier replies.
    Assistant,
}

/// One message of a chat conversation. Serializes as `{"role": "user", "content": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A message with this role and text.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }

    /// Instructions for the model.
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    /// The end user's words.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    /// A reply the model gave earlier.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }
}

/// The shape a chat reply must take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// A single JSON object (the provider's JSON mode where it has one).
    Json,
}

/// A chat request, built step by step and sent with [`ChatRequest::send`].
///
/// Start one with [`chat`]. A request can be sent more than once, and cloned to vary it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// A model alias (`fast`, `smart`, …) or `provider/model`.
    pub model: String,
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// The most tokens the reply may have; the host's default for the model when `None`.
    /// The host reserves budget for this many output tokens before the call.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0.0 to 2.0; the provider's default when `None`.
    pub temperature: Option<f32>,
    /// Text or JSON mode.
    pub format: ResponseFormat,
    /// Skip the host's response cache (the call is still journaled).
    pub no_cache: bool,
    /// Publish the reply's token deltas as job events while it streams.
    pub stream_events: bool,
}

/// Start a chat request to `model`, an alias from the host's configuration (`fast`, `smart`,
/// …) or an explicit `provider/model`.
pub fn chat(model: impl Into<String>) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: Vec::new(),
        max_tokens: None,
        temperature: None,
        format: ResponseFormat::Text,
        no_cache: false,
        stream_events: false,
    }
}

impl ChatRequest {
    /// Add a system message (instructions for the model).
    #[must_use]
    pub fn system(self, content: impl Into<String>) -> Self {
        self.message(Message::system(content))
    }

    /// Add a user message.
    #[must_use]
    pub fn user(self, content: impl Into<String>) -> Self {
        self.message(Message::user(content))
    }

    /// Add an assistant message (a reply the model gave earlier, or an example answer).
    #[must_use]
    pub fn assistant(self, content: impl Into<String>) -> Self {
        self.message(Message::assistant(content))
    }

    /// Add one message.
    #[must_use]
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Add several messages, oldest first (for example a conversation's history).
    #[must_use]
    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> Self {
        self.messages.extend(messages);
        self
    }

    /// Limit the reply to this many tokens.
    #[must_use]
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Set the sampling temperature (0.0 to 2.0).
    #[must_use]
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Ask for a single JSON object as the reply.
    #[must_use]
    pub fn json(mut self) -> Self {
        self.format = ResponseFormat::Json;
        self
    }

    /// Bypass the host's response cache for this call.
    #[must_use]
    pub fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// Publish the reply's token deltas as job events while it streams; [`send`](Self::send)
    /// still returns the complete reply.
    #[must_use]
    pub fn stream(mut self) -> Self {
        self.stream_events = true;
        self
    }

    /// Make the call.
    pub fn send(&self) -> Result<ChatResponse, ModelError> {
        wit::chat(&self.to_wit())
            .map(ChatResponse::from)
            .map_err(ModelError::from)
    }

    /// Make the call in JSON mode and parse the reply as `T`.
    ///
    /// A reply that is not valid JSON for `T` is a permanent [`Error`]: a retry would replay
    /// the same reply from the journal. To handle such replies yourself, use
    /// [`send`](Self::send) and [`ChatResponse::json`].
    pub fn send_json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let reply = if self.format == ResponseFormat::Json {
            self.send()?
        } else {
            self.clone().json().send()?
        };
        reply.json().map_err(|e| {
            Error::permanent(format!(
                "model {} replied with JSON that does not fit: {e}",
                reply.model
            ))
        })
    }

    pub(crate) fn to_wit(&self) -> wit::ChatRequest {
        wit::ChatRequest {
            model: self.model.clone(),
            messages: self
                .messages
                .iter()
                .map(|m| wit::Message {
                    role: match m.role {
                        Role::System => wit::Role::System,
                        Role::User => wit::Role::User,
                        Role::Assistant => wit::Role::Assistant,
                    },
                    content: m.content.clone(),
                })
                .collect(),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            response_format: match self.format {
                ResponseFormat::Text => wit::ResponseFormat::Text,
                ResponseFormat::Json => wit::ResponseFormat::Json,
            },
            no_cache: self.no_cache,
            stream_events: self.stream_events,
        }
    }
}

/// Make several chat calls that the host runs concurrently, within its rate limits and
/// budgets. Results come back in request order; each call succeeds or fails on its own.
pub fn chat_all(
    requests: impl IntoIterator<Item = ChatRequest>,
) -> Vec<Result<ChatResponse, ModelError>> {
    let requests: Vec<wit::ChatRequest> = requests.into_iter().map(|r| r.to_wit()).collect();
    if requests.is_empty() {
        return Vec::new();
    }
    wit::chat_batch(&requests)
        .into_iter()
        .map(|r| r.map(ChatResponse::from).map_err(ModelError::from))
        .collect()
}

/// Embed `inputs` with an embedding model (an alias or `provider/model`). The vectors come
/// back in input order.
pub fn embed<S: Into<String>>(
    model: impl Into<String>,
    inputs: impl IntoIterator<Item = S>,
) -> Result<EmbedResponse, ModelError> {
    let request = wit::EmbedRequest {
        model: model.into(),
        inputs: inputs.into_iter().map(Into::into).collect(),
    };
    wit::embed(&request)
        .map(EmbedResponse::from)
        .map_err(ModelError::from)
}

/// Token counts of a call. `input_tokens` includes `cached_input_tokens`. Counts add up with
/// `+` and `+=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, including those served from the provider's prompt cache.
    pub input_tokens: u32,
    /// Completion tokens.
    pub output_tokens: u32,
    /// Prompt tokens the provider served from its prompt cache.
    pub cached_input_tokens: u32,
}

impl Add for Usage {
    type Output = Usage;
    fn add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cached_input_tokens: self
                .cached_input_tokens
                .saturating_add(other.cached_input_tokens),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        *self = *self + other;
    }
}

impl From<wit::Usage> for Usage {
    fn from(u: wit::Usage) -> Self {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cached_input_tokens: u.cached_input_tokens,
        }
    }
}

/// Where a reply came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A provider answered this call.
    Provider,
    /// The host's response cache answered; no provider cost.
    Cache,
    /// Replayed from this job's journal (an earlier attempt made the same call); no new cost.
    Journal,
}

impl From<wit::ResponseSource> for Source {
    fn from(s: wit::ResponseSource) -> Self {
        match s {
            wit::ResponseSource::Provider => Source::Provider,
            wit::ResponseSource::Cache => Source::Cache,
            wit::ResponseSource::Journal => Source::Journal,
        }
    }
}

/// A completed chat call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The reply text (a JSON document in JSON mode).
    pub content: String,
    /// The model that answered, as the provider named it.
    pub model: String,
    /// The provider that answered (after any failover).
    pub provider: String,
    /// Token counts.
    pub usage: Usage,
    /// What this call cost, in millionths of a US dollar (0 for cache and journal hits).
    pub cost_micros: u64,
    /// Wall time of the call in the host.
    pub latency: Duration,
    /// Where the reply came from.
    pub source: Source,
    /// Why generation stopped (`stop`, `length`, `content_filter`, …), as the provider said.
    pub finish_reason: String,
}

impl ChatResponse {
    /// Parse the reply as JSON. Tolerates a Markdown code fence around the document, which
    /// some models add even in JSON mode.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(strip_code_fence(&self.content))
    }

    /// Whether the reply was cut off by the token limit.
    pub fn is_truncated(&self) -> bool {
        self.finish_reason == "length"
    }
}

/// The text inside a Markdown code fence (```` ```json … ``` ````), or the whole text trimmed.
fn strip_code_fence(text: &str) -> &str {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("```")
        && let Some(body) = rest.strip_suffix("```")
    {
        // Drop the info string (`json`) on the opening line.
        let body = body.split_once('\n').map_or(body, |(first, after)| {
            if first.trim().chars().all(|c| c.is_ascii_alphanumeric()) {
                after
            } else {
                body
            }
        });
        return body.trim();
    }
    t
}

impl From<wit::ChatResponse> for ChatResponse {
    fn from(r: wit::ChatResponse) -> Self {
        ChatResponse {
            content: r.content,
            model: r.model,
            provider: r.provider,
            usage: r.usage.into(),
            cost_micros: r.cost_micros,
            latency: Duration::from_millis(u64::from(r.latency_ms)),
            source: r.source.into(),
            finish_reason: r.finish_reason,
        }
    }
}

/// A completed embeddings call.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// The model that answered.
    pub model: String,
    /// The provider that answered.
    pub provider: String,
    /// Token counts (output is 0).
    pub usage: Usage,
    /// What this call cost, in millionths of a US dollar.
    pub cost_micros: u64,
    /// Where the reply came from.
    pub source: Source,
}

impl From<wit::EmbedResponse> for EmbedResponse {
    fn from(r: wit::EmbedResponse) -> Self {
        EmbedResponse {
            vectors: r.vectors,
            model: r.model,
            provider: r.provider,
            usage: r.usage.into(),
            cost_micros: r.cost_micros,
            source: r.source.into(),
        }
    }
}

/// Why a model call failed. The host has already retried and failed over where that could
/// help; what reaches the handler is final for this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// A hard budget would be exceeded by the call's worst-case cost; it was not made.
    BudgetExceeded(String),
    /// Every provider was rate-limited until past the job's deadline.
    RateLimited {
        /// What was limited.
        message: String,
        /// How long until capacity is expected, when known.
        retry_after: Option<Duration>,
    },
    /// Every provider in the chain failed or is down.
    Unavailable(String),
    /// The request itself is wrong (unknown alias, too many tokens, bad parameters).
    InvalidRequest(String),
    /// The job's deadline passed while waiting for the provider.
    Timeout(String),
    /// The provider refused the content.
    ContentFiltered(String),
}

impl ModelError {
    /// Whether running the job again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ModelError::RateLimited { .. } | ModelError::Unavailable(_) | ModelError::Timeout(_)
        )
    }

    /// How long to wait before trying again, when the host knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The host's description of the failure.
    pub fn message(&self) -> &str {
        match self {
            ModelError::BudgetExceeded(m)
            | ModelError::RateLimited { message: m, .. }
            | ModelError::Unavailable(m)
            | ModelError::InvalidRequest(m)
            | ModelError::Timeout(m)
            | ModelError::ContentFiltered(m) => m,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ModelError::BudgetExceeded(_) => "budget exceeded",
            ModelError::RateLimited { .. } => "rate limited",
            ModelError::Unavailable(_) => "model unavailable",
            ModelError::InvalidRequest(_) => "invalid model request",
            ModelError::Timeout(_) => "model call timed out",
            ModelError::ContentFiltered(_) => "content filtered",
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for ModelError {}

impl From<wit::ModelError> for ModelError {
    fn from(e: wit::ModelError) -> Self {
        match e {
            wit::ModelError::BudgetExceeded(m) => ModelError::BudgetExceeded(m),
            wit::ModelError::RateLimited(r) => ModelError::RateLimited {
                message: r.message,
                retry_after: r.retry_after_ms.map(Duration::from_millis),
            },
            wit::ModelError::Unavailable(m) => ModelError::Unavailable(m),
            wit::ModelError::InvalidRequest(m) => ModelError::InvalidRequest(m),
            wit::ModelError::Timeout(m) => ModelError::Timeout(m),
            wit::ModelError::ContentFiltered(m) => ModelError::ContentFiltered(m),
        }
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        let message = e.to_string();
        match (e.is_retryable(), e.retry_after()) {
            (true, Some(delay)) => Error::retry_after(message, delay),
            (true, None) => Error::retryable(message),
            (false, _) => Error::permanent(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_collects_everything() {
        let req = chat("fast")
            .system("be brief")
            .user("hi")
            .assistant("hello")
            .messages([Message::user("again")])
            .max_tokens(200)
            .temperature(0.2)
            .json()
            .no_cache()
            .stream();
        assert_eq!(req.model, "fast");
        assert_eq!(
            req.messages,
            vec![
                Message::system("be brief"),
                Message::user("hi"),
                Message::assistant("hello"),
                Message::user("again")
            ]
        );
        let w = req.to_wit();
        assert_eq!(w.model, "fast");
        assert_eq!(w.messages.len(), 4);
        assert_eq!(w.messages[0].role, wit::Role::System);
        assert_eq!(w.messages[2].role, wit::Role::Assistant);
        assert_eq!(w.messages[3].content, "again");
        assert_eq!(w.max_tokens, Some(200));
        assert_eq!(w.temperature, Some(0.2));
        assert_eq!(w.response_format, wit::ResponseFormat::Json);
        assert!(w.no_cache && w.stream_events);
    }

    #[test]
    fn builder_defaults() {
        let w = chat("openai/gpt-4o-mini").user("x").to_wit();
        assert_eq!(w.max_tokens, None);
        assert_eq!(w.temperature, None);
        assert_eq!(w.response_format, wit::ResponseFormat::Text);
        assert!(!w.no_cache && !w.stream_events);
        assert!(chat_all(Vec::new()).is_empty(), "no requests, no host call");
    }

    #[test]
    fn messages_serialize_compactly() {
        let json = serde_json::to_string(&Message::assistant("ok")).unwrap();
        assert_eq!(json, r#"{"role":"assistant","content":"ok"}"#);
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Message::assistant("ok"));
    }

    fn wit_response(content: &str) -> wit::ChatResponse {
        wit::ChatResponse {
            content: content.into(),
            model: "m".into(),
            provider: "p".into(),
            usage: wit::Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 2,
            },
            cost_micros: 42,
            latency_ms: 120,
            source: wit::ResponseSource::Journal,
            finish_reason: "length".into(),
        }
    }

    #[test]
    fn response_conversion_and_json() {
        let r = ChatResponse::from(wit_response("```json\n{\"label\": \"spam\"}\n```"));
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 2
            }
        );
        assert_eq!(r.latency, Duration::from_millis(120));
        assert_eq!(r.source, Source::Journal);
        assert!(r.is_truncated());
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["label"], "spam");
        let plain = ChatResponse::from(wit_response(" {\"a\":1} "));
        assert_eq!(plain.json::<serde_json::Value>().unwrap()["a"], 1);
        assert!(
            ChatResponse::from(wit_response("not json"))
                .json::<serde_json::Value>()
                .is_err()
        );
        assert_eq!(strip_code_fence("```\n[1]\n```"), "[1]");
    }

    #[test]
    fn usage_adds_up() {
        let mut u = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cached_input_tokens: 0,
        };
        u += Usage {
            input_tokens: 10,
            output_tokens: 20,
            cached_input_tokens: 5,
        };
        assert_eq!(
            u,
            Usage {
                input_tokens: 11,
                output_tokens: 22,
                cached_input_tokens: 5
            }
        );
        let max = Usage {
            input_tokens: u32::MAX,
            ..Usage::default()
        };
        assert_eq!((max + u).input_tokens, u32::MAX);
    }

    #[test]
    fn model_errors_classify() {
        let limited = ModelError::from(wit::ModelError::RateLimited(wit::RateLimited {
            message: "openai 429".into(),
            retry_after_ms: Some(2000),
        }));
        assert!(limited.is_retryable());
        let e = Error::from(limited);
        assert_eq!(
            e,
            Error::retry_after("rate limited: openai 429", Duration::from_secs(2))
        );

        for (w, retryable) in [
            (wit::ModelError::BudgetExceeded("b".into()), false),
            (wit::ModelError::InvalidRequest("i".into()), false),
            (wit::ModelError::ContentFiltered("c".into()), false),
            (wit::ModelError::Unavailable("u".into()), true),
            (wit::ModelError::Timeout("t".into()), true),
            (
                wit::ModelError::RateLimited(wit::RateLimited {
                    message: "r".into(),
                    retry_after_ms: None,
                }),
                true,
            ),
        ] {
            let m = ModelError::from(w);
            let e = Error::from(m.clone());
            assert_eq!(e.is_retryable(), retryable, "{m:?}");
            assert_eq!(e.retry_delay(), None, "{m:?}");
            assert!(e.message().ends_with(m.message()), "{e}");
        }
        assert_eq!(
            ModelError::BudgetExceeded("tenant acme: 12 µ$ left".into()).to_string(),
            "budget exceeded: tenant acme: 12 µ$ left"
        );
    }
}
