//! Outcome webhooks: when a job finishes, POST its outcome to the job's webhook URL, signed.
//!
//! Each delivery carries:
//! - `Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` — a
//!   receiver recomputes it with its tenant's secret and rejects old timestamps;
//! - `Sluice-Delivery: <uuid>` — the same across retries of one delivery, for dedupe;
//! - `Sluice-Event: job.completed | job.dead | job.cancelled`;
//! - `traceparent` (W3C), when tracing is on and the job was traced: its `job` span.
//!
//! The signing secret of a tenant is `hex(HMAC-SHA256(node secret, "webhook:" + tenant))`
//! ([`tenant_secret`]); `sluice keys webhook-secret --tenant t` prints it. The node secret is
//! `webhooks.secret`, or a random one kept in `<data_dir>/webhook.secret`.
//!
//! Deliveries live in the store's outbox (`webhook_deliveries`): the row for a finished job is
//! written in the transaction that finishes it, so a crash cannot lose an outcome, and any
//! node's dispatcher may deliver it. Failed deliveries are retried with exponential backoff
//! and jitter. A delivery that runs out of attempts (or gets a non-retryable 4xx) is
//! dead-lettered: kept with status `dead` and its last error (`GET /v1/webhooks/deliveries?
//! status=dead`, retried by `POST /v1/webhooks/deliveries/{id}/retry`), counted in
//! `sluice_webhook_dead_total`, logged, and appended to the job's event stream as an `error`
//! log event. Budget alerts (`Sluice-Event: budget.alert`) go through the same outbox.
//!
//! Targets are checked against the allow-list: by default no private, loopback or
//! link-local addresses (checked again after DNS resolution, and the connection is pinned
//! to the checked address), except in dev mode.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{Value, json};
use sha2::Sha256;
use sluice_store::{DeliveryResult, WebhookDelivery};
use sluice_types::{EventSink, JobEvent, LogLevel};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookConfig;
use crate::node::Node;

/// Whether an address is one webhooks may not reach by default.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg & 0xfe00) == 0xfc00 // unique local
                || (seg & 0xffc0) == 0xfe80 // link local
        }
    }
}

fn host_allowed(host: &str, allow_hosts: &[String]) -> bool {
    allow_hosts.iter().any(|a| {
        let a = a.trim_start_matches('.');
        host.eq_ignore_ascii_case(a)
            || host
                .to_ascii_lowercase()
                .ends_with(&format!(".{}", a.to_ascii_lowercase()))
    })
}

/// Check a webhook URL without resolving it: http(s), a host, on the allow-list if one is
/// set, and not a literal private address (or `localhost`) unless `open` (dev mode or
/// `allow_private`).
pub fn check_url(url: &str, open: bool) -> Result<reqwest::Url, String> {
    check_url_with(url, open, &[])
}

/// [`check_url`] with an allow-list.
pub fn check_url_with(
    url: &str,
    open: bool,
    allow_hosts: &[String],
) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".into());
    }
    let host = parsed
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !allow_hosts.is_empty() {
        if host_allowed(&host, allow_hosts) {
            return Ok(parsed);
        }
        return Err(format!("host `{host}` is not in webhooks.allow_hosts"));
    }
    if !open {
        if let Ok(ip) = host.parse::<IpAddr>()
            && is_private(ip)
        {
            return Err(format!("{ip} is a private, loopback or link-local address"));
        }
        if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") {
            return Err("localhost is not allowed".into());
        }
    }
    Ok(parsed)
}

/// Check a webhook target as this node's configuration allows: the allow-list if one is set,
/// private addresses only in dev mode or with `webhooks.allow_private`.
pub fn check_target(config: &crate::config::Config, url: &str) -> Result<reqwest::Url, String> {
    check_url_with(url, private_allowed(config), &config.webhooks.allow_hosts)
}

/// Whether webhooks may target private, loopback and link-local addresses: in dev mode or
/// with `webhooks.allow_private`.
pub fn private_allowed(config: &crate::config::Config) -> bool {
    config.server.dev || config.webhooks.allow_private
}

