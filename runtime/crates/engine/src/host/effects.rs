//! `sluice:plugin/effects`: once-per-job side effects, journaled by key.

use std::sync::atomic::{AtomicBool, Ordering};

use sluice_types::EffectError;
use tracing::Instrument;
use tracing::field::Empty;

use super::HostState;
use crate::bindings::effects as w;

fn to_wit(e: EffectError) -> w::EffectError {
    match e {
        EffectError::InvalidKey(m) => w::EffectError::InvalidKey(m),
        EffectError::Unavailable(m) => w::EffectError::Unavailable(m),
    }
}

/// The span of one effects call, a child of the handler's run (disabled unless traced).
fn span(op: &'static str, key: &str) -> tracing::Span {
    tracing::info_span!(
        "effect",
        otel.name = op,
        sluice.effect.key = key,
        sluice.outcome = Empty,
        error.type = Empty,
    )
}

/// Record how an effects call ended: `outcome` on success, the error's kind if not.
fn ended<T>(
    span: &tracing::Span,
    result: &Result<T, EffectError>,
    outcome: impl Fn(&T) -> &'static str,
) {
    match result {
        Ok(v) => span.record("sluice.outcome", outcome(v)),
        Err(e) => span.record("sluice.outcome", "error").record(
            "error.type",
            match e {
                EffectError::InvalidKey(_) => "invalid_key",
                EffectError::Unavailable(_) => "unavailable",
            },
        ),
    };
}

/// Sets a flag for as long as it lives (also when the call's future is dropped).
struct Flag<'a>(&'a AtomicBool);

impl<'a> Flag<'a> {
    fn raise(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Flag(flag)
    }
}

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl w::Host for HostState {
    async fn begin(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<w::EffectStatus, w::EffectError>> {
        self.check_cancelled()?;
        let span = span("effect.begin", &key);
        let found = self
            .services
            .effects
            .lookup(self.ctx.job.id, &key)
            .instrument(span.clone())
            .await;
        // `committed`: an earlier attempt ran it and the guest replays its recorded result.
        ended(&span, &found, |r| {
            if r.is_some() { "committed" } else { "pending" }
        });
        Ok(found
            .map(|r| match r {
                Some(result) => w::EffectStatus::Committed(result),
                None => w::EffectStatus::Pending,
            })
            .map_err(to_wit))
    }

    async fn commit(
        &mut self,
        key: String,
        result: String,
    ) -> wasmtime::Result<Result<(), w::EffectError>> {
        // No cancellation check: an effect that ran must be recorded even if the job was
        // cancelled meanwhile, or a redrive would run it twice. For the same reason the
        // engine's cancellation race waits while `committing` is set.
        let _committing = Flag::raise(&self.committing);
        let span = span("effect.commit", &key);
        let r = self
            .services
            .effects
            .commit(self.ctx.job.id, &key, &result)
            .instrument(span.clone())
            .await;
        ended(&span, &r, |_| "ok");
        Ok(r.map_err(to_wit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing;
    use w::Host;

    #[tokio::test]
    async fn commit_once_then_replay() {
        let mut h = testing::state();
        assert!(matches!(
            h.begin("email".into()).await.unwrap(),
            Ok(w::EffectStatus::Pending)
        ));
        h.commit("email".into(), "\"sent\"".into())
            .await
            .unwrap()
            .unwrap();
        h.commit("email".into(), "\"again\"".into())
            .await
            .unwrap()
            .unwrap();
        match h.begin("email".into()).await.unwrap() {
            Ok(w::EffectStatus::Committed(r)) => assert_eq!(r, "\"sent\""),
            other => panic!("expected committed, got {other:?}"),
        }
    }
}
