//! Job events: written to the store in order (so an SSE client can resume from any id) and
//! broadcast to live subscribers.

use std::sync::Arc;

use sluice_store::JobStore;
use sluice_types::{EventSink, JobEvent};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

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

/// Publishes job events. `emit` never blocks the handler: events go through a channel to a
/// single writer task, which keeps each job's events in order.
#[derive(Clone)]
pub struct EventHub {
    tx: mpsc::UnboundedSender<(Uuid, JobEvent)>,
    live: broadcast::Sender<LiveEvent>,
}

impl EventHub {
    /// Start the writer task.
    pub fn new(store: Arc<dyn JobStore>) -> EventHub {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Uuid, JobEvent)>();
        let (live, _) = broadcast::channel(4096);
        let sender = live.clone();
        tokio::spawn(async move {
            while let Some((job, event)) = rx.recv().await {
                let seq = match store.append_event(job, &event).await {
                    Ok(seq) => seq,
                    Err(e) => {
                        tracing::warn!(%job, error = %e, "could not persist job event");
                        0
                    }
                };
                // No receivers is fine: nobody is watching this job live.
                let _ = sender.send(LiveEvent { job, seq, event });
            }
        });
        EventHub { tx, live }
    }

    /// Broadcast an event to live subscribers without persisting it. Status changes go this
    /// way: they are already recorded in the job itself, and a store write per transition
    /// would double the cost of a trivial job.
    pub fn publish_live(&self, job: Uuid, event: JobEvent) {
        let _ = self.live.send(LiveEvent { job, seq: 0, event });
    }

    /// Subscribe to every event published from now on (filter by job on receipt).
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }
}

impl EventSink for EventHub {
    fn emit(&self, job: Uuid, event: JobEvent) {
        // The writer task lives as long as the runtime; a send error means shutdown.
        let _ = self.tx.send((job, event));
    }
}
