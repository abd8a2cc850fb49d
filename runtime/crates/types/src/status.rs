//! A job's lifecycle state, as every layer speaks it: the store derives it, the worker and the
//! finalizer announce it in [`crate::JobEvent::Status`], the API and webhooks publish it. The
//! names (`queued`, `running`, `completed`, …) are the wire and database spelling; nothing
//! compares them as strings (see `docs/job-states.md`).
//!
//! ```
//! use sluice_types::JobStatus;
//! assert_eq!("dead".parse::<JobStatus>().unwrap(), JobStatus::Dead);
//! assert!(JobStatus::Dead.is_terminal() && !JobStatus::Retrying.is_terminal());
//! assert_eq!(serde_json::to_string(&JobStatus::Completed).unwrap(), "\"completed\"");
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job as callers see it (see `docs/job-states.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready, waiting for a worker.
    Queued,
    /// An attempt failed or was lost; due again at `run_at`.
    Retrying,
    /// A worker holds the lease.
    Running,
    /// Output stored.
    Completed,
    /// Failed permanently or out of attempts.
    Dead,
    /// Cancelled.
    Cancelled,
}

impl JobStatus {
    /// All statuses.
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Scheduled,
        JobStatus::Queued,
        JobStatus::Retrying,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Dead,
        JobStatus::Cancelled,
    ];

    /// The lowercase name (the wire and database spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Queued => "queued",
            JobStatus::Retrying => "retrying",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job is finished (in history): no transition leaves this state except a
    /// redrive of a dead job, which makes it a new queued job.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Dead | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>(), Ok(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<JobStatus>(&json).unwrap(), st);
        }
        assert_eq!(
            "done".parse::<JobStatus>(),
            Err(UnknownStatus("done".into()))
        );
    }

    #[test]
    fn exactly_three_states_are_terminal() {
        let terminal: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [JobStatus::Completed, JobStatus::Dead, JobStatus::Cancelled]
        );
    }
}
