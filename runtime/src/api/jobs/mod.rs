//! `/v1/plugins/{name}/jobs`, `/v1/jobs…` and `/v1/dlq…`, one module per operation:
//!
//! - [`submit`]: submit one job (optionally waiting for it) or a batch;
//! - [`read`]: get a job, list jobs, list the dead-letter queue;
//! - [`cancel`] and [`redrive`]: change a job's course;
//! - [`events`]: a job's Server-Sent Events, and waiting for its end;
//! - [`views`]: what the API publishes about a job (allow-listed, never a store record);
//! - [`bounds`]: the checks of what tenants send (tags, keys, durations, limits).

mod bounds;
pub(crate) mod cancel;
pub(crate) mod events;
pub(crate) mod read;
pub(crate) mod redrive;
pub(crate) mod submit;
mod views;

use sluice_store::JobRecord;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ApiResult};
pub(crate) use bounds::parse_duration;

/// The job id in the path.
const JOB_ID: &str = "Job id (UUID)";
/// The plugin name in the path.
const PLUGIN: &str = "Plugin name";

/// Load a job of this tenant (another tenant's job is "not found").
pub(crate) async fn find_job(st: &AppState, tenant: &str, id: &str) -> ApiResult<JobRecord> {
    let uuid = Uuid::parse_str(id).map_err(|_| ApiError::not_found("job", id))?;
    st.node
        .store
        .get_job(uuid)
        .await?
        .filter(|r| r.tenant == tenant)
        .ok_or_else(|| ApiError::not_found("job", id))
}
