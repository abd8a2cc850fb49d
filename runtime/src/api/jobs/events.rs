//! `GET /v1/jobs/{id}/events`: Server-Sent Events; and [`wait_terminal`], how a submission
//! with `?wait=` follows its job to the end.
//!
//! The story of a job in order: persisted events after `Last-Event-ID` (their `id` is the
//! per-job sequence, so a client resumes where it left off), then the job's current status,
//! then live events until the job finishes, then a final `result` event with the output or
//! error. Live status events are not persisted and carry no `id`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use sluice_store::JobRecord;
use sluice_types::JobEvent;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::{AppState, find_job};
use crate::api::auth::{Reader, Scope};
use crate::api::error::{ApiError, ApiResult, Common, problems};
use crate::api::extract::Path;

const PAGE: u32 = 500;

problems!(EventsErrors, Common::key(Scope::Read), {
    400 => "`Last-Event-ID` is not an id this stream sent",
    404 => "No such job for this tenant",
});

/// Server-Sent Events of a job.
///
/// Persisted events after `Last-Event-ID` (their `id` is the per-job sequence), the current
/// status, live events until the job finishes, then a final `result` event with the output or
/// error. Event names: `status`, `progress`, `log`, `token_delta`, `model_call`,
/// `events_truncated` (each the `type` of its JSON data), then `result`. See `docs/events.md`.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    tag = "jobs",
    params(
        ("id" = String, Path, description = "Job id (UUID)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event `id`"),
    ),
    responses(
        (status = 200, description = "An event stream", body = String, content_type = "text/event-stream"),
        EventsErrors,
    )
)]
pub(crate) async fn events(
    State(st): State<AppState>,
    principal: Reader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = find_job(&st, &principal.tenant, &id).await?;
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| bad_resume("Last-Event-ID must be a non-negative integer"))?,
    };
    if after > 0 {
        let found = st.node.store.events_after(job.id, after - 1, 1).await?;
        if found.first().map(|e| e.seq) != Some(after) {
            return Err(bad_resume(&format!(
                "event {after} does not exist for job {id}; resume from an id this stream sent"
            )));
        }
    }
    // Subscribe before replaying, so nothing published in between is lost.
    let live = st.node.events.subscribe();
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(pump(st, job, after, live, tx));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn bad_resume(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid-last-event-id",
        "Invalid Last-Event-ID",
        detail,
    )
}

fn sse_event(seq: u64, event: &JobEvent) -> Event {
    let ev = Event::default()
        .event(event.name())
        .data(serde_json::to_string(event).unwrap_or_default());
    if seq > 0 { ev.id(seq.to_string()) } else { ev }
}

/// Send persisted events after `*sent`; false when the client went away.
async fn replay(st: &AppState, id: Uuid, sent: &mut u64, tx: &mpsc::Sender<Event>) -> bool {
    loop {
        let batch = match st.node.store.events_after(id, *sent, PAGE).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "replaying job events failed");
                return true;
            }
        };
        for e in &batch {
            if tx.send(sse_event(e.seq, &e.event)).await.is_err() {
                return false;
            }
            *sent = e.seq;
        }
        if batch.len() < PAGE as usize {
            return true;
        }
    }
}

fn status_event(r: &JobRecord) -> Event {
    let ev = JobEvent::Status {
        status: r.status,
        attempt: r.attempt,
        reason: None,
    };
    sse_event(0, &ev)
}

async fn finish(st: &AppState, id: Uuid, sent: &mut u64, tx: &mpsc::Sender<Event>) {
    // Events persisted just before the end may still be in flight in the writer task.
    if !replay(st, id, sent, tx).await {
        return;
    }
    if let Ok(Some(r)) = st.node.store.get_job(id).await {
        let data = json!({
            "id": r.id,
            "status": r.status,
            "output": r.output,
            "error": r.error,
            "attempt": r.attempt,
        });
        let _ = tx
            .send(Event::default().event("result").data(data.to_string()))
            .await;
    }
}

async fn pump(
    st: AppState,
    job: JobRecord,
    after: u64,
    mut live: tokio::sync::broadcast::Receiver<crate::node::LiveEvent>,
    tx: mpsc::Sender<Event>,
) {
    let id = job.id;
    let mut sent = after;
    if !replay(&st, id, &mut sent, &tx).await {
        return;
    }
    let current = st
        .node
        .store
        .get_job(id)
        .await
        .ok()
        .flatten()
        .unwrap_or(job);
    if tx.send(status_event(&current)).await.is_err() {
        return;
    }
    if current.status.is_terminal() {
        finish(&st, id, &mut sent, &tx).await;
        return;
    }
    let mut recheck = tokio::time::interval(Duration::from_secs(2));
    recheck.tick().await;
    loop {
        tokio::select! {
            msg = live.recv() => match msg {
                Ok(ev) if ev.job == id => {
                    if ev.seq > 0 && ev.seq <= sent {
                        continue;
                    }
                    if ev.seq > sent + 1 && !replay(&st, id, &mut sent, &tx).await {
                        return;
                    }
                    if ev.seq > 0 && ev.seq <= sent {
                        continue;
                    }
                    if tx.send(sse_event(ev.seq, &ev.event)).await.is_err() {
                        return;
                    }
                    if ev.seq > 0 {
                        sent = ev.seq;
                    }
                    if ev.event.is_terminal() {
                        finish(&st, id, &mut sent, &tx).await;
                        return;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    if !replay(&st, id, &mut sent, &tx).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = recheck.tick() => {
                // A backstop for endings nobody announced here (another node, a restart).
                if let Ok(Some(r)) = st.node.store.get_job(id).await
                    && r.status.is_terminal()
                {
                    if !replay(&st, id, &mut sent, &tx).await {
                        return;
                    }
                    if tx.send(status_event(&r)).await.is_err() {
                        return;
                    }
                    finish(&st, id, &mut sent, &tx).await;
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// Wait up to `wait` for job `id` to finish; `None` when it did not.
pub(crate) async fn wait_terminal(
    st: &AppState,
    id: Uuid,
    wait: Duration,
    mut events: tokio::sync::broadcast::Receiver<crate::node::LiveEvent>,
) -> ApiResult<Option<JobRecord>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(r) = st.node.store.get_job(id).await?
            && r.status.is_terminal()
        {
            return Ok(Some(r));
        }
        // Woken by a terminal status event for this job, or re-check the store every
        // second (a cancel by the API or another node publishes nothing here).
        let tick = tokio::time::Instant::now() + Duration::from_secs(1);
        let until = tick.min(deadline);
        loop {
            match tokio::time::timeout_at(until, events.recv()).await {
                Ok(Ok(ev)) if ev.job == id && ev.event.is_terminal() => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) | Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(st
                .node
                .store
                .get_job(id)
                .await?
                .filter(|r| r.status.is_terminal()));
        }
    }
}
