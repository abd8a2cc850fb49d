//! The rows a node holds in memory waiting for the store: job events and usage rows. Both
//! writers wait a database outage out rather than drop what they hold, so during an outage
//! this grows; the worker reads it to stop claiming new jobs at `worker.max_buffered_writes`
//! (back-pressure instead of an unbounded buffer or dropped data).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A count of buffered rows, shared by the writers that add and remove them. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct WriteBacklog(Arc<AtomicUsize>);

impl WriteBacklog {
    /// `n` rows handed to a writer.
    pub(crate) fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }

    /// `n` rows written (or refused by the store for good).
    pub(crate) fn done(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }

    /// Rows waiting for the store now.
    pub fn len(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// No row is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
