//! Model calls: requests, responses and errors (mirrors WIT `models`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions.
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Message {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Text or JSON replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// A chat request as a handler made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Alias (`fast`) or `provider/model`.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Output token cap.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Text or JSON.
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// Skip the response cache.
    #[serde(default)]
    pub no_cache: bool,
    /// Publish token deltas as job events.
    #[serde(default)]
    pub stream_events: bool,
}

impl ChatRequest {
    /// A request with defaults for everything but the model and messages.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        ChatRequest {
            model: model.into(),
            messages,
            max_tokens: None,
            temperature: None,
            response_format: ResponseFormat::Text,
            no_cache: false,
            stream_events: false,
        }
    }

    /// A stable hash of everything that determines the reply (not the cache or streaming
    /// flags), used as the response-cache key and to match journal entries on replay.
    ///
    /// The hashed text is the compact JSON of `{"max_tokens", "messages": [{"content", "role"}],
    /// "model", "response_format", "temperature"}` with keys sorted (what `serde_json::json!`
    /// of these fields printed, as it was first computed: journals hold these hashes, so the
    /// bytes must never change). It is streamed into the hash without building a JSON tree,
    /// which was most of the gateway's own cost per call.
    pub fn fingerprint(&self) -> String {
        let canonical = CanonicalChat {
            max_tokens: self.max_tokens,
            messages: CanonicalMessages(&self.messages),
            model: &self.model,
            response_format: self.response_format,
            // f32 → text keeps the hash stable across platforms.
            temperature: self.temperature.map(|t| format!("{t:.4}")),
        };
        let mut hash = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hash, &canonical)
            .expect("serializing plain fields into a hash cannot fail");
        hex::encode(hash.0.finalize())
    }
}

/// What [`ChatRequest::fingerprint`] hashes, fields in sorted order (see there).
#[derive(Serialize)]
struct CanonicalChat<'a> {
    max_tokens: Option<u32>,
    messages: CanonicalMessages<'a>,
    model: &'a str,
    response_format: ResponseFormat,
    temperature: Option<String>,
}

/// Messages with their keys in sorted order (`content` before `role`).
struct CanonicalMessages<'a>(&'a [Message]);

impl Serialize for CanonicalMessages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct CanonicalMessage<'a> {
            content: &'a str,
            role: Role,
        }
        serializer.collect_seq(self.0.iter().map(|m| CanonicalMessage {
            content: &m.content,
            role: m.role,
        }))
    }
}

/// Feeds what is written into a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Token counts; `input_tokens` includes `cached_input_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens (including cached ones).
    pub input_tokens: u32,
    /// Completion tokens.
    pub output_tokens: u32,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_input_tokens: u32,
}

/// Where a response came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseSource {
    /// A provider.
    #[default]
    Provider,
    /// The host's response cache.
    Cache,
    /// The job's journal (replay on retry).
    Journal,
}

/// A completed chat call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Reply text.
    pub content: String,
    /// Model that answered.
    pub model: String,
    /// Provider that answered.
    pub provider: String,
    /// Tokens.
    pub usage: Usage,
    /// Cost in micro-dollars (never more than the call reserved against budgets).
    pub cost_micros: u64,
    /// Host wall time in ms.
    pub latency_ms: u32,
    /// Provider, cache or journal.
    pub source: ResponseSource,
    /// Why generation stopped.
    pub finish_reason: String,
}

/// An embeddings request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// Alias or `provider/model`.
    pub model: String,
    /// Texts.
    pub inputs: Vec<String>,
}

impl EmbedRequest {
    /// Stable hash for cache and journal matching.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!({ "embed": self.model, "inputs": self.inputs });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// A completed embeddings call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedResponse {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Model that answered.
    pub model: String,
    /// Provider that answered.
    pub provider: String,
    /// Tokens.
    pub usage: Usage,
    /// Cost in micro-dollars.
    pub cost_micros: u64,
    /// Provider, cache or journal.
    pub source: ResponseSource,
}

/// Why a model call failed: a value the handler handles, never a trap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelError {
    /// A hard budget would be exceeded.
    #[error("budget exceeded: {message}")]
    BudgetExceeded {
        /// Which budget and by how much.
        message: String,
    },
    /// Rate-limited past the deadline.
    #[error("rate limited: {message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// When capacity is expected.
        retry_after_ms: Option<u64>,
    },
    /// Every provider failed.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
    },
    /// The request is wrong.
    #[error("invalid request: {message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// The deadline passed.
    #[error("timeout: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// The provider refused the content.
    #[error("content filtered: {message}")]
    ContentFiltered {
        /// The provider's words.
        message: String,
    },
}

