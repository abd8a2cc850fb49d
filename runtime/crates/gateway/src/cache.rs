//! The exact-match response cache: key → response, with a TTL and a size cap (oldest entries
//! go first). The gateway's keys are the tenant and the request's fingerprint, so tenants
//! never share entries (see [`crate::config::CacheConfig`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bounded TTL cache.
pub struct ResponseCache<V> {
    ttl: Duration,
    max_entries: usize,
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    map: HashMap<String, (Instant, V)>,
    order: VecDeque<(String, Instant)>,
}

impl<V: Clone> ResponseCache<V> {
    /// A cache keeping entries for `ttl`, at most `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        ResponseCache {
            ttl,
            max_entries: max_entries.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live entry for `key`.
    pub fn get(&self, key: &str) -> Option<V> {
        let now = Instant::now();
        let g = self.lock();
        match g.map.get(key) {
            Some((expires, v)) if *expires > now => Some(v.clone()),
            _ => None,
        }
    }

    /// Store `value` under `key`.
    pub fn put(&self, key: String, value: V) {
        let now = Instant::now();
        let expires = now + self.ttl;
        let mut g = self.lock();
        // Drop expired entries from the front, then the oldest while over the cap. `order` may
        // hold stale records of keys since replaced; they are skipped by the stamp check.
        while let Some((k, stamp)) = g.order.front().cloned() {
            let live = g.map.get(&k).is_some_and(|(e, _)| *e == stamp);
            let expired = stamp <= now;
            if !live || expired || g.map.len() >= self.max_entries {
                g.order.pop_front();
                if live {
                    g.map.remove(&k);
                }
            } else {
                break;
            }
        }
        g.map.insert(key.clone(), (expires, value));
        g.order.push_back((key, expires));
    }

    /// Entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_cap() {
        let c = ResponseCache::new(Duration::from_millis(30), 2);
        c.put("a".into(), 1);
        c.put("b".into(), 2);
        c.put("c".into(), 3);
        assert_eq!(c.get("a"), None, "oldest evicted");
        assert_eq!(c.get("c"), Some(3));
        assert!(c.len() <= 2);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("c"), None, "expired");
    }
}
