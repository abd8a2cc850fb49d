//! Running one job attempt: a fresh `Store` and instance, bounded in memory, time and in
//! everything the guest sends the host.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_types::{CallContext, HostServices};
use wasmtime::{CallHook, Store, UpdateDeadline};

use crate::bindings::types as wt;
use crate::component::Plugin;
use crate::engine::Engine;
use crate::error::RunError;
use crate::host::{CancelledTrap, HostState, convert};
use crate::limits::JobLimits;

/// The trap raised by the epoch callback when an attempt's deadline passes in guest code.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineTrap;

/// How often a running attempt checks its cancel flag while the guest is blocked in a host
/// or WASI call (epoch ticks check it while guest code runs).
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// The most of a handler's error message that is kept; the rest is cut.
const MAX_ERROR_MESSAGE_BYTES: usize = 16 * 1024;

/// wasmtime's message when one transfer from the guest exhausts its hostcall fuel. The
/// error type is private to wasmtime, so it is recognised by its text (wasmtime 48; the
/// `list_amplification` test fails if a new version words it differently).
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// `handle`'s result type. It is copied out of the guest by the call itself: wasmtime 48 runs
/// the guest's post-return (which frees the result's memory) before the call returns, so a
/// borrowed `WasmStr` would read freed memory (seen: outputs corrupted past their 8th byte).
type HandleResult = (Result<String, wt::JobError>,);

impl Engine {
    /// Run `plugin`'s handler once for the job in `ctx`, with `input` as JSON text, and
    /// return its output JSON text.
    ///
    /// The attempt gets its own `Store` and instance (nothing leaks between jobs), a memory
    /// cap, and a deadline of `limits.timeout` (or the job's own deadline, if sooner)
    /// enforced twice: by epoch interruption while guest code runs, and by an outer timeout
    /// that also covers time spent waiting in host calls. Cancellation is seen within one
    /// epoch tick in guest code and within 20 ms in a host or WASI call. What the
    /// guest sends the host is bounded by the rest of `limits`. Whatever the handler does,
    /// this returns; a failure is classified in [`RunError`].
    pub async fn run(
        &self,
        plugin: &Plugin,
        ctx: CallContext,
        input: &str,
        limits: JobLimits,
        services: HostServices,
    ) -> Result<String, RunError> {
        let timeout = limits
            .timeout
            .min(Duration::from_millis(ctx.remaining_ms()));
        let started = Instant::now();
        let deadline = started + timeout;
        let memory = limits.memory_bytes.min(self.inner.config.max_memory_bytes);
        let job = convert::job_info(&ctx.job);
        let cancelled = ctx.cancelled.clone();

        let host = HostState::new(ctx, services, limits, memory);
        let committing = host.committing.clone();
        let mut store = Store::new(&self.inner.wasmtime, host);
        store.limiter(|s| &mut s.limiter);
        set_transfer_limits(&mut store, limits.max_hostcall_bytes, memory);
        store.set_epoch_deadline(1);
        let flag = cancelled.clone();
        store.epoch_deadline_callback(move |_| {
            if flag.load(Ordering::Relaxed) {
                return Err(CancelledTrap.into());
            }
            if Instant::now() >= deadline {
                return Err(DeadlineTrap.into());
            }
            // Yield every tick so a spinning guest cannot starve other jobs on this thread.
            Ok(UpdateDeadline::Yield(1))
        });

        let max_output = limits.max_output_bytes;
        let attempt = async {
            let instantiating = Instant::now();
            let instance = plugin
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await
                .map_err(|e| Failure::Wasm(e, true))?;
            metrics::histogram!("sluice_engine_instantiate_seconds")
                .record(instantiating.elapsed().as_secs_f64());
            let handle = instance
                .get_typed_func::<(&wt::JobInfo, &str), HandleResult>(&mut store, &plugin.handle)
                .map_err(|e| Failure::Wasm(e, true))?;
            let (result,) = handle
                .call_async(&mut store, (&job, input))
                .await
                .map_err(|e| Failure::Wasm(e, false))?;
            finish(result, max_output).map_err(Failure::Run)
        };
        let outcome = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline.into(), attempt) => match r {
                Err(_elapsed) => Err(RunError::Timeout(timeout.as_millis() as u64)),
                Ok(Ok(output)) => Ok(output),
                Ok(Err(Failure::Run(e))) => Err(e),
                Ok(Err(Failure::Wasm(e, instantiating))) => {
                    Err(classify(e, &store, timeout, instantiating))
                }
            },
            // A guest blocked in a host or WASI call (a provider, `thread::sleep`) never
            // reaches an epoch check: drop the call instead.
            // An effect being committed is let finish (its commit is one store write).
            () = until_cancellable(&cancelled, &committing) => Err(RunError::Cancelled),
        };
        store.data_mut().finish_events();
        record_memory_peak(store.data().limiter.peak);
        outcome
    }
}

/// The attempt's peak linear memory, as a histogram on `/metrics` and an attribute of the
/// current span (the worker's `handler.run`, which declares the field).
fn record_memory_peak(bytes: usize) {
    if bytes == 0 {
        // Never instantiated: nothing was measured.
        return;
    }
    metrics::histogram!("sluice_engine_memory_peak_bytes").record(bytes as f64);
    tracing::Span::current().record("sluice.memory.peak_bytes", bytes as u64);
}

