//! Budget leases: a node takes a slice of a budget window in one write and spends it from
//! memory, so a hard budget costs the database one write per slice instead of two per call.
//!
//! A slice is recorded as spent the moment it is granted. Whatever a node spends from it is
//! therefore already counted everywhere, and concurrent grants are checked against the same
//! limit as per-call holds ([`ControlStore::ledger_reserve`](crate::ControlStore::ledger_reserve)),
//! so no mix of nodes, leases and holds can take a window past its limit. What the node did not
//! spend it gives back ([`LeaseStore::lease_return`]); a node that dies first leaves its unspent
//! slice counted as spent — the budget is under-used by at most that slice, never overshot.

use async_trait::async_trait;

use crate::control::{LedgerLevel, LedgerLine};
use crate::error::Result;

/// A slice granted by [`LeaseStore::lease_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Micro-dollars granted (already counted as spent in the window).
    pub granted_micros: u64,
    /// The window after the grant.
    pub level: LedgerLevel,
}

/// How large a slice to take: at least `need`, at most `want`, and no more than one
/// `share`-th of what is left, so that other nodes still find room while this one has its
/// slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRequest {
    /// The least that is any use (the call waiting for it); refused if the room is smaller.
    pub need: u64,
    /// The most to take.
    pub want: u64,
    /// Take at most `room / share` (but never less than `need`); 0 counts as 1.
    pub share: u64,
}

impl SliceRequest {
    /// What to grant out of `room` (limit − spent − unexpired holds), or `None` to refuse.
    pub fn grant(&self, room: u64) -> Option<u64> {
        if self.need > room {
            return None;
        }
        let fair = room / self.share.max(1);
        Some(self.want.min(fair).max(self.need))
    }
}

/// Budget leases over the shared ledger tables.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Atomically: with room = limit − spent − unexpired holds of `line`'s window, grant
    /// [`SliceRequest::grant`] of it and add the grant to the window's spend; or, when the
    /// room is smaller than `slice.need`, grant nothing and return the window's level.
    async fn lease_take(
        &self,
        line: &LedgerLine,
        slice: SliceRequest,
    ) -> Result<std::result::Result<LeaseGrant, LedgerLevel>>;

    /// Give back `unused` micro-dollars of earlier grants on `line`'s window (its spend goes
    /// down by that much, never below zero); the level after.
    async fn lease_return(&self, line: &LedgerLine, unused: u64) -> Result<LedgerLevel>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_a_share_of_the_room_but_at_least_the_need() {
        let s = SliceRequest {
            need: 10,
            want: 1_000,
            share: 4,
        };
        assert_eq!(s.grant(100_000), Some(1_000), "capped by want");
        assert_eq!(s.grant(400), Some(100), "a quarter of the room");
        assert_eq!(s.grant(20), Some(10), "never less than the need");
        assert_eq!(s.grant(10), Some(10));
        assert_eq!(s.grant(9), None, "refused below the need");
        let zero = SliceRequest { share: 0, ..s };
        assert_eq!(zero.grant(500), Some(500));
    }
}
