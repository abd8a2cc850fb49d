//! Write Sluice job handlers in plain, synchronous Rust.
//!
//! A handler is a function from a typed input to a typed output. It is compiled to a
//! WebAssembly component (`cargo build --target wasm32-wasip2`) and uploaded to a Sluice host,
//! which runs it once per job. Everything that makes AI work survive production lives in the
//! host: the durable queue, retries, rate limits, budgets, provider failover, the response
//! cache and the per-job journal that replays model calls on a retry. The handler reaches the
//! world only through this crate:
//!
//! | module | what |
//! |---|---|
//! | [`models`] | chat calls (one, or many at once with [`models::chat_all`]), embeddings |
//! | [`state`] | key/value state that outlives jobs, and a [`state::Conversation`] history helper |
//! | [`effects`] | side effects that run once per job even when the job runs again |
//! | [`events`] | progress reports and structured logs for the job's event stream |
//! | [`usage`] | what the job has spent, the budget left, costs the host cannot see |
//!
//! # A handler
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! sluice-sdk = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use sluice_sdk::{events, models, Error, Job};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     text: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     title: String,
//!     cost_micros: u64,
//! }
//!
//! fn handle(job: &Job, input: Input) -> Result<Output, Error> {
//!     if input.text.trim().is_empty() {
//!         return Err(Error::permanent("`text` is empty"));
//!     }
//!     events::progress("asking for a title", Some(0.5));
//!     let reply = models::chat("fast")
//!         .system("Write a title of at most eight words for the user's text.")
//!         .user(&input.text)
//!         .max_tokens(30)
//!         .send()?; // a rate limit becomes a retryable error, a refused budget a permanent one
//!     events::info(format!("job {} titled by {}", job.id(), reply.model));
//!     Ok(Output { title: reply.content.trim().to_string(), cost_micros: reply.cost_micros })
//! }
//!
//! sluice_sdk::handler!(handle);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the component is
//! `target/wasm32-wasip2/release/<crate>.wasm`.
//!
//! # Errors and retries
//!
//! A handler returns [`Error::retryable`] (the host retries with backoff while attempts
//! remain), [`Error::retry_after`] (not before a given delay) or [`Error::permanent`] (the job
//! becomes dead at once). Every SDK error converts into [`Error`] with the right class, so `?`
//! does the sensible thing; see [`Error`] for the table. Input JSON that does not fit the
//! handler's input type is a permanent error naming what was wrong. A panic traps the
//! component and counts as a retryable failure of the attempt.
//!
//! A job may run more than once. Model calls are journaled by the host: a retried job gets the
//! recorded replies for the calls it repeats, at no new cost. Anything else with an outside
//! effect belongs in [`effects::once`].
//!
//! # Testing handler logic
//!
//! The SDK builds natively too, so the pure parts of a handler (parsing, chunking, prompt
//! building) can be unit-tested with `cargo test`; build a [`Job`] with [`Job::new`]. Calls that
//! reach the host (models, state, effects, events, usage) only work inside a Sluice host, or,
//! with the `testing` feature (as a dev-dependency), against `sluice_sdk::testing::FakeHost`,
//! a host-less test double with scripted model replies and in-memory state, effects and events.

#![deny(missing_docs)]

#[doc(hidden)]
#[allow(
    missing_docs,
    unsafe_code,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic
)]
pub mod bindings;

pub mod effects;
mod error;
pub mod events;
mod job;
pub mod models;
pub mod state;
#[cfg(all(feature = "testing", not(target_arch = "wasm32")))]
pub mod testing;
pub mod usage;

pub use error::{Context, Error, Result};
pub use job::Job;

