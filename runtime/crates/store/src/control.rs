//! What the store keeps besides jobs for the control plane: tenants' budget rules, the shared
//! budget ledger, the list of live nodes, and the webhook outbox.
//!
//! These sit behind [`ControlStore`], a supertrait of [`crate::JobStore`], so every store has
//! them and a node reaches them through the same `Arc<dyn JobStore>`. The section is written
//! once, at the end of this file, over `ControlSql`: a backend supplies the SQL text that
//! differs and the ledger's reservation and settlement.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::rows::{self, Columns, delivery_cols};
use crate::sql::{Arg, On, Sql};
use crate::util::micros;

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

// ---------------------------------------------------------------------------------------------
// The section written once
// ---------------------------------------------------------------------------------------------

/// The control statements, one set per backend (a default is the SQL both run). Each names
/// the arguments it binds. The ledger's reservation and settlement differ as a whole
/// (Postgres: one call of a SQL function that locks the windows in order; SQLite: a check and
/// holds inside the single writer's transaction), so a backend writes those three in full.
#[async_trait]
pub(crate) trait ControlSql: Sql {
    /// Create or replace rule `$2` of tenant `$1` with spec `$3` (`$4` now), returning the
    /// columns [`rows::budget`] reads.
    const PUT_BUDGET: &'static str;
    /// Rules of tenant `$1` (every tenant's when NULL), by tenant, then name.
    const BUDGETS: &'static str;
    /// Delete rule `$2` of tenant `$1`.
    const DELETE_BUDGET: &'static str = "DELETE FROM budget_rules WHERE tenant = $1 AND name = $2";
    /// Record alert `$4` for window `$1`/`$2`/`$3` unless recorded (`$5` now).
    const MARK_ALERT: &'static str;
    /// `scope, win, spent_micros, held` of budget `$1`'s windows, most recently changed
    /// first, at most `$2` (`$3` now).
    const WINDOWS: &'static str;
    /// Announce node `$1` (hostname `$2`, version `$3`, roles `$4`, started `$5`), seen now
    /// (`$6`).
    const NODE_SEEN: &'static str;
    /// `n`: nodes with the worker role seen within `$1` ms of now (`$2`).
    const LIVE_WORKERS: &'static str;
    /// Remove node `$1`.
    const NODE_LEAVE: &'static str = "DELETE FROM nodes WHERE id = $1";
    /// Nodes seen within `$1` ms of now (`$2`), oldest first.
    const NODES: &'static str;
    /// Queue a delivery for tenant `$1`, job `$2`, to `$3`: event `$4`, payload `$5`, with
    /// delivery id `$6`, due now (`$7`); returning the columns [`rows::delivery`] reads.
    const ENQUEUE_DELIVERY: &'static str;
    /// Take up to `$1` due pending deliveries for `$2` ms (`$3` now); returning
    /// the columns [`rows::delivery`] reads.
    const CLAIM_DELIVERIES: &'static str;
    /// Record attempt of delivery `$1`: status `$2`, next attempt `$3` and error `$4` when
    /// given (`$5` now).
    const FINISH_DELIVERY: &'static str;
    /// Deliveries of tenant `$1`, of status `$2` and id below `$3` when given, newest first,
    /// at most `$4`.
    const DELIVERIES: &'static str;
    /// Delivery `$2` of tenant `$1`.
    const DELIVERY: &'static str = concat!(
        "SELECT ",
        delivery_cols!(),
        " FROM webhook_deliveries WHERE tenant = $1 AND id = $2"
    );
    /// Put dead delivery `$2` of tenant `$1` back to pending, due now (`$3`).
    const RETRY_DELIVERY: &'static str;
    /// Drop expired holds (`$1` now).
    const PURGE_HOLDS: &'static str;
    /// Drop nodes not seen for a day (`$1` now).
    const PURGE_NODES: &'static str;
    /// Drop deliveries delivered more than `$1` ms before now (`$2`).
    const PURGE_DELIVERIES: &'static str;

    /// [`ControlStore::ledger_reserve`].
    async fn reserve(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        amount: u64,
        ttl: Duration,
    ) -> Result<std::result::Result<(), LedgerRefusal>>;
    /// [`ControlStore::ledger_settle`].
    async fn settle(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        actual: u64,
    ) -> Result<Vec<LedgerLevel>>;
    /// [`ControlStore::ledger_level`] of one line.
    async fn level(&self, line: &LedgerLine) -> Result<LedgerLevel>;
}