/// Why the attempt future ended without output.
enum Failure {
    /// wasmtime failed (a trap or an error from a host call); `true` while instantiating.
    Wasm(wasmtime::Error, bool),
    /// Classified already.
    Run(RunError),
}

/// Give each transfer out of the guest its own bound. wasmtime's hostcall fuel caps the
/// bytes one lift may take out of guest memory and is reset from the store's setting at
/// every lift, so the call hook sets it for what comes next: before a host call, the
/// arguments' cap; when the guest returns, its whole memory cap, so `handle`'s result is
/// never refused by fuel (a string cannot be larger than the memory holding it) and a fuel
/// exhaustion can only come from a host call's arguments. The result is measured against
/// the output cap right after the copy, so the host holds at most one job's memory cap of
/// it, briefly, as it already allows the guest to hold.
fn set_transfer_limits(store: &mut Store<HostState>, hostcall_bytes: usize, memory: usize) {
    store.set_hostcall_fuel(hostcall_bytes);
    store.call_hook(move |mut store, hook| {
        match hook {
            CallHook::CallingHost => store.set_hostcall_fuel(hostcall_bytes),
            CallHook::ReturningFromWasm => store.set_hostcall_fuel(memory),
            CallHook::CallingWasm | CallHook::ReturningFromHost => {}
        }
        Ok(())
    });
}

/// Resolve once `cancelled` is set and no effect is being committed, checking every
/// [`CANCEL_POLL`].
async fn until_cancellable(cancelled: &Arc<AtomicBool>, committing: &Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(CANCEL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if cancelled.load(Ordering::Relaxed) && !committing.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Turn `handle`'s result into the attempt's outcome: the output is measured before it is
/// parsed, and error messages are cut.
fn finish(result: Result<String, wt::JobError>, max_output: usize) -> Result<String, RunError> {
    match result {
        Ok(output) => {
            if output.len() > max_output {
                return Err(RunError::OutputTooLarge {
                    limit: max_output,
                    size: output.len(),
                });
            }
            match serde_json::from_str::<serde::de::IgnoredAny>(&output) {
                Ok(_) => Ok(output),
                Err(e) => Err(RunError::BadOutput(e.to_string())),
            }
        }
        Err(wt::JobError::Retryable(r)) => {
            Err(RunError::Handler(sluice_types::JobError::Retryable {
                message: cut(&r.message),
                retry_after_ms: r.retry_after_ms,
            }))
        }
        Err(wt::JobError::Permanent(m)) => {
            Err(RunError::Handler(sluice_types::JobError::Permanent {
                message: cut(&m),
            }))
        }
    }
}

/// At most [`MAX_ERROR_MESSAGE_BYTES`] of `s`, cut on a character boundary.
fn cut(s: &str) -> String {
    if s.len() <= MAX_ERROR_MESSAGE_BYTES {
        return s.to_string();
    }
    let mut end = MAX_ERROR_MESSAGE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Turn a wasmtime error into the reason a user can act on.
fn classify(
    e: wasmtime::Error,
    store: &Store<HostState>,
    timeout: Duration,
    instantiating: bool,
) -> RunError {
    if e.downcast_ref::<CancelledTrap>().is_some() {
        return RunError::Cancelled;
    }
    if e.downcast_ref::<DeadlineTrap>().is_some() {
        return RunError::Timeout(timeout.as_millis() as u64);
    }
    let host = store.data();
    if let Some(requested) = host.limiter.refused {
        return RunError::MemoryLimit {
            limit: host.limiter.max_bytes,
            requested,
        };
    }
    if e.chain()
        .any(|c| c.to_string().contains(HOSTCALL_FUEL_EXHAUSTED))
    {
        return RunError::HostCallTooLarge {
            limit: host.limits.max_hostcall_bytes,
        };
    }
    if let Some(message) = panic_message(&host.stderr_text()) {
        return RunError::Panic(message);
    }
    if instantiating && e.downcast_ref::<wasmtime::Trap>().is_none() {
        return RunError::Instantiate(format!("{e:#}"));
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => RunError::Trap(trap.to_string()),
        None => RunError::Trap(format!("{e:#}")),
    }
}

/// Rust's panic hook writes `thread '…' panicked at file:line:col:\n<message>` to stderr.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at")?;
    let rest = &stderr[start..];
    let mut lines = rest.lines();
    let location = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("panicked at ")
        .trim_end_matches(':');
    let message: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note:") && !l.is_empty())
        .collect();
    Some(if message.is_empty() {
        location.to_string()
    } else {
        format!("{} (at {location})", message.join(" "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rust_panic_messages() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nboom: bad input\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).unwrap(),
            "boom: bad input (at src/lib.rs:10:5)"
        );
        assert_eq!(panic_message("nothing here"), None);
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let c = cut(&s);
        assert!(c.len() <= MAX_ERROR_MESSAGE_BYTES + '…'.len_utf8());
        assert!(c.ends_with('…'));
        assert_eq!(cut("short"), "short");
    }
}
