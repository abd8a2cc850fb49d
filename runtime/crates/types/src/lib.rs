//! Plain data types and backend traits shared by Sluice's parts.
//!
//! The engine (wasmtime), the store (SQL), the gateway (providers) and the API (HTTP) all speak
//! these types, so none of them has to know the others. The WIT contract in `wit/` is the
//! source of truth for their shape; the engine converts between its generated bindings and
//! these types at the boundary.
//!
//! ```
//! use sluice_types::model::{ChatRequest, Message};
//! let req = ChatRequest::new("fast", vec![Message::user("Hello")]);
//! assert_eq!(req.fingerprint(), ChatRequest::new("fast", vec![Message::user("Hello")]).fingerprint());
//! ```

pub mod backend;
pub mod event;
pub mod job;
pub mod model;
pub mod money;
pub mod status;

pub use backend::{
    EffectError, EffectsBackend, EventSink, HostServices, ModelBackend, StateBackend, StateError,
    StateScope, UsageBackend,
};
pub use event::{JobEvent, LogLevel};
pub use job::{CallContext, JobError, JobInfo, Tags};
pub use model::ModelOutcome;
pub use money::Micros;
pub use status::JobStatus;