/// Export a function as the component's job handler.
///
/// The typed form takes any function (or closure) of the shape
/// `fn(&Job, I) -> Result<O, E>` where `I: serde::de::DeserializeOwned`,
/// `O: serde::Serialize` and `E: Into<Error>`:
///
/// ```no_run
/// use sluice_sdk::{Error, Job};
///
/// fn handle(_job: &Job, input: serde_json::Value) -> Result<serde_json::Value, Error> {
///     Ok(serde_json::json!({ "echo": input }))
/// }
///
/// sluice_sdk::handler!(handle);
/// # fn main() {}
/// ```
///
/// The job's input JSON is parsed as `I` (an empty input counts as `null`, so `I = ()` or an
/// `Option` accepts it); if it does not fit, the job fails permanently with the parse error.
/// The output is serialized as JSON.
///
/// The raw form, `handler!(raw handle)`, skips JSON entirely for a function
/// `fn(&Job, String) -> Result<String, E>`: it gets the input text as the host sent it and
/// returns the output text, which must be JSON (the host checks).
///
/// Use the macro once per crate, at the top level.
#[macro_export]
macro_rules! handler {
    (raw $handler:expr) => {
        #[doc(hidden)]
        struct __SluiceHandler;

        impl $crate::bindings::Guest for __SluiceHandler {
            fn handle(
                job: $crate::bindings::JobInfo,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::bindings::JobError> {
                $crate::__private::run_raw(job, input, $handler)
            }
        }

        $crate::bindings::export!(__SluiceHandler with_types_in $crate::bindings);
    };
    ($handler:expr) => {
        #[doc(hidden)]
        struct __SluiceHandler;

        impl $crate::bindings::Guest for __SluiceHandler {
            fn handle(
                job: $crate::bindings::JobInfo,
                input: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::bindings::JobError> {
                $crate::__private::run(job, input, $handler)
            }
        }

        $crate::bindings::export!(__SluiceHandler with_types_in $crate::bindings);
    };
}

/// Glue for [`handler!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::bindings::{JobError, JobInfo};
    use crate::job::CurrentJob;
    use crate::{Error, Job};

    /// Run a typed handler for one job.
    pub fn run<I, O, E, F>(info: JobInfo, input: String, handler: F) -> Result<String, JobError>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Into<Error>,
        F: FnOnce(&Job, I) -> Result<O, E>,
    {
        install_panic_hook();
        let job = Job::from(info);
        let _current = CurrentJob::enter(job.id());
        dispatch(&job, &input, handler).map_err(JobError::from)
    }

    /// Run a raw handler for one job.
    pub fn run_raw<E, F>(info: JobInfo, input: String, handler: F) -> Result<String, JobError>
    where
        E: Into<Error>,
        F: FnOnce(&Job, String) -> Result<String, E>,
    {
        install_panic_hook();
        let job = Job::from(info);
        let _current = CurrentJob::enter(job.id());
        handler(&job, input).map_err(|e| JobError::from(e.into()))
    }

    /// Parse the input, call the handler, serialize the output.
    pub(crate) fn dispatch<I, O, E, F>(job: &Job, input: &str, handler: F) -> Result<String, Error>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Into<Error>,
        F: FnOnce(&Job, I) -> Result<O, E>,
    {
        let text = if input.trim().is_empty() {
            "null"
        } else {
            input
        };
        let input: I = serde_json::from_str(text)
            .map_err(|e| Error::permanent(format!("invalid job input: {e}")))?;
        let output = handler(job, input).map_err(Into::into)?;
        serde_json::to_string(&output)
            .map_err(|e| Error::permanent(format!("the job output is not JSON: {e}")))
    }

    /// Send a panic's message to the job's events before the component traps, where the job's
    /// owner can see it (stderr may go nowhere).
    fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static INSTALL: std::sync::Once = std::sync::Once::new();
            INSTALL.call_once(|| {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    let message = info
                        .payload_as_str()
                        .unwrap_or("(a non-text panic payload)");
                    let location = info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                    crate::events::log(
                        crate::events::Level::Error,
                        format!("handler panicked: {message}"),
                        &[("location", location.as_deref().unwrap_or("unknown"))],
                    );
                    previous(info);
                }));
            });
        }
    }

    #[cfg(test)]
    mod tests {
        use serde::{Deserialize, Serialize};

        use super::*;

        #[derive(Deserialize)]
        struct In {
            n: u32,
        }

        #[derive(Serialize)]
        struct Out {
            doubled: u32,
            job: String,
        }

        fn double(job: &Job, input: In) -> Result<Out, Error> {
            if input.n == 0 {
                return Err(Error::retryable("zero"));
            }
            Ok(Out {
                doubled: input.n * 2,
                job: job.id().to_owned(),
            })
        }

        #[test]
        fn typed_round_trip() {
            let job = Job::new("j9");
            assert_eq!(
                dispatch(&job, r#"{"n": 21}"#, double).unwrap(),
                r#"{"doubled":42,"job":"j9"}"#
            );
        }

        #[test]
        fn malformed_input_is_permanent_and_names_the_problem() {
            let job = Job::new("j");
            let e = dispatch(&job, r#"{"m": 1}"#, double).unwrap_err();
            assert!(!e.is_retryable());
            assert!(
                e.message()
                    .starts_with("invalid job input: missing field `n`"),
                "{e}"
            );
            let e = dispatch(&job, "{not json", double).unwrap_err();
            assert!(e.message().starts_with("invalid job input: "), "{e}");
        }

        #[test]
        fn handler_errors_pass_through() {
            let e = dispatch(&Job::new("j"), r#"{"n": 0}"#, double).unwrap_err();
            assert_eq!(e, Error::retryable("zero"));
        }

        #[test]
        fn empty_input_is_null_and_errors_convert() {
            let out = dispatch(&Job::new("j"), "  ", |_: &Job, i: Option<u32>| {
                Ok::<_, Error>(i.is_none())
            })
            .unwrap();
            assert_eq!(out, "true");
            // A handler may return any error that converts into `Error`.
            let e = dispatch(&Job::new("j"), "\"x\"", |_: &Job, s: String| {
                serde_json::from_str::<u32>(&s)
            });
            assert!(!e.unwrap_err().is_retryable());
        }
    }
}
