//! Wire bodies and SSE frames: a reply as an OpenAI or Anthropic body or event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::Faults;
use super::handlers::{chunks, reply_id, tokens_per_chunk, unix_now};
use super::requests::{Reply, SimChat};
use super::server::SimState;

pub(super) type Frame = (Duration, Bytes);

/// A streaming response that sends each frame at its offset from now.
pub(super) fn sse_response(frames: Vec<Frame>, mut headers: HeaderMap) -> Response {
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

pub(super) fn data_frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub(super) fn event_frame(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

pub(super) fn openai_usage(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens.saturating_add(reply.output_tokens),
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
    })
}

pub(super) fn openai_body(state: &SimState, req: &SimChat, reply: &Reply) -> Value {
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

pub(super) fn openai_frames(
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

pub(super) fn anthropic_usage(reply: &Reply) -> Value {
    json!({
        "input_tokens": reply.input_tokens - reply.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": reply.cached_tokens,
        "output_tokens": reply.output_tokens,
    })
}

pub(super) fn anthropic_body(state: &SimState, req: &SimChat, reply: &Reply) -> Value {
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

pub(super) fn anthropic_frames(
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
