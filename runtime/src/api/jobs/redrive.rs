//! `POST /v1/jobs/{id}/redrive` and `POST /v1/dlq/redrive`: dead jobs back in the queue, on
//! the same code, the active version or a chosen one, replaying their journal or from scratch.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_store::{DeadFilter, JobStatus, RedriveOptions, RedriveTarget};
use utoipa::ToSchema;
use uuid::Uuid;

use super::bounds::check_max_attempts;
use super::{AppState, JOB_ID, find_job};
use crate::api::auth::{Invoker, Scope};
use crate::api::error::{ApiError, ApiResult, Common, problems};
use crate::api::extract::{JsonBytes, Path};
use crate::config::ApiLimits;

/// Body of the redrive endpoints (optional: empty means the defaults).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedriveRequest {
    /// Only this plugin (DLQ redrive).
    plugin: Option<String>,
    /// Only these jobs (DLQ redrive).
    ids: Option<Vec<Uuid>>,
    /// At most this many (DLQ redrive).
    limit: Option<u32>,
    /// Which code to run: `"same"` (default), `"active"`, or a version number (DLQ redrive
    /// onto a version needs `plugin`).
    #[schema(value_type = Option<Value>)]
    target: Option<Value>,
    /// New attempt budget (at most `server.limits.max_attempts`).
    max_attempts: Option<u32>,
    /// Run from scratch: forget the job's journal, so its model calls are made (and paid)
    /// again. By default a redriven job replays its journal: calls it already made are
    /// answered from it at no cost. Committed effects are kept either way. (`clear_journal`
    /// is the older name.)
    #[serde(default, alias = "clear_journal")]
    fresh: bool,
}

impl RedriveRequest {
    fn options(&self, limits: &ApiLimits) -> ApiResult<RedriveOptions> {
        check_max_attempts(self.max_attempts, limits)?;
        let target = match &self.target {
            None => RedriveTarget::Same,
            Some(Value::String(s)) if s == "same" => RedriveTarget::Same,
            Some(Value::String(s)) if s == "active" => RedriveTarget::Active,
            Some(Value::Number(n)) if n.as_i64().is_some() => {
                RedriveTarget::Version(n.as_i64().unwrap_or_default())
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`target` must be \"same\", \"active\" or a version number, not {other}"
                )));
            }
        };
        Ok(RedriveOptions {
            target,
            max_attempts: self.max_attempts,
            clear_journal: self.fresh,
        })
    }
}

/// An optional JSON body: empty means defaults.
async fn optional_body(body: bytes::Bytes) -> ApiResult<RedriveRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RedriveRequest::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            e.to_string(),
        )
    })
}

/// Jobs put back in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Redriven {
    /// Their ids.
    redriven: Vec<Uuid>,
    /// How many.
    count: usize,
}

impl Redriven {
    fn new(redriven: Vec<Uuid>) -> Self {
        Redriven {
            count: redriven.len(),
            redriven,
        }
    }
}

problems!(RedriveOneErrors, Common::key(Scope::Invoke).writes(), {
    400 => "Malformed JSON or bad `target`",
    404 => "No such job for this tenant",
    409 => "The job is not dead (`job_status` says what it is)",
});

/// Put a dead job back in the queue.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/redrive",
    operation_id = "redrive_job",
    tag = "dlq",
    params(("id" = String, Path, description = JOB_ID)),
    request_body(content = Option<RedriveRequest>, content_type = "application/json",
        description = "Optional: `target`, `max_attempts`, `fresh`"),
    responses(
        (status = 200, description = "Redriven", body = Redriven),
        RedriveOneErrors,
    )
)]
pub(crate) async fn redrive_one(
    State(st): State<AppState>,
    principal: Invoker,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> ApiResult<axum::Json<Redriven>> {
    let req = optional_body(body).await?;
    let r = find_job(&st, &principal.tenant, &id).await?;
    if r.status != JobStatus::Dead {
        return Err(ApiError::conflict(
            "job-not-dead",
            format!("only dead jobs can be redriven; job {id} is {}", r.status),
        )
        .with("job_status", r.status.as_str()));
    }
    let filter = DeadFilter {
        tenant: Some(principal.tenant.clone()),
        plugin: Some(r.plugin.clone()),
        ids: Some(vec![r.id]),
        limit: Some(1),
    };
    let ids = st
        .node
        .store
        .redrive(&filter, &req.options(&st.node.config.server.limits)?)
        .await?;
    Ok(axum::Json(Redriven::new(ids)))
}

problems!(RedriveDeadErrors, Common::key(Scope::Invoke).writes(), {
    400 => "Malformed JSON or bad `target`",
});

/// Redrive dead jobs matching filters (`plugin`, `ids`, `limit`).
#[utoipa::path(
    post,
    path = "/v1/dlq/redrive",
    tag = "dlq",
    request_body(content = Option<RedriveRequest>, content_type = "application/json",
        description = "Optional: filters and how to redrive; empty redrives every dead job of the tenant"),
    responses(
        (status = 200, description = "Redriven", body = Redriven),
        RedriveDeadErrors,
    )
)]
pub(crate) async fn redrive_dead(
    State(st): State<AppState>,
    principal: Invoker,
    JsonBytes(body): JsonBytes,
) -> ApiResult<axum::Json<Redriven>> {
    let req = optional_body(body).await?;
    if matches!(req.target, Some(Value::Number(_))) && req.plugin.is_none() {
        return Err(ApiError::bad_request(
            "redriving onto a version needs `plugin`",
        ));
    }
    let filter = DeadFilter {
        tenant: Some(principal.tenant.clone()),
        plugin: req.plugin.clone(),
        ids: req.ids.clone(),
        limit: req.limit,
    };
    let ids = st
        .node
        .store
        .redrive(&filter, &req.options(&st.node.config.server.limits)?)
        .await?;
    Ok(axum::Json(Redriven::new(ids)))
}