/// A budget window's row.
fn window<R: Columns>(r: &R) -> Result<LedgerWindow> {
    Ok(LedgerWindow {
        scope: r.text("scope")?,
        window: r.text("win")?,
        level: LedgerLevel {
            spent_micros: micros(r.int("spent_micros")?),
            reserved_micros: micros(r.int("held")?),
        },
    })
}

#[async_trait]
impl<S: ControlSql> ControlStore for S {
    async fn put_budget(&self, tenant: &str, name: &str, spec: &Value) -> Result<BudgetRecord> {
        let spec = spec.to_string();
        let args = [
            Arg::Text(tenant),
            Arg::Text(name),
            Arg::Json(&spec),
            Arg::Now,
        ];
        let row = self.row(On::Write, Self::PUT_BUDGET, &args).await?;
        rows::budget(&row.ok_or(StoreError::Database(sqlx::Error::RowNotFound))?)
    }

    async fn list_budgets(&self, tenant: Option<&str>) -> Result<Vec<BudgetRecord>> {
        let found = self
            .rows(On::Read, Self::BUDGETS, &[Arg::OptText(tenant)])
            .await?;
        found.iter().map(rows::budget).collect()
    }

    async fn delete_budget(&self, tenant: &str, name: &str) -> Result<bool> {
        let args = [Arg::Text(tenant), Arg::Text(name)];
        Ok(self.exec(On::Write, Self::DELETE_BUDGET, &args).await? > 0)
    }

    async fn ledger_reserve(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        amount: u64,
        ttl: Duration,
    ) -> Result<std::result::Result<(), LedgerRefusal>> {
        if lines.is_empty() {
            return Ok(Ok(()));
        }
        self.reserve(hold, lines, amount, ttl).await
    }

    async fn ledger_settle(
        &self,
        hold: i64,
        lines: &[LedgerLine],
        actual: u64,
    ) -> Result<Vec<LedgerLevel>> {
        self.settle(hold, lines, actual).await
    }

    async fn ledger_mark_alert(
        &self,
        budget: &str,
        scope: &str,
        window: &str,
        marker: &str,
    ) -> Result<bool> {
        let (b, s, w) = (Arg::Text(budget), Arg::Text(scope), Arg::Text(window));
        let args = [b, s, w, Arg::Text(marker), Arg::Now];
        Ok(self.exec(On::Write, Self::MARK_ALERT, &args).await? > 0)
    }

    async fn ledger_level(&self, budget: &str, scope: &str, window: &str) -> Result<LedgerLevel> {
        let line = LedgerLine {
            budget: budget.into(),
            scope: scope.into(),
            window: window.into(),
            limit_micros: 0,
        };
        self.level(&line).await
    }

    async fn ledger_windows(&self, budget: &str, limit: u32) -> Result<Vec<LedgerWindow>> {
        let args = [Arg::Text(budget), Arg::Int(i64::from(limit)), Arg::Now];
        let found = self.rows(On::Read, Self::WINDOWS, &args).await?;
        found.iter().map(window).collect()
    }

    async fn node_heartbeat(&self, node: &NodeRecord, ttl: Duration) -> Result<u32> {
        let mut tx = self.begin().await?;
        let args = [
            Arg::Text(&node.id),
            Arg::Text(&node.hostname),
            Arg::Text(&node.version),
            Arg::Text(&node.roles),
            Arg::Time(node.started_at),
            Arg::Now,
        ];
        self.exec_in(&mut tx, Self::NODE_SEEN, &args).await?;
        let args = [Arg::Millis(Some(ttl)), Arg::Now];
        let found = self.rows_in(&mut tx, Self::LIVE_WORKERS, &args).await?;
        let n = found.first().map(|r| r.int("n")).transpose()?.unwrap_or(0);
        self.commit(tx).await?;
        Ok(n.clamp(1, i64::from(u32::MAX)) as u32)
    }

