//! What a load test runs against: a Sluice it starts in-process (the HTTP API, the worker,
//! and the gateway's own simulated providers, wired as `sluice up --dev` wires them) or one
//! already running (`--url`). Either way the run drives it over HTTP only, so both are
//! measured the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;
use sluice_gateway::{Faults, SimControl, SimStats};

use super::scenario::Scenario;
use crate::config::Config;
use crate::node::Node;

/// The providers of the in-process gateway a scenario may shape.
pub const SIM_PROVIDERS: [&str; 2] = ["sim", "sim-b"];

/// Where the simulated providers are switched.
#[derive(Clone)]
pub enum SimLink {
    /// In this process.
    Local(SimControl),
    /// A `sluice sim-provider` reached at its admin URL.
    Admin(String),
}

/// The server under test.
pub struct Target {
    /// Its base URL.
    pub url: String,
    /// API key, if one is needed.
    pub key: Option<String>,
    /// The client every request goes through.
    pub http: reqwest::Client,
    /// The simulated providers it can switch, by name.
    pub sims: BTreeMap<String, SimLink>,
    /// Store URL (redacted) when in-process, for the report.
    pub store: Option<String>,
    local: Option<Local>,
}

struct Local {
    node: Node,
    running: crate::node::RunningNode,
    /// The SQLite data directory, when the run made its own.
    _data: Option<tempfile::TempDir>,
}

/// How to start an in-process node.
pub struct LocalOptions {
    /// `postgres://…` or `sqlite://…`; none: SQLite in a fresh temporary directory (or in
    /// `data_dir`).
    pub database_url: Option<String>,
    /// Where SQLite and compiled artifacts go (kept after the run).
    pub data_dir: Option<PathBuf>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap_or_default()
}

impl Target {
    /// A running server.
    pub async fn remote(
        url: &str,
        key: Option<String>,
        scenario: &Scenario,
    ) -> anyhow::Result<Target> {
        let sims = scenario
            .providers
            .iter()
            .filter_map(|(name, p)| {
                p.admin_url.as_ref().map(|u| {
                    (
                        name.clone(),
                        SimLink::Admin(u.trim_end_matches('/').to_string()),
                    )
                })
            })
            .collect();
        let t = Target {
            url: url.trim_end_matches('/').to_string(),
            key,
            http: client(),
            sims,
            store: None,
            local: None,
        };
        let health = t
            .http
            .get(format!("{}/healthz", t.url))
            .send()
            .await
            .with_context(|| format!("reaching {}", t.url))?;
        if !health.status().is_success() {
            bail!("{}/healthz answered {}", t.url, health.status());
        }
        Ok(t)
    }

    /// Start a node in this process on loopback, in dev mode, with the scenario's simulated
    /// providers.
    pub async fn local(
        scenario: &Scenario,
        mut config: Config,
        opts: LocalOptions,
    ) -> anyhow::Result<Target> {
        let data = match &opts.data_dir {
            Some(d) => {
                config.database.data_dir = d.clone();
                None
            }
            None => {
                let d = tempfile::tempdir().context("making a data directory")?;
                config.database.data_dir = d.path().to_path_buf();
                Some(d)
            }
        };
        config.database.url = opts.database_url.clone();
        config.server.dev = true;
        config.server.listen = "127.0.0.1:0".into();
        // The queue-depth series is sampled every second.
        config.server.gauges_refresh_secs = 1;
        config.worker.slots = scenario.node.slots;
        // One tenant runs everything here: the cap that keeps tenants apart would only
        // hide how fast the node is.
        config.worker.tenant_share = 1.0;
        config.gateway = gateway_config(scenario, config.gateway)?;
        let store = crate::config::redact_url(&config.database.effective_url());
        let node = Node::start(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let running = node
            .start_roles(crate::node::Roles::ALL, Some(listener))
            .await?;
        let addr = running
            .api_addr()
            .context("the in-process node has no API address")?;
        let sims = SIM_PROVIDERS
            .iter()
            .filter_map(|name| {
                node.gateway
                    .simulator(name)
                    .map(|h| (name.to_string(), SimLink::Local(h.control().clone())))
            })
            .collect();
        Ok(Target {
            url: format!("http://{addr}"),
            key: None,
            http: client(),
            sims,
            store: Some(store),
            local: Some(Local {
                node,
                running,
                _data: data,
            }),
        })
    }

    /// Whether the node runs in this process.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// A request to `path` with the key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let res = self
            .request(Method::GET, path)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(body)
    }

