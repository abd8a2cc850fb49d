//! Small helpers both backends share.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};
use crate::model::NewJob;

pub use sluice_types::backend::MAX_KEY_BYTES;

/// `sha256:<hex>` of component bytes.
pub fn component_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The idempotency body hash: plugin and canonical input JSON (object keys sorted).
pub(crate) fn body_hash(plugin: &str, input_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(plugin.as_bytes());
    h.update([0u8]);
    h.update(input_json.as_bytes());
    hex::encode(h.finalize())
}

/// How old a tenant's waiting-job count may be when an enqueue is checked against its quota.
pub const QUOTA_COUNT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A per-tenant amount (jobs waiting, bytes of state) as last counted in the database plus
/// what this process added since, so a quota check costs one count per tenant per `ttl`, not
/// one per write. Other processes' additions show up at the next count: a limit can be
/// overshot by what the cluster adds in that window, never without bound.
#[derive(Debug)]
pub(crate) struct TenantTally {
    ttl: std::time::Duration,
    counts: std::sync::Mutex<HashMap<String, (u64, std::time::Instant)>>,
}

impl TenantTally {
    pub(crate) fn new(ttl: std::time::Duration) -> Self {
        TenantTally {
            ttl,
            counts: Default::default(),
        }
    }

    /// `tenant`'s amount: cached, or counted by `count` when the cache is older than `ttl`.
    pub(crate) async fn current<F, Fut>(&self, tenant: &str, count: F) -> Result<u64>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let cached = self
            .lock()
            .get(tenant)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(c, _)| *c);
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = count(tenant.to_string()).await?;
        self.lock()
            .insert(tenant.to_string(), (c, std::time::Instant::now()));
        Ok(c)
    }

    /// Count what was just added until the next count.
    pub(crate) fn add(&self, tenant: &str, n: u64) {
        if let Some((c, _)) = self.lock().get_mut(tenant) {
            *c = c.saturating_add(n);
        }
    }

    /// Refuse `prepared` if it would take a tenant past `limit` waiting jobs; returns the
    /// jobs per tenant, for [`TenantTally::add`] once they are in.
    pub(crate) async fn admit_jobs<F, Fut>(
        &self,
        limit: Option<u64>,
        prepared: &[Prepared],
        count: F,
    ) -> Result<HashMap<String, u64>>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        let mut by: HashMap<String, u64> = HashMap::new();
        let Some(limit) = limit else { return Ok(by) };
        for p in prepared {
            *by.entry(p.job.tenant.clone()).or_default() += 1;
        }
        for (tenant, n) in &by {
            let waiting = self.current(tenant, &count).await?;
            if waiting.saturating_add(*n) > limit {
                return Err(StoreError::QuotaExceeded {
                    tenant: tenant.clone(),
                    waiting,
                    limit,
                });
            }
        }
        Ok(by)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, std::time::Instant)>> {
        // Plain counts: a panic elsewhere cannot leave them inconsistent.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How old a tenant's state-bytes tally may be when a write is checked against its quota
/// (summing a tenant's state is dearer than counting its jobs).
pub(crate) const STATE_TALLY_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Refuse a state write that would take the tenant past `limit` bytes of state (keys and
/// values). Returns the bytes to add to the tally once written.
pub(crate) async fn admit_state<F, Fut>(
    tally: &TenantTally,
    limit: Option<u64>,
    tenant: &str,
    key: &str,
    value: &str,
    count: F,
) -> std::result::Result<u64, sluice_types::StateError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let add = (key.len() + value.len()) as u64;
    let Some(limit) = limit else { return Ok(add) };
    let held = tally
        .current(tenant, count)
        .await
        .map_err(|e| sluice_types::StateError::Unavailable(e.to_string()))?;
    if held.saturating_add(add) > limit {
        return Err(sluice_types::StateError::TooLarge(format!(
            "tenant `{tenant}` holds {held} bytes of state; the limit is {limit}: delete keys or give them a TTL"
        )));
    }
    Ok(add)
}

/// A validated job about to be inserted: serialized once, checked once.
pub(crate) struct Prepared {
    pub id: uuid::Uuid,
    pub job: NewJob,
    pub input: String,
    pub tags: String,
    pub body_hash: String,
}

pub(crate) fn prepare(job: NewJob, max_input: usize) -> Result<Prepared> {
    if job.tenant.is_empty() {
        return Err(StoreError::Invalid("tenant must not be empty".into()));
    }
    if job.plugin.is_empty() {
        return Err(StoreError::Invalid("plugin must not be empty".into()));
    }
    if let Some(k) = &job.idempotency_key
        && (k.is_empty() || k.len() > MAX_KEY_BYTES)
    {
        return Err(StoreError::Invalid(format!(
            "idempotency key must be 1..={MAX_KEY_BYTES} bytes"
        )));
    }
    if job.max_attempts == Some(0) {
        return Err(StoreError::Invalid(
            "max_attempts must be at least 1".into(),
        ));
    }
    // serde_json's map is a BTreeMap (no `preserve_order`), so this is canonical.
    let input =
        serde_json::to_string(&job.input).map_err(|e| StoreError::Invalid(e.to_string()))?;
    // Neither backend may hold what the other cannot: Postgres' jsonb refuses NUL.
    if input.contains("\\u0000") && has_nul(&job.input) {
        return Err(StoreError::Invalid(
            "input contains a NUL character (\\u0000) in a string, which cannot be stored".into(),
        ));
    }
    if input.len() > max_input {
        return Err(StoreError::InputTooLarge {
            size: input.len(),
            limit: max_input,
        });
    }
    let tags = serde_json::to_string(&job.tags).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let body_hash = body_hash(&job.plugin, &input);
    Ok(Prepared {
        id: uuid::Uuid::now_v7(),
        job,
        input,
        tags,
        body_hash,
    })
}

pub(crate) use sluice_types::backend::{check_effect_key, check_state_key, check_state_value};

/// The smallest string greater than every string starting with `prefix`, in byte order, or
/// `None` when there is none (empty prefix). Keys are compared bytewise (`COLLATE "C"` on
/// Postgres, `BINARY` on SQLite), and UTF-8 byte order is code point order.
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let mut next = c as u32 + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(n) = char::from_u32(next) {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `percentile_cont`: linear interpolation between the closest ranks of sorted values.
pub(crate) fn percentile_cont(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = p * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own plain types cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// JSON text Postgres `jsonb` accepts. `jsonb` (and `text`) cannot hold the NUL character, so
/// a `\u0000` in any string or key, which a handler or a provider can put in an error message
/// or an event, would fail the statement; written into a batch, it would fail every other
/// job's row too. NUL becomes U+FFFD (the replacement character) instead. The common case
/// pays one substring search.
pub(crate) fn to_pg_json<T: serde::Serialize>(v: &T) -> String {
    let text = to_json(v);
    if !text.contains("\\u0000") {
        return text;
    }
    match serde_json::to_value(v) {
        Ok(mut value) => {
            replace_nul(&mut value);
            to_json(&value)
        }
        Err(_) => text,
    }
}

/// [`to_pg_json`] of JSON text already serialized by [`to_json`].
pub(crate) fn pg_json_text(text: &str) -> String {
    if !text.contains("\\u0000") {
        return text.to_owned();
    }
    match serde_json::from_str::<Value>(text) {
        Ok(value) => to_pg_json(&value),
        Err(_) => text.to_owned(),
    }
}

/// Text Postgres accepts in a `text` column (see [`to_pg_json`]).
pub(crate) fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether any string or key in `v` holds a NUL character, which no backend stores (Postgres'
/// `jsonb` refuses it; SQLite is held to the same rule so a job behaves the same on both).
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn replace_nul(v: &mut Value) {
    match v {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    replace_nul(&mut v);
                    map.insert(k.replace('\0', "\u{FFFD}"), v);
                }
            } else {
                map.values_mut().for_each(replace_nul);
            }
        }
        _ => {}
    }
}

/// Sequence numbers returned by a batched insert (in no particular order) matched back to the
/// input: within a job they were assigned in input order.
pub(crate) fn seqs_in_input_order(jobs: &[uuid::Uuid], rows: Vec<(uuid::Uuid, i64)>) -> Vec<u64> {
    let mut by_job: HashMap<uuid::Uuid, VecDeque<u64>> = HashMap::new();
    for (job, seq) in rows {
        by_job.entry(job).or_default().push_back(seq.max(0) as u64);
    }
    for seqs in by_job.values_mut() {
        seqs.make_contiguous().sort_unstable();
    }
    jobs.iter()
        .map(|j| by_job.get_mut(j).and_then(VecDeque::pop_front).unwrap_or(0))
        .collect()
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(StoreError::corrupt)
}

/// Micro-dollars from a database `bigint` (never negative in practice; clamped if it were).
pub(crate) fn micros(v: i64) -> u64 {
    v.max(0) as u64
}

/// Micro-dollars as a database `bigint` (saturating: no budget comes near `i64::MAX`).
pub(crate) fn signed(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Most claim statements (rounds) one `claim` call runs.
pub(crate) const MAX_CLAIM_ROUNDS: usize = 4;

/// Whether another claim round may find more: slots are left, and either some tenant used
/// its whole quota or the round stopped at its tenant limit (unvisited tenants may wait
/// behind the cursor), and the cursor moved (so the next round visits someone new).
pub(crate) fn more_rounds(got: u32, want: u32, saturated: bool, visited: i64, moved: bool) -> bool {
    got < want && (saturated || visited >= i64::from(want)) && visited > 0 && moved
}

/// One candidate job for the round-robin pick.
#[derive(Debug, Clone)]
pub(crate) struct Candidate<K> {
    pub key: K,
    pub tenant: String,
    pub plugin: String,
}

/// Interleave per-tenant candidate lists round-robin (each tenant's first, then each
/// tenant's second, …), skipping jobs whose `(tenant, plugin)` has no room left, up to
/// `limit`. `per_tenant` is in tenant visiting order; each list in the tenant's own order.
pub(crate) fn round_robin_pick<K: Clone>(
    per_tenant: Vec<Vec<Candidate<K>>>,
    plugin_room: &mut HashMap<(String, String), i64>,
    limit: usize,
) -> Vec<Candidate<K>> {
    let mut queues: Vec<VecDeque<Candidate<K>>> = per_tenant.into_iter().map(Into::into).collect();
    let mut picked = Vec::new();
    loop {
        let mut any = false;
        for q in queues.iter_mut() {
            if picked.len() >= limit {
                return picked;
            }
            while let Some(c) = q.pop_front() {
                let room = plugin_room.get_mut(&(c.tenant.clone(), c.plugin.clone()));
                match room {
                    Some(r) if *r <= 0 => continue,
                    Some(r) => *r -= 1,
                    None => {}
                }
                any = true;
                picked.push(c);
                break;
            }
        }
        if !any {
            return picked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
    }

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (1..=5).map(f64::from).collect();
        assert_eq!(percentile_cont(&v, 0.5), 3.0);
        assert_eq!(percentile_cont(&v, 0.95), 4.8);
        assert_eq!(percentile_cont(&[7.0], 0.95), 7.0);
    }

    fn c(t: &str, p: &str, k: u32) -> Candidate<u32> {
        Candidate {
            key: k,
            tenant: t.into(),
            plugin: p.into(),
        }
    }

    #[test]
    fn round_robin_interleaves_and_caps() {
        let a = vec![c("a", "x", 1), c("a", "x", 2), c("a", "y", 3)];
        let b = vec![c("b", "x", 4)];
        let mut room = HashMap::from([(("a".to_string(), "x".to_string()), 1)]);
        let got: Vec<u32> = round_robin_pick(vec![a, b], &mut room, 10)
            .into_iter()
            .map(|c| c.key)
            .collect();
        assert_eq!(got, vec![1, 4, 3]);
        let a = vec![c("a", "x", 1), c("a", "x", 2)];
        let b = vec![c("b", "x", 4), c("b", "x", 5)];
        let got: Vec<u32> = round_robin_pick(vec![a, b], &mut HashMap::new(), 3)
            .into_iter()
            .map(|c| c.key)
            .collect();
        assert_eq!(got, vec![1, 4, 2]);
    }
}
