//! Store settings and the retry backoff policy.

use std::time::Duration;

use rand::Rng;

/// Limits, retention windows and defaults the store applies. `Default` gives the documented
/// production defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Largest accepted job input (serialized JSON), in bytes. Default 1 MiB.
    pub max_input_bytes: usize,
    /// Largest state value, in bytes. Default 1 MiB.
    pub max_state_value_bytes: usize,
    /// How long an idempotency key identifies its job; afterwards the key may be reused.
    /// Default 24 h.
    pub idempotency_ttl: Duration,
    /// How long completed and cancelled jobs stay in history. Default 7 days.
    pub history_retention: Duration,
    /// How long dead jobs stay in the dead-letter queue. Default 30 days.
    pub dead_retention: Duration,
    /// Attempt timeout when neither the enqueue nor the plugin settings give one. Default 5 min.
    pub default_timeout_ms: u64,
    /// Attempts allowed when neither the enqueue nor the plugin settings say. Default 5.
    pub default_max_attempts: u32,
    /// Retry delays.
    pub backoff: BackoffPolicy,
    /// Connection pool size (Postgres; SQLite uses one writer plus up to this many readers).
    /// Default 16.
    pub max_connections: u32,
    /// Postgres: at most one `NOTIFY` per this interval per process. Default 10 ms.
    pub notify_debounce: Duration,
    /// Most jobs one tenant may have waiting or running at once (`None`: no limit), so one
    /// tenant cannot fill the database. Checked at enqueue against a count at most
    /// [`crate::QUOTA_COUNT_TTL`] old, plus what this process enqueued since. Default
    /// 1,000,000.
    pub max_waiting_jobs_per_tenant: Option<u64>,
    /// Most bytes of state (keys and values, expired or not until purged) one tenant may
    /// hold (`None`: no limit). A write past it gets `state-error::too-large`. Checked
    /// against a sum at most 5 s old, plus what this process wrote since. Default 1 GiB.
    pub max_state_bytes_per_tenant: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_input_bytes: 1 << 20,
            max_state_value_bytes: 1 << 20,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            dead_retention: Duration::from_secs(30 * 24 * 3600),
            default_timeout_ms: 5 * 60 * 1000,
            default_max_attempts: 5,
            backoff: BackoffPolicy::default(),
            max_connections: 16,
            notify_debounce: Duration::from_millis(10),
            max_waiting_jobs_per_tenant: Some(1_000_000),
            max_state_bytes_per_tenant: Some(1 << 30),
        }
    }
}

/// Exponential backoff with full jitter, capped, honouring a retry-after hint.
///
/// For attempt `n` (1-based):
///
/// ```text
/// window(n) = min(cap, base · 2^(n−1))
/// delay     = min(retry_after, max_retry_after) + uniform(0, window(n))   with a hint
/// delay     = uniform(0, window(n))                                       without
/// ```
///
/// ```
/// use std::time::Duration;
/// use sluice_store::BackoffPolicy;
/// let p = BackoffPolicy::default();
/// let d = p.delay(3, None);
/// assert!(d <= Duration::from_secs(4));
/// let d = p.delay(1, Some(Duration::from_secs(30)));
/// assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(31));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The window of the first retry. Default 1 s.
    pub base: Duration,
    /// The largest window. Default 10 min.
    pub cap: Duration,
    /// The largest retry-after honoured. Default 1 h.
    pub max_retry_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl BackoffPolicy {
    /// The jitter window for attempt `attempt` (1-based): `min(cap, base · 2^(attempt−1))`.
    pub fn window(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(62);
        let base = self.base.as_millis().min(u64::MAX as u128) as u64;
        let window = base.saturating_mul(1u64 << exp);
        Duration::from_millis(window).min(self.cap)
    }

    /// The delay before retrying after attempt `attempt` failed, with an optional retry-after
    /// hint from the handler or provider.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay_with(attempt, retry_after, &mut rand::rng())
    }

    /// [`BackoffPolicy::delay`] with a caller-supplied random source.
    pub fn delay_with<R: Rng + ?Sized>(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        let window_ms = self.window(attempt).as_millis() as u64;
        let jitter = Duration::from_millis(if window_ms == 0 {
            0
        } else {
            rng.random_range(0..=window_ms)
        });
        match retry_after {
            Some(hint) => hint.min(self.max_retry_after) + jitter,
            None => jitter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_doubles_then_caps() {
        let p = BackoffPolicy::default();
        assert_eq!(p.window(1), Duration::from_secs(1));
        assert_eq!(p.window(2), Duration::from_secs(2));
        assert_eq!(p.window(10), Duration::from_secs(512));
        assert_eq!(p.window(11), Duration::from_secs(600));
        assert_eq!(p.window(1000), Duration::from_secs(600));
        assert_eq!(p.window(0), Duration::from_secs(1));
    }

    #[test]
    fn delay_stays_in_bounds() {
        let p = BackoffPolicy::default();
        let mut rng = rand::rng();
        for attempt in 1..40 {
            for _ in 0..200 {
                let d = p.delay_with(attempt, None, &mut rng);
                assert!(d <= p.window(attempt));
                let hint = Duration::from_secs(7200);
                let d = p.delay_with(attempt, Some(hint), &mut rng);
                assert!(d >= p.max_retry_after && d <= p.max_retry_after + p.window(attempt));
            }
        }
    }
}