    /// The server's `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<super::scrape::Metrics> {
        let res = self.request(Method::GET, "/metrics").send().await?;
        if !res.status().is_success() {
            bail!("GET /metrics: {}", res.status());
        }
        let body = res.bytes().await?;
        if body.len() > super::scrape::MAX_METRICS_BYTES {
            bail!("GET /metrics: {} bytes, more than this reads", body.len());
        }
        Ok(super::scrape::Metrics::parse(&String::from_utf8_lossy(
            &body,
        )))
    }

    /// Make `name` runnable: upload the component at `path` (built first when a directory),
    /// or check that a plugin of that name is deployed.
    pub async fn ensure_plugin(&self, scenario: &Scenario) -> anyhow::Result<String> {
        let name = scenario.plugin_name();
        let Some(path) = &scenario.plugin.path else {
            self.get_json(&format!("/v1/plugins/{name}"))
                .await
                .with_context(|| format!("plugin {name} is not deployed on {}", self.url))?;
            return Ok(name);
        };
        let path = scenario.resolve(path);
        eprintln!("building {}…", path.display());
        let p = path.clone();
        let (_, bytes) =
            tokio::task::spawn_blocking(move || crate::plugin_build::component_bytes(&p))
                .await?
                .with_context(|| format!("building {}", path.display()))?;
        let res = self
            .request(Method::PUT, &format!("/v1/plugins/{name}"))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await?;
        let status = res.status();
        if !status.is_success() {
            let body = res.text().await.unwrap_or_default();
            bail!("uploading {name}: {status}: {body}");
        }
        Ok(name)
    }

    /// Put `faults` into force on provider `name` (ignored when it cannot be reached).
    pub async fn set_faults(&self, name: &str, faults: &Faults) -> anyhow::Result<()> {
        match self.sims.get(name) {
            Some(SimLink::Local(c)) => c.set_faults(faults.clone()),
            Some(SimLink::Admin(url)) => {
                let res = self
                    .http
                    .put(format!("{url}/admin/faults"))
                    .json(faults)
                    .send()
                    .await?;
                if !res.status().is_success() {
                    bail!("PUT {url}/admin/faults: {}", res.status());
                }
            }
            None => {}
        }
        Ok(())
    }

    /// What each reachable simulator saw and answered.
    pub async fn sim_stats(&self) -> BTreeMap<String, SimStats> {
        let mut out = BTreeMap::new();
        for (name, link) in &self.sims {
            let stats = match link {
                SimLink::Local(c) => Some(c.stats()),
                SimLink::Admin(url) => {
                    match self.http.get(format!("{url}/admin/stats")).send().await {
                        Ok(r) => r.json::<SimStats>().await.ok(),
                        Err(_) => None,
                    }
                }
            };
            if let Some(s) = stats {
                out.insert(name.clone(), s);
            }
        }
        out
    }

    /// Stop the in-process node (nothing for a remote one).
    pub async fn shutdown(self) {
        if let Some(l) = self.local {
            l.running.shutdown(Duration::from_secs(10)).await;
            l.node.store.close().await;
        }
    }
}

/// The gateway of an in-process run: the built-in simulated providers shaped by the
/// scenario, with the configuration's cache, retry and budget settings.
pub fn gateway_config(
    scenario: &Scenario,
    base: sluice_gateway::GatewayConfig,
) -> anyhow::Result<sluice_gateway::GatewayConfig> {
    let sim = sluice_gateway::GatewayConfig::simulated();
    let mut cfg = sluice_gateway::GatewayConfig {
        providers: sim.providers,
        models: sim.models,
        aliases: sim.aliases,
        ..base
    };
    for (i, (name, spec)) in scenario.providers.iter().enumerate() {
        let Some(p) = cfg.providers.get_mut(name) else {
            bail!(
                "providers.{name}: an in-process run has the simulated providers {} (the \
                 `fast` and `smart` aliases try `sim` first, then `sim-b`)",
                SIM_PROVIDERS.join(" and ")
            );
        };
        let Some(s) = p.simulator.as_mut() else {
            bail!("providers.{name}: not a simulated provider");
        };
        s.config.seed = scenario.seed.wrapping_add(i as u64);
        if let Some(x) = spec.ttft_ms {
            s.config.ttft_ms = x;
        }
        if let Some(x) = spec.tokens_per_sec {
            s.config.tokens_per_sec = x;
        }
        s.config.rpm = spec.rpm;
        s.config.tpm = spec.tpm;
        s.config.faults.error_rate = spec.error_rate;
        p.rpm = spec.sluice_rpm.or(spec.rpm);
        p.tpm = spec.sluice_tpm.or(spec.tpm);
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("the scenario's providers: {e}"))?;
    Ok(cfg)
}
