//! Side effects that happen once per job even when the job runs again.
//!
//! A job may run more than once (a retryable error, a worker that died). Model calls are
//! replayed from the journal automatically; anything else with an outside effect — sending an
//! email, charging a card, calling a paid API — belongs in [`once`]: the host records its
//! result under a key, and a later attempt gets the recorded result instead of running it again.
//!
//! ```no_run
//! use sluice_sdk::{effects, events, Error};
//!
//! # fn run(user: &str) -> sluice_sdk::Result<()> {
//! let receipt: String = effects::once("send-welcome-email", || {
//!     events::info(format!("sending the welcome email to {user}"));
//!     // … call the mail service (through the host) …
//!     Ok("msg-8842".to_string())
//! })?;
//! # let _ = receipt; Ok(()) }
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::effects as wit;
use crate::error::Error;

/// Why an effect's journal could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectError {
    /// The key is empty or over 512 bytes.
    InvalidKey(String),
    /// The journal could not be reached.
    Unavailable(String),
}

impl fmt::Display for EffectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EffectError::InvalidKey(m) => write!(f, "invalid effect key: {m}"),
            EffectError::Unavailable(m) => write!(f, "effect journal unavailable: {m}"),
        }
    }
}

impl std::error::Error for EffectError {}

impl From<wit::EffectError> for EffectError {
    fn from(e: wit::EffectError) -> Self {
        match e {
            wit::EffectError::InvalidKey(m) => EffectError::InvalidKey(m),
            wit::EffectError::Unavailable(m) => EffectError::Unavailable(m),
        }
    }
}

impl From<EffectError> for Error {
    fn from(e: EffectError) -> Self {
        match e {
            EffectError::Unavailable(_) => Error::retryable(e.to_string()),
            EffectError::InvalidKey(_) => Error::permanent(e.to_string()),
        }
    }
}

/// What [`begin`] found for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectStatus {
    /// Not committed yet for this job: run the effect, then [`commit_raw`] it.
    Pending,
    /// Committed by an earlier attempt, with its recorded result (JSON text).
    Committed(String),
}

/// Run `effect` at most once per job under `key`, and return its result.
///
/// If an earlier attempt of this job committed `key`, its recorded result is returned and
/// `effect` does not run. Otherwise `effect` runs; an `Ok` result is recorded (as JSON) and
/// returned, an `Err` is returned without recording, so the next attempt runs the effect again.
///
/// The guarantee is as strong as the gap between the effect and its commit is short: if the
/// job is killed after the effect happened but before the host recorded it, the next attempt
/// runs it again. Pass an idempotency key to the outside service where it accepts one (the
/// job's id and the effect key make a good one).
pub fn once<T, F>(key: &str, effect: F) -> Result<T, Error>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, Error>,
{
    match begin(key)? {
        EffectStatus::Committed(recorded) => serde_json::from_str(&recorded).map_err(|e| {
            Error::permanent(format!(
                "effect {key}: the recorded result does not fit the expected type: {e}"
            ))
        }),
        EffectStatus::Pending => {
            let value = effect()?;
            let text = serde_json::to_string(&value).map_err(|e| {
                Error::permanent(format!(
                    "effect {key}: its result cannot be recorded as JSON: {e}"
                ))
            })?;
            commit_raw(key, &text)?;
            Ok(value)
        }
    }
}

/// Look up an effect by key before running it.
pub fn begin(key: &str) -> Result<EffectStatus, EffectError> {
    match wit::begin(key)? {
        wit::EffectStatus::Pending => Ok(EffectStatus::Pending),
        wit::EffectStatus::Committed(text) => Ok(EffectStatus::Committed(text)),
    }
}

/// Record that the effect under `key` ran, with its result as JSON text. Committing a key
/// twice keeps the first result.
pub fn commit_raw(key: &str, result: &str) -> Result<(), EffectError> {
    Ok(wit::commit(key, result)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effect_errors_classify() {
        let e = Error::from(EffectError::from(wit::EffectError::Unavailable(
            "db".into(),
        )));
        assert_eq!(e, Error::retryable("effect journal unavailable: db"));
        let e = Error::from(EffectError::from(wit::EffectError::InvalidKey(
            "empty".into(),
        )));
        assert_eq!(e, Error::permanent("invalid effect key: empty"));
    }
}
