//! What the store keeps besides jobs for the control plane: tenants' budget rules, the shared
//! budget ledger, the list of live nodes, and the webhook outbox.
//!
//! These sit behind [`ControlStore`], a supertrait of [`crate::JobStore`], so every store has
//! them and a node reaches them through the same `Arc<dyn JobStore>`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Result, StoreError};

/// A tenant's budget rule as stored. `spec` is the gateway's rule, kept as JSON: the store does
/// not interpret it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetRecord {
    /// The owning tenant.
    pub tenant: String,
    /// The rule's name, unique within the tenant.
    pub name: String,
    /// The rule.
    pub spec: Value,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
}

/// One budget window a reservation touches, with its limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LedgerLine {
    /// The budget's ledger name.
    pub budget: String,
    /// What is counted (`tenant:acme`, `tag:user=alice`, …).
    pub scope: String,
    /// The period window (`2026-11-27`, `2026-11`, `total`).
    pub window: String,
    /// Hard limit, micro-dollars.
    pub limit_micros: u64,
}

/// A budget window's money.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerLevel {
    /// Spent, micro-dollars.
    pub spent_micros: u64,
    /// Held by calls in flight (unexpired holds), micro-dollars.
    pub reserved_micros: u64,
}

/// A reservation that did not fit: which line refused and how full it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerRefusal {
    /// Index into the lines passed to [`ControlStore::ledger_reserve`].
    pub line: usize,
    /// That window's money before the refused reservation.
    pub level: LedgerLevel,
}

/// One budget window's state, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerWindow {
    /// What is counted.
    pub scope: String,
    /// The period window.
    pub window: String,
    /// Its money.
    #[serde(flatten)]
    pub level: LedgerLevel,
}

/// A node that announced itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Unique per process.
    pub id: String,
    /// The machine's host name.
    pub hostname: String,
    /// Sluice version.
    pub version: String,
    /// Roles it runs (`api,worker`).
    pub roles: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen: DateTime<Utc>,
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Out of attempts (or refused outright): the webhook dead letter.
    Dead,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "dead" => Ok(DeliveryStatus::Dead),
            other => Err(StoreError::Invalid(format!(
                "unknown delivery status `{other}` (pending, delivered, dead)"
            ))),
        }
    }
}

/// A webhook delivery in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Row id (ordering and API id).
    pub id: i64,
    /// Sent as `Sluice-Delivery`, the same on every attempt, for receiver-side dedupe.
    pub delivery_id: Uuid,
    /// The tenant whose secret signs it.
    pub tenant: String,
    /// The job it reports on; `None` for non-job events (budget alerts).
    pub job_id: Option<Uuid>,
    /// The target.
    pub url: String,
    /// `job.completed`, `job.dead`, `job.cancelled`, `budget.alert`.
    pub event: String,
    /// The body, for non-job events; job bodies are built from the job at delivery time.
    pub payload: Option<Value>,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: DateTime<Utc>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered or given up.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A delivery to queue (job deliveries are queued by the store itself when a job finishes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDelivery {
    /// The tenant whose secret signs it.
    pub tenant: String,
    /// The job, if it is about one.
    pub job_id: Option<Uuid>,
    /// The target.
    pub url: String,
    /// The event name.
    pub event: String,
    /// The body.
    pub payload: Option<Value>,
}

/// What became of a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Accepted by the receiver.
    Delivered,
    /// Failed; try again at `at`.
    Retry {
        /// When.
        at: DateTime<Utc>,
        /// Why it failed.
        error: String,
    },
    /// Failed for good.
    Dead {
        /// Why.
        error: String,
    },
}

/// Budget rules, the budget ledger, nodes and the webhook outbox.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Create or replace `tenant`'s budget rule `name`.
    async fn put_budget(&self, tenant: &str, name: &str, spec: &Value) -> Result<BudgetRecord>;

    /// `tenant`'s budget rules by name, or every tenant's when `None`.
    async fn list_budgets(&self, tenant: Option<&str>) -> Result<Vec<BudgetRecord>>;

    /// Remove a rule; false when there was none. Its ledger history stays.
    async fn delete_budget(&self, tenant: &str, name: &str) -> Result<bool>;

    /// Atomically: if every line has room (spent + unexpired holds + `amount` ≤ limit), add a
    /// hold `hold` of `amount` to each, expiring after `ttl`; otherwise hold nothing and say
    /// which line refused. Concurrent reservations from any node cannot overshoot together.
    async fn ledger_reserve(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        amount: u64,
        ttl: Duration,
    ) -> Result<std::result::Result<(), LedgerRefusal>>;

    /// Drop hold `hold` and add `actual` to the spend of each line; the levels after, in line
    /// order.
    async fn ledger_settle(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        actual: u64,
    ) -> Result<Vec<LedgerLevel>>;

    /// Record that alert `marker` fired for a window; true the first time only.
    async fn ledger_mark_alert(
        &self,
        budget: &str,
        scope: &str,
        window: &str,
        marker: &str,
    ) -> Result<bool>;

    /// One window's money.
    async fn ledger_level(&self, budget: &str, scope: &str, window: &str) -> Result<LedgerLevel>;

    /// Every window of a budget that has spend or holds, most recently changed first.
    async fn ledger_windows(&self, budget: &str, limit: u32) -> Result<Vec<LedgerWindow>>;

    /// Announce (or refresh) this node; returns how many nodes running the worker role (the
    /// ones that call providers) were seen within `ttl`, at least 1.
    async fn node_heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<u32>;

    /// Remove this node (clean shutdown), so the others take its share at once.
    async fn node_leave(&self, id: &str) -> Result<()>;

    /// Nodes seen within `ttl`.
    async fn list_nodes(&self, ttl: Duration) -> Result<Vec<NodeRecord>>;

    /// Queue a delivery, due now.
    async fn webhook_enqueue(&self, delivery: &NewDelivery) -> Result<WebhookDelivery>;

    /// Take up to `limit` due pending deliveries, hiding them from other claimers for `lease`.
    async fn webhook_claim(&self, limit: u32, lease: Duration) -> Result<Vec<WebhookDelivery>>;

    /// Record an attempt's result (counts the attempt).
    async fn webhook_finish(&self, id: i64, result: &DeliveryResult) -> Result<()>;

    /// `tenant`'s deliveries, newest first, optionally of one status, ids below `before`.
    async fn webhook_list(
        &self,
        tenant: &str,
        status: Option<DeliveryStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>>;

    /// One delivery of `tenant`.
    async fn webhook_get(&self, tenant: &str, id: i64) -> Result<Option<WebhookDelivery>>;

    /// Put a dead delivery of `tenant` back to pending, due now; false when there is no such
    /// dead delivery.
    async fn webhook_retry(&self, tenant: &str, id: i64) -> Result<bool>;

    /// Drop expired holds, long-gone nodes and delivered deliveries older than `retention`.
    async fn purge_control(&self, retention: Duration) -> Result<u64>;
}