    async fn node_leave(&self, id: &str) -> Result<()> {
        self.exec(On::Write, Self::NODE_LEAVE, &[Arg::Text(id)])
            .await?;
        Ok(())
    }

    async fn list_nodes(&self, ttl: Duration) -> Result<Vec<NodeRecord>> {
        let args = [Arg::Millis(Some(ttl)), Arg::Now];
        let found = self.rows(On::Read, Self::NODES, &args).await?;
        found.iter().map(rows::node).collect()
    }

    async fn webhook_enqueue(&self, d: &NewDelivery) -> Result<WebhookDelivery> {
        let payload = d.payload.as_ref().map(Value::to_string);
        let args = [
            Arg::Text(&d.tenant),
            Arg::OptId(d.job_id),
            Arg::Text(&d.url),
            Arg::Text(&d.event),
            Arg::OptJson(payload.as_deref()),
            Arg::Id(Uuid::new_v4()),
            Arg::Now,
        ];
        let row = self.row(On::Write, Self::ENQUEUE_DELIVERY, &args).await?;
        rows::delivery(&row.ok_or(StoreError::Database(sqlx::Error::RowNotFound))?)
    }

    async fn webhook_claim(&self, limit: u32, lease: Duration) -> Result<Vec<WebhookDelivery>> {
        let args = [
            Arg::Int(i64::from(limit)),
            Arg::Millis(Some(lease)),
            Arg::Now,
        ];
        let found = self.rows(On::Write, Self::CLAIM_DELIVERIES, &args).await?;
        found.iter().map(rows::delivery).collect()
    }

    async fn webhook_finish(&self, id: i64, result: &DeliveryResult) -> Result<()> {
        let (status, at, error) = match result {
            DeliveryResult::Delivered => ("delivered", None, None),
            DeliveryResult::Retry { at, error } => ("pending", Some(*at), Some(error.as_str())),
            DeliveryResult::Dead { error } => ("dead", None, Some(error.as_str())),
        };
        let args = [
            Arg::Int(id),
            Arg::Text(status),
            Arg::OptTime(at),
            Arg::OptText(error),
            Arg::Now,
        ];
        self.exec(On::Write, Self::FINISH_DELIVERY, &args).await?;
        Ok(())
    }

    async fn webhook_list(
        &self,
        tenant: &str,
        status: Option<DeliveryStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        let args = [
            Arg::Text(tenant),
            Arg::OptText(status.map(DeliveryStatus::as_str)),
            Arg::OptInt(before),
            Arg::Int(i64::from(limit)),
        ];
        let found = self.rows(On::Read, Self::DELIVERIES, &args).await?;
        found.iter().map(rows::delivery).collect()
    }

    async fn webhook_get(&self, tenant: &str, id: i64) -> Result<Option<WebhookDelivery>> {
        let args = [Arg::Text(tenant), Arg::Int(id)];
        let row = self.row(On::Read, Self::DELIVERY, &args).await?;
        row.as_ref().map(rows::delivery).transpose()
    }

    async fn webhook_retry(&self, tenant: &str, id: i64) -> Result<bool> {
        let args = [Arg::Text(tenant), Arg::Int(id), Arg::Now];
        Ok(self.exec(On::Write, Self::RETRY_DELIVERY, &args).await? > 0)
    }

    async fn purge_control(&self, retention: Duration) -> Result<u64> {
        let mut n = self.exec(On::Write, Self::PURGE_HOLDS, &[Arg::Now]).await?;
        n += self.exec(On::Write, Self::PURGE_NODES, &[Arg::Now]).await?;
        let args = [Arg::Millis(Some(retention)), Arg::Now];
        n += self.exec(On::Write, Self::PURGE_DELIVERIES, &args).await?;
        Ok(n)
    }
}
