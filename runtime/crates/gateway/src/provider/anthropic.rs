//! The Anthropic Messages client: `POST {base}/messages`, plain and streaming.
//!
//! System messages travel in the separate `system` field; consecutive messages of one role are
//! merged (the API wants alternation). JSON mode has no switch in this API: the client adds a
//! one-line instruction to the system prompt and prefills the reply with `{`, which it puts back
//! in front of the text. Usage is normalized to OpenAI's inclusive accounting:
//! `input_tokens = input_tokens + cache_creation_input_tokens + cache_read_input_tokens` and
//! `cached_input_tokens = cache_read_input_tokens`.

use std::time::Instant;

use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_types::model::{Role, Usage};

use super::{
    DeltaFn, FailureKind, Provider, ProviderChatReply, ProviderChatRequest, ProviderEmbedReply,
    ProviderError, classify_status, kind_from_type, normalize_finish, transport_error,
};
use crate::config::ProviderConfig;

/// The API version header value sent.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// The instruction added to the system prompt in JSON mode.
pub const JSON_INSTRUCTION: &str = "Reply with one JSON object.";

/// An Anthropic Messages endpoint.
pub struct AnthropicProvider {
    client: reqwest::Client,
    url: String,
}

impl AnthropicProvider {
    /// A client for `cfg` (base URL defaults to Anthropic's).
    pub fn new(cfg: &ProviderConfig) -> Result<Self, String> {
        let mut auth = vec![("anthropic-version", ANTHROPIC_VERSION.to_string())];
        if let Some(k) = super::api_key(cfg)? {
            auth.push(("x-api-key", k.expose().to_string()));
        }
        let client = super::http_client(cfg, &auth)?;
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or("https://api.anthropic.com/v1");
        Ok(Self::with_client(client, base))
    }

