//! A write transaction on either backend, for the flows written once over per-backend
//! statements (`flows`, `plugins`): the flow begins and commits, the statements run inside.

use async_trait::async_trait;

use crate::error::Result;

/// How a backend opens and commits a write transaction.
#[async_trait]
pub(crate) trait Transact: Send + Sync {
    /// A write transaction; dropped without [`Transact::commit`], it rolls back.
    type Tx: Send;

    /// Start a write transaction (on SQLite, `BEGIN IMMEDIATE` on the single writer).
    async fn begin(&self) -> Result<Self::Tx>;
    /// Commit it.
    async fn commit(&self, tx: Self::Tx) -> Result<()>;
}
