//! The queue's transactional flows, written once for both backends (`docs/job-states.md`):
//! failing an attempt (#5–#7), rescuing expired leases (#8–#10), cancelling (#11, #12) and
//! redriving dead jobs (#13).
//!
//! Each flow is one transaction over [`Statements`], the small per-backend interface: lock
//! the rows the transition starts from, let the state machine ([`crate::machine`]) decide,
//! write the outcome. The backends differ only inside the statements (Postgres locks rows
//! `FOR UPDATE` and batches with `unnest`; SQLite's single writer holds the whole database
//! for the transaction and writes row by row), so a change to a transition is made here, once.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sluice_types::{JobError, JobStatus};
use uuid::Uuid;

use crate::config::BackoffPolicy;
use crate::error::{Result, StoreError};
use crate::machine::{self, Decision, Running};
use crate::model::{
    AttemptOutcome, AttemptRecord, CancelOutcome, DeadFilter, Finalized, Lease, RedriveOptions,
    RedriveTarget, RescueReport,
};
use crate::store::PluginStore;
use crate::transact::Transact;

/// A job going back to the queue after a failed or lost attempt.
#[derive(Debug, Clone)]
pub(crate) struct Requeue {
    /// The job.
    pub id: Uuid,
    /// When it is due again.
    pub run_at: DateTime<Utc>,
    /// The attempt to append to its log.
    pub entry: AttemptRecord,
}

/// A job leaving the queue for history without output (dead or cancelled).
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    /// The job.
    pub id: Uuid,
    /// [`JobStatus::Dead`] or [`JobStatus::Cancelled`].
    pub status: JobStatus,
    /// Why.
    pub error: JobError,
    /// The attempt to append to its log, if one ended.
    pub entry: Option<AttemptRecord>,
}

/// Where a live job stands, for a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveState {
    /// Waiting (scheduled, queued or retrying).
    Available,
    /// Held by a worker.
    Running,
}

/// The code a redriven job runs.
#[derive(Debug, Clone)]
pub(crate) enum RedriveTo {
    /// What it ran before.
    Same,
    /// Its plugin's active version (the old code where the plugin has none any more).
    Active,
    /// This version (checked to exist) and its component's digest.
    Version(i64, String),
}

/// The statements the flows are made of, one implementation per backend. Every method but
/// the two settings runs inside the transaction ([`Transact`]) it is given.
#[async_trait]
pub(crate) trait Statements: Transact {
    /// The retry schedule.
    fn backoff(&self) -> &BackoffPolicy;
    /// Tell this node's workers that work became due.
    fn wake(&self);

    /// The running job `lease` still holds, locked, and the time to judge it at; `None` when
    /// the lease is not held any more.
    async fn lock_leased(
        &self,
        tx: &mut Self::Tx,
        lease: Lease,
    ) -> Result<Option<(Running, DateTime<Utc>)>>;
    /// Running jobs whose lease expired (at most 1000 a pass, oldest first), locked, and the
    /// time to judge them at.
    async fn lock_expired(
        &self,
        tx: &mut Self::Tx,
    ) -> Result<(DateTime<Utc>, Vec<(Uuid, Running)>)>;
    /// Where live job `id` stands, locked; `None` when it is not live.
    async fn lock_live(&self, tx: &mut Self::Tx, id: Uuid) -> Result<Option<LiveState>>;
    /// How job `id` finished, if it is in history.
    async fn finished_status(&self, tx: &mut Self::Tx, id: Uuid) -> Result<Option<JobStatus>>;
    /// Ask the worker running `id` to stop.
    async fn request_cancel(&self, tx: &mut Self::Tx, id: Uuid) -> Result<()>;
    /// Put jobs back to `available`, appending their attempt.
    async fn requeue(&self, tx: &mut Self::Tx, jobs: &[Requeue]) -> Result<()>;
    /// Move jobs to history (queueing their webhooks), finished at `now`.
    async fn finish(&self, tx: &mut Self::Tx, jobs: &[Finish], now: DateTime<Utc>) -> Result<()>;
    /// Move the dead jobs `filter` selects back to the queue as a new run onto `to`.
    async fn redrive_dead(
        &self,
        tx: &mut Self::Tx,
        filter: &DeadFilter,
        to: &RedriveTo,
        max_attempts: Option<u32>,
    ) -> Result<Vec<Uuid>>;
    /// Forget these jobs' journaled model calls.
    async fn clear_journals(&self, tx: &mut Self::Tx, ids: &[Uuid]) -> Result<()>;
}