impl ModelError {
    /// Shorthand for [`ModelError::InvalidRequest`].
    pub fn invalid(message: impl Into<String>) -> Self {
        ModelError::InvalidRequest {
            message: message.into(),
        }
    }
    /// Shorthand for [`ModelError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        ModelError::Unavailable {
            message: message.into(),
        }
    }
    /// A short machine-readable kind, for metrics and usage records.
    pub fn kind(&self) -> &'static str {
        self.outcome().as_str()
    }

    /// The outcome a usage record and the call's metrics give a call that failed this way.
    pub fn outcome(&self) -> ModelOutcome {
        match self {
            ModelError::BudgetExceeded { .. } => ModelOutcome::BudgetExceeded,
            ModelError::RateLimited { .. } => ModelOutcome::RateLimited,
            ModelError::Unavailable { .. } => ModelOutcome::Unavailable,
            ModelError::InvalidRequest { .. } => ModelOutcome::InvalidRequest,
            ModelError::Timeout { .. } => ModelOutcome::Timeout,
            ModelError::ContentFiltered { .. } => ModelOutcome::ContentFiltered,
        }
    }
}

/// How a model call ended, as its usage record, metrics and trace span label it: `ok`, the
/// [`ModelError`] kind it failed with, or `abandoned` (its job stopped waiting for it).
/// Serialized, stored and printed as that snake_case name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelOutcome {
    /// Answered (by a provider, the cache or the journal).
    #[default]
    Ok,
    /// The call's future was dropped (its job timed out or was cancelled) after a request
    /// went out: charged what it may have cost.
    Abandoned,
    /// [`ModelError::BudgetExceeded`].
    BudgetExceeded,
    /// [`ModelError::RateLimited`].
    RateLimited,
    /// [`ModelError::Unavailable`].
    Unavailable,
    /// [`ModelError::InvalidRequest`].
    InvalidRequest,
    /// [`ModelError::Timeout`].
    Timeout,
    /// [`ModelError::ContentFiltered`].
    ContentFiltered,
}

impl ModelOutcome {
    /// The snake_case name (the usage table's `outcome` column and the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelOutcome::Ok => "ok",
            ModelOutcome::Abandoned => "abandoned",
            ModelOutcome::BudgetExceeded => "budget_exceeded",
            ModelOutcome::RateLimited => "rate_limited",
            ModelOutcome::Unavailable => "unavailable",
            ModelOutcome::InvalidRequest => "invalid_request",
            ModelOutcome::Timeout => "timeout",
            ModelOutcome::ContentFiltered => "content_filtered",
        }
    }

    /// Whether the call was answered.
    pub fn is_ok(self) -> bool {
        self == ModelOutcome::Ok
    }
}

impl std::fmt::Display for ModelOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compare with a name as written in a record or a test (`outcome == "ok"`).
impl PartialEq<&str> for ModelOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint as first written (a `json!` tree printed, then hashed): journals hold
    /// these hashes, so the streamed version must give the same bytes.
    fn fingerprint_as_first_written(r: &ChatRequest) -> String {
        let canonical = serde_json::json!({
            "model": r.model,
            "messages": r.messages,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature.map(|t| format!("{t:.4}")),
            "response_format": r.response_format,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }

    #[test]
    fn the_fingerprint_is_unchanged_from_the_json_tree_it_was_first_computed_from() {
        let mut cases = vec![
            ChatRequest::new("fast", vec![Message::user("Hello")]),
            ChatRequest::new("", vec![]),
            ChatRequest::new(
                "openai/gpt-4o-mini",
                vec![
                    Message::system("Reply in \"JSON\".\n\tTabs, \\ back\u{1}slashes"),
                    Message::user("héllo wörld — 日本語 🎉 </script>"),
                    Message::assistant("{\"a\": [1, 2]}"),
                ],
            ),
        ];
        let mut r = ChatRequest::new("m", vec![Message::user("x")]);
        r.max_tokens = Some(32);
        r.temperature = Some(0.7);
        r.response_format = ResponseFormat::Json;
        r.no_cache = true;
        r.stream_events = true;
        cases.push(r.clone());
        r.temperature = Some(f32::NAN);
        r.max_tokens = Some(u32::MAX);
        cases.push(r);
        for case in &cases {
            assert_eq!(
                case.fingerprint(),
                fingerprint_as_first_written(case),
                "{case:?}"
            );
        }
        // sha256 of {"max_tokens":null,"messages":[{"content":"Hello","role":"user"}],
        // "model":"fast","response_format":"text","temperature":null} (computed apart).
        assert_eq!(
            ChatRequest::new("fast", vec![Message::user("Hello")]).fingerprint(),
            "8968f0b2c4697a67b30095957e355f69244d6dd719cccd2f1897bc4deb16c3f6",
            "a known hash: sha256 of the canonical JSON"
        );
    }

    #[test]
    fn outcomes_are_stored_under_the_error_kinds_names() {
        let errors = [
            ModelError::BudgetExceeded {
                message: String::new(),
            },
            ModelError::RateLimited {
                message: String::new(),
                retry_after_ms: None,
            },
            ModelError::unavailable(""),
            ModelError::invalid(""),
            ModelError::Timeout {
                message: String::new(),
            },
            ModelError::ContentFiltered {
                message: String::new(),
            },
        ];
        for e in errors {
            let outcome = e.outcome();
            assert!(!outcome.is_ok());
            assert_eq!(outcome.as_str(), e.kind());
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{}\"", e.kind())
            );
        }
        assert_eq!(ModelOutcome::Ok, "ok");
        assert_eq!(ModelOutcome::Abandoned.to_string(), "abandoned");
        assert!(ModelOutcome::default().is_ok());
    }
}