/// The signing secret of `tenant`, derived from the node secret.
pub fn tenant_secret(node_secret: &str, tenant: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(node_secret.as_bytes()).expect("HMAC takes any key");
    mac.update(b"webhook:");
    mac.update(tenant.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `Sluice-Signature` header value for `body` at unix time `t`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Verify a `Sluice-Signature` header (for receivers and tests): the HMAC matches and the
/// timestamp is within `tolerance` of `now`.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if (now - t).abs() > tolerance {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

/// The node secret: configured, or read from (created once in) `<data_dir>/webhook.secret`.
pub fn node_secret(config: &WebhookConfig, data_dir: &Path) -> std::io::Result<String> {
    if let Some(s) = &config.secret {
        return Ok(s.clone());
    }
    let file = data_dir.join("webhook.secret");
    match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    let secret = hex::encode(bytes);
    std::fs::write(&file, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
    }
    Ok(secret)
}

/// Deliveries in flight at once per node.
const CONCURRENCY: usize = 32;

/// The shortest time between two outbox polls that a finished job's event triggers after a
/// poll found nothing due.
const EVENT_WAKE_GAP: Duration = Duration::from_millis(20);

/// Run the webhook outbox until `stop` (or the event hub closes): claim due deliveries (from
/// any node's jobs: the store queues one when a job with a webhook finishes, in the same
/// transaction), POST each once, and record the result: delivered, retry later with backoff,
/// or dead. A finished job on this node wakes the loop at once; otherwise it polls every
/// second. Deliveries in flight are this loop's own tasks: on stop it waits for them (each is
/// bounded by `webhooks.timeout_secs`), so a result is recorded rather than left to the lease.
pub async fn run(node: Node, stop: CancellationToken) {
    let mut events = node.events.subscribe();
    let secret = match node_secret(&node.config.webhooks, &node.config.database.data_dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "no webhook secret: webhooks are disabled");
            return;
        }
    };
    let mut deliveries = JoinSet::new();
    let lease = Duration::from_secs(node.config.webhooks.timeout_secs.max(1) * 2 + 30);
    let mut last_purge = tokio::time::Instant::now();
    while !stop.is_cancelled() {
        // Reap finished deliveries so the set holds only those in flight.
        while deliveries.try_join_next().is_some() {}
        let free = CONCURRENCY.saturating_sub(deliveries.len()) as u32;
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match node.store.webhook_claim(free, lease).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                    Vec::new()
                }
            }
        };
        let claimed_nothing = claimed.is_empty();
        let busy = !claimed.is_empty() && deliveries.len() + claimed.len() < CONCURRENCY;
        for d in claimed {
            let node = node.clone();
            let secret = secret.clone();
            deliveries.spawn(async move { deliver_one(&node, d, &secret).await });
        }
        if last_purge.elapsed() > Duration::from_secs(3600) {
            last_purge = tokio::time::Instant::now();
            let keep = Duration::from_secs(node.config.webhooks.retention_hours * 3600);
            if let Err(e) = node.store.purge_control(keep).await {
                tracing::warn!(error = %e, "purging delivered webhooks failed");
            }
        }
        if busy {
            continue;
        }
        let wait = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(wait);
        let woken = loop {
            tokio::select! {
                _ = &mut wait => break false,
                _ = stop.cancelled() => break false,
                // A slot freed: claim again at once.
                Some(_) = deliveries.join_next(), if deliveries.len() >= CONCURRENCY => break false,
                ev = events.recv() => match ev {
                    Ok(ev) if ev.event.is_terminal() => break true,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break true,
                    Err(RecvError::Closed) => {
                        stop.cancel();
                        break false;
                    }
                },
            }
        };
        if woken && claimed_nothing {
            // Most finished jobs have no webhook: under load, finishing jobs would otherwise
            // poll the outbox hundreds of times a second (500/s at 7k jobs/s). Wake at most
            // every EVENT_WAKE_GAP, so a delivery waits at most that much longer.
            tokio::select! {
                _ = tokio::time::sleep(EVENT_WAKE_GAP) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    while deliveries.join_next().await.is_some() {}
}

/// Why an attempt failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// A later attempt may succeed (network error, 5xx, 408, 429).
    pub retryable: bool,
    /// What happened.
    pub reason: String,
}

