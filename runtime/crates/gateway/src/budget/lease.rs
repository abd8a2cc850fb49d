//! A [`Ledger`] that leases budget to this node in slices.
//!
//! Per-call accounting in a shared database serialises every call of a tenant on one window
//! row (two writes per call). A [`LeasedLedger`] instead takes a *slice* of a window from its
//! [`SliceSource`] — one write, counted as spent there at once — and reserves and settles calls
//! against the slice in memory. What a slice does not cover is never spent: a call whose worst
//! case does not fit the node's slices waits for a new slice, and a slice is only granted out of
//! what is left under the limit (atomically, in the source), so any number of nodes together
//! cannot overshoot. The unspent rest is given back when a lease has been idle for a while and
//! on [`Ledger::release`] (shutdown); a node that dies first leaves it counted as spent: the
//! budget is under-used by at most one slice per window, never overshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{BudgetKey, BudgetLine, Ledger, LedgerError, Level, Refusal};

/// How slices are sized and when they are given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A slice asks for this many calls' worth (× the amount of the call that needs it).
    pub calls_per_slice: u64,
    /// A slice is at most this fraction (1/share) of what is left in the window, so other
    /// nodes still find room; near the limit slices shrink to the call that needs them.
    pub share: u64,
    /// A lease not used for this long gives its unspent rest back.
    pub idle: Duration,
    /// How often idle leases are looked for.
    pub sweep: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            calls_per_slice: 256,
            share: 8,
            idle: Duration::from_secs(2),
            sweep: Duration::from_millis(500),
        }
    }
}

/// A slice granted by a [`SliceSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    /// Micro-dollars granted, already counted as spent in the shared ledger.
    pub granted_micros: u64,
    /// The window after the grant.
    pub level: Level,
}

/// Where slices come from: the shared ledger (the store, for nodes sharing a database).
#[async_trait]
pub trait SliceSource: Send + Sync + 'static {
    /// Atomically grant `line`'s window a slice of at least `need` and at most `want`
    /// micro-dollars, and no more than `1/share` of the room left (limit − spent − held) unless
    /// `need` is more, counting it as spent; `Ok(Err(level))` when the room is less than `need`.
    async fn take(
        &self,
        line: &BudgetLine,
        need: u64,
        want: u64,
        share: u64,
    ) -> Result<Result<Slice, Level>, LedgerError>;

    /// Give back `unused` micro-dollars of earlier slices of `line`'s window.
    async fn give_back(&self, line: &BudgetLine, unused: u64) -> Result<Level, LedgerError>;

    /// As [`Ledger::mark_alert`].
    async fn mark_alert(&self, key: &BudgetKey, marker: &str) -> Result<bool, LedgerError>;

    /// A window's state in the shared ledger.
    async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError>;
}

/// This node's lease on one window.
#[derive(Debug)]
struct Lease {
    line: BudgetLine,
    /// Granted to this node and not given back.
    granted: u64,
    /// Spent by settled calls.
    spent: u64,
    /// Held by calls in flight.
    held: u64,
    /// The window in the shared ledger when last seen (its spend includes every live slice).
    seen: Level,
    last_used: Instant,
}

impl Lease {
    fn unused(&self) -> u64 {
        self.granted
            .saturating_sub(self.spent.saturating_add(self.held))
    }

    /// The window as this node knows it: the shared ledger's spend without what this node
    /// was granted and has not spent, plus this node's calls in flight as reserved.
    fn level(&self) -> Level {
        Level {
            spent_micros: self
                .seen
                .spent_micros
                .saturating_sub(self.granted.saturating_sub(self.spent)),
            reserved_micros: self.seen.reserved_micros.saturating_add(self.held),
        }
    }
}

#[derive(Default)]
struct State {
    leases: HashMap<BudgetKey, Lease>,
    next_id: u64,
}

struct Shared<S> {
    source: S,
    config: LeaseConfig,
    state: Mutex<State>,
    /// One slice is taken at a time, so calls that find their lease short together wait
    /// for one slice instead of each taking one.
    refill: tokio::sync::Mutex<()>,
}

