//! `sluice:plugin/state`: key/value state scoped to the job's tenant and plugin.

use std::time::Duration;

use sluice_types::{StateError, StateScope};
use tracing::Instrument;
use tracing::field::Empty;

use super::HostState;
use crate::bindings::state as w;

fn to_wit(e: StateError) -> w::StateError {
    match e {
        StateError::InvalidKey(m) => w::StateError::InvalidKey(m),
        StateError::TooLarge(m) => w::StateError::TooLarge(m),
        StateError::Unavailable(m) => w::StateError::Unavailable(m),
    }
}

/// The span of one state call, a child of the handler's run. Disabled (no work) unless a
/// subscriber wants `info` spans of this target, as the trace exporter does.
fn span(op: &'static str, key: &str) -> tracing::Span {
    tracing::info_span!(
        "state",
        otel.name = op,
        sluice.state.key = key,
        sluice.outcome = Empty,
        error.type = Empty,
    )
}

/// Record how a state call ended on its span: `outcome` on success, the error's kind if not.
fn ended<T>(
    span: &tracing::Span,
    result: &Result<T, StateError>,
    outcome: impl Fn(&T) -> &'static str,
) {
    match result {
        Ok(v) => span.record("sluice.outcome", outcome(v)),
        Err(e) => span.record("sluice.outcome", "error").record(
            "error.type",
            match e {
                StateError::InvalidKey(_) => "invalid_key",
                StateError::TooLarge(_) => "too_large",
                StateError::Unavailable(_) => "unavailable",
            },
        ),
    };
}

fn ok<T>(_: &T) -> &'static str {
    "ok"
}

impl w::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        let span = span("state.get", &key);
        let r = self
            .services
            .state
            .get(&scope, &key)
            .instrument(span.clone())
            .await;
        ended(&span, &r, |v| if v.is_some() { "hit" } else { "miss" });
        Ok(r.map_err(to_wit))
    }

    async fn set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        let ttl = ttl_ms.map(Duration::from_millis);
        let span = span("state.set", &key);
        let r = self
            .services
            .state
            .set(&scope, &key, &value, ttl)
            .instrument(span.clone())
            .await;
        ended(&span, &r, ok);
        Ok(r.map_err(to_wit))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        let span = span("state.delete", &key);
        let r = self
            .services
            .state
            .delete(&scope, &key)
            .instrument(span.clone())
            .await;
        ended(
            &span,
            &r,
            |&deleted| if deleted { "deleted" } else { "absent" },
        );
        Ok(r.map_err(to_wit))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        let span = span("state.list_keys", &prefix);
        let r = self
            .services
            .state
            .list_keys(&scope, &prefix, limit)
            .instrument(span.clone())
            .await;
        ended(&span, &r, ok);
        Ok(r.map_err(to_wit))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        value: String,
    ) -> wasmtime::Result<Result<bool, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        let span = span("state.compare_and_swap", &key);
        let r = self
            .services
            .state
            .compare_and_swap(&scope, &key, expected.as_deref(), &value)
            .instrument(span.clone())
            .await;
        ended(
            &span,
            &r,
            |&swapped| if swapped { "swapped" } else { "stale" },
        );
        Ok(r.map_err(to_wit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing;
    use w::Host;

    #[tokio::test]
    async fn set_get_cas_list_delete() {
        let mut h = testing::state();
        assert_eq!(h.get("a".into()).await.unwrap().unwrap(), None);
        h.set("a".into(), "1".into(), None).await.unwrap().unwrap();
        h.set("ab".into(), "2".into(), None).await.unwrap().unwrap();
        assert_eq!(h.get("a".into()).await.unwrap().unwrap(), Some("1".into()));
        assert!(
            !h.compare_and_swap("a".into(), Some("0".into()), "x".into())
                .await
                .unwrap()
                .unwrap()
        );
        assert!(
            h.compare_and_swap("a".into(), Some("1".into()), "x".into())
                .await
                .unwrap()
                .unwrap()
        );
        assert!(
            h.compare_and_swap("new".into(), None, "y".into())
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            h.list_keys("a".into(), 10).await.unwrap().unwrap(),
            vec!["a".to_string(), "ab".to_string()]
        );
        assert!(h.delete("a".into()).await.unwrap().unwrap());
        assert!(!h.delete("a".into()).await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn bad_keys_are_error_values() {
        let mut h = testing::state();
        let long = "k".repeat(600);
        assert!(matches!(
            h.get(long).await.unwrap(),
            Err(w::StateError::InvalidKey(_))
        ));
        assert!(matches!(
            h.set(String::new(), "v".into(), None).await.unwrap(),
            Err(w::StateError::InvalidKey(_))
        ));
    }
}
