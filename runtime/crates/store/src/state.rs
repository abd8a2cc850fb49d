//! The engine's key/value state and once-per-job effects ([`StateBackend`], [`EffectsBackend`]),
//! written once over [`StateSql`].
//!
//! What is the same on both backends lives here: key and value checks, the per-tenant state
//! quota (admitted before the write, tallied after it succeeds) and how database errors reach
//! the engine (as `Unavailable`, a value the handler sees, never a trap). A backend supplies
//! only its SQL text ([`crate::sql`]): Postgres judges expiry with its own clock (`now()`), SQLite with this
//! node's. The two engine traits belong to `sluice-types`, so a blanket impl is not allowed;
//! [`state_backends!`] writes each backend's delegating impls instead.

use std::time::Duration;

use sluice_types::{EffectError, StateError, StateScope};
use uuid::Uuid;

use crate::config::StoreConfig;
use crate::error::Result;
use crate::rows::Columns;
use crate::sql::{Arg, On, Sql};
use crate::util::{self, TenantTally};

/// The state and effects statements, one set per backend; each flow below names the
/// arguments it binds. A live entry is one without an expiry or whose expiry is still ahead.
pub(crate) trait StateSql: Sql {
    /// The settings holding the state limits.
    fn state_config(&self) -> &StoreConfig;
    /// The cached per-tenant count of state bytes.
    fn state_tally(&self) -> &TenantTally;

    /// `n`: bytes of keys and values tenant `$1` holds (live or not).
    const TENANT_BYTES: &'static str;
    /// `value` of live entry (`$1` tenant, `$2` plugin, `$3` key; `$4` now).
    const VALUE: &'static str;
    /// Insert or replace entry `$1`–`$3` with value `$4`, expiring `$5` ms after now (`$6`)
    /// when `$5` is not NULL.
    const PUT: &'static str;
    /// Delete entry `$1`–`$3`; `live`: whether it was live at `$4`.
    const DELETE: &'static str;
    /// `key` of live entries of `$1`, `$2` in `[$3, $4)` starting with `$3` (`$4` may be
    /// NULL), in order, at most `$6` (`$5` now).
    const KEYS: &'static str;
    /// Write value `$4` without expiry at `$1`–`$3` where no live entry is; a row when
    /// written (`$5` now).
    const INSERT_IF_ABSENT: &'static str;
    /// Replace the live entry `$1`–`$3` holding `$5` by `$4`; a row when swapped (`$6` now).
    const SWAP: &'static str;
    /// `result` of effect `$2` of job `$1`.
    const EFFECT_RESULT: &'static str = "SELECT result FROM effects WHERE job_id = $1 AND key = $2";
    /// Record result `$3` of effect `$2` of job `$1` unless recorded (`$4` now).
    const RECORD_EFFECT: &'static str;
}

fn state_err(e: sqlx::Error) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn effect_err(e: sqlx::Error) -> EffectError {
    EffectError::Unavailable(e.to_string())
}

/// A column that did not decode (never expected: the schema is ours).
fn unavailable(e: crate::error::StoreError) -> StateError {
    StateError::Unavailable(e.to_string())
}

fn tenant(scope: &StateScope) -> Arg<'_> {
    Arg::Text(&scope.tenant)
}

fn plugin(scope: &StateScope) -> Arg<'_> {
    Arg::Text(&scope.plugin)
}

/// Check a write against the tenant's state quota; the bytes to tally once it succeeds.
async fn admit<S: StateSql>(
    s: &S,
    scope: &StateScope,
    key: &str,
    value: &str,
) -> Result<u64, StateError> {
    util::check_state_key(key)?;
    util::check_state_value(value, s.state_config().max_state_value_bytes)?;
    util::admit_state(
        s.state_tally(),
        s.state_config().max_state_bytes_per_tenant,
        &scope.tenant,
        key,
        value,
        |tenant| async move {
            let row = s
                .row(On::Read, S::TENANT_BYTES, &[Arg::Text(&tenant)])
                .await?;
            Ok(row.map(|r| r.int("n")).transpose()?.unwrap_or(0).max(0) as u64)
        },
    )
    .await
}

/// [`sluice_types::StateBackend::get`].
pub(crate) async fn get<S: StateSql>(
    s: &S,
    scope: &StateScope,
    key: &str,
) -> Result<Option<String>, StateError> {
    util::check_state_key(key)?;
    let args = [tenant(scope), plugin(scope), Arg::Text(key), Arg::Now];
    let row = s.row(On::Read, S::VALUE, &args).await.map_err(state_err)?;
    row.map(|r| r.text("value"))
        .transpose()
        .map_err(unavailable)
}

/// [`sluice_types::StateBackend::set`].
pub(crate) async fn set<S: StateSql>(
    s: &S,
    scope: &StateScope,
    key: &str,
    value: &str,
    ttl: Option<Duration>,
) -> Result<(), StateError> {
    let tally = admit(s, scope, key, value).await?;
    let args = [
        tenant(scope),
        plugin(scope),
        Arg::Text(key),
        Arg::Text(value),
        Arg::Millis(ttl),
        Arg::Now,
    ];
    s.exec(On::Write, S::PUT, &args).await.map_err(state_err)?;
    s.state_tally().add(&scope.tenant, tally);
    Ok(())
}