/// A [`Ledger`] spending slices of the shared budget from memory; see the module docs.
pub struct LeasedLedger<S: SliceSource> {
    shared: Arc<Shared<S>>,
    sweeper: tokio::task::JoinHandle<()>,
}

impl<S: SliceSource> LeasedLedger<S> {
    /// A ledger over `source`. Starts a task (on the current tokio runtime) that gives back
    /// idle leases; it stops when the ledger is dropped.
    pub fn new(source: S, config: LeaseConfig) -> Self {
        let shared = Arc::new(Shared {
            source,
            config,
            state: Mutex::new(State::default()),
            refill: tokio::sync::Mutex::new(()),
        });
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&shared), config));
        LeasedLedger { shared, sweeper }
    }

    /// The slice source.
    pub fn source(&self) -> &S {
        &self.shared.source
    }
}

impl<S: SliceSource> Drop for LeasedLedger<S> {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl<S: SliceSource> Shared<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How much more each line needs for `amount` to fit its lease: `(index, shortfall)`.
    fn shortfalls(&self, st: &State, lines: &[BudgetLine], amount: u64) -> Vec<(usize, u64)> {
        lines
            .iter()
            .enumerate()
            .filter_map(|(i, line)| {
                let unused = st.leases.get(&line.key).map_or(0, Lease::unused);
                (unused < amount).then(|| (i, amount - unused))
            })
            .collect()
    }

    /// Give back the unspent rest of leases that match `pick`. A failed give-back keeps the
    /// money in the lease (counted as spent in the shared ledger: never an overshoot).
    async fn give_back(&self, pick: impl Fn(&Lease) -> bool) {
        let returns: Vec<(BudgetLine, u64)> = {
            let mut st = self.lock();
            let mut out = Vec::new();
            st.leases.retain(|_, lease| {
                if !pick(lease) {
                    return true;
                }
                let unused = lease.unused();
                if unused > 0 {
                    lease.granted -= unused;
                    lease.seen.spent_micros = lease.seen.spent_micros.saturating_sub(unused);
                    out.push((lease.line.clone(), unused));
                }
                // Settled leases are forgotten: their spend is in the shared ledger.
                lease.held > 0
            });
            out
        };
        for (line, unused) in returns {
            if let Err(e) = self.source.give_back(&line, unused).await {
                tracing::warn!(error = %e, budget = %line.key.budget, unused,
                    "giving back an unused budget slice failed; it stays counted as spent");
            }
        }
    }
}

async fn sweep<S: SliceSource>(shared: Weak<Shared<S>>, config: LeaseConfig) {
    let mut tick = tokio::time::interval(config.sweep);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        shared
            .give_back(|l| now.duration_since(l.last_used) >= config.idle)
            .await;
    }
}

#[async_trait]
impl<S: SliceSource> Ledger for LeasedLedger<S> {
    async fn reserve(&self, lines: &[BudgetLine], amount: u64) -> Result<u64, LedgerError> {
        let shared = &self.shared;
        loop {
            {
                let mut st = shared.lock();
                if shared.shortfalls(&st, lines, amount).is_empty() {
                    let now = Instant::now();
                    for line in lines {
                        if let Some(lease) = st.leases.get_mut(&line.key) {
                            lease.held = lease.held.saturating_add(amount);
                            lease.last_used = now;
                        }
                    }
                    st.next_id += 1;
                    return Ok(st.next_id);
                }
            }
            let _refill = shared.refill.lock().await;
            // Another call may have refilled while this one waited.
            let short = shared.shortfalls(&shared.lock(), lines, amount);
            for (i, need) in short {
                let line = &lines[i];
                let want = amount
                    .saturating_mul(shared.config.calls_per_slice)
                    .max(need);
                match shared
                    .source
                    .take(line, need, want, shared.config.share)
                    .await?
                {
                    Ok(slice) => {
                        let mut st = shared.lock();
                        let lease = st.leases.entry(line.key.clone()).or_insert_with(|| Lease {
                            line: line.clone(),
                            granted: 0,
                            spent: 0,
                            held: 0,
                            seen: slice.level,
                            last_used: Instant::now(),
                        });
                        lease.granted = lease.granted.saturating_add(slice.granted_micros);
                        lease.seen = slice.level;
                        lease.last_used = Instant::now();
                    }
                    Err(level) => {
                        // What this node holds unspent of the window is part of its spend in
                        // the shared ledger; report the window as a user would count it.
                        let (spent, reserved) = {
                            let st = shared.lock();
                            let mine = st.leases.get(&line.key);
                            let unused = mine.map_or(0, Lease::unused);
                            let held = mine.map_or(0, |l| l.held);
                            (
                                level
                                    .spent_micros
                                    .saturating_sub(unused.saturating_add(held)),
                                level.reserved_micros.saturating_add(held),
                            )
                        };
                        return Err(LedgerError::Refused(Refusal {
                            key: line.key.clone(),
                            limit_micros: line.limit_micros,
                            spent_micros: spent,
                            reserved_micros: reserved,
                            requested_micros: amount,
                        }));
                    }
                }
            }
        }
    }

