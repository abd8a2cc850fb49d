//! The store's error type.

/// Why a store operation failed.
///
/// Lease loss is not an error: finalizing methods return [`crate::Finalized::LeaseLost`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A named thing does not exist (plugin, plugin version, component, job, …).
    #[error("{what} not found: {name}")]
    NotFound {
        /// What kind of thing (`plugin`, `component`, …).
        what: &'static str,
        /// Which one, as the caller named it.
        name: String,
    },
    /// An idempotency key is already used by a job with a different body.
    #[error(
        "idempotency key `{key}` was already used for a different request (job {job_id}); \
         use a new key or resend the original body"
    )]
    Conflict {
        /// The key.
        key: String,
        /// The job the key belongs to.
        job_id: uuid::Uuid,
    },
    /// A job's input is larger than [`crate::StoreConfig::max_input_bytes`].
    #[error("job input is {size} bytes; the limit is {limit} bytes")]
    InputTooLarge {
        /// Serialized size of the input.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A tenant already has as many jobs waiting as it may
    /// ([`crate::StoreConfig::max_waiting_jobs_per_tenant`]).
    #[error(
        "tenant `{tenant}` has {waiting} jobs waiting or running; the limit is {limit}: \
         let some finish before submitting more"
    )]
    QuotaExceeded {
        /// The tenant.
        tenant: String,
        /// Jobs it has waiting or running (at most a second old).
        waiting: u64,
        /// The limit.
        limit: u64,
    },
    /// The request cannot be carried out as asked (bad URL, bad argument, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed (connection lost, pool timeout,
    /// serialization failure, database restarting). Callers that retry must only retry
    /// operations that are safe to repeat: every lease-guarded operation is.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => {
                    let code = db.code();
                    let code = code.as_deref().unwrap_or("");
                    // 40001 serialization_failure, 40P01 deadlock, 57P0x admin/crash shutdown,
                    // 08xxx connection exceptions, 53300 too many connections; SQLite
                    // 5/6 (busy/locked) and their extended codes.
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || matches!(code, "40001" | "40P01" | "53300")
                        || matches!(code, "5" | "6" | "261" | "262" | "517")
                        || db.message().contains("terminating connection")
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// Whether the database could not write for want of room (a full disk, or a file-size
    /// limit): nothing was written, and the same write fails again until space is freed.
    /// Postgres `53100` disk_full; SQLite 13 (`SQLITE_FULL`) and 778 (`SQLITE_IOERR_WRITE`,
    /// a write the system refused, as past `RLIMIT_FSIZE`).
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("53100" | "13" | "778"))
            }
            _ => false,
        }
    }

    pub(crate) fn corrupt(what: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(what.to_string())
    }
}

impl From<sluice_types::status::UnknownStatus> for StoreError {
    fn from(e: sluice_types::status::UnknownStatus) -> Self {
        StoreError::Invalid(e.to_string())
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}
