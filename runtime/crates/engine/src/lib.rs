//! Sluice's sandboxed WebAssembly engine.
//!
//! Loads plugin components (validated against the `sluice:plugin` world, compiled once per
//! content digest, optionally cached on disk) and runs one job attempt per fresh instance,
//! with a memory cap and a deadline enforced by epoch interruption and an outer timeout,
//! and a named bound on everything the guest sends the host (events, output, model calls,
//! reported costs, host-call arguments: see [`limits`]).
//! Host imports forward to the backend traits of `sluice-types`, so the same engine runs on
//! in-memory backends or on the real store and gateway.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_engine::{Engine, EngineConfig, JobLimits, memory};
//! use sluice_types::{CallContext, JobInfo};
//!
//! let engine = Engine::new(EngineConfig::default())?;
//! let plugin = engine.load(&std::fs::read("noop.wasm")?)?;
//! let job = JobInfo {
//!     id: uuid::Uuid::new_v4(), plugin: "noop".into(), tenant: "local".into(),
//!     attempt: 1, max_attempts: 1, idempotency_key: None, tags: Default::default(),
//!     deadline_unix_ms: sluice_types::job::now_unix_ms() + 10_000,
//! };
//! let ctx = CallContext::new(job, plugin.digest());
//! let output = engine
//!     .run(&plugin, ctx, r#"{"hello":"world"}"#, JobLimits::default(), memory::services())
//!     .await?;
//! println!("{output}");
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod bindings;
mod component;
mod config;
mod engine;
mod error;
mod host;
pub mod limits;
pub mod memory;
mod run;

pub use component::{Plugin, digest_of};
pub use config::{DEFAULT_KEEP_RESIDENT_BYTES, EngineConfig};
pub use engine::Engine;
pub use error::{LoadError, RunError};
pub use limits::JobLimits;
