//! Checks of what tenants send with a job: durations, tags, idempotency keys, `run_at` and
//! attempt budgets, each against its named limit in `server.limits`.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use sluice_types::Tags;

use crate::api::error::{ApiError, ApiResult};
use crate::config::ApiLimits;

/// Parse `30s`, `500ms`, `2m`, `1h` or plain seconds; `None` for anything else, including
/// durations too long to represent (they come from tenants: no arithmetic here may overflow).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    // `from_secs_f64` panics past `u64::MAX` seconds; this one says no.
    Duration::try_from_secs_f64(secs).ok()
}

/// Check a submission's tags against the server's limits: count, key and value bytes, and no
/// NUL or other control characters (they end up in usage records, logs and SQL text).
pub(super) fn check_tags(tags: &Tags, limits: &ApiLimits) -> ApiResult<()> {
    if tags.len() > limits.max_tags {
        return Err(ApiError::limit_exceeded(
            "tags",
            limits.max_tags,
            format!(
                "a job may have at most {} tags, not {} (`server.limits.max_tags`)",
                limits.max_tags,
                tags.len()
            ),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() {
            return Err(ApiError::bad_field("tags", "tag keys must not be empty"));
        }
        if k.len() > limits.max_tag_key_bytes {
            return Err(ApiError::limit_exceeded(
                "tags",
                limits.max_tag_key_bytes,
                format!(
                    "tag key {} is {} bytes; the limit is {} (`server.limits.max_tag_key_bytes`)",
                    preview(k),
                    k.len(),
                    limits.max_tag_key_bytes
                ),
            ));
        }
        if v.len() > limits.max_tag_value_bytes {
            return Err(ApiError::limit_exceeded(
                "tags",
                limits.max_tag_value_bytes,
                format!(
                    "the value of tag {} is {} bytes; the limit is {} (`server.limits.max_tag_value_bytes`)",
                    preview(k),
                    v.len(),
                    limits.max_tag_value_bytes
                ),
            ));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(ApiError::bad_field(
                "tags",
                format!(
                    "tag {} has NUL or control characters in its key or value",
                    preview(k)
                ),
            ));
        }
    }
    Ok(())
}

/// The start of a tenant's string, quoted and escaped, for an error message.
pub(super) fn preview(s: &str) -> String {
    let head: String = s.chars().take(32).collect();
    if head.len() < s.len() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// An idempotency key: 1 to `server.limits.max_idempotency_key_bytes` bytes, no control
/// characters. `field` names where it came from.
pub(super) fn check_idempotency_key(key: &str, field: &str, limits: &ApiLimits) -> ApiResult<()> {
    let max = limits.max_idempotency_key_bytes;
    if key.is_empty() || key.len() > max || key.chars().any(char::is_control) {
        return Err(ApiError::bad_field(
            field,
            format!("{field} must be 1..={max} bytes without control characters (`server.limits.max_idempotency_key_bytes`)"),
        )
        .with("limit", max));
    }
    Ok(())
}

/// A submission's `run_at`: an RFC 3339 time.
pub(super) fn parse_run_at(s: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid-run-at",
                "Invalid run_at",
                format!("`run_at` must be an RFC 3339 timestamp such as 2030-01-01T09:00:00Z: {e}"),
            )
            .with("field", "run_at")
            .with("run_at", s.chars().take(64).collect::<String>())
        })
}

/// The `Idempotency-Key` header, if any, checked.
pub(super) fn idempotency_key(
    headers: &HeaderMap,
    limits: &ApiLimits,
) -> ApiResult<Option<String>> {
    const FIELD: &str = "Idempotency-Key";
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // `to_str` admits visible ASCII only.
    let key = v.to_str().map(str::trim).unwrap_or_default();
    check_idempotency_key(key, FIELD, limits)?;
    Ok(Some(key.to_string()))
}

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// A submission's `?wait=`: a duration, cut to [`MAX_WAIT`].
pub(super) fn parse_wait(w: &str) -> ApiResult<Duration> {
    let wait = parse_duration(w).ok_or_else(|| {
        ApiError::bad_field(
            "wait",
            format!(
                "`wait` must be a duration such as 30s or 500ms (at most {}s), not {}",
                MAX_WAIT.as_secs(),
                preview(w)
            ),
        )
    })?;
    Ok(wait.min(MAX_WAIT))
}

/// `max_attempts` as a submission or a redrive may ask: at least 1, at most the server's cap.
pub(super) fn check_max_attempts(n: Option<u32>, limits: &ApiLimits) -> ApiResult<()> {
    match n {
        Some(0) => Err(ApiError::bad_field(
            "max_attempts",
            "`max_attempts` must be at least 1",
        )),
        Some(n) if n > limits.max_attempts => Err(ApiError::limit_exceeded(
            "max_attempts",
            limits.max_attempts,
            format!(
                "`max_attempts` may be at most {} (`server.limits.max_attempts`)",
                limits.max_attempts
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5d"), None);
        // Tenants' numbers: too long to represent is "not a duration", never a panic.
        assert_eq!(parse_duration("100000000000000000000"), None);
        assert_eq!(parse_duration("300000000000000000h"), None);
        assert_eq!(parse_duration(&"9".repeat(400)), None);
        assert!(parse_duration("300000000000h").is_some());
        for bad in ["", ".", "-1", "NaN", "inf", "1e5", "1.2.3s", "\u{0}", "٣s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tags_are_bounded() {
        let limits = ApiLimits::default();
        let tags = |pairs: &[(&str, &str)]| -> Tags {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(check_tags(&tags(&[("user", "alice")]), &limits).is_ok());
        let many: Tags = (0..=limits.max_tags)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let e = check_tags(&many, &limits).unwrap_err();
        assert_eq!((e.status.as_u16(), e.kind), (422, "limit-exceeded"));
        let long_key = "k".repeat(limits.max_tag_key_bytes + 1);
        assert_eq!(
            check_tags(&tags(&[(&long_key, "v")]), &limits)
                .unwrap_err()
                .status,
            422
        );
        let long_value = "v".repeat(limits.max_tag_value_bytes + 1);
        assert_eq!(
            check_tags(&tags(&[("k", &long_value)]), &limits)
                .unwrap_err()
                .status,
            422
        );
        for (k, v) in [
            ("a\0b", "v"),
            ("k", "line\nbreak"),
            ("", "v"),
            ("k", "\u{85}"),
        ] {
            let e = check_tags(&tags(&[(k, v)]), &limits).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.kind),
                (400, "bad-request"),
                "{k:?}={v:?}"
            );
            assert_eq!(e.extra["field"], "tags");
        }
        // Exactly at the limits is fine.
        let key = "k".repeat(limits.max_tag_key_bytes);
        let value = "é".repeat(limits.max_tag_value_bytes / 2);
        assert!(check_tags(&tags(&[(&key, &value)]), &limits).is_ok());
    }
}
