//! The error a handler returns, and how every SDK error becomes one.

use std::fmt;
use std::time::Duration;

use crate::bindings::types as wit;

/// What a handler returns when a job fails: retry it later, or give up for good.
///
/// The host retries a [`Error::Retryable`] failure with exponential backoff while the job has
/// attempts left (waiting at least `retry_after` when given), and moves a
/// [`Error::Permanent`] failure to the dead-letter queue at once, with its message as the reason.
///
/// Every error the SDK produces converts into this type, so `?` works throughout a handler:
///
/// | source | becomes |
/// |---|---|
/// | [`ModelError`](crate::models::ModelError) budget-exceeded, invalid-request, content-filtered | permanent |
/// | [`ModelError`](crate::models::ModelError) rate-limited (with its retry-after), unavailable, timeout | retryable |
/// | [`StateError`](crate::state::StateError) unavailable or conflict | retryable |
/// | [`StateError`](crate::state::StateError) invalid key, too large, bad JSON | permanent |
/// | [`EffectError`](crate::effects::EffectError) unavailable | retryable |
/// | [`EffectError`](crate::effects::EffectError) invalid key | permanent |
/// | [`serde_json::Error`] | permanent |
///
/// ```
/// use std::time::Duration;
/// use sluice_sdk::Error;
///
/// let e = Error::retry_after("upstream is busy", Duration::from_secs(30));
/// assert!(e.is_retryable());
/// assert_eq!(e.retry_delay(), Some(Duration::from_secs(30)));
///
/// let e = Error::permanent("no text given").context("validating input");
/// assert_eq!(e.to_string(), "validating input: no text given");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The failure may pass: the host retries the job while attempts remain.
    Retryable {
        /// A human-readable reason, recorded in the job's attempt history.
        message: String,
        /// The least time to wait before the next attempt, when known.
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: the job becomes dead at once with this reason.
    Permanent {
        /// A human-readable reason, shown as the dead job's reason.
        message: String,
    },
}

/// A `Result` whose error is the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure that may pass if the job runs again later.
    pub fn retryable(message: impl Into<String>) -> Self {
        Error::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure that may pass, but not before `delay` has elapsed.
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        Error::Retryable {
            message: message.into(),
            retry_after: Some(delay),
        }
    }

    /// A failure that retrying will not fix (bad input, a refused budget, a bug).
    pub fn permanent(message: impl Into<String>) -> Self {
        Error::Permanent {
            message: message.into(),
        }
    }

    /// Whether the host will retry the job after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Retryable { .. })
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        match self {
            Error::Retryable { message, .. } | Error::Permanent { message } => message,
        }
    }

    /// The least time to wait before retrying, for a retryable error that knows it.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self {
            Error::Retryable { retry_after, .. } => *retry_after,
            Error::Permanent { .. } => None,
        }
    }

    /// Prefix the message with what was being done, keeping the classification:
    /// `"fetching history: the store is down"`.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        let message = match &mut self {
            Error::Retryable { message, .. } | Error::Permanent { message } => message,
        };
        *message = format!("{context}: {message}");
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// Adds [`Error::context`] to any `Result` whose error converts into [`Error`].
///
/// ```
/// use sluice_sdk::{Context, Error, Result};
///
/// fn parse(text: &str) -> Result<u32> {
///     let n: u32 = serde_json::from_str(text).context("reading the chunk size")?;
///     Ok(n)
/// }
/// let err = parse("\"x\"").unwrap_err();
/// assert!(!err.is_retryable());
/// assert!(err.message().starts_with("reading the chunk size: "));
/// ```
pub trait Context<T> {
    /// Convert the error into an [`Error`] and prefix its message with `context`.
    fn context(self, context: impl fmt::Display) -> Result<T>;

    /// Like [`Context::context`], but builds the context only on failure.
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

impl From<serde_json::Error> for Error {
    /// JSON that does not fit the expected shape will not fit it on a retry either.
    fn from(e: serde_json::Error) -> Self {
        Error::permanent(format!("invalid JSON: {e}"))
    }
}

/// A duration as whole milliseconds, saturating instead of wrapping.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<Error> for wit::JobError {
    fn from(e: Error) -> Self {
        match e {
            Error::Retryable {
                message,
                retry_after,
            } => wit::JobError::Retryable(wit::RetryableError {
                message,
                retry_after_ms: retry_after.map(millis),
            }),
            Error::Permanent { message } => wit::JobError::Permanent(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_classify() {
        assert!(Error::retryable("x").is_retryable());
        assert!(!Error::permanent("x").is_retryable());
        assert_eq!(Error::retryable("x").retry_delay(), None);
        assert_eq!(
            Error::retry_after("x", Duration::from_millis(1500)).retry_delay(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(Error::permanent("x").retry_delay(), None);
    }

    #[test]
    fn context_keeps_kind_and_delay() {
        let e = Error::retry_after("busy", Duration::from_secs(2)).context("chunk 3");
        assert_eq!(e.message(), "chunk 3: busy");
        assert_eq!(e.retry_delay(), Some(Duration::from_secs(2)));
        let r: Result<()> = Err::<(), _>(Error::permanent("bad")).context("step");
        assert_eq!(r.unwrap_err(), Error::permanent("step: bad"));
    }

    #[test]
    fn serde_errors_are_permanent() {
        let e: Error = serde_json::from_str::<u32>("nope").unwrap_err().into();
        assert!(!e.is_retryable());
        assert!(e.message().starts_with("invalid JSON: "), "{e}");
    }

    #[test]
    fn converts_to_wit_job_error() {
        match wit::JobError::from(Error::retry_after("slow", Duration::from_millis(250))) {
            wit::JobError::Retryable(r) => {
                assert_eq!(r.message, "slow");
                assert_eq!(r.retry_after_ms, Some(250));
            }
            other => panic!("{other:?}"),
        }
        match wit::JobError::from(Error::retryable("x")) {
            wit::JobError::Retryable(r) => assert_eq!(r.retry_after_ms, None),
            other => panic!("{other:?}"),
        }
        match wit::JobError::from(Error::permanent("bad input")) {
            wit::JobError::Permanent(m) => assert_eq!(m, "bad input"),
            other => panic!("{other:?}"),
        }
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