    /// A client with a ready-made HTTP client (which must send `anthropic-version` and the key).
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Self {
        AnthropicProvider {
            client,
            url: format!("{}/messages", base_url.trim_end_matches('/')),
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct WireMessage {
    role: Role,
    content: String,
}

/// The request body: system separated, roles merged, JSON prefill. Returns the body and the
/// prefill to put back in front of the reply.
fn build(req: &ProviderChatRequest) -> (WireRequest<'_>, &'static str) {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<WireMessage> = Vec::new();
    for m in &req.messages {
        if m.role == Role::System {
            system.push(&m.content);
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == m.role => {
                last.content.push_str("\n\n");
                last.content.push_str(&m.content);
            }
            _ => messages.push(WireMessage {
                role: m.role,
                content: m.content.clone(),
            }),
        }
    }
    let mut prefill = "";
    if req.json {
        system.push(JSON_INSTRUCTION);
        if messages.last().is_some_and(|m| m.role == Role::User) {
            messages.push(WireMessage {
                role: Role::Assistant,
                content: "{".into(),
            });
            prefill = "{";
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let body = WireRequest {
        model: &req.model,
        max_tokens: req.max_tokens,
        messages,
        system,
        temperature: req.temperature,
        stream: req.stream,
    };
    (body, prefill)
}

#[derive(Deserialize, Default, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

impl WireUsage {
    /// Fold a later usage report into this one (fields present later win).
    fn merge(&mut self, later: WireUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn normalized(self) -> Usage {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let created = self.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            // Provider-given counts: saturating, never an overflow panic.
            input_tokens: self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(created)
                .saturating_add(read),
            output_tokens: self.output_tokens.unwrap_or(0),
            cached_input_tokens: read,
        }
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: String,
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    usage: WireUsage,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {},
    ContentBlockDelta {
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: StreamErrorBody,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Deserialize)]
struct StartMessage {
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct BlockDelta {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct StreamErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
}

fn filtered_or(content: String, finish: &str) -> Result<String, ProviderError> {
    if finish == "content_filter" && content.is_empty() {
        Err(ProviderError::new(
            FailureKind::ContentFiltered,
            "the provider refused the reply",
        ))
    } else {
        Ok(content)
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    async fn chat(
        &self,
        req: &ProviderChatRequest,
        on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<ProviderChatReply, ProviderError> {
        let started = Instant::now();
        let (body, prefill) = build(req);
        let resp = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            return Err(classify_status(status.as_u16(), &headers, &text));
        }
        if !req.stream {
            let bytes = resp.bytes().await.map_err(transport_error)?;
            let wire: WireResponse =
                serde_json::from_slice(&bytes).map_err(ProviderError::malformed)?;
            let mut content = String::from(prefill);
            for block in wire.content.iter().filter(|b| b.kind == "text") {
                content.push_str(block.text.as_deref().unwrap_or(""));
            }
            let finish = normalize_finish(wire.stop_reason.as_deref().unwrap_or(""));
            let content = filtered_or(content, &finish)?;
            return Ok(ProviderChatReply {
                content,
                model: wire.model,
                usage: wire.usage.normalized(),
                finish_reason: finish,
                ttft: None,
            });
        }

        let mut events = resp.bytes_stream().eventsource();
        let mut content = String::new();
        let mut model = String::new();
        let mut usage = WireUsage::default();
        let mut finish: Option<String> = None;
        let mut ttft = None;
        let mut started_msg = false;
        let mut stopped = false;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(EventStreamError::Transport(e)) => return Err(transport_error(e)),
                Err(e) => return Err(ProviderError::malformed(e)),
            };
            if event.data.trim().is_empty() {
                continue;
            }
            let parsed: StreamEvent =
                serde_json::from_str(&event.data).map_err(ProviderError::malformed)?;
            match parsed {
                StreamEvent::MessageStart { message } => {
                    started_msg = true;
                    model = message.model;
                    if let Some(u) = message.usage {
                        usage.merge(u);
                    }
                }
                StreamEvent::ContentBlockDelta { delta } => {
                    if delta.kind != "text_delta" {
                        continue;
                    }
                    let Some(text) = delta.text.filter(|t| !t.is_empty()) else {
                        continue;
                    };
                    if ttft.is_none() {
                        ttft = Some(started.elapsed());
                        if !prefill.is_empty() {
                            if let Some(f) = on_delta {
                                f(prefill);
                            }
                            content.push_str(prefill);
                        }
                    }
                    if let Some(f) = on_delta {
                        f(&text);
                    }
                    content.push_str(&text);
                }
                StreamEvent::MessageDelta { delta, usage: u } => {
                    if let Some(r) = delta.stop_reason {
                        finish = Some(r);
                    }
                    if let Some(u) = u {
                        usage.merge(u);
                    }
                }
                StreamEvent::MessageStop {} => {
                    stopped = true;
                    break;
                }
                StreamEvent::Error { error } => {
                    // An error after the 200 (e.g. overloaded_error mid-stream).
                    let kind = kind_from_type(&error.kind, "", FailureKind::Server);
                    return Err(ProviderError::new(
                        kind,
                        format!("stream error: {}: {}", error.kind, error.message),
                    ));
                }
                StreamEvent::ContentBlockStart {}
                | StreamEvent::ContentBlockStop {}
                | StreamEvent::Ping {}
                | StreamEvent::Unknown => {}
            }
        }
        if !started_msg {
            return Err(ProviderError::malformed("stream without message_start"));
        }
        if !stopped {
            return Err(ProviderError::new(
                FailureKind::Connection,
                "stream ended before message_stop",
            ));
        }
        if content.is_empty() && !prefill.is_empty() {
            content.push_str(prefill);
        }
        let finish = normalize_finish(finish.as_deref().unwrap_or(""));
        let content = filtered_or(content, &finish)?;
        Ok(ProviderChatReply {
            content,
            model,
            usage: usage.normalized(),
            finish_reason: finish,
            ttft,
        })
    }

    async fn embed(
        &self,
        _model: &str,
        _inputs: &[String],
    ) -> Result<ProviderEmbedReply, ProviderError> {
        Err(ProviderError::new(
            FailureKind::InvalidRequest,
            "the Anthropic Messages API has no embeddings endpoint",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_types::model::Message;

    #[test]
    fn builds_system_and_prefill() {
        let req = ProviderChatRequest {
            model: "m".into(),
            messages: vec![
                Message::system("be brief"),
                Message::user("a"),
                Message::user("b"),
            ],
            max_tokens: 10,
            temperature: None,
            json: true,
            stream: false,
        };
        let (body, prefill) = build(&req);
        assert_eq!(prefill, "{");
        assert_eq!(
            body.system.as_deref(),
            Some("be brief\n\nReply with one JSON object.")
        );
        assert_eq!(body.messages.len(), 2);
        assert_eq!(body.messages[0].content, "a\n\nb");
        assert_eq!(body.messages[1].content, "{");
    }

    #[test]
    fn usage_is_inclusive() {
        let u = WireUsage {
            input_tokens: Some(10),
            output_tokens: Some(5),
            cache_creation_input_tokens: Some(20),
            cache_read_input_tokens: Some(100),
        };
        assert_eq!(
            u.normalized(),
            Usage {
                input_tokens: 130,
                output_tokens: 5,
                cached_input_tokens: 100
            }
        );
        // A provider's absurd counts saturate instead of overflowing.
        let huge = WireUsage {
            input_tokens: Some(u32::MAX),
            output_tokens: Some(u32::MAX),
            cache_creation_input_tokens: Some(u32::MAX),
            cache_read_input_tokens: Some(7),
        };
        assert_eq!(huge.normalized().input_tokens, u32::MAX);
    }
}
