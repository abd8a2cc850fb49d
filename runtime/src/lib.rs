//! Sluice: a serverless runtime for AI jobs.
//!
//! This crate is the host: configuration, the CLI, and (as they land) the worker, the HTTP
//! API and telemetry. The engine (`sluice-engine`), the store (`sluice-store`) and the model
//! gateway (`sluice-gateway`) are separate crates with narrow surfaces.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod config;
#[cfg(feature = "sim")]
pub mod loadtest;
pub mod metrics;
pub mod node;
pub mod plugin_build;
pub mod telemetry;
pub mod webhooks;
pub mod worker;
