//! Outcome webhooks: when a job finishes, POST its outcome to the job's webhook URL, signed.
//!
//! Each delivery carries:
//! - `Sluice-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` — a
//!   receiver recomputes it with its tenant's secret and rejects old timestamps;
//! - `Sluice-Delivery: <uuid>` — the same across retries of one delivery, for dedupe;
//! - `Sluice-Event: job.completed | job.dead | job.cancelled`.
//!
//! The signing secret of a tenant is `hex(HMAC-SHA256(node secret, "webhook:" + tenant))`
//! ([`tenant_secret`]); `sluice keys webhook-secret --tenant t` prints it. The node secret is
//! `webhooks.secret`, or a random one kept in `<data_dir>/webhook.secret`.
//!
//! Failed deliveries are retried with exponential backoff and jitter. A delivery that runs
//! out of attempts (or gets a non-retryable 4xx) is dead-lettered: counted in
//! `sluice_webhook_dead_total`, logged, and appended to the job's event stream as an
//! `error` log event, so it is visible through `GET /v1/jobs/{id}/events`.
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
use sluice_types::{EventSink, JobEvent, LogLevel};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

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

/// Deliver outcome webhooks for jobs that finish on this node until the event hub closes.
pub fn spawn_webhooks(node: Node) -> tokio::task::JoinHandle<()> {
    let mut events = node.events.subscribe();
    tokio::spawn(async move {
        let secret = match node_secret(&node.config.webhooks, &node.config.database.data_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "no webhook secret: webhooks are disabled");
                return;
            }
        };
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if crate::api::is_terminal_status(&ev.event) {
                        let node = node.clone();
                        let secret = secret.clone();
                        tokio::spawn(async move { deliver_job(node, ev.job, &secret).await });
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    metrics::counter!("sluice_webhook_lagged_events_total").increment(n);
                    tracing::warn!(missed = n, "webhook dispatcher lagged behind job events");
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

async fn deliver_job(node: Node, id: Uuid, node_secret: &str) {
    let job = match node.store.get_job(id).await {
        Ok(Some(j)) => j,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "loading a finished job for its webhook failed");
            return;
        }
    };
    let Some(url) = job.webhook_url.clone() else {
        return;
    };
    let body = json!({
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
    });
    let secret = tenant_secret(node_secret, &job.tenant);
    let event = format!("job.{}", job.status.as_str());
    let cfg = &node.config.webhooks;
    let open = private_allowed(&node.config);
    let outcome = deliver(&url, &body, &secret, &event, cfg, open).await;
    match outcome {
        Ok(attempts) => {
            metrics::counter!("sluice_webhook_delivered_total").increment(1);
            tracing::debug!(job = %id, attempts, "webhook delivered");
        }
        Err(reason) => {
            metrics::counter!("sluice_webhook_dead_total").increment(1);
            tracing::error!(job = %id, url = %url, reason = %reason, "webhook delivery dead-lettered");
            node.events.emit(
                id,
                JobEvent::Log {
                    level: LogLevel::Error,
                    message: format!("webhook delivery failed: {reason}"),
                    fields: vec![
                        ("webhook_url".into(), url.clone()),
                        ("kind".into(), "webhook_dead".into()),
                    ],
                },
            );
        }
    }
}

/// POST `body` to `url` until it succeeds or attempts run out; `Ok(attempts)` or the reason
/// it was given up.
pub async fn deliver(
    url: &str,
    body: &Value,
    secret: &str,
    event: &str,
    cfg: &WebhookConfig,
    open: bool,
) -> Result<u32, String> {
    let parsed = check_url_with(url, open, &cfg.allow_hosts)?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let listed = !cfg.allow_hosts.is_empty();
    let delivery = Uuid::new_v4().to_string();
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let max = cfg.max_attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=max {
        if attempt > 1 {
            let base = Duration::from_millis(500 * (1u64 << (attempt - 2).min(10)));
            let capped = base.min(Duration::from_secs(300));
            let jitter = rand::rng().random_range(0..=capped.as_millis() as u64 / 2);
            tokio::time::sleep(capped / 2 + Duration::from_millis(jitter)).await;
        }
        // Resolve and check every address, then pin the connection to a checked one, so a
        // DNS answer cannot point the request somewhere the check did not see.
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                last = format!("resolving {host}: {e}");
                continue;
            }
        };
        if !open && !listed && addrs.iter().any(|a| is_private(a.ip())) {
            return Err(format!("{host} resolves to a private address"));
        }
        let Some(addr) = addrs.first().copied() else {
            last = format!("{host} has no addresses");
            continue;
        };
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addr)
            .build()
        {
            Ok(c) => c,
            Err(e) => return Err(format!("building the HTTP client: {e}")),
        };
        let t = chrono::Utc::now().timestamp();
        let res = client
            .post(parsed.clone())
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("sluice-webhooks/", env!("CARGO_PKG_VERSION")),
            )
            .header("sluice-signature", sign(secret, t, &bytes))
            .header("sluice-delivery", &delivery)
            .header("sluice-event", event)
            .body(bytes.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => {
                let s = r.status();
                last = format!("HTTP {s}");
                let retryable = s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429;
                if !retryable {
                    return Err(format!("{last} (not retried)"));
                }
            }
            Err(e) => last = e.to_string(),
        }
        metrics::counter!("sluice_webhook_retries_total").increment(1);
    }
    Err(format!("{max} attempts failed; last: {last}"))
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
