//! The queue gauges of `/metrics` and `/readyz`, read from the store by one background task at
//! most every `server.gauges_refresh_secs`, so that scrapes and probes (which anyone may send
//! as often as they like) never run the store's counting queries themselves.
//!
//! The task starts with the first reader and stops when the router that owns the gauges is
//! dropped (the server stopped): it holds only the sending end of a watch channel, whose
//! receivers all live in [`Gauges`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_store::{JobStore, QueueBreakdown, QueueStats};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// One reading of the store.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    /// The queue depths, or why the store could not be read.
    pub stats: Result<QueueStats, String>,
    /// Depths by plugin and the DLQ's oldest entry (`None` when that query failed).
    pub breakdown: Option<QueueBreakdown>,
    /// When it was taken.
    pub at: tokio::time::Instant,
}

/// The last reading, and the task that takes them.
pub(crate) struct Gauges {
    store: Arc<dyn JobStore>,
    every: Duration,
    rx: watch::Receiver<Option<Reading>>,
    /// Until the task starts: the sending end it will own.
    tx: Mutex<Option<watch::Sender<Option<Reading>>>>,
    task: Mutex<Option<AbortHandle>>,
}

/// How long a reader waits for the very first reading.
const FIRST_READING: Duration = Duration::from_secs(5);

impl Gauges {
    /// Gauges of `store`, refreshed every `every` (at least a second) once read.
    pub(crate) fn new(store: Arc<dyn JobStore>, every: Duration) -> Arc<Gauges> {
        let (tx, rx) = watch::channel(None);
        Arc::new(Gauges {
            store,
            every: every.max(Duration::from_secs(1)),
            rx,
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(None),
        })
    }

    /// The latest reading; the first call starts the refresh task and waits (a bounded time)
    /// for its first reading. `None` only when the store has not answered that first time.
    pub(crate) async fn read(&self) -> Option<Reading> {
        self.start();
        let mut rx = self.rx.clone();
        if rx.borrow().is_none() {
            // The task answers at once unless the store hangs; then say "no reading".
            let _ = tokio::time::timeout(FIRST_READING, rx.wait_for(Option::is_some)).await;
        }
        rx.borrow().clone()
    }

    fn start(&self) {
        // A poisoned lock only means another reader panicked mid-start; the state is an
        // `Option` either way.
        let tx = match self.tx.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(tx) = tx else { return };
        let handle = tokio::spawn(refresh(self.store.clone(), tx, self.every)).abort_handle();
        match self.task.lock() {
            Ok(mut guard) => *guard = Some(handle),
            Err(poisoned) => *poisoned.into_inner() = Some(handle),
        }
    }

    /// Whether the refresh task is running (for tests).
    #[cfg(test)]
    fn running(&self) -> bool {
        self.task
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|h| !h.is_finished()))
            .unwrap_or(false)
    }
}

impl Drop for Gauges {
    fn drop(&mut self) {
        // The task would notice the closed channel at its next turn; stop it now instead.
        let task = match self.task.get_mut() {
            Ok(t) => t.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task {
            task.abort();
        }
    }
}

async fn refresh(store: Arc<dyn JobStore>, tx: watch::Sender<Option<Reading>>, every: Duration) {
    loop {
        let stats = tokio::select! {
            _ = tx.closed() => return,
            s = store.queue_stats() => s.map_err(|e| e.to_string()),
        };
        if let Err(e) = &stats {
            tracing::warn!(error = %e, "reading the queue gauges failed");
        }
        let breakdown = match &stats {
            Ok(_) => tokio::select! {
                _ = tx.closed() => return,
                b = store.queue_breakdown() => b
                    .inspect_err(|e| tracing::warn!(error = %e, "reading the queue by plugin failed"))
                    .ok(),
            },
            Err(_) => None,
        };
        let reading = Reading {
            stats,
            breakdown,
            at: tokio::time::Instant::now(),
        };
        if tx.send(Some(reading)).is_err() {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn JobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db").display());
        let store = sluice_store::open(&url, sluice_store::StoreConfig::default())
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn one_task_reads_and_stops_with_its_owner() {
        let (_dir, store) = sqlite().await;
        let gauges = Gauges::new(store, Duration::from_secs(3600));
        assert!(!gauges.running(), "nothing runs before the first reader");
        let first = gauges.read().await.expect("a first reading");
        assert_eq!(first.stats.unwrap(), QueueStats::default());
        assert_eq!(first.breakdown, Some(QueueBreakdown::default()));
        assert!(gauges.running());
        // Within the interval, readers get the same reading: no query per read.
        let again = gauges.read().await.unwrap();
        assert_eq!(again.at, first.at);
        let handle = gauges.task.lock().unwrap().clone().unwrap();
        drop(gauges);
        tokio::time::timeout(Duration::from_secs(10), async {
            while !handle.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the refresh task stops when its gauges are dropped");
    }
}
