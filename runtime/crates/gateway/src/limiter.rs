//! Rate limiting: requests per minute with `governor`, tokens per minute with a reserving token
//! bucket.
//!
//! Why two mechanisms: a token cost is known only after the call, so the TPM limiter reserves
//! an estimate (prompt + `max_tokens`) before it and reconciles to the reported usage after,
//! giving back what was not used. `governor`'s GCRA cannot give capacity back, so TPM uses
//! [`Bucket`], which can; RPM, where a request costs exactly one, uses `governor`.
//!
//! [`Bucket::reserve`] books capacity *in the future* when the bucket is short (its level goes
//! negative), and tells the caller how long to wait before sending. Waiters are therefore served
//! first come, first served, a caller whose turn would come after its deadline is refused at
//! once instead of waiting in vain, and the bucket never lets through more than its capacity
//! plus what it refilled. Every limiter is built from the config (one per provider, one per
//! model that sets limits), so their number is bounded by construction.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A token bucket that refills continuously and can reserve capacity in the future.
#[derive(Debug)]
pub struct Bucket {
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    per_minute: f64,
    burst_secs: f64,
    share: f64,
    capacity: f64,
    rate_per_sec: f64,
    level: f64,
    updated: Instant,
}

/// The longest wait a bucket computes (a year): levels pushed far below zero by usage a
/// provider overreported, or absurd requests, give a long wait, never a panic under the lock.
const MAX_BUCKET_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `secs` seconds as a wait, at most [`MAX_BUCKET_WAIT`] (NaN and negative: zero).
fn wait_secs(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_BUCKET_WAIT)
        .min(MAX_BUCKET_WAIT)
}

impl BucketState {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + dt * self.rate_per_sec).min(self.capacity);
        self.updated = now.max(self.updated);
    }

    fn configure(&mut self) {
        self.rate_per_sec = self.per_minute * self.share / 60.0;
        self.capacity = (self.rate_per_sec * self.burst_secs).max(1.0);
        self.level = self.level.min(self.capacity);
    }
}

impl Bucket {
    /// `per_minute` units per minute, at most `burst_secs` seconds' worth at once; starts full.
    pub fn new(per_minute: u32, burst_secs: f64) -> Self {
        let mut s = BucketState {
            per_minute: f64::from(per_minute),
            burst_secs,
            share: 1.0,
            capacity: 0.0,
            rate_per_sec: 0.0,
            level: f64::MAX,
            updated: Instant::now(),
        };
        s.configure();
        Bucket {
            state: Mutex::new(s),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Book `n` units, now or as soon as the bucket allows, if that is within `max_wait`.
    /// `Ok((wait, booked))`: `booked` units are held; send after `wait`. `Err(wait)`: nothing
    /// held; capacity is expected after `wait`. A request larger than the bucket books the
    /// whole bucket.
    pub fn reserve(&self, n: f64, max_wait: Duration) -> Result<(Duration, f64), Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        s.refill(now);
        let n = n.min(s.capacity);
        let deficit = n - s.level;
        let wait = if deficit <= 0.0 {
            Duration::ZERO
        } else {
            wait_secs(deficit / s.rate_per_sec)
        };
        if wait > max_wait {
            return Err(wait);
        }
        s.level -= n;
        Ok((wait, n))
    }

    /// Take `n` units now, or say how long until they would be there (nothing is taken).
    pub fn try_take(&self, n: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        s.refill(now);
        if n <= s.level {
            s.level -= n;
            Ok(())
        } else {
            Err(wait_secs((n - s.level) / s.rate_per_sec))
        }
    }

    /// Give back `n` units (a reservation larger than the actual use).
    pub fn refund(&self, n: f64) {
        let mut s = self.lock();
        s.refill(Instant::now());
        s.level = (s.level + n).min(s.capacity);
    }

    /// Take `n` more units regardless of the level (use beyond the reservation).
    pub fn charge(&self, n: f64) {
        let mut s = self.lock();
        s.refill(Instant::now());
        s.level -= n;
    }

    /// Scale the limit to this node's share of it (0 < share ≤ 1).
    pub fn set_share(&self, share: f64) {
        let mut s = self.lock();
        s.refill(Instant::now());
        s.share = share;
        s.configure();
    }

    /// Units available now (negative while capacity is booked ahead).
    pub fn level(&self) -> f64 {
        let mut s = self.lock();
        s.refill(Instant::now());
        s.level
    }

    /// The bucket's capacity.
    pub fn capacity(&self) -> f64 {
        self.lock().capacity
    }

    /// Time until the bucket is full again.
    pub fn time_to_full(&self) -> Duration {
        let mut s = self.lock();
        s.refill(Instant::now());
        wait_secs((s.capacity - s.level) / s.rate_per_sec)
    }
}

/// Requests per minute, with `governor`.
pub struct RpmLimiter {
    rpm: u32,
    burst_secs: f64,
    inner: RwLock<Arc<DefaultDirectRateLimiter>>,
}

impl RpmLimiter {
    /// `rpm` requests per minute with bursts of `burst_secs` seconds' worth.
    pub fn new(rpm: u32, burst_secs: f64) -> Self {
        RpmLimiter {
            rpm,
            burst_secs,
            inner: RwLock::new(Arc::new(Self::build(rpm, burst_secs, 1.0))),
        }
    }

