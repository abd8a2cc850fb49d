//! Per-job resource limits: how much memory and time one attempt may use, and how much a
//! guest may send the host (events, output, model calls, reported costs, call arguments).
//!
//! Every limit here bounds something the guest controls, and is checked before the host
//! spends memory on it. Past a limit the guest gets an error value where the interface has
//! one (a `model-error`, a `report-cost` error), its excess is dropped and counted (events),
//! or the attempt fails with a classified [`RunError`](crate::RunError).

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Default [`JobLimits::max_events`]: 10,000 events per attempt.
pub const DEFAULT_MAX_EVENTS: u32 = 10_000;
/// Default [`JobLimits::max_event_bytes`]: 4 MiB of event text per attempt.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 << 20;
/// Default [`JobLimits::max_output_bytes`]: 1 MiB, the same as the input cap.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Default [`JobLimits::max_model_calls`]: 1,000 model calls per attempt.
pub const DEFAULT_MAX_MODEL_CALLS: u32 = 1_000;
/// Default [`JobLimits::max_chat_batch`]: 256 requests in one `chat-batch`.
pub const DEFAULT_MAX_CHAT_BATCH: u32 = 256;
/// Default [`JobLimits::max_cost_per_report_micros`]: $100 in one `report-cost` call.
pub const DEFAULT_MAX_COST_PER_REPORT_MICROS: u64 = 100_000_000;
/// Default [`JobLimits::max_reported_cost_micros`]: $1,000 reported by one attempt.
pub const DEFAULT_MAX_REPORTED_COST_MICROS: u64 = 1_000_000_000;
/// Default [`JobLimits::max_hostcall_bytes`]: 4 MiB of arguments in one host call.
pub const DEFAULT_MAX_HOSTCALL_BYTES: usize = 4 << 20;

/// Limits applied to one job attempt. Configurable per plugin; see [`JobLimits::default`].
///
/// Build one with the fields you care about and `..JobLimits::default()` for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The most linear memory the instance may have, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock time for the whole attempt, including time spent in host calls
    /// (waiting for providers). Guest code spinning without host calls is stopped by epoch
    /// interruption; time in host calls by an outer timeout.
    pub timeout: Duration,
    /// Events (progress and log lines) one attempt may emit. Past it, further events are
    /// dropped and counted, and one `events_truncated` event says how many.
    pub max_events: u32,
    /// Bytes of event text (messages, field keys and values, after each is cut to its own
    /// cap) one attempt may emit. Past it, as for [`max_events`](Self::max_events).
    pub max_event_bytes: usize,
    /// The largest output (JSON text) a handler may return. Larger output fails the attempt
    /// with [`RunError::OutputTooLarge`](crate::RunError::OutputTooLarge), a permanent
    /// failure; it is refused while being copied from the guest, before it is parsed.
    pub max_output_bytes: usize,
    /// Model calls (chat, each entry of a chat batch, embed) one attempt may make. Past it,
    /// a call returns `model-error::invalid-request` without reaching a provider.
    pub max_model_calls: u32,
    /// The most requests one `chat-batch` may hold. A longer batch is refused as a whole
    /// (every entry gets `invalid-request`) before any call runs.
    pub max_chat_batch: u32,
    /// The largest cost one `report-cost` call may report, in micro-dollars. A larger one
    /// is refused with an error value and not recorded.
    pub max_cost_per_report_micros: u64,
    /// The most cost one attempt may report through `report-cost`, in micro-dollars. A
    /// report that would take the attempt past it is refused with an error value.
    pub max_reported_cost_micros: u64,
    /// The most bytes a guest may pass to the host in one import call (the strings and
    /// lists of its arguments). Enforced by wasmtime's hostcall fuel while the arguments
    /// are copied out of the guest, so no more than this is ever copied; past it the
    /// attempt fails with [`RunError::HostCallTooLarge`](crate::RunError::HostCallTooLarge).
    pub max_hostcall_bytes: usize,
}

impl Default for JobLimits {
    /// 64 MiB and 5 minutes: enough for a handler that juggles long documents, small
    /// enough that a node can keep hundreds of jobs in flight. The rest are the `DEFAULT_*`
    /// constants of this module: generous for real handlers, small enough that a thousand
    /// hostile jobs at once cannot exhaust a node.
    fn default() -> Self {
        JobLimits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(300),
            max_events: DEFAULT_MAX_EVENTS,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_model_calls: DEFAULT_MAX_MODEL_CALLS,
            max_chat_batch: DEFAULT_MAX_CHAT_BATCH,
            max_cost_per_report_micros: DEFAULT_MAX_COST_PER_REPORT_MICROS,
            max_reported_cost_micros: DEFAULT_MAX_REPORTED_COST_MICROS,
            max_hostcall_bytes: DEFAULT_MAX_HOSTCALL_BYTES,
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
    /// Linear memory granted so far, over all of the instance's memories (wasmtime reports
    /// a memory's creation as a growth from 0).
    pub(crate) granted: usize,
    /// The most of it at any time: the attempt's peak linear memory.
    pub(crate) peak: usize,
}

impl MemoryCap {
    pub(crate) fn new(max_bytes: usize) -> Self {
        MemoryCap {
            max_bytes,
            refused: None,
            granted: 0,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = Some(desired);
            return Ok(false);
        }
        self.granted = self.granted.saturating_add(desired.saturating_sub(current));
        self.peak = self.peak.max(self.granted);
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
