//! `sluice:plugin/state`: key/value state scoped to the job's tenant and plugin.

use std::time::Duration;

use sluice_types::{StateError, StateScope};

use super::HostState;
use crate::bindings::state as w;

fn to_wit(e: StateError) -> w::StateError {
    match e {
        StateError::InvalidKey(m) => w::StateError::InvalidKey(m),
        StateError::TooLarge(m) => w::StateError::TooLarge(m),
        StateError::Unavailable(m) => w::StateError::Unavailable(m),
    }
}

impl w::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        Ok(self.services.state.get(&scope, &key).await.map_err(to_wit))
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
        Ok(self
            .services
            .state
            .set(&scope, &key, &value, ttl)
            .await
            .map_err(to_wit))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        Ok(self
            .services
            .state
            .delete(&scope, &key)
            .await
            .map_err(to_wit))
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        Ok(self
            .services
            .state
            .list_keys(&scope, &prefix, limit)
            .await
            .map_err(to_wit))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<String>,
        value: String,
    ) -> wasmtime::Result<Result<bool, w::StateError>> {
        self.check_cancelled()?;
        let scope = StateScope::of(&self.ctx);
        Ok(self
            .services
            .state
            .compare_and_swap(&scope, &key, expected.as_deref(), &value)
            .await
            .map_err(to_wit))
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
