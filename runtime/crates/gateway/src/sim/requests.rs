//! Requests: a chat request in either wire format reduced to what the simulator needs, and the
//! deterministic reply it generates.

use serde_json::Value;

use super::SimConfig;
use super::text::{self, Rng};
use crate::tokens;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    OpenAi,
    Anthropic,
}

/// A chat request in either format, reduced to what the simulator needs.
pub(super) struct SimChat {
    pub(super) model: String,
    /// Message texts in order (system first), for token counting and hashing.
    pub(super) contents: Vec<(String, String)>,
    pub(super) max_tokens: Option<u32>,
    pub(super) json: bool,
    /// Anthropic JSON mode: the reply was prefilled with `{`.
    pub(super) prefilled: bool,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
}

pub(super) fn text_of(content: &Value) -> Option<String> {
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

pub(super) fn parse_chat(wire: Wire, body: &[u8]) -> Result<SimChat, String> {
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
pub(super) struct Reply {
    pub(super) text: String,
    pub(super) truncated: bool,
    pub(super) input_tokens: u32,
    pub(super) output_tokens: u32,
    pub(super) cached_tokens: u32,
}

pub(super) fn generate(cfg: &SimConfig, chat: &SimChat) -> Reply {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
