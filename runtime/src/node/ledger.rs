//! The budget ledger in the store, so every node sharing a database enforces one budget and
//! spend survives restarts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use sluice_gateway::budget::lease::{Slice, SliceSource};
use sluice_gateway::budget::{BudgetKey, BudgetLine, Ledger, LedgerError, Level, Refusal};
use sluice_store::{JobStore, LedgerLevel, LedgerLine, SliceRequest};

/// [`Ledger`] over the store's budget tables.
pub struct StoreLedger {
    store: Arc<dyn JobStore>,
    /// How long a hold outlives its call if the node dies before settling it.
    hold_ttl: Duration,
}

impl StoreLedger {
    /// A ledger over `store`; holds left by a dead node expire after `hold_ttl`.
    pub fn new(store: Arc<dyn JobStore>, hold_ttl: Duration) -> Self {
        StoreLedger { store, hold_ttl }
    }
}

fn line_of(l: &BudgetLine) -> LedgerLine {
    LedgerLine {
        budget: l.key.budget.clone(),
        scope: l.key.scope.clone(),
        window: l.key.window.clone(),
        limit_micros: l.limit_micros,
    }
}

fn lines_of(lines: &[BudgetLine]) -> Vec<LedgerLine> {
    lines.iter().map(line_of).collect()
}

fn level_of(l: LedgerLevel) -> Level {
    Level {
        spent_micros: l.spent_micros,
        reserved_micros: l.reserved_micros,
    }
}

fn unavailable(e: sluice_store::StoreError) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

/// Hold ids are shared by every node: random 62-bit ids make a collision negligible without a
/// round trip for a sequence.
fn new_hold_id() -> i64 {
    rand::rng().random_range(1..i64::MAX >> 1)
}

#[async_trait]
impl Ledger for StoreLedger {
    async fn reserve(&self, lines: &[BudgetLine], amount: u64) -> Result<u64, LedgerError> {
        let id = new_hold_id();
        match self
            .store
            .ledger_reserve(id, &lines_of(lines), amount, self.hold_ttl)
            .await
            .map_err(unavailable)?
        {
            Ok(()) => Ok(id as u64),
            Err(refusal) => {
                let line = &lines[refusal.line];
                Err(LedgerError::Refused(Refusal {
                    key: line.key.clone(),
                    limit_micros: line.limit_micros,
                    spent_micros: refusal.level.spent_micros,
                    reserved_micros: refusal.level.reserved_micros,
                    requested_micros: amount,
                }))
            }
        }
    }

    async fn settle(
        &self,
        id: u64,
        lines: &[BudgetLine],
        _reserved: u64,
        actual: u64,
    ) -> Result<Vec<Level>, LedgerError> {
        let levels = self
            .store
            .ledger_settle(id as i64, &lines_of(lines), actual)
            .await
            .map_err(unavailable)?;
        Ok(levels.into_iter().map(level_of).collect())
    }

    async fn mark_alert(&self, key: &BudgetKey, marker: &str) -> Result<bool, LedgerError> {
        self.store
            .ledger_mark_alert(&key.budget, &key.scope, &key.window, marker)
            .await
            .map_err(unavailable)
    }

    async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError> {
        self.store
            .ledger_level(&key.budget, &key.scope, &key.window)
            .await
            .map(level_of)
            .map_err(unavailable)
    }
}

/// Budget slices from the store's ledger tables, for a
/// [`LeasedLedger`](sluice_gateway::budget::lease::LeasedLedger): every node sharing the
/// database takes its slices from the same windows that per-call holds use.
pub struct StoreSlices {
    store: Arc<dyn JobStore>,
}

impl StoreSlices {
    /// Slices of the budgets in `store`.
    pub fn new(store: Arc<dyn JobStore>) -> Self {
        StoreSlices { store }
    }
}

#[async_trait]
impl SliceSource for StoreSlices {
    async fn take(
        &self,
        line: &BudgetLine,
        need: u64,
        want: u64,
        share: u64,
    ) -> Result<Result<Slice, Level>, LedgerError> {
        let slice = SliceRequest { need, want, share };
        Ok(
            match self
                .store
                .lease_take(&line_of(line), slice)
                .await
                .map_err(unavailable)?
            {
                Ok(grant) => Ok(Slice {
                    granted_micros: grant.granted_micros,
                    level: level_of(grant.level),
                }),
                Err(level) => Err(level_of(level)),
            },
        )
    }

    async fn give_back(&self, line: &BudgetLine, unused: u64) -> Result<Level, LedgerError> {
        self.store
            .lease_return(&line_of(line), unused)
            .await
            .map(level_of)
            .map_err(unavailable)
    }

    async fn mark_alert(&self, key: &BudgetKey, marker: &str) -> Result<bool, LedgerError> {
        self.store
            .ledger_mark_alert(&key.budget, &key.scope, &key.window, marker)
            .await
            .map_err(unavailable)
    }

    async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError> {
        self.store
            .ledger_level(&key.budget, &key.scope, &key.window)
            .await
            .map(level_of)
            .map_err(unavailable)
    }
}