/// [`sluice_types::StateBackend::delete`]: true when a live entry was deleted.
pub(crate) async fn delete<S: StateSql>(
    s: &S,
    scope: &StateScope,
    key: &str,
) -> Result<bool, StateError> {
    util::check_state_key(key)?;
    let args = [tenant(scope), plugin(scope), Arg::Text(key), Arg::Now];
    let row = s
        .row(On::Write, S::DELETE, &args)
        .await
        .map_err(state_err)?;
    Ok(row
        .map(|r| r.flag("live"))
        .transpose()
        .map_err(unavailable)?
        .unwrap_or(false))
}

/// [`sluice_types::StateBackend::list_keys`].
pub(crate) async fn list_keys<S: StateSql>(
    s: &S,
    scope: &StateScope,
    prefix: &str,
    limit: u32,
) -> Result<Vec<String>, StateError> {
    let upper = util::prefix_upper_bound(prefix);
    let args = [
        tenant(scope),
        plugin(scope),
        Arg::Text(prefix),
        Arg::OptText(upper.as_deref()),
        Arg::Now,
        Arg::Int(i64::from(limit)),
    ];
    let found = s.rows(On::Read, S::KEYS, &args).await.map_err(state_err)?;
    found
        .iter()
        .map(|r| r.text("key"))
        .collect::<Result<_>>()
        .map_err(unavailable)
}

/// [`sluice_types::StateBackend::compare_and_swap`].
pub(crate) async fn compare_and_swap<S: StateSql>(
    s: &S,
    scope: &StateScope,
    key: &str,
    expected: Option<&str>,
    value: &str,
) -> Result<bool, StateError> {
    let tally = admit(s, scope, key, value).await?;
    let (t, p, k, v) = (
        tenant(scope),
        plugin(scope),
        Arg::Text(key),
        Arg::Text(value),
    );
    let found = match expected {
        None => {
            let args = [t, p, k, v, Arg::Now];
            s.rows(On::Write, S::INSERT_IF_ABSENT, &args).await
        }
        Some(old) => {
            let args = [t, p, k, v, Arg::Text(old), Arg::Now];
            s.rows(On::Write, S::SWAP, &args).await
        }
    }
    .map_err(state_err)?;
    let swapped = !found.is_empty();
    if swapped {
        s.state_tally().add(&scope.tenant, tally);
    }
    Ok(swapped)
}

/// [`sluice_types::EffectsBackend::lookup`].
pub(crate) async fn lookup<S: StateSql>(
    s: &S,
    job: Uuid,
    key: &str,
) -> Result<Option<String>, EffectError> {
    util::check_effect_key(key)?;
    let args = [Arg::Id(job), Arg::Text(key)];
    let row = s
        .row(On::Read, S::EFFECT_RESULT, &args)
        .await
        .map_err(effect_err)?;
    row.map(|r| r.text("result"))
        .transpose()
        .map_err(|e| EffectError::Unavailable(e.to_string()))
}

/// [`sluice_types::EffectsBackend::commit`].
pub(crate) async fn commit<S: StateSql>(
    s: &S,
    job: Uuid,
    key: &str,
    result: &str,
) -> Result<(), EffectError> {
    util::check_effect_key(key)?;
    let args = [Arg::Id(job), Arg::Text(key), Arg::Text(result), Arg::Now];
    s.exec(On::Write, S::RECORD_EFFECT, &args)
        .await
        .map_err(effect_err)?;
    Ok(())
}

/// `impl StateBackend` and `impl EffectsBackend` for a store implementing [`StateSql`],
/// each method a call of this module's flow of the same name.
macro_rules! state_backends {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl sluice_types::StateBackend for $store {
            async fn get(
                &self,
                scope: &sluice_types::StateScope,
                key: &str,
            ) -> Result<Option<String>, sluice_types::StateError> {
                crate::state::get(self, scope, key).await
            }

            async fn set(
                &self,
                scope: &sluice_types::StateScope,
                key: &str,
                value: &str,
                ttl: Option<std::time::Duration>,
            ) -> Result<(), sluice_types::StateError> {
                crate::state::set(self, scope, key, value, ttl).await
            }

            async fn delete(
                &self,
                scope: &sluice_types::StateScope,
                key: &str,
            ) -> Result<bool, sluice_types::StateError> {
                crate::state::delete(self, scope, key).await
            }

            async fn list_keys(
                &self,
                scope: &sluice_types::StateScope,
                prefix: &str,
                limit: u32,
            ) -> Result<Vec<String>, sluice_types::StateError> {
                crate::state::list_keys(self, scope, prefix, limit).await
            }

            async fn compare_and_swap(
                &self,
                scope: &sluice_types::StateScope,
                key: &str,
                expected: Option<&str>,
                value: &str,
            ) -> Result<bool, sluice_types::StateError> {
                crate::state::compare_and_swap(self, scope, key, expected, value).await
            }
        }

        #[async_trait::async_trait]
        impl sluice_types::EffectsBackend for $store {
            async fn lookup(
                &self,
                job: uuid::Uuid,
                key: &str,
            ) -> Result<Option<String>, sluice_types::EffectError> {
                crate::state::lookup(self, job, key).await
            }

            async fn commit(
                &self,
                job: uuid::Uuid,
                key: &str,
                result: &str,
            ) -> Result<(), sluice_types::EffectError> {
                crate::state::commit(self, job, key, result).await
            }
        }
    };
}

pub(crate) use state_backends;
