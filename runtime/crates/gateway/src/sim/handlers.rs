//! Handlers: the chat and embeddings routes (latency, streaming, counting) and the admin routes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::errors::{admit, client_error, injected, malformed, rate_headers};
use super::frames::{anthropic_body, anthropic_frames, openai_body, openai_frames, sse_response};
use super::requests::{Reply, Wire, generate, parse_chat};
use super::server::SimState;
use super::text;
use super::{Faults, SimConfig};
use crate::tokens;

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) fn reply_id(prefix: &str, state: &SimState, reply: &Reply) -> String {
    let h = text::hash(state.cfg.seed, &[reply.text.as_bytes()]);
    format!("{prefix}{h:016x}")
}

pub(super) fn latency(
    state: &SimState,
    faults: &Faults,
    output_tokens: u32,
) -> (Duration, Duration) {
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

pub(super) async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// Split `text` into stream chunks of `tokens_per_chunk` tokens (4 characters each).
pub(super) fn chunks(text: &str, tokens_per_chunk: usize) -> Vec<String> {
    let per = tokens_per_chunk.max(1) * 4;
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(per).map(|c| c.iter().collect()).collect()
}

pub(super) fn tokens_per_chunk(cfg: &SimConfig) -> usize {
    match cfg.tokens_per_sec {
        0 => 16,
        tps => (tps as usize / 100).max(1),
    }
}

pub(super) fn count_ok(state: &SimState, reply: &Reply) {
    state.bump(&state.counters.ok, 1);
    state.bump(&state.counters.input_tokens, u64::from(reply.input_tokens));
    state.bump(
        &state.counters.output_tokens,
        u64::from(reply.output_tokens),
    );
}

pub(super) async fn openai_chat(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    chat(state, Wire::OpenAi, body).await
}

pub(super) async fn anthropic_messages(
    State(state): State<Arc<SimState>>,
    body: Bytes,
) -> Response {
    chat(state, Wire::Anthropic, body).await
}

pub(super) async fn chat(state: Arc<SimState>, wire: Wire, body: Bytes) -> Response {
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

pub(super) async fn openai_embed(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
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

pub(super) async fn admin_stats(State(state): State<Arc<SimState>>) -> Response {
    axum::Json(state.stats()).into_response()
}

pub(super) async fn admin_get_faults(State(state): State<Arc<SimState>>) -> Response {
    axum::Json(state.faults()).into_response()
}

pub(super) async fn admin_put_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            *state.faults.write().unwrap_or_else(|p| p.into_inner()) = f.clone();
            axum::Json(f).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("invalid faults: {e}")).into_response(),
    }
}

pub(super) async fn admin_reset(State(state): State<Arc<SimState>>) -> Response {
    state.reset();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimControl;

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
}
