//! The OpenAI-compatible client: `POST {base}/chat/completions` (plain and SSE streaming with
//! `stream_options.include_usage`) and `POST {base}/embeddings`. Covers OpenAI, vLLM, Ollama,
//! llama.cpp server, Groq, Together and the simulator.

use std::time::Instant;

use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_types::model::{Message, Usage};

use super::{
    DeltaFn, FailureKind, Provider, ProviderChatReply, ProviderChatRequest, ProviderEmbedReply,
    ProviderError, classify_status, kind_from_type, normalize_finish, transport_error,
};
use crate::config::ProviderConfig;
use crate::tokens;

/// An OpenAI-compatible endpoint.
pub struct OpenAiProvider {
    client: reqwest::Client,
    chat_url: String,
    embed_url: String,
}

impl OpenAiProvider {
    /// A client for `cfg` (base URL defaults to OpenAI's).
    pub fn new(cfg: &ProviderConfig) -> Result<Self, String> {
        let key = super::api_key(cfg)?;
        let auth: Vec<(&'static str, String)> = key
            .map(|k| vec![("authorization", format!("Bearer {}", k.expose()))])
            .unwrap_or_default();
        let client = super::http_client(cfg, &auth)?;
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or("https://api.openai.com/v1");
        Ok(Self::with_client(client, base))
    }

    /// A client with a ready-made HTTP client.
    pub fn with_client(client: reqwest::Client, base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/');
        OpenAiProvider {
            client,
            chat_url: format!("{base}/chat/completions"),
            embed_url: format!("{base}/embeddings"),
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<FormatObj>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct FormatObj {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// OpenAI's `usage` object.
#[derive(Deserialize, Default, Clone, Copy)]
pub(crate) struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        // OpenAI's prompt_tokens already includes cached tokens.
        let cached = u
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            cached_input_tokens: cached.min(u.prompt_tokens),
        }
    }
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    model: String,
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<ChunkError>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct EmbedWire<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct EmbedResponse {
    data: Vec<EmbedDatum>,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct EmbedDatum {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

/// The usage to report when a provider omitted it: the gateway's upper bound (a byte a
/// token), so an unreported call is never charged less than it may have cost; logged.
fn estimated_usage(req: &ProviderChatRequest, content: &str) -> Usage {
    tracing::warn!(model = %req.model, "provider reported no usage; charging the gateway's upper bound");
    Usage {
        input_tokens: tokens::clamp_u32(tokens::prompt_upper_bound(&req.messages)),
        output_tokens: tokens::clamp_u32(tokens::text_upper_bound(content)),
        cached_input_tokens: 0,
    }
}

fn filtered_or(content: String, finish: &str) -> Result<String, ProviderError> {
    if finish == "content_filter" && content.is_empty() {
        Err(ProviderError::new(
            FailureKind::ContentFiltered,
            "the provider filtered the reply",
        ))
    } else {
        Ok(content)
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn chat(
        &self,
        req: &ProviderChatRequest,
        on_delta: Option<&DeltaFn<'_>>,
    ) -> Result<ProviderChatReply, ProviderError> {
        let started = Instant::now();
        let body = WireRequest {
            model: &req.model,
            messages: &req.messages,
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            response_format: req.json.then_some(FormatObj {
                kind: "json_object",
            }),
            stream: req.stream,
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let resp = self
            .client
            .post(&self.chat_url)
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
            let Some(choice) = wire.choices.into_iter().next() else {
                return Err(ProviderError::malformed("no choices"));
            };
            let finish = normalize_finish(choice.finish_reason.as_deref().unwrap_or(""));
            if choice.message.content.is_none() && choice.message.refusal.is_some() {
                return Err(ProviderError::new(
                    FailureKind::ContentFiltered,
                    choice.message.refusal.unwrap_or_default(),
                ));
            }
            let content = filtered_or(choice.message.content.unwrap_or_default(), &finish)?;
            let usage = match wire.usage {
                Some(u) => u.into(),
                None => estimated_usage(req, &content),
            };
            return Ok(ProviderChatReply {
                content,
                model: wire.model,
                usage,
                finish_reason: finish,
                ttft: None,
            });
        }

        let mut events = resp.bytes_stream().eventsource();
        let mut content = String::new();
        let mut model = String::new();
        let mut usage: Option<Usage> = None;
        let mut finish: Option<String> = None;
        let mut ttft = None;
        let mut done = false;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(EventStreamError::Transport(e)) => return Err(transport_error(e)),
                Err(e) => return Err(ProviderError::malformed(e)),
            };
            let data = event.data.trim();
            if data == "[DONE]" {
                done = true;
                break;
            }
            if data.is_empty() {
                continue;
            }
            let chunk: WireChunk = serde_json::from_str(data).map_err(ProviderError::malformed)?;
            if let Some(err) = chunk.error {
                let code = match err.code {
                    Some(serde_json::Value::String(s)) => s,
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => String::new(),
                };
                let kind = kind_from_type(
                    err.kind.as_deref().unwrap_or(""),
                    &code,
                    FailureKind::Server,
                );
                let message = err
                    .message
                    .unwrap_or_else(|| "error event in stream".into());
                return Err(ProviderError::new(kind, format!("stream error: {message}")));
            }
            if let Some(m) = chunk.model
                && model.is_empty()
            {
                model = m;
            }
            // Usage arrives on its own final chunk (include_usage), or on the last content
            // chunk for providers that put it there; the last one seen wins.
            if let Some(u) = chunk.usage {
                usage = Some(u.into());
            }
            for choice in chunk.choices {
                if let Some(text) = choice.delta.and_then(|d| d.content)
                    && !text.is_empty()
                {
                    if ttft.is_none() {
                        ttft = Some(started.elapsed());
                    }
                    if let Some(f) = on_delta {
                        f(&text);
                    }
                    content.push_str(&text);
                }
                if let Some(f) = choice.finish_reason {
                    finish = Some(f);
                }
            }
        }
        if !done && finish.is_none() {
            return Err(ProviderError::new(
                FailureKind::Connection,
                "stream ended before the reply was complete",
            ));
        }
        let finish = normalize_finish(finish.as_deref().unwrap_or(""));
        let content = filtered_or(content, &finish)?;
        let usage = match usage {
            Some(u) => u,
            None => estimated_usage(req, &content),
        };
        Ok(ProviderChatReply {
            content,
            model,
            usage,
            finish_reason: finish,
            ttft,
        })
    }

    async fn embed(
        &self,
        model: &str,
        inputs: &[String],
    ) -> Result<ProviderEmbedReply, ProviderError> {
        let resp = self
            .client
            .post(&self.embed_url)
            .json(&EmbedWire {
                model,
                input: inputs,
            })
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let text = resp.text().await.unwrap_or_default();
            return Err(classify_status(status.as_u16(), &headers, &text));
        }
        let bytes = resp.bytes().await.map_err(transport_error)?;
        let mut wire: EmbedResponse =
            serde_json::from_slice(&bytes).map_err(ProviderError::malformed)?;
        if wire.data.len() != inputs.len() {
            return Err(ProviderError::malformed(format!(
                "{} vectors for {} inputs",
                wire.data.len(),
                inputs.len()
            )));
        }
        wire.data.sort_by_key(|d| d.index);
        let usage = match wire.usage {
            Some(u) => u.into(),
            None => Usage {
                input_tokens: tokens::clamp_u32(
                    inputs
                        .iter()
                        .fold(0u64, |a, i| a.saturating_add(tokens::text_upper_bound(i))),
                ),
                ..Usage::default()
            },
        };
        Ok(ProviderEmbedReply {
            vectors: wire.data.into_iter().map(|d| d.embedding).collect(),
            model: wire.model,
            usage,
        })
    }
}
