//! The decisions of the state machine that do not depend on the database: what a failed or
//! lost attempt turns into (`docs/job-states.md`, transitions #5–#10).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_types::{JobError, JobStatus};

use crate::config::BackoffPolicy;
use crate::model::{AttemptOutcome, AttemptRecord};

/// Where a failed or lost attempt sends the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Retry { run_at: DateTime<Utc> },
    Dead,
    Cancelled,
}

impl Decision {
    /// The status the job finishes with, unless it is retried.
    pub(crate) fn terminal_status(self) -> Option<JobStatus> {
        match self {
            Decision::Retry { .. } => None,
            Decision::Dead => Some(JobStatus::Dead),
            Decision::Cancelled => Some(JobStatus::Cancelled),
        }
    }
}

/// What the running job looked like when its attempt ended.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub attempt: u32,
    pub max_attempts: u32,
    pub run: u32,
    pub cancel_requested: bool,
    pub worker_id: Option<String>,
    pub digest: String,
    pub attempted_at: Option<DateTime<Utc>>,
}

pub(crate) fn decide(
    job: &Running,
    error: &JobError,
    now: DateTime<Utc>,
    backoff: &BackoffPolicy,
) -> Decision {
    if job.cancel_requested {
        return Decision::Cancelled;
    }
    match error {
        JobError::Permanent { .. } => Decision::Dead,
        JobError::Retryable { .. } if job.attempt >= job.max_attempts => Decision::Dead,
        JobError::Retryable { retry_after_ms, .. } => {
            let delay = backoff.delay(job.attempt, retry_after_ms.map(Duration::from_millis));
            let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            Decision::Retry {
                run_at: now.checked_add_signed(delay).unwrap_or(now),
            }
        }
    }
}

pub(crate) fn attempt_record(
    job: &Running,
    now: DateTime<Utc>,
    outcome: AttemptOutcome,
    error: Option<JobError>,
    detail: Option<Value>,
) -> AttemptRecord {
    AttemptRecord {
        run: job.run,
        attempt: job.attempt,
        worker_id: job.worker_id.clone(),
        digest: job.digest.clone(),
        started_at: job.attempted_at.unwrap_or(now),
        finished_at: now,
        outcome,
        error,
        detail,
    }
}

/// The error recorded for an attempt whose lease expired.
pub(crate) fn lease_expired_error(job: &Running) -> JobError {
    JobError::retryable(format!(
        "lease expired: worker {} stopped heartbeating during attempt {}",
        job.worker_id.as_deref().unwrap_or("?"),
        job.attempt
    ))
}

/// The error recorded for a job cancelled before it ran.
pub(crate) fn cancelled_error() -> JobError {
    JobError::permanent("cancelled")
}

/// Outcome of an attempt that ended with `decision`.
pub(crate) fn outcome_of(decision: Decision) -> AttemptOutcome {
    match decision {
        Decision::Cancelled => AttemptOutcome::Cancelled,
        _ => AttemptOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(attempt: u32, max: u32, cancel: bool) -> Running {
        Running {
            attempt,
            max_attempts: max,
            run: 0,
            cancel_requested: cancel,
            worker_id: None,
            digest: "d".into(),
            attempted_at: None,
        }
    }

    #[test]
    fn decisions() {
        let now = Utc::now();
        let b = BackoffPolicy::default();
        assert!(matches!(
            decide(&running(1, 3, false), &JobError::retryable("x"), now, &b),
            Decision::Retry { run_at } if run_at >= now && run_at <= now + chrono::Duration::seconds(1)
        ));
        assert_eq!(
            decide(&running(3, 3, false), &JobError::retryable("x"), now, &b),
            Decision::Dead
        );
        assert_eq!(
            decide(&running(1, 3, false), &JobError::permanent("x"), now, &b),
            Decision::Dead
        );
        assert_eq!(
            decide(&running(1, 3, true), &JobError::retryable("x"), now, &b),
            Decision::Cancelled
        );
        let hinted = JobError::Retryable {
            message: "x".into(),
            retry_after_ms: Some(5000),
        };
        assert!(matches!(
            decide(&running(1, 3, false), &hinted, now, &b),
            Decision::Retry { run_at } if run_at >= now + chrono::Duration::seconds(5)
        ));
    }
}