/// Record a failed attempt: retry, dead or cancelled (transitions #5–#7), under its lease.
pub(crate) async fn fail<S: Statements>(
    s: &S,
    lease: Lease,
    error: &JobError,
    detail: Option<serde_json::Value>,
) -> Result<Finalized> {
    let mut tx = s.begin().await?;
    let Some((job, now)) = s.lock_leased(&mut tx, lease).await? else {
        return Ok(Finalized::LeaseLost);
    };
    let decision = machine::decide(&job, error, now, s.backoff());
    let entry = machine::attempt_record(
        &job,
        now,
        machine::outcome_of(decision),
        Some(error.clone()),
        detail,
    );
    let outcome = match decision {
        Decision::Retry { run_at } => {
            let again = Requeue {
                id: lease.id,
                run_at,
                entry,
            };
            s.requeue(&mut tx, &[again]).await?;
            Finalized::Retrying {
                run_at,
                attempt: job.attempt,
            }
        }
        Decision::Dead | Decision::Cancelled => {
            let status = decision.terminal_status().unwrap_or(JobStatus::Dead);
            let done = Finish {
                id: lease.id,
                status,
                error: error.clone(),
                entry: Some(entry),
            };
            s.finish(&mut tx, &[done], now).await?;
            if status == JobStatus::Dead {
                Finalized::Dead
            } else {
                Finalized::Cancelled
            }
        }
    };
    s.commit(tx).await?;
    if matches!(outcome, Finalized::Retrying { .. }) {
        s.wake();
    }
    Ok(outcome)
}

/// Take back jobs whose lease expired (transitions #8–#10).
pub(crate) async fn rescue<S: Statements>(s: &S) -> Result<RescueReport> {
    let mut tx = s.begin().await?;
    let (now, expired) = s.lock_expired(&mut tx).await?;
    let mut report = RescueReport::default();
    if expired.is_empty() {
        return Ok(report);
    }
    let (mut again, mut done) = (Vec::new(), Vec::new());
    for (id, job) in expired {
        let error = machine::lease_expired_error(&job);
        let decision = machine::decide(&job, &error, now, s.backoff());
        let outcome = match decision {
            Decision::Cancelled => AttemptOutcome::Cancelled,
            _ => AttemptOutcome::LeaseExpired,
        };
        let entry = machine::attempt_record(&job, now, outcome, Some(error.clone()), None);
        match decision {
            Decision::Retry { run_at } => {
                again.push(Requeue { id, run_at, entry });
                report.retried.push(id);
            }
            Decision::Dead | Decision::Cancelled => {
                let status = decision.terminal_status().unwrap_or(JobStatus::Dead);
                done.push(Finish {
                    id,
                    status,
                    error,
                    entry: Some(entry),
                });
                if status == JobStatus::Dead {
                    report.dead.push(id);
                } else {
                    report.cancelled.push(id);
                }
            }
        }
    }
    if !again.is_empty() {
        s.requeue(&mut tx, &again).await?;
    }
    if !done.is_empty() {
        s.finish(&mut tx, &done, now).await?;
    }
    s.commit(tx).await?;
    if !report.retried.is_empty() {
        s.wake();
    }
    Ok(report)
}

/// Cancel a job (transitions #11, #12): a waiting one at once, a running one by asking its
/// worker to stop.
pub(crate) async fn cancel<S: Statements>(s: &S, id: Uuid) -> Result<CancelOutcome> {
    let mut tx = s.begin().await?;
    let outcome = match s.lock_live(&mut tx, id).await? {
        Some(LiveState::Available) => {
            let done = Finish {
                id,
                status: JobStatus::Cancelled,
                error: machine::cancelled_error(),
                entry: None,
            };
            s.finish(&mut tx, &[done], Utc::now()).await?;
            CancelOutcome::Cancelled
        }
        Some(LiveState::Running) => {
            s.request_cancel(&mut tx, id).await?;
            CancelOutcome::CancelRequested
        }
        None => match s.finished_status(&mut tx, id).await? {
            Some(status) => CancelOutcome::AlreadyFinished { status },
            None => CancelOutcome::NotFound,
        },
    };
    s.commit(tx).await?;
    Ok(outcome)
}

/// The code a redrive runs, checked: a version must exist and the filter must name its
/// plugin.
pub(crate) async fn redrive_target<P: PluginStore + ?Sized>(
    plugins: &P,
    filter: &DeadFilter,
    target: RedriveTarget,
) -> Result<RedriveTo> {
    Ok(match target {
        RedriveTarget::Same => RedriveTo::Same,
        RedriveTarget::Active => RedriveTo::Active,
        RedriveTarget::Version(v) => {
            let (Some(t), Some(p)) = (&filter.tenant, &filter.plugin) else {
                return Err(StoreError::Invalid(
                    "redrive onto a version needs the filter to name tenant and plugin".into(),
                ));
            };
            match plugins.get_plugin_version(t, p, v).await? {
                Some(version) => RedriveTo::Version(version.version, version.digest),
                None => {
                    return Err(StoreError::NotFound {
                        what: "plugin version",
                        name: format!("`{p}` v{v} of tenant `{t}`"),
                    });
                }
            }
        }
    })
}

/// Put dead jobs back in the queue (transition #13); returns their ids.
pub(crate) async fn redrive<S: Statements + PluginStore>(
    s: &S,
    filter: &DeadFilter,
    options: &RedriveOptions,
) -> Result<Vec<Uuid>> {
    let to = redrive_target(s, filter, options.target).await?;
    let mut tx = s.begin().await?;
    let ids = s
        .redrive_dead(&mut tx, filter, &to, options.max_attempts)
        .await?;
    if options.clear_journal && !ids.is_empty() {
        s.clear_journals(&mut tx, &ids).await?;
    }
    s.commit(tx).await?;
    if !ids.is_empty() {
        s.wake();
    }
    Ok(ids)
}