    async fn settle(
        &self,
        _id: u64,
        lines: &[BudgetLine],
        reserved: u64,
        actual: u64,
    ) -> Result<Vec<Level>, LedgerError> {
        let mut st = self.shared.lock();
        Ok(lines
            .iter()
            .map(|line| match st.leases.get_mut(&line.key) {
                Some(lease) => {
                    lease.held = lease.held.saturating_sub(reserved);
                    lease.spent = lease.spent.saturating_add(actual);
                    lease.last_used = Instant::now();
                    lease.level()
                }
                // Not reached (a lease with calls in flight is kept); the reservation was
                // counted as spent, so nothing can overshoot.
                None => Level::default(),
            })
            .collect())
    }

    async fn mark_alert(&self, key: &BudgetKey, marker: &str) -> Result<bool, LedgerError> {
        self.shared.source.mark_alert(key, marker).await
    }

    async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError> {
        let level = self.shared.source.level(key).await?;
        let st = self.shared.lock();
        Ok(match st.leases.get(key) {
            Some(lease) => Level {
                spent_micros: level
                    .spent_micros
                    .saturating_sub(lease.granted.saturating_sub(lease.spent)),
                reserved_micros: level.reserved_micros.saturating_add(lease.held),
            },
            None => level,
        })
    }

