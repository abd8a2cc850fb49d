//! `GET /v1/usage?group_by=plugin|model|provider|user|feature|tag:<name>&since=&until=`

use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sluice_store::{UsageGroupBy, UsageQuery};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::{Reader, Scope};
use super::error::{ApiError, ApiResult, Common, problems};
use super::extract::Query;

/// Query of `GET /v1/usage`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageParams {
    /// `plugin` (default), `model`, `provider`, `user`, `feature` or `tag:<name>`.
    group_by: Option<String>,
    /// RFC 3339 time or a duration back from now such as `24h` (default: 30 days before `until`).
    since: Option<String>,
    /// RFC 3339 time or a duration back from now (default: now).
    until: Option<String>,
}

/// One group's usage.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageRow {
    /// The group: a plugin, model, provider or tag value (`null`: jobs without the tag).
    key: Option<String>,
    /// Model calls.
    calls: u64,
    /// Tokens in.
    input_tokens: u64,
    /// Tokens out.
    output_tokens: u64,
    /// Tokens in served from the provider's prompt cache.
    cached_input_tokens: u64,
    /// Cost in micro-dollars.
    cost_micros: i64,
    /// Cost in dollars.
    cost_usd: f64,
    /// Median call latency.
    latency_p50_ms: f64,
    /// 95th percentile call latency.
    latency_p95_ms: f64,
}

/// Usage over a time range, grouped.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageReport {
    /// The grouping asked for.
    group_by: String,
    /// Start of the range.
    since: DateTime<Utc>,
    /// End of the range.
    until: DateTime<Utc>,
    /// One row per group.
    items: Vec<UsageRow>,
}

/// The earliest time a duration may reach back to: RFC 3339 years start at 0000, and every
/// store can hold it.
fn earliest() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn time(name: &str, s: &str, now: DateTime<Utc>) -> ApiResult<DateTime<Utc>> {
    if let Some(d) = super::jobs::parse_duration(s) {
        // `since=24h`: relative to now. Checked: `now - 300000000000h` is before the calendar.
        return Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .filter(|t| *t >= earliest())
            .ok_or_else(|| {
                ApiError::bad_field(
                    name,
                    format!("`{name}` reaches back before the year 0: {}", preview(s)),
                )
            });
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad_field(
                name,
                format!(
                    "`{name}` must be an RFC 3339 timestamp or a duration such as 24h, not {}",
                    preview(s)
                ),
            )
        })
}

/// The start of a tenant's string, quoted and escaped, for an error message.
fn preview(s: &str) -> String {
    let head: String = s.chars().take(40).collect();
    format!("{head:?}")
}

problems!(UsageErrors, Common::key(Scope::Read), {
    400 => "Bad `group_by`, `since` or `until`",
});

/// Tokens, cost, calls and latency percentiles, grouped.
#[utoipa::path(
    get,
    path = "/v1/usage",
    tag = "usage",
    params(UsageParams),
    responses(
        (status = 200, description = "Usage", body = UsageReport),
        UsageErrors,
    )
)]
pub(crate) async fn usage(
    State(st): State<AppState>,
    principal: Reader,
    Query(p): Query<UsageParams>,
) -> ApiResult<axum::Json<UsageReport>> {
    let limits = &st.node.config.server.limits;
    let by = p.group_by.as_deref().unwrap_or("plugin");
    let group_by = match by {
        "plugin" => UsageGroupBy::Plugin,
        "model" => UsageGroupBy::Model,
        "provider" => UsageGroupBy::Provider,
        "user" | "feature" => UsageGroupBy::Tag(by.to_string()),
        other => match other.strip_prefix("tag:") {
            Some(tag) if !tag.is_empty() && tag.len() <= limits.max_tag_key_bytes => {
                UsageGroupBy::Tag(tag.to_string())
            }
            _ => {
                return Err(ApiError::bad_field(
                    "group_by",
                    format!(
                        "unknown group_by {}: use plugin, model, provider, user, feature or tag:<name> (a tag key of at most {} bytes)",
                        preview(other),
                        limits.max_tag_key_bytes
                    ),
                ));
            }
        },
    };
    let now = Utc::now();
    let until = p
        .until
        .as_deref()
        .map(|s| time("until", s, now))
        .transpose()?
        .unwrap_or(now);
    let since = match p.since.as_deref() {
        Some(s) => time("since", s, now)?,
        None => until
            .checked_sub_signed(Duration::days(30))
            .unwrap_or(until),
    };
    if since > until {
        return Err(ApiError::bad_field("since", "`since` is after `until`"));
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
    let items = rows
        .iter()
        .map(|r| UsageRow {
            key: r.key.clone(),
            calls: r.calls,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_input_tokens: r.cached_input_tokens,
            cost_micros: i64::try_from(r.cost_micros.get()).unwrap_or(i64::MAX),
            cost_usd: r.cost_micros.to_usd(),
            latency_p50_ms: r.latency_p50_ms,
            latency_p95_ms: r.latency_p95_ms,
        })
        .collect();
    Ok(axum::Json(UsageReport {
        group_by: by.to_string(),
        since,
        until,
        items,
    }))
}
