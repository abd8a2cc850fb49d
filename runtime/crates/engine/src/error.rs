//! Errors at the engine's boundary: loading a component, and running a job.

use sluice_types::JobError;

/// Why an uploaded component was rejected. Each variant says which check failed and why,
/// in words meant for the person who uploaded it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly binary: the bytes do not start with \\0asm")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the handler with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// Malformed or unsupported component.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component that does not implement the `sluice:plugin/plugin` world.
    #[error("component does not target the sluice:plugin@0.1.0 `plugin` world: {0}")]
    WrongWorld(String),
    /// Internal failure (e.g. the artifact cache could not be written).
    #[error("engine error: {0}")]
    Internal(String),
}

impl LoadError {
    /// A short machine-readable kind for API responses and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::NotWasm => "not_wasm",
            LoadError::CoreModule => "core_module",
            LoadError::Invalid(_) => "invalid_component",
            LoadError::WrongWorld(_) => "wrong_world",
            LoadError::Internal(_) => "internal",
        }
    }
}

/// How one job attempt ended when it did not produce output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The handler returned an error value.
    #[error("{0}")]
    Handler(JobError),
    /// The handler panicked (Rust `panic!`), with its message when it could be read.
    #[error("handler panicked: {0}")]
    Panic(String),
    /// The handler trapped (e.g. `unreachable`, out-of-bounds access).
    #[error("handler trapped: {0}")]
    Trap(String),
    /// The attempt ran past its deadline (in guest code or waiting in a host call).
    #[error("handler exceeded its time limit of {0} ms")]
    Timeout(u64),
    /// The handler tried to grow memory past its cap.
    #[error(
        "handler exceeded its memory limit of {limit} bytes (tried to grow to {requested} bytes)"
    )]
    MemoryLimit {
        /// The cap.
        limit: usize,
        /// The size it asked for.
        requested: usize,
    },
    /// The job was cancelled while running.
    #[error("job cancelled while running")]
    Cancelled,
    /// The handler returned output that is not valid JSON.
    #[error("handler returned output that is not valid JSON: {0}")]
    BadOutput(String),
    /// The host could not set up the instance (e.g. the instance pool is exhausted).
    #[error("could not start the handler: {0}")]
    Instantiate(String),
    /// The handler returned more output than
    /// [`JobLimits::max_output_bytes`](crate::JobLimits::max_output_bytes). Measured as soon
    /// as it is copied from the guest (never more than the job's memory cap), before it is
    /// parsed or stored.
    #[error("handler output of {size} bytes exceeds the limit of {limit} bytes")]
    OutputTooLarge {
        /// The cap.
        limit: usize,
        /// The output's size.
        size: usize,
    },
    /// One host call's arguments exceeded
    /// [`JobLimits::max_hostcall_bytes`](crate::JobLimits::max_hostcall_bytes): wasmtime
    /// stopped copying them out of the guest when the call's hostcall fuel ran out, and the
    /// attempt trapped.
    #[error(
        "handler passed more than {limit} bytes of arguments to one host call \
         (a string or list too large, or a list of many entries)"
    )]
    HostCallTooLarge {
        /// The cap.
        limit: usize,
    },
}

impl RunError {
    /// A short machine-readable kind, recorded with the attempt.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Handler(JobError::Retryable { .. }) => "retryable",
            RunError::Handler(JobError::Permanent { .. }) => "permanent",
            RunError::Panic(_) => "panic",
            RunError::Trap(_) => "trap",
            RunError::Timeout(_) => "timeout",
            RunError::MemoryLimit { .. } => "memory_limit",
            RunError::Cancelled => "cancelled",
            RunError::BadOutput(_) => "bad_output",
            RunError::Instantiate(_) => "instantiate",
            RunError::OutputTooLarge { .. } => "output_too_large",
            RunError::HostCallTooLarge { .. } => "hostcall_too_large",
        }
    }

    /// How the queue should treat this failure. Traps, panics, timeouts and memory
    /// exhaustion fail the attempt (retried while attempts remain, like an activity failure
    /// in Temporal); output that is not JSON, output over its cap and arguments over theirs
    /// are contract violations retrying won't fix.
    pub fn to_job_error(&self) -> JobError {
        match self {
            RunError::Handler(e) => e.clone(),
            RunError::BadOutput(_)
            | RunError::Cancelled
            | RunError::OutputTooLarge { .. }
            | RunError::HostCallTooLarge { .. } => JobError::permanent(self.to_string()),
            _ => JobError::retryable(self.to_string()),
        }
    }
}
