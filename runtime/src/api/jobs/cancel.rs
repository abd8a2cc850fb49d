//! `POST /v1/jobs/{id}/cancel`: a waiting job is cancelled at once, a running one is asked to
//! stop.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_store::{CancelOutcome, JobStatus};
use sluice_types::JobEvent;
use utoipa::ToSchema;
use uuid::Uuid;

use super::views::JobLinks;
use super::{AppState, JOB_ID, find_job};
use crate::api::auth::{Invoker, Scope};
use crate::api::error::{ApiError, ApiResult, Common, problems};
use crate::api::extract::Path;

/// The answer to a cancel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CancelAnswer {
    /// Job id.
    id: Uuid,
    /// `cancelled`, or `cancel_requested` while an attempt is still running.
    status: &'static str,
    /// Links.
    links: JobLinks,
}

problems!(CancelErrors, Common::key(Scope::Invoke).writes(), {
    404 => "No such job for this tenant",
    409 => "Already finished (`job_status` says how)",
});

/// Cancel a job.
///
/// A queued job is cancelled at once (200); a running one is asked to stop (202).
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = String, Path, description = JOB_ID)),
    responses(
        (status = 200, description = "Cancelled", body = CancelAnswer),
        (status = 202, description = "Running: cancellation requested", body = CancelAnswer),
        CancelErrors,
    )
)]
pub(crate) async fn cancel(
    State(st): State<AppState>,
    principal: Invoker,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = find_job(&st, &principal.tenant, &id).await?;
    let (code, status) = match st.node.store.cancel(r.id).await? {
        CancelOutcome::Cancelled => {
            // Nobody else will announce this one: tell live subscribers (SSE, webhooks).
            st.node.events.publish_live(
                r.id,
                JobEvent::Status {
                    status: JobStatus::Cancelled,
                    attempt: r.attempt,
                    reason: Some("cancelled by request".into()),
                },
            );
            (StatusCode::OK, JobStatus::Cancelled.as_str())
        }
        CancelOutcome::CancelRequested => (StatusCode::ACCEPTED, "cancel_requested"),
        CancelOutcome::AlreadyFinished {
            status: JobStatus::Cancelled,
        } => (StatusCode::OK, JobStatus::Cancelled.as_str()),
        CancelOutcome::AlreadyFinished { status } => {
            // Not `status`: in a problem document that is the HTTP status.
            return Err(ApiError::conflict(
                "job-finished",
                format!("job {id} already finished as {status}"),
            )
            .with("job_status", status.as_str()));
        }
        CancelOutcome::NotFound => return Err(ApiError::not_found("job", id)),
    };
    Ok((
        code,
        axum::Json(CancelAnswer {
            id: r.id,
            status,
            links: JobLinks::new(r.id),
        }),
    )
        .into_response())
}
