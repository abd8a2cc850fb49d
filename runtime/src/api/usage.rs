//! `GET /v1/usage?group_by=plugin|model|provider|user|feature|tag:<name>&since=&until=`

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{UsageGroupBy, UsageQuery};

use super::AppState;
use super::auth::{Principal, Scope};
use super::error::{ApiError, ApiResult};
use super::extract::Query;

/// Query of `GET /v1/usage`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageParams {
    group_by: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn time(name: &str, s: &str) -> ApiResult<DateTime<Utc>> {
    if let Some(d) = super::jobs::parse_duration(s) {
        // `since=24h`: relative to now.
        return Ok(Utc::now() - Duration::from_std(d).unwrap_or_default());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "`{name}` must be an RFC 3339 timestamp or a duration such as 24h, not `{s}`"
            ))
        })
}

/// `GET /v1/usage`
pub(crate) async fn usage(
    State(st): State<AppState>,
    principal: Principal,
    Query(p): Query<UsageParams>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let by = p.group_by.as_deref().unwrap_or("plugin");
    let group_by = match by {
        "plugin" => UsageGroupBy::Plugin,
        "model" => UsageGroupBy::Model,
        "provider" => UsageGroupBy::Provider,
        "user" | "feature" => UsageGroupBy::Tag(by.to_string()),
        other => match other.strip_prefix("tag:") {
            Some(tag) if !tag.is_empty() => UsageGroupBy::Tag(tag.to_string()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown group_by `{other}`: use plugin, model, provider, user, feature or tag:<name>"
                )));
            }
        },
    };
    let until = p
        .until
        .as_deref()
        .map(|s| time("until", s))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let since = p
        .since
        .as_deref()
        .map(|s| time("since", s))
        .transpose()?
        .unwrap_or(until - Duration::days(30));
    if since > until {
        return Err(ApiError::bad_request("`since` is after `until`"));
    }
    let rows = st
        .node
        .store
        .usage_summary(&UsageQuery {
            tenant: Some(principal.tenant.clone()),
            from: since,
            to: until,
            group_by,
        })
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "key": r.key,
                "calls": r.calls,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "cached_input_tokens": r.cached_input_tokens,
                "cost_micros": r.cost_micros,
                "cost_usd": r.cost_micros as f64 / 1e6,
                "latency_p50_ms": r.latency_p50_ms,
                "latency_p95_ms": r.latency_p95_ms,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "group_by": by,
        "since": since,
        "until": until,
        "items": items,
    })))
}