    fn build(rpm: u32, burst_secs: f64, share: f64) -> DefaultDirectRateLimiter {
        let per_minute = (f64::from(rpm) * share).max(1.0);
        let period = Duration::from_secs_f64(60.0 / per_minute);
        let burst = ((per_minute * burst_secs / 60.0).floor() as u32).max(1);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        RateLimiter::direct(quota)
    }

    fn current(&self) -> Arc<DefaultDirectRateLimiter> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Take one request now, or say how long until one is allowed.
    fn try_take(&self) -> Result<(), Duration> {
        let lim = self.current();
        match lim.check() {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(lim.clock().now())),
        }
    }

    fn set_share(&self, share: f64) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Self::build(self.rpm, self.burst_secs, share));
    }
}

/// The limits that apply to one call: its provider's and its model's, when configured.
#[derive(Clone, Default)]
pub struct LimiterSet {
    tpm: Vec<Arc<Bucket>>,
    rpm: Vec<Arc<RpmLimiter>>,
}

/// Capacity booked for one call; reconcile it with the actual token use.
#[must_use = "reconcile the permit with the actual usage"]
pub struct Permit {
    booked: Vec<(Arc<Bucket>, f64)>,
}

impl Permit {
    /// Adjust the booking to `actual` tokens: give back the excess or charge the shortfall.
    pub fn reconcile(self, actual: u32) {
        let actual = f64::from(actual);
        for (b, booked) in &self.booked {
            if actual < *booked {
                b.refund(booked - actual);
            } else if actual > *booked {
                b.charge(actual - booked);
            }
        }
    }

    /// Give the whole booking back (the request was not processed).
    pub fn cancel(self) {
        for (b, booked) in &self.booked {
            b.refund(*booked);
        }
    }
}

/// Why capacity could not be had in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// When capacity is expected, from now.
    pub retry_after: Duration,
}

impl LimiterSet {
    /// Add limits of `rpm` requests and `tpm` tokens per minute.
    pub fn add(&mut self, rpm: Option<u32>, tpm: Option<u32>, burst_secs: f64) {
        if let Some(r) = rpm {
            self.rpm.push(Arc::new(RpmLimiter::new(r, burst_secs)));
        }
        if let Some(t) = tpm {
            self.tpm.push(Arc::new(Bucket::new(t, burst_secs)));
        }
    }

    /// Append another set's limiters (shared, not copied).
    pub fn extend(&mut self, other: &LimiterSet) {
        self.tpm.extend(other.tpm.iter().cloned());
        self.rpm.extend(other.rpm.iter().cloned());
    }

    /// Whether any limit applies.
    pub fn is_empty(&self) -> bool {
        self.tpm.is_empty() && self.rpm.is_empty()
    }

    /// Wait until `tokens` tokens and one request may be sent, at most until `deadline`.
    /// Returns the permit and how long was waited.
    pub async fn acquire(
        &self,
        tokens: u32,
        deadline: Instant,
    ) -> Result<(Permit, Duration), Throttled> {
        let started = Instant::now();
        let reserved = f64::from(tokens);
        let max_wait = deadline.saturating_duration_since(started);
        let mut wait = Duration::ZERO;
        let mut permit = Permit {
            booked: Vec::with_capacity(self.tpm.len()),
        };
        for b in &self.tpm {
            match b.reserve(reserved, max_wait) {
                Ok((w, n)) => {
                    wait = wait.max(w);
                    permit.booked.push((b.clone(), n));
                }
                Err(retry_after) => {
                    permit.cancel();
                    return Err(Throttled { retry_after });
                }
            }
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        for r in &self.rpm {
            loop {
                match r.try_take() {
                    Ok(()) => break,
                    Err(w) => {
                        let now = Instant::now();
                        if now + w > deadline {
                            permit.cancel();
                            return Err(Throttled { retry_after: w });
                        }
                        // Spread waiters that were told the same instant.
                        let jitter = Duration::from_micros(rand::random_range(0..2_000));
                        tokio::time::sleep(w + jitter).await;
                    }
                }
            }
        }
        Ok((permit, started.elapsed()))
    }

    /// Scale every limit to this node's share.
    pub fn set_share(&self, share: f64) {
        for b in &self.tpm {
            b.set_share(share);
        }
        for r in &self.rpm {
            r.set_share(share);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_books_ahead_and_refunds() {
        let b = Bucket::new(60_000, 1.0); // 1000/s, capacity 1000
        assert_eq!(
            b.reserve(1000.0, Duration::ZERO),
            Ok((Duration::ZERO, 1000.0))
        );
        let (w, _) = b.reserve(500.0, Duration::from_secs(1)).unwrap();
        assert!(
            w > Duration::from_millis(400) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        // A third booking must wait behind the second.
        let e = b.reserve(500.0, Duration::from_millis(600)).unwrap_err();
        assert!(e > Duration::from_millis(900), "{e:?}");
        b.refund(1000.0);
        assert!(b.level() > 400.0);
        assert!(b.try_take(10_000.0).is_err());
    }

    #[tokio::test]
    async fn rpm_waits_then_refuses_past_deadline() {
        let mut set = LimiterSet::default();
        set.add(Some(600), None, 1.0); // 10/s, burst 10
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..10 {
            set.acquire(1, deadline).await.unwrap().0.reconcile(1);
        }
        let (_, waited) = set.acquire(1, deadline).await.unwrap();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        let err = set.acquire(1, Instant::now()).await.err().unwrap();
        assert!(err.retry_after > Duration::ZERO);
    }
}
