//! Progress reports and structured logs. They reach the job's event stream (SSE), its webhook
//! and the host's traces.
//!
//! ```no_run
//! use sluice_sdk::events::{self, Level};
//!
//! events::progress("chunk 3/10", Some(0.3));
//! events::info("summarizing");
//! events::log(Level::Warn, "reply was cut off", &[("chunk", "3"), ("model", "fast")]);
//! ```

use crate::bindings::events as wit;

/// The severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the handler worked around.
    Warn,
    /// A failure.
    Error,
}

impl From<Level> for wit::Level {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}

/// Report progress, e.g. `"chunk 3/10"`, with an optional fraction done from 0.0 to 1.0
/// (values outside are clamped; NaN is dropped).
pub fn progress(message: impl AsRef<str>, fraction: Option<f32>) {
    wit::progress(message.as_ref(), clamp_fraction(fraction));
}

fn clamp_fraction(fraction: Option<f32>) -> Option<f32> {
    fraction.filter(|f| !f.is_nan()).map(|f| f.clamp(0.0, 1.0))
}

/// Write a structured log line with key/value fields.
pub fn log(level: Level, message: impl AsRef<str>, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wit::log(level.into(), message.as_ref(), &fields);
}

/// Log at [`Level::Trace`] without fields.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message, &[]);
}

/// Log at [`Level::Debug`] without fields.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message, &[]);
}

/// Log at [`Level::Info`] without fields.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message, &[]);
}

/// Log at [`Level::Warn`] without fields.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message, &[]);
}

/// Log at [`Level::Error`] without fields.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_clamped() {
        assert_eq!(clamp_fraction(Some(0.3)), Some(0.3));
        assert_eq!(clamp_fraction(Some(1.7)), Some(1.0));
        assert_eq!(clamp_fraction(Some(-1.0)), Some(0.0));
        assert_eq!(clamp_fraction(Some(f32::NAN)), None);
        assert_eq!(clamp_fraction(None), None);
        assert!(Level::Error > Level::Info);
        assert_eq!(wit::Level::from(Level::Warn), wit::Level::Warn);
    }
}