    async fn release(&self) {
        self.shared.give_back(|_| true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared ledger in memory: grants exactly as the store does.
    #[derive(Default)]
    struct MemorySlices {
        spent: Mutex<HashMap<BudgetKey, u64>>,
        takes: std::sync::atomic::AtomicU64,
    }

    #[async_trait]
    impl SliceSource for Arc<MemorySlices> {
        async fn take(
            &self,
            line: &BudgetLine,
            need: u64,
            want: u64,
            share: u64,
        ) -> Result<Result<Slice, Level>, LedgerError> {
            self.takes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut spent = self.spent.lock().unwrap();
            let s = spent.entry(line.key.clone()).or_default();
            let room = line.limit_micros.saturating_sub(*s);
            if need > room {
                return Ok(Err(Level {
                    spent_micros: *s,
                    reserved_micros: 0,
                }));
            }
            let granted = want.min(room / share.max(1)).max(need);
            *s += granted;
            Ok(Ok(Slice {
                granted_micros: granted,
                level: Level {
                    spent_micros: *s,
                    reserved_micros: 0,
                },
            }))
        }

        async fn give_back(&self, line: &BudgetLine, unused: u64) -> Result<Level, LedgerError> {
            let mut spent = self.spent.lock().unwrap();
            let s = spent.entry(line.key.clone()).or_default();
            *s = s.saturating_sub(unused);
            Ok(Level {
                spent_micros: *s,
                reserved_micros: 0,
            })
        }

        async fn mark_alert(&self, _key: &BudgetKey, _marker: &str) -> Result<bool, LedgerError> {
            Ok(true)
        }

        async fn level(&self, key: &BudgetKey) -> Result<Level, LedgerError> {
            Ok(Level {
                spent_micros: self.spent.lock().unwrap().get(key).copied().unwrap_or(0),
                reserved_micros: 0,
            })
        }
    }

    fn line(limit: u64) -> BudgetLine {
        BudgetLine {
            key: BudgetKey {
                budget: "b".into(),
                scope: "tenant:t".into(),
                window: "total".into(),
            },
            limit_micros: limit,
        }
    }

    fn config() -> LeaseConfig {
        LeaseConfig {
            calls_per_slice: 10,
            share: 4,
            idle: Duration::from_secs(3600),
            sweep: Duration::from_secs(3600),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_sharing_a_ledger_never_overshoot_and_account_exactly() {
        let shared = Arc::new(MemorySlices::default());
        let limit = 1_000_000;
        let nodes: Vec<Arc<LeasedLedger<Arc<MemorySlices>>>> = (0..3)
            .map(|_| Arc::new(LeasedLedger::new(shared.clone(), config())))
            .collect();
        let settled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for t in 0..4u64 {
                let (node, settled) = (node.clone(), settled.clone());
                tasks.push(tokio::spawn(async move {
                    for c in 0..300u64 {
                        let amount = 500 + (n as u64 * 31 + t * 17 + c * 13) % 1_500;
                        let lines = [line(limit)];
                        if let Ok(id) = node.reserve(&lines, amount).await {
                            tokio::task::yield_now().await;
                            let actual = amount * 3 / 4;
                            node.settle(id, &lines, amount, actual).await.unwrap();
                            settled.fetch_add(actual, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let before = shared.level(&line(limit).key).await.unwrap().spent_micros;
        assert!(before <= limit, "overshoot while leased: {before}");
        for node in &nodes {
            node.release().await;
        }
        let after = shared.level(&line(limit).key).await.unwrap().spent_micros;
        let settled = settled.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            after, settled,
            "exactly what was settled, once the rest is back"
        );
        assert!(after <= limit);
        assert!(
            after >= limit - 100_000,
            "the budget was used: {after} of {limit}"
        );
    }

    #[tokio::test]
    async fn a_call_larger_than_what_is_left_is_refused_with_the_window_as_users_count_it() {
        let shared = Arc::new(MemorySlices::default());
        let node = LeasedLedger::new(shared.clone(), config());
        let lines = [line(10_000)];
        let id = node.reserve(&lines, 1_000).await.unwrap();
        // The slice is 10 calls' worth, capped at a quarter of the room.
        assert_eq!(
            shared.level(&lines[0].key).await.unwrap().spent_micros,
            2_500
        );
        let levels = node.settle(id, &lines, 1_000, 400).await.unwrap();
        assert_eq!(
            levels[0],
            Level {
                spent_micros: 400,
                reserved_micros: 0
            }
        );
        match node.reserve(&lines, 9_700).await {
            Err(LedgerError::Refused(r)) => {
                assert_eq!(r.requested_micros, 9_700);
                assert_eq!(
                    r.spent_micros, 400,
                    "this node's unspent slice is not spend"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // What fits is granted, from the slice and a top-up.
        let id = node.reserve(&lines, 9_600).await.unwrap();
        node.settle(id, &lines, 9_600, 9_600).await.unwrap();
        node.release().await;
        assert_eq!(
            shared.level(&lines[0].key).await.unwrap().spent_micros,
            10_000
        );
    }

    #[tokio::test]
    async fn calls_that_fit_the_slice_do_not_touch_the_shared_ledger() {
        let shared = Arc::new(MemorySlices::default());
        let node = LeasedLedger::new(shared.clone(), config());
        let lines = [line(u64::MAX / 4)];
        for _ in 0..100 {
            let id = node.reserve(&lines, 1_000).await.unwrap();
            node.settle(id, &lines, 1_000, 1_000).await.unwrap();
        }
        assert_eq!(
            shared.takes.load(std::sync::atomic::Ordering::Relaxed),
            10,
            "one slice per 10 calls"
        );
    }
}
