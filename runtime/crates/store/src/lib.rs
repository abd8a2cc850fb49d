//! Sluice's durable job queue and everything stored next to it: plugins and their components,
//! the per-job journal and effects, key/value state, usage records, job events and API keys.
//!
//! One interface, [`JobStore`] (a trait per section: [`QueueStore`], [`PluginStore`],
//! [`RecordStore`], [`ControlStore`], state and effects), with two implementations:
//! [`PgStore`] (Postgres; production, shared by several nodes) and [`SqliteStore`] (SQLite;
//! embedded, one node). [`open`] picks by URL and applies the embedded migrations. The
//! queue's state machine is written down in `docs/job-states.md` and its transitions are
//! written once, in `flows`, over a small per-backend statement interface; the other sections
//! (`plugins`, `records`, `state`, `control`, `stats`) are written once too, over the SQL text
//! each backend supplies (`sql`). `pg/` and `sqlite/` hold that SQL and the hot paths that
//! differ whole (claim, batched completion, bulk enqueue, `LISTEN`). The conformance suite in
//! `tests/conformance.rs` runs every operation against both backends.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use sluice_store::{ClaimRequest, NewJob, PluginSettings, StoreConfig, open};
//!
//! let store = open("sqlite::memory:", StoreConfig::default()).await?;
//! let digest = store.put_component(b"\0asm...").await?;
//! store.create_plugin_version("acme", "summarize", &digest, &PluginSettings::default(), true).await?;
//!
//! let job = store.enqueue(NewJob::new("acme", "summarize", serde_json::json!({"text": "hi"}))).await?;
//! let claimed = store.claim(&ClaimRequest::new("worker-1", 8, Duration::from_secs(30))).await?;
//! assert_eq!(claimed[0].id, job.id);
//! store.complete(claimed[0].lease, &serde_json::json!({"summary": "hi"})).await?;
//! # Ok::<(), sluice_store::StoreError>(())
//! # }).unwrap();
//! ```
#![deny(missing_docs)]

#[macro_use]
mod cols;
mod config;
mod control;
mod error;
mod flows;
mod lease;
mod machine;
mod migrations;
mod model;
mod pg;
mod plugins;
mod records;
mod rows;
mod sql;
mod sqlite;
mod state;
mod stats;
mod store;
mod transact;
mod util;

use std::sync::Arc;

pub use config::{BackoffPolicy, StoreConfig};
pub use control::*;
pub use error::{Result, StoreError};
pub use lease::{LeaseGrant, LeaseStore, SliceRequest};
pub use model::*;
pub use pg::{NOTIFY_CHANNEL, PgStore};
pub use sqlite::SqliteStore;
pub use store::{Backend, JobStore, PluginStore, QueueStore, RecordStore, WorkSignal};
pub use util::{MAX_KEY_BYTES, QUOTA_COUNT_TTL, component_digest, has_nul};

/// Open the store at `url` and apply migrations: `postgres://…` / `postgresql://…` for
/// Postgres, `sqlite://path`, `sqlite:path` or `sqlite::memory:` for SQLite.
pub async fn open(url: &str, config: StoreConfig) -> Result<Arc<dyn JobStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, config).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, config).await?))
    } else {
        Err(StoreError::Invalid(format!(
            "unsupported database URL `{}`: use postgres://… or sqlite://path (or sqlite::memory:)",
            redact(url)
        )))
    }
}

/// A URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_scheme_is_a_clear_error_without_the_password() {
        let err = open("mysql://user:secret@db/x", StoreConfig::default())
            .await
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("mysql://***@db/x") && !msg.contains("secret"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn memory_sqlite_opens() {
        let store = open("sqlite::memory:", StoreConfig::default())
            .await
            .unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
    }
}
