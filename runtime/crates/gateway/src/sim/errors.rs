//! Errors and limits: error bodies in each wire format, the rate-limit headers, 429s, and the
//! injected faults.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Faults;
use super::requests::Wire;
use super::server::SimState;
use super::text::{self, Rng};

pub(super) fn error_response(wire: Wire, status: u16, kind: &str, message: &str) -> Response {
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

pub(super) fn server_error(state: &SimState, wire: Wire, status: u16) -> Response {
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

pub(super) fn client_error(state: &SimState, wire: Wire, status: u16, message: &str) -> Response {
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

pub(super) fn hv(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

pub(super) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

pub(super) fn rfc3339_after(d: Duration) -> String {
    let at: chrono::DateTime<chrono::Utc> = (SystemTime::now() + d).into();
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The rate-limit headers of `wire` for the current bucket levels.
pub(super) fn rate_headers(state: &SimState, wire: Wire, headers: &mut HeaderMap) {
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

pub(super) fn too_many(state: &SimState, wire: Wire, wait: Duration, what: &str) -> Response {
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
pub(super) fn injected(state: &SimState, wire: Wire, faults: &Faults) -> Option<Response> {
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

pub(super) fn status_fault(state: &SimState, wire: Wire, status: u16) -> Response {
    match status {
        429 => too_many(state, wire, Duration::from_secs(1), "requests"),
        400..=499 => client_error(state, wire, status, "simulated client error"),
        _ => server_error(state, wire, status),
    }
}

/// Charge one request and `tokens` tokens, or answer 429 (`Some`).
pub(super) fn admit(state: &SimState, wire: Wire, tokens: u32) -> Option<Response> {
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

pub(super) fn malformed(state: &SimState) -> Response {
    state.bump(&state.counters.broken, 1);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"id\": \"sim\", \"choices\": [{\"message\": <html>upstream garbage</html>",
    )
        .into_response()
}
