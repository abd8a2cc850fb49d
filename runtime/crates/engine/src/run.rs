//! Running one job attempt: a fresh `Store` and instance, bounded in memory and time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_types::{CallContext, HostServices};
use wasmtime::{Store, UpdateDeadline};

use crate::component::Plugin;
use crate::engine::Engine;
use crate::error::RunError;
use crate::host::{CancelledTrap, HostState, convert};
use crate::limits::JobLimits;

/// The trap raised by the epoch callback when an attempt's deadline passes in guest code.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
struct DeadlineTrap;

impl Engine {
    /// Run `plugin`'s handler once for the job in `ctx`, with `input` as JSON text, and
    /// return its output JSON text.
    ///
    /// The attempt gets its own `Store` and instance (nothing leaks between jobs), a memory
    /// cap, and a deadline of `limits.timeout` (or the job's own deadline, if sooner)
    /// enforced twice: by epoch interruption while guest code runs, and by an outer timeout
    /// that also covers time spent waiting in host calls. Whatever the handler does, this
    /// returns; a failure is classified in [`RunError`].
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

        let mut store = Store::new(&self.inner.wasmtime, HostState::new(ctx, services, memory));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if cancelled.load(Ordering::Relaxed) {
                return Err(CancelledTrap.into());
            }
            if Instant::now() >= deadline {
                return Err(DeadlineTrap.into());
            }
            // Yield every tick so a spinning guest cannot starve other jobs on this thread.
            Ok(UpdateDeadline::Yield(1))
        });

        let instance = match tokio::time::timeout_at(
            deadline.into(),
            plugin.pre.instantiate_async(&mut store),
        )
        .await
        {
            Err(_) => return Err(RunError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(e)) => return Err(classify(e, &store, timeout, true)),
            Ok(Ok(instance)) => instance,
        };

        let outcome = tokio::time::timeout_at(
            deadline.into(),
            instance.call_handle(&mut store, &job, input),
        )
        .await;
        match outcome {
            Err(_elapsed) => Err(RunError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(trap)) => Err(classify(trap, &store, timeout, false)),
            Ok(Ok(Err(job_error))) => Err(RunError::Handler(convert::job_error(job_error))),
            Ok(Ok(Ok(output))) => match serde_json::from_str::<serde::de::IgnoredAny>(&output) {
                Ok(_) => Ok(output),
                Err(e) => Err(RunError::BadOutput(e.to_string())),
            },
        }
    }
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
}
