//! A circuit breaker per provider: failure rate over a sliding window, a cooldown, one
//! half-open probe.
//!
//! Closed: calls pass; each outcome is recorded. When the window holds at least `min_calls`
//! outcomes and the failed fraction reaches `failure_rate`, the breaker opens. Open: calls are
//! refused (the gateway goes straight to the next provider in the chain) until `cooldown`
//! passes. Half-open: one probe call passes; success closes the breaker with a fresh window,
//! failure reopens it for another cooldown. A probe that never reports back (its caller gave
//! up) is replaced after another cooldown.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// One probe is allowed.
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 half-open, 2 open: the `sluice_breaker_state` gauge's value.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// What the breaker allows for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as the half-open probe.
    Probe,
    /// Refused; the breaker reopens for probing after this long.
    Refused(Duration),
}

/// One provider's breaker.
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    window: VecDeque<(Instant, bool)>,
    opened_at: Instant,
    probe_started: Option<Instant>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: VecDeque::new(),
                opened_at: Instant::now(),
                probe_started: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cfg.cooldown_ms)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Ask to make a call.
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut g = self.lock();
        match g.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => {
                let since = now.duration_since(g.opened_at);
                if since >= self.cooldown() {
                    g.state = BreakerState::HalfOpen;
                    g.probe_started = Some(now);
                    Admission::Probe
                } else {
                    Admission::Refused(self.cooldown() - since)
                }
            }
            BreakerState::HalfOpen => match g.probe_started {
                Some(p) if now.duration_since(p) < self.cooldown() => {
                    Admission::Refused(self.cooldown() - now.duration_since(p))
                }
                _ => {
                    g.probe_started = Some(now);
                    Admission::Probe
                }
            },
        }
    }

    /// Record a call's outcome; returns the new state when it changed.
    pub fn record(&self, healthy: bool) -> Option<BreakerState> {
        let now = Instant::now();
        let mut g = self.lock();
        match g.state {
            BreakerState::HalfOpen => {
                g.probe_started = None;
                g.window.clear();
                if healthy {
                    g.state = BreakerState::Closed;
                } else {
                    g.state = BreakerState::Open;
                    g.opened_at = now;
                }
                Some(g.state)
            }
            // Late outcomes of calls admitted before the breaker opened change nothing.
            BreakerState::Open => None,
            BreakerState::Closed => {
                let window = Duration::from_millis(self.cfg.window_ms);
                while g
                    .window
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > window)
                {
                    g.window.pop_front();
                }
                g.window.push_back((now, healthy));
                // Bound memory under very high call rates: the rate over the most recent
                // 1000 outcomes is as good as over all of them.
                if g.window.len() > 1000 {
                    g.window.pop_front();
                }
                let total = g.window.len();
                let failed = g.window.iter().filter(|(_, ok)| !ok).count();
                if total >= self.cfg.min_calls as usize
                    && failed as f64 >= self.cfg.failure_rate * total as f64
                {
                    g.state = BreakerState::Open;
                    g.opened_at = now;
                    g.window.clear();
                    Some(BreakerState::Open)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let b = Breaker::new(BreakerConfig {
            failure_rate: 0.5,
            min_calls: 4,
            window_ms: 10_000,
            cooldown_ms: 30,
        });
        assert_eq!(b.record(true), None);
        assert_eq!(b.record(false), None);
        assert_eq!(b.record(true), None);
        assert_eq!(b.record(false), Some(BreakerState::Open));
        assert!(matches!(b.admit(), Admission::Refused(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Probe);
        assert!(
            matches!(b.admit(), Admission::Refused(_)),
            "one probe at a time"
        );
        assert_eq!(b.record(false), Some(BreakerState::Open));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.record(true), Some(BreakerState::Closed));
        assert_eq!(b.admit(), Admission::Allowed);
    }
}
