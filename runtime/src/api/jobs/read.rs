//! `GET /v1/jobs/{id}`, `GET /v1/jobs` and `GET /v1/dlq`: a job, and pages of jobs.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use sluice_store::{JobFilter, JobStatus, PageRequest};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::views::{JobStatusView, JobSummaryView, JobView};
use super::{AppState, JOB_ID, find_job};
use crate::api::auth::{Reader, Scope};
use crate::api::error::{ApiError, ApiResult, Common, problems};
use crate::api::extract::{Path, Query};

problems!(GetErrors, Common::key(Scope::Read), {
    404 => "No such job for this tenant",
});

/// A job: status, attempts, output or error, usage, timings, digest.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = String, Path, description = JOB_ID)),
    responses(
        (status = 200, description = "The job", body = JobView),
        GetErrors,
    )
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    principal: Reader,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<JobView>> {
    let r = find_job(&st, &principal.tenant, &id).await?;
    Ok(axum::Json(JobView::load(&st, &r).await))
}

/// A page of `limit` (1 to 1000, default 50) before `cursor`.
fn page_request(cursor: Option<&str>, limit: Option<u32>) -> ApiResult<PageRequest> {
    let before = cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| ApiError::bad_request(format!("invalid cursor `{c}`")))
        })
        .transpose()?;
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("`limit` must be between 1 and 1000"));
    }
    Ok(PageRequest { limit, before })
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct JobPage {
    /// The jobs.
    items: Vec<JobSummaryView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
}

problems!(ListErrors, Common::key(Scope::Read), {
    400 => "Unknown parameter or bad value",
});

/// List jobs, newest first.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(
        ("status" = Option<JobStatusView>, Query, description = "Only jobs in this status"),
        ("plugin" = Option<String>, Query, description = "Only this plugin's jobs"),
        ("tag" = Option<Vec<String>>, Query, description = "`key:value`; may repeat, all must match"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        ListErrors,
    )
)]
pub(crate) async fn list(
    State(st): State<AppState>,
    principal: Reader,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<axum::Json<JobPage>> {
    let mut filter = JobFilter {
        tenant: Some(principal.tenant.clone()),
        ..Default::default()
    };
    let (mut cursor, mut limit) = (None, None);
    for (k, v) in &pairs {
        match k.as_str() {
            "status" => {
                filter.status = Some(v.parse::<JobStatus>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "unknown status `{v}`: use one of {}",
                        JobStatus::ALL.map(|s| s.as_str()).join(", ")
                    ))
                })?)
            }
            "plugin" => filter.plugin = Some(v.clone()),
            "tag" => {
                let (tk, tv) = v.split_once(':').ok_or_else(|| {
                    ApiError::bad_request(format!("`tag` must be key:value, not `{v}`"))
                })?;
                filter.tags.insert(tk.to_string(), tv.to_string());
            }
            "cursor" => cursor = Some(v.as_str()),
            "limit" => {
                limit = Some(v.parse::<u32>().map_err(|_| {
                    ApiError::bad_request("`limit` must be a number between 1 and 1000")
                })?)
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`"
                )));
            }
        }
    }
    let page = st
        .node
        .store
        .list_jobs(&filter, page_request(cursor, limit)?)
        .await?;
    Ok(axum::Json(JobPage {
        items: page.items.iter().map(JobSummaryView::from).collect(),
        next_cursor: page.next,
    }))
}

/// Query of `GET /v1/dlq`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeadParams {
    /// Only this plugin's dead jobs.
    plugin: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of dead jobs.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadPage {
    /// The jobs, newest first.
    items: Vec<JobSummaryView>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<Uuid>,
    /// Dead jobs matching the filter, all pages.
    total: u64,
}

problems!(ListDeadErrors, Common::key(Scope::Read), {
    400 => "Bad query",
});

/// Dead jobs (the dead-letter queue), newest first.
#[utoipa::path(
    get,
    path = "/v1/dlq",
    tag = "dlq",
    params(DeadParams),
    responses(
        (status = 200, description = "A page of dead jobs", body = DeadPage),
        ListDeadErrors,
    )
)]
pub(crate) async fn list_dead(
    State(st): State<AppState>,
    principal: Reader,
    Query(p): Query<DeadParams>,
) -> ApiResult<axum::Json<DeadPage>> {
    let store = &st.node.store;
    let page = store
        .list_dead(
            Some(&principal.tenant),
            p.plugin.as_deref(),
            page_request(p.cursor.as_deref(), p.limit)?,
        )
        .await?;
    let total = store
        .count_dead(Some(&principal.tenant), p.plugin.as_deref())
        .await?;
    Ok(axum::Json(DeadPage {
        items: page.items.iter().map(JobSummaryView::from).collect(),
        next_cursor: page.next,
        total,
    }))
}
