//! Per-job resource limits: how much memory and time one attempt may use.

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Limits applied to one job attempt. Configurable per plugin; see [`JobLimits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The most linear memory the instance may have, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time for the whole attempt, including time spent in host calls
    /// (waiting for providers). Guest code spinning without host calls is stopped by epoch
    /// interruption; time in host calls by an outer timeout.
    pub timeout: Duration,
}

impl Default for JobLimits {
    /// 64 MiB and 5 minutes: enough for a handler that juggles long documents, small
    /// enough that a node can keep hundreds of jobs in flight.
    fn default() -> Self {
        JobLimits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(300),
        }
    }
}

/// A [`ResourceLimiter`] that refuses growth past the job's cap and remembers that it did,
/// so the trap that follows (Rust aborts on allocation failure) can be reported as
/// "memory limit exceeded" rather than an anonymous `unreachable`.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub(crate) max_bytes: usize,
    pub(crate) refused: Option<usize>,
}

impl MemoryCap {
    pub(crate) fn new(max_bytes: usize) -> Self {
        MemoryCap {
            max_bytes,
            refused: None,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any real handler.
        Ok(desired <= 1_000_000)
    }
}
