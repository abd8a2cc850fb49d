//! `/v1/webhooks/deliveries`: every webhook this tenant was sent (job outcomes and budget
//! alerts), with the dead letters (`?status=dead`) and a way to send one again.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::{DeliveryStatus, WebhookDelivery};

use super::AppState;
use super::auth::{Principal, Scope};
use super::error::{ApiError, ApiResult};
use super::extract::{Path, Query};

/// Query of `GET /v1/webhooks/deliveries`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    cursor: Option<i64>,
    limit: Option<u32>,
}

fn view(d: &WebhookDelivery) -> Value {
    json!({
        "id": d.id,
        "delivery_id": d.delivery_id,
        "event": d.event,
        "job_id": d.job_id,
        "url": d.url,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_at),
        "last_error": d.last_error,
        "payload": d.payload,
        "created_at": d.created_at,
        "finished_at": d.finished_at,
    })
}

/// `GET /v1/webhooks/deliveries?status=pending|delivered|dead&cursor=&limit=`
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Principal,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let status = p
        .status
        .as_deref()
        .map(str::parse::<DeliveryStatus>)
        .transpose()?;
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    let rows = st
        .node
        .store
        .webhook_list(&principal.tenant, status, p.cursor, limit)
        .await?;
    let next = (rows.len() as u32 == limit)
        .then(|| rows.last().map(|d| d.id))
        .flatten();
    Ok(axum::Json(json!({
        "deliveries": rows.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

fn parse_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>()
        .map_err(|_| ApiError::not_found("webhook delivery", id))
}

/// `GET /v1/webhooks/deliveries/{id}`
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Read)?;
    let d = st
        .node
        .store
        .webhook_get(&principal.tenant, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery", &id))?;
    Ok(axum::Json(view(&d)))
}

/// `POST /v1/webhooks/deliveries/{id}/retry`: send a dead delivery again (same delivery id,
/// so a receiver that did get it can dedupe).
pub(crate) async fn retry(
    State(st): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<Value>)> {
    principal.require(Scope::Invoke)?;
    let n = parse_id(&id)?;
    if st.node.store.webhook_retry(&principal.tenant, n).await? {
        let d = st.node.store.webhook_get(&principal.tenant, n).await?;
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(d.as_ref().map(view).unwrap_or(Value::Null)),
        ));
    }
    match st.node.store.webhook_get(&principal.tenant, n).await? {
        Some(d) => Err(ApiError::conflict(
            "not-dead",
            format!(
                "delivery {id} is {}; only dead deliveries can be retried",
                d.status
            ),
        )),
        None => Err(ApiError::not_found("webhook delivery", &id)),
    }
}