impl AttemptError {
    fn retry(reason: impl Into<String>) -> Self {
        AttemptError {
            retryable: true,
            reason: reason.into(),
        }
    }
    fn fatal(reason: impl Into<String>) -> Self {
        AttemptError {
            retryable: false,
            reason: reason.into(),
        }
    }
}

/// The body a receiver gets for a finished job.
fn job_body(job: &sluice_store::JobRecord) -> Value {
    json!({
        "id": job.id,
        "plugin": job.plugin,
        "plugin_version": job.plugin_version,
        "digest": job.digest,
        "status": job.status,
        "output": job.output,
        "error": job.error,
        "attempt": job.attempt,
        "tags": job.tags,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    })
}

/// Exponential backoff with jitter after `attempts` failed attempts: a random wait between
/// half and all of 1 s, 2 s, 4 s, …, capped at 10 minutes, so receivers that come back are not
/// hit by every sender at once.
pub fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(10))
        .min(Duration::from_secs(600));
    let jitter = rand::rng().random_range(0..=base.as_millis() as u64 / 2);
    base / 2 + Duration::from_millis(jitter)
}

async fn deliver_one(node: &Node, d: WebhookDelivery, node_secret: &str) {
    let cfg = &node.config.webhooks;
    let body = match (d.job_id, &d.payload) {
        (_, Some(p)) => Ok(p.clone()),
        (Some(id), None) => match node.store.get_job(id).await {
            Ok(Some(job)) => Ok(job_body(&job)),
            Ok(None) => Err(AttemptError::fatal("the job no longer exists")),
            Err(e) => Err(AttemptError::retry(format!("loading the job: {e}"))),
        },
        (None, None) => Err(AttemptError::fatal("the delivery has no body")),
    };
    let secret = tenant_secret(node_secret, &d.tenant);
    let open = private_allowed(&node.config);
    let traceparent = crate::telemetry::delivery_traceparent(node, d.job_id).await;
    let outcome = match body {
        Ok(body) => {
            attempt(
                &d.url,
                &body,
                &AttemptHeaders {
                    secret: &secret,
                    event: &d.event,
                    delivery: &d.delivery_id.to_string(),
                    traceparent: traceparent.as_deref(),
                },
                cfg,
                open,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let attempts = d.attempts + 1;
    let result = match outcome {
        Ok(()) => {
            metrics::counter!("sluice_webhook_delivered_total").increment(1);
            tracing::debug!(delivery = d.id, attempts, "webhook delivered");
            DeliveryResult::Delivered
        }
        Err(e) if e.retryable && attempts < cfg.max_attempts.max(1) => {
            metrics::counter!("sluice_webhook_retries_total").increment(1);
            let wait = backoff(attempts);
            tracing::debug!(delivery = d.id, attempts, reason = %e.reason, ?wait, "webhook attempt failed; retrying");
            DeliveryResult::Retry {
                at: chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                error: e.reason,
            }
        }
        Err(e) => {
            let reason = if e.retryable {
                format!("{attempts} attempts failed; last: {}", e.reason)
            } else {
                e.reason
            };
            metrics::counter!("sluice_webhook_dead_total").increment(1);
            tracing::error!(delivery = d.id, url = %d.url, reason = %reason, "webhook delivery dead-lettered");
            if let Some(job) = d.job_id {
                node.events.emit(
                    job,
                    JobEvent::Log {
                        level: LogLevel::Error,
                        message: format!("webhook delivery failed: {reason}"),
                        fields: vec![
                            ("webhook_url".into(), d.url.clone()),
                            ("delivery".into(), d.id.to_string()),
                            ("kind".into(), "webhook_dead".into()),
                        ],
                    },
                );
            }
            DeliveryResult::Dead { error: reason }
        }
    };
    if let Err(e) = node.store.webhook_finish(d.id, &result).await {
        // The lease runs out and another pass tries again: at-least-once, deduped by the
        // receiver on `Sluice-Delivery`.
        tracing::warn!(delivery = d.id, error = %e, "recording a webhook attempt failed");
    }
}

/// The per-delivery headers of an attempt.
pub struct AttemptHeaders<'a> {
    /// The tenant's signing secret.
    pub secret: &'a str,
    /// `Sluice-Event`.
    pub event: &'a str,
    /// `Sluice-Delivery`: the same on every attempt of one delivery.
    pub delivery: &'a str,
    /// W3C `traceparent` of the job's trace (tracing on and the job traced), so the receiver's
    /// spans join the job's trace.
    pub traceparent: Option<&'a str>,
}

/// POST `body` to `url` once, signed.
pub async fn attempt(
    url: &str,
    body: &Value,
    h: &AttemptHeaders<'_>,
    cfg: &WebhookConfig,
    open: bool,
) -> Result<(), AttemptError> {
    let parsed = check_url_with(url, open, &cfg.allow_hosts).map_err(AttemptError::fatal)?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let listed = !cfg.allow_hosts.is_empty();
    let bytes = serde_json::to_vec(body).map_err(|e| AttemptError::fatal(e.to_string()))?;
    // Resolve and check every address, then pin the connection to a checked one, so a DNS
    // answer cannot point the request somewhere the check did not see.
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| AttemptError::retry(format!("resolving {host}: {e}")))?
        .collect();
    if !open && !listed && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(AttemptError::fatal(format!(
            "{host} resolves to a private address"
        )));
    }
    let addr = addrs
        .first()
        .copied()
        .ok_or_else(|| AttemptError::retry(format!("{host} has no addresses")))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .build()
        .map_err(|e| AttemptError::fatal(format!("building the HTTP client: {e}")))?;
    let t = chrono::Utc::now().timestamp();
    let res = client
        .post(parsed)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("sluice-webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("sluice-signature", sign(h.secret, t, &bytes))
        .header("sluice-delivery", h.delivery)
        .header("sluice-event", h.event);
    let res = match h.traceparent {
        Some(tp) => res.header("traceparent", tp),
        None => res,
    };
    let res = res
        .body(bytes)
        .send()
        .await
        .map_err(|e| AttemptError::retry(e.to_string()))?;
    let s = res.status();
    if s.is_success() {
        return Ok(());
    }
    let retryable = s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429;
    Err(AttemptError {
        retryable,
        reason: if retryable {
            format!("HTTP {s}")
        } else {
            format!("HTTP {s} (not retried)")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_refused_unless_open() {
        for bad in [
            "http://127.0.0.1/x",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::1]:8080/",
            "http://localhost:9000/",
            "http://[fd00::1]/",
            "ftp://example.com/",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("http://127.0.0.1:9000/hook", true).is_ok());
        let allow = vec!["hooks.example.com".to_string()];
        assert!(check_url_with("https://a.hooks.example.com/", false, &allow).is_ok());
        assert!(check_url_with("https://evil.com/", false, &allow).is_err());
    }

    #[test]
    fn signatures_verify() {
        let secret = tenant_secret("node", "acme");
        assert_ne!(secret, tenant_secret("node", "other"));
        let body = br#"{"id":1}"#;
        let header = sign(&secret, 1000, body);
        assert!(verify(&secret, &header, body, 1010, 300));
        assert!(!verify(&secret, &header, b"{}", 1010, 300));
        assert!(!verify(&secret, &header, body, 5000, 300));
        assert!(!verify("wrong", &header, body, 1010, 300));
    }
}
