//! A provider's recent health as this node saw it: the outcomes and durations of its last
//! [`WINDOW`] attempts, for operators (`GET /v1/providers`, the dashboard). The breaker
//! decides on its own window; this one only reports.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::breaker::BreakerState;

/// Attempts kept per provider.
pub const WINDOW: usize = 200;

/// The last [`WINDOW`] attempts of one provider: `(duration, succeeded)`.
#[derive(Debug, Default)]
pub(crate) struct RecentAttempts(Mutex<VecDeque<(Duration, bool)>>);

impl RecentAttempts {
    pub(crate) fn record(&self, took: Duration, ok: bool) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == WINDOW {
            q.pop_front();
        }
        q.push_back((took, ok));
    }

    /// Count, failures and the 50th and 95th percentile durations (nearest rank).
    pub(crate) fn summary(&self) -> (u32, u32, Option<Duration>, Option<Duration>) {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let failed = q.iter().filter(|(_, ok)| !ok).count() as u32;
        let mut took: Vec<Duration> = q.iter().map(|(d, _)| *d).collect();
        took.sort_unstable();
        (
            q.len() as u32,
            failed,
            percentile(&took, 50),
            percentile(&took, 95),
        )
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

/// One provider's state and recent record on this node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderHealth {
    /// The provider's configured name.
    pub name: String,
    /// Its kind (`openai`, `anthropic`, `simulated`, …).
    pub kind: String,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Attempts in the window (at most [`WINDOW`]).
    pub attempts: u32,
    /// Of which failed (any error: status, timeout, broken stream).
    pub errors: u32,
    /// `errors / attempts`; 0 without attempts.
    pub error_rate: f64,
    /// Median attempt duration, ms (`None` without attempts).
    pub p50_ms: Option<u64>,
    /// 95th percentile attempt duration, ms.
    pub p95_ms: Option<u64>,
}

impl ProviderHealth {
    pub(crate) fn new(
        name: &str,
        kind: &str,
        breaker: BreakerState,
        recent: &RecentAttempts,
    ) -> Self {
        let (attempts, errors, p50, p95) = recent.summary();
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64);
        ProviderHealth {
            name: name.to_string(),
            kind: kind.to_string(),
            breaker,
            attempts,
            errors,
            error_rate: if attempts == 0 {
                0.0
            } else {
                f64::from(errors) / f64::from(attempts)
            },
            p50_ms: ms(p50),
            p95_ms: ms(p95),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_window_and_ranks_durations() {
        let r = RecentAttempts::default();
        assert_eq!(r.summary(), (0, 0, None, None));
        // 100 old failures pushed out by WINDOW successes of 1..=WINDOW ms.
        for _ in 0..100 {
            r.record(Duration::from_secs(60), false);
        }
        for ms in 1..=WINDOW as u64 {
            r.record(Duration::from_millis(ms), true);
        }
        let (n, failed, p50, p95) = r.summary();
        assert_eq!((n, failed), (WINDOW as u32, 0));
        assert_eq!(p50, Some(Duration::from_millis(100)));
        assert_eq!(p95, Some(Duration::from_millis(190)));
        r.record(Duration::from_millis(5), false);
        let h = ProviderHealth::new("sim", "simulated", BreakerState::Closed, &r);
        assert_eq!(h.errors, 1);
        assert!((h.error_rate - 1.0 / WINDOW as f64).abs() < 1e-12);
    }
}
