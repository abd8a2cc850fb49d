//! `/v1/webhooks/deliveries`: every webhook this tenant was sent (job outcomes and budget
//! alerts), with the dead letters (`?status=dead`) and a way to send one again.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{DeliveryStatus, WebhookDelivery};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::{Invoker, Reader, Scope};
use super::error::{ApiError, ApiResult, Common, problems};
use super::extract::{Path, Query};

/// Query of `GET /v1/webhooks/deliveries`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only `pending`, `delivered` or `dead` (the webhook dead letter) deliveries.
    status: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<i64>,
    /// Page size, 1-500 (default 50).
    limit: Option<u32>,
}

/// One webhook delivery.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryView {
    /// The delivery's id in this API.
    id: i64,
    /// Sent as `Sluice-Delivery`, the same on every attempt: dedupe on it.
    delivery_id: Uuid,
    /// `job.completed`, `job.dead`, `job.cancelled` or `budget.alert`.
    event: String,
    /// The job it reports on.
    job_id: Option<Uuid>,
    /// The target.
    url: String,
    /// `pending`, `delivered` or `dead`.
    #[schema(example = "dead")]
    status: String,
    /// Attempts made.
    attempts: u32,
    /// When the next attempt is due (pending only).
    next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// The body of a non-job event (job bodies are built from the job when sent).
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    /// When it was queued.
    created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    finished_at: Option<DateTime<Utc>>,
}

/// A page of deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryPage {
    /// The deliveries.
    deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last.
    next_cursor: Option<i64>,
}

fn view(d: &WebhookDelivery) -> DeliveryView {
    DeliveryView {
        id: d.id,
        delivery_id: d.delivery_id,
        event: d.event.clone(),
        job_id: d.job_id,
        url: d.url.clone(),
        status: d.status.as_str().to_string(),
        attempts: d.attempts,
        next_attempt_at: (d.status == DeliveryStatus::Pending).then_some(d.next_attempt_at),
        last_error: d.last_error.clone(),
        payload: d.payload.clone(),
        created_at: d.created_at,
        finished_at: d.finished_at,
    }
}

problems!(ListErrors, Common::key(Scope::Read), {
    400 => "Unknown status or bad query",
});

/// The tenant's webhook deliveries, newest first.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries",
    operation_id = "list_webhook_deliveries",
    tag = "webhooks",
    params(ListParams),
    responses(
        (status = 200, description = "Deliveries", body = DeliveryPage),
        ListErrors,
    )
)]
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Reader,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<DeliveryPage>> {
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
    let next_cursor = (rows.len() as u32 == limit)
        .then(|| rows.last().map(|d| d.id))
        .flatten();
    Ok(axum::Json(DeliveryPage {
        deliveries: rows.iter().map(view).collect(),
        next_cursor,
    }))
}

fn parse_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>()
        .map_err(|_| ApiError::not_found("webhook delivery", id))
}

problems!(GetErrors, Common::key(Scope::Read), {
    404 => "No such delivery for this tenant",
});

/// One delivery.
#[utoipa::path(
    get,
    path = "/v1/webhooks/deliveries/{id}",
    operation_id = "get_webhook_delivery",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The delivery's id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryView),
        GetErrors,
    )
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Reader,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<DeliveryView>> {
    let d = st
        .node
        .store
        .webhook_get(&principal.tenant, parse_id(&id)?)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery", &id))?;
    Ok(axum::Json(view(&d)))
}

problems!(RetryErrors, Common::key(Scope::Invoke).writes(), {
    404 => "No such delivery for this tenant",
    409 => "The delivery is not dead",
});

/// Send a dead delivery again, with the same `Sluice-Delivery` id so a receiver that did get
/// it can dedupe.
#[utoipa::path(
    post,
    path = "/v1/webhooks/deliveries/{id}/retry",
    operation_id = "retry_webhook_delivery",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The delivery's id")),
    responses(
        (status = 202, description = "Queued again, due now", body = DeliveryView),
        RetryErrors,
    )
)]
pub(crate) async fn retry(
    State(st): State<AppState>,
    principal: Invoker,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Json<DeliveryView>)> {
    let n = parse_id(&id)?;
    let retried = st.node.store.webhook_retry(&principal.tenant, n).await?;
    let d = st
        .node
        .store
        .webhook_get(&principal.tenant, n)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook delivery", &id))?;
    if retried {
        Ok((StatusCode::ACCEPTED, axum::Json(view(&d))))
    } else {
        Err(ApiError::conflict(
            "not-dead",
            format!(
                "delivery {id} is {}; only dead deliveries can be retried",
                d.status
            ),
        ))
    }
}
