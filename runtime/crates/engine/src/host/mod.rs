//! The per-job host state and the implementations of the `sluice:plugin` imports.
//!
//! Each import interface lives in its own module: the trait impl on [`HostState`] plus tests
//! that call it directly, without wasm. Every import is async and forwards to a backend trait
//! from `sluice-types`, so the same engine runs on in-memory backends (`sluice run`) or the
//! real store and gateway. Backend failures come back to the guest as WIT error values; the
//! only traps raised here are for a cancelled job.

pub(crate) mod convert;
mod effects;
pub(crate) mod events;
mod models;
mod state;
mod usage;

use sluice_types::{CallContext, HostServices};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::limits::{JobLimits, MemoryCap};

/// What a guest's stderr keeps, so a panic message can be reported with the failure.
const STDERR_CAPTURE_BYTES: usize = 16 * 1024;

/// The data of one job's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    pub(crate) ctx: CallContext,
    pub(crate) services: HostServices,
    /// Position of the next model call in this attempt (journal replay matches on it).
    pub(crate) next_seq: u32,
    pub(crate) stderr: MemoryOutputPipe,
    /// The attempt's limits on what the guest may send the host.
    pub(crate) limits: JobLimits,
    /// Events emitted and dropped so far (see [`events`]).
    pub(crate) events: events::EventBudget,
    /// Model calls admitted so far in this attempt (a batch counts each entry).
    pub(crate) model_calls: u32,
    /// Cost reported through `usage::report-cost` so far in this attempt, in micro-dollars.
    pub(crate) reported_cost_micros: u64,
    /// Set while an effect's result is being committed: cancellation waits for it, or a
    /// redrive would run the effect again.
    pub(crate) committing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The trap raised by a host call of a cancelled job.
#[derive(Debug, thiserror::Error)]
#[error("job cancelled")]
pub(crate) struct CancelledTrap;

impl HostState {
    /// A job's host state. `memory_bytes` is the effective memory cap (the job's limit,
    /// clamped to the engine's); the other limits come from `limits`.
    pub(crate) fn new(
        ctx: CallContext,
        services: HostServices,
        limits: JobLimits,
        memory_bytes: usize,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE_BYTES);
        // No preopened directories, no environment, no network: a handler reaches the world
        // only through the sluice imports. Stdout is discarded; stderr is kept for panics.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap::new(memory_bytes),
            ctx,
            services,
            next_seq: 0,
            stderr,
            limits,
            events: events::EventBudget::default(),
            model_calls: 0,
            reported_cost_micros: 0,
            committing: Default::default(),
        }
    }

    /// Refuse to continue a cancelled job: the trap unwinds the guest at this host call.
    pub(crate) fn check_cancelled(&self) -> wasmtime::Result<()> {
        if self.ctx.is_cancelled() {
            return Err(CancelledTrap.into());
        }
        Ok(())
    }

    /// What the guest wrote to stderr, lossily decoded.
    pub(crate) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).into_owned()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::bindings::types::Host for HostState {}

#[cfg(test)]
pub(crate) mod testing {
    //! A host state over in-memory backends, for calling import impls directly.
    use super::*;
    use sluice_types::JobInfo;

    pub(crate) fn state() -> HostState {
        state_with(JobLimits::default())
    }

    pub(crate) fn state_with(limits: JobLimits) -> HostState {
        let job = JobInfo {
            id: uuid::Uuid::nil(),
            plugin: "test".into(),
            tenant: "acme".into(),
            attempt: 1,
            max_attempts: 3,
            idempotency_key: None,
            tags: Default::default(),
            deadline_unix_ms: sluice_types::job::now_unix_ms() + 60_000,
        };
        let ctx = CallContext::new(job, "digest");
        HostState::new(ctx, crate::memory::services(), limits, 64 << 20)
    }
}
