//! Job events: written to the store in order (so an SSE client can resume from any id) and
//! broadcast to live subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice_store::JobStore;
use sluice_types::{EventSink, JobEvent};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::WriteBacklog;

/// An event as live subscribers see it: persisted, with its per-job sequence number.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The job.
    pub job: Uuid,
    /// Its per-job sequence (the SSE id); 0 when it could not be persisted.
    pub seq: u64,
    /// The event.
    pub event: JobEvent,
}

/// Most events written in one statement. Many jobs' events share a batch, so a job that
/// emits a flood (bounded per attempt by the engine's event limits) costs others one batch's
/// wait, not one insert per flooded event.
const WRITE_BATCH: usize = 512;

/// Persist a batch in one store call; if the store refuses it, event by event, so one event
/// the store refuses costs only itself. A database outage is waited out (the batch is tried
/// again until the database is back): events are not dropped because it restarted. Returns
/// each event's sequence number (0: not persisted).
async fn persist(store: &dyn JobStore, events: &[(Uuid, JobEvent)]) -> Vec<u64> {
    if events.is_empty() {
        return Vec::new();
    }
    let mut delay = Duration::from_millis(100);
    let e = loop {
        match store.append_events(events).await {
            Ok(seqs) => return seqs,
            Err(e) if e.is_transient() => {
                tracing::warn!(events = events.len(), error = %e, retry_in = ?delay, "could not persist job events; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(super::models::MAX_STORE_RETRY_DELAY);
            }
            Err(e) => break e,
        }
    };
    tracing::warn!(events = events.len(), error = %e, "could not persist a batch of job events; writing them one by one");
    let mut seqs = Vec::with_capacity(events.len());
    for (job, event) in events {
        seqs.push(match store.append_event(*job, event).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(%job, error = %e, "could not persist job event");
                0
            }
        });
    }
    seqs
}

/// What the writer task is handed.
enum Write {
    /// Persist and broadcast an event.
    Event(Uuid, JobEvent),
    /// Answer once everything sent before has been written.
    Flush(oneshot::Sender<()>),
}

/// Publishes job events. `emit` never blocks the handler: events go through a channel to a
/// single writer task, which keeps each job's events in order.
#[derive(Clone)]
pub struct EventHub {
    tx: mpsc::UnboundedSender<Write>,
    live: broadcast::Sender<LiveEvent>,
    /// Events emitted and not yet written: lets [`EventHub::flush`] return at once when
    /// there are none (a trivial job emits nothing).
    pending: Arc<AtomicUsize>,
    /// The node's count of rows waiting for the store (the worker's back-pressure).
    backlog: WriteBacklog,
}

impl EventHub {
    /// Start the writer task, with a backlog count of its own.
    pub fn new(store: Arc<dyn JobStore>) -> EventHub {
        EventHub::with_backlog(store, WriteBacklog::default())
    }

    /// Start the writer task, counting the events it holds in `backlog`.
    pub fn with_backlog(store: Arc<dyn JobStore>, backlog: WriteBacklog) -> EventHub {
        let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
        let (live, _) = broadcast::channel(4096);
        let sender = live.clone();
        let pending = Arc::new(AtomicUsize::new(0));
        let written = pending.clone();
        let held = backlog.clone();
        tokio::spawn(async move {
            let mut writes = Vec::with_capacity(WRITE_BATCH);
            let mut events = Vec::with_capacity(WRITE_BATCH);
            let mut flushes = Vec::new();
            while rx.recv_many(&mut writes, WRITE_BATCH).await > 0 {
                for write in writes.drain(..) {
                    match write {
                        Write::Event(job, event) => events.push((job, event)),
                        // Answered after this batch is written: it holds everything sent
                        // before the flush.
                        Write::Flush(done) => flushes.push(done),
                    }
                }
                let seqs = persist(store.as_ref(), &events).await;
                let n = events.len();
                for ((job, event), seq) in events.drain(..).zip(seqs) {
                    // No receivers is fine: nobody is watching this job live.
                    let _ = sender.send(LiveEvent { job, seq, event });
                }
                written.fetch_sub(n, Ordering::AcqRel);
                held.done(n);
                for done in flushes.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        EventHub {
            tx,
            live,
            pending,
            backlog,
        }
    }

    /// Broadcast an event to live subscribers without persisting it. Status changes go this
    /// way: they are already recorded in the job itself, and a store write per transition
    /// would double the cost of a trivial job.
    pub fn publish_live(&self, job: Uuid, event: JobEvent) {
        let _ = self.live.send(LiveEvent { job, seq: 0, event });
    }

    /// Wait until every event emitted before this call is persisted and broadcast. The
    /// worker calls it before finalizing an attempt, so all of a job's events are in the store
    /// by the time the job is seen finished: an SSE stream replays them before its `result`,
    /// and `GET /v1/jobs/{id}` sums the job's usage from them.
    pub async fn flush(&self) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let (done, wait) = oneshot::channel();
        if self.tx.send(Write::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Subscribe to every event published from now on (filter by job on receipt).
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }
}

impl EventSink for EventHub {
    fn emit(&self, job: Uuid, event: JobEvent) {
        // A handler's logs and progress are also events of the span it runs in.
        if crate::telemetry::enabled() {
            crate::telemetry::job_event(&event);
        }
        // The writer task lives as long as the runtime; a send error means shutdown.
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.backlog.add(1);
        if self.tx.send(Write::Event(job, event)).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.backlog.done(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_store::StoreConfig;

    #[tokio::test]
    async fn flush_returns_once_earlier_events_are_stored() {
        let store = sluice_store::open("sqlite::memory:", StoreConfig::default())
            .await
            .unwrap();
        let hub = EventHub::new(store.clone());
        let job = Uuid::new_v4();
        for i in 0..200 {
            hub.emit(
                job,
                JobEvent::Progress {
                    message: format!("step {i}"),
                    fraction: None,
                },
            );
        }
        hub.flush().await;
        let stored = store.events_after(job, 0, 1000).await.unwrap();
        assert_eq!(stored.len(), 200);
        assert_eq!(stored.last().unwrap().seq, 200);
        // Nothing pending: returns at once.
        hub.flush().await;
    }
}
