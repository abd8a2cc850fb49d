//! Strict, typed configuration: defaults → `sluice.toml` → `SLUICE_*` environment.
//!
//! The defaults are the types' own (`Default`, through `#[serde(default)]`); `figment` lays
//! the file and the environment over them. Unknown keys are errors in both (a typo must not
//! silently fall back to a default), an environment value is typed by the key it sets, and
//! secrets never appear in `Debug` output or in `sluice check-config`. Every key is listed in
//! `docs/configuration.md`.

mod layers;
pub mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use serde::{Deserialize, Serialize};

pub use layers::{ENV_PREFIX, ENV_SEPARATOR};

/// The whole configuration of a `sluice` process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// The job store.
    pub database: DatabaseConfig,
    /// The wasm engine.
    pub engine: EngineSection,
    /// Job execution.
    pub worker: WorkerConfig,
    /// Model providers, models, aliases, limits and budgets. Empty: the built-in simulated
    /// providers (no keys needed).
    pub gateway: sluice_gateway::GatewayConfig,
    /// Outcome webhooks.
    pub webhooks: WebhookConfig,
    /// OpenTelemetry trace export (off unless an endpoint is set here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Operational alert rules (DLQ, plugin error rate and latency, provider breakers).
    pub alerts: crate::alerts::AlertsConfig,
    /// `/metrics` labels that name plugins (allow-listed).
    pub metrics: crate::metrics::MetricsConfig,
}

/// `[webhooks]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The node secret each tenant's signing secret is derived from
    /// (`hex(HMAC-SHA256(secret, "webhook:" + tenant))`). Unset: a random secret is created
    /// once in `<data_dir>/webhook.secret` and reused. Nodes sharing a database must share it.
    pub secret: Option<String>,
    /// If non-empty, webhook hosts must be one of these or a subdomain of one. Listed hosts
    /// may resolve to private addresses.
    pub allow_hosts: Vec<String>,
    /// Allow private, loopback and link-local targets (always allowed in dev mode).
    pub allow_private: bool,
    /// Delivery attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Per-attempt timeout, in seconds.
    pub timeout_secs: u64,
    /// Where alerts of the budgets in `[gateway]` are POSTed (signed with the secret of tenant
    /// `_system`). Tenants' own budgets name their own alert URL.
    pub alert_url: Option<String>,
    /// How long delivered webhooks stay visible in `GET /v1/webhooks/deliveries`, in hours.
    /// Dead ones stay until retried.
    pub retention_hours: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            allow_hosts: Vec::new(),
            allow_private: false,
            max_attempts: 8,
            timeout_secs: 10,
            alert_url: None,
            retention_hours: 72,
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("allow_hosts", &self.allow_hosts)
            .field("allow_private", &self.allow_private)
            .field("max_attempts", &self.max_attempts)
            .field("timeout_secs", &self.timeout_secs)
            .field("alert_url", &self.alert_url)
            .field("retention_hours", &self.retention_hours)
            .finish()
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: String,
    /// Development mode: allows running without API keys on loopback and webhooks to
    /// private addresses.
    pub dev: bool,
    /// Largest request body accepted, in bytes (component uploads included).
    pub max_body_bytes: usize,
    /// Largest job input, in bytes.
    pub max_input_bytes: usize,
    /// How often the queue gauges of `/metrics` and `/readyz` are read from the store, in
    /// seconds (at least 1): scrapes and probes are answered from the last reading, so they
    /// never run the counting queries themselves.
    pub gauges_refresh_secs: u64,
    /// Per-request limits of the HTTP API (`[server.limits]`).
    pub limits: ApiLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            dev: false,
            max_body_bytes: 32 << 20,
            max_input_bytes: 1 << 20,
            gauges_refresh_secs: 5,
            limits: ApiLimits::default(),
        }
    }
}

/// `[server.limits]`: what one request may ask for. Each is checked before the request costs
/// memory or a database write; past one, the request fails with a problem document naming the
/// field (see `docs/limits.md`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Tags on one job.
    pub max_tags: usize,
    /// Bytes of one tag key (keys are 1 or more bytes).
    pub max_tag_key_bytes: usize,
    /// Bytes of one tag value.
    pub max_tag_value_bytes: usize,
    /// Largest `timeout_ms` a submission or a plugin's settings may ask for.
    pub max_timeout_ms: u64,
    /// Largest `max_attempts` a submission, a redrive or a plugin's settings may ask for.
    pub max_attempts: u32,
    /// Bytes of an idempotency key (`Idempotency-Key`, or `idempotency_key` in a batch); at
    /// most the store's 512.
    pub max_idempotency_key_bytes: usize,
    /// Jobs in one batch submission.
    pub max_batch_jobs: usize,
    /// Jobs one tenant may have waiting or running at once (0: no limit); past it a submit
    /// gets 429 `quota-exceeded`. Checked against a count at most a second old.
    pub max_waiting_jobs_per_tenant: u64,
    /// Bytes of state (keys and values) one tenant may hold (0: no limit); past it a state
    /// write gets `state-error::too-large`. Checked against a sum at most 5 s old.
    pub max_state_bytes_per_tenant: u64,
    /// How much larger than `server.max_input_bytes` the body of one submission may be (its
    /// tags, webhook and other fields).
    pub submit_overhead_bytes: usize,
    /// Largest body of a batch submission.
    pub max_batch_body_bytes: usize,
    /// Largest body of every other JSON request (settings, activation, budgets, redrive).
    pub max_json_body_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_tags: 32,
            max_tag_key_bytes: 64,
            max_tag_value_bytes: 256,
            max_timeout_ms: 3_600_000,
            max_attempts: 100,
            max_idempotency_key_bytes: 256,
            max_batch_jobs: 1000,
            max_waiting_jobs_per_tenant: 1_000_000,
            max_state_bytes_per_tenant: 1 << 30,
            submit_overhead_bytes: 64 << 10,
            max_batch_body_bytes: 8 << 20,
            max_json_body_bytes: 64 << 10,
        }
    }
}

/// `[database]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` for production, `sqlite://path` for one node. Default: SQLite in the
    /// data directory.
    pub url: Option<String>,
    /// Where SQLite files and compiled artifacts live.
    pub data_dir: PathBuf,
    /// Connections in the pool.
    pub max_connections: u32,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("data_dir", &self.data_dir)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            data_dir: PathBuf::from(".sluice"),
            max_connections: 16,
        }
    }
}

impl DatabaseConfig {
    /// The URL to connect to: the configured one, or SQLite in the data directory.
    pub fn effective_url(&self) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("sluice.db").display()))
    }
}

/// Hide the password in a database URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `[engine]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Use the pooling allocator (falls back automatically when unavailable).
    pub pooling: bool,
    /// Instances alive at once.
    pub max_instances: u32,
    /// Largest memory a plugin may be given, in MiB.
    pub max_memory_mb: usize,
    /// Memory for plugins that set none, in MiB.
    pub default_memory_mb: usize,
    /// Time limit for plugins that set none, in seconds.
    pub default_timeout_secs: u64,
    /// What one job attempt may send the host (`docs/limits.md`). A plugin's settings may
    /// lower these, never raise them.
    pub limits: GuestLimits,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            pooling: true,
            max_instances: 1000,
            max_memory_mb: 256,
            default_memory_mb: 64,
            default_timeout_secs: 300,
            limits: GuestLimits::default(),
        }
    }
}

/// `[engine.limits]`: per-attempt bounds on what a handler sends the host.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestLimits {
    /// Events (progress and log lines) per attempt; past it they are dropped and counted.
    pub max_events: u32,
    /// Bytes of event text per attempt; past it, as for `max_events`.
    pub max_event_bytes: usize,
    /// Bytes of output; larger output fails the job (`output_too_large`).
    pub max_output_bytes: usize,
    /// Model calls per attempt; past it a call returns `invalid-request`.
    pub max_model_calls: u32,
    /// Requests in one chat batch; a longer batch is refused whole.
    pub max_chat_batch: u32,
    /// Micro-dollars in one `report-cost` call.
    pub max_cost_per_report_micros: u64,
    /// Micro-dollars reported by one attempt.
    pub max_reported_cost_micros: u64,
    /// Bytes of arguments in one host call, checked while they are copied from the guest;
    /// past it the job fails (`hostcall_too_large`).
    pub max_hostcall_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        let d = sluice_engine::JobLimits::default();
        GuestLimits {
            max_events: d.max_events,
            max_event_bytes: d.max_event_bytes,
            max_output_bytes: d.max_output_bytes,
            max_model_calls: d.max_model_calls,
            max_chat_batch: d.max_chat_batch,
            max_cost_per_report_micros: d.max_cost_per_report_micros,
            max_reported_cost_micros: d.max_reported_cost_micros,
            max_hostcall_bytes: d.max_hostcall_bytes,
        }
    }
}

impl EngineSection {
    /// The engine configuration this section describes, caching artifacts under `data_dir`.
    pub fn to_engine_config(&self, data_dir: Option<&Path>) -> sluice_engine::EngineConfig {
        sluice_engine::EngineConfig {
            pooling: self.pooling,
            max_instances: self.max_instances,
            max_memory_bytes: self.max_memory_mb << 20,
            default_limits: sluice_engine::JobLimits {
                memory_bytes: self.default_memory_mb << 20,
                timeout: Duration::from_secs(self.default_timeout_secs),
                max_events: self.limits.max_events,
                max_event_bytes: self.limits.max_event_bytes,
                max_output_bytes: self.limits.max_output_bytes,
                max_model_calls: self.limits.max_model_calls,
                max_chat_batch: self.limits.max_chat_batch,
                max_cost_per_report_micros: self.limits.max_cost_per_report_micros,
                max_reported_cost_micros: self.limits.max_reported_cost_micros,
                max_hostcall_bytes: self.limits.max_hostcall_bytes,
            },
            cache_dir: data_dir.map(|d| d.join("artifacts")),
            ..sluice_engine::EngineConfig::default()
        }
    }
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs this node runs at once.
    pub slots: u32,
    /// How long a claimed job's lease lasts before another node may take it, in seconds.
    pub lease_secs: u64,
    /// The polling backstop behind notifications, in milliseconds.
    pub poll_ms: u64,
    /// Attempts for jobs that set none.
    pub default_max_attempts: u32,
    /// The largest share of the cluster's worker slots (this node's `slots` times the live
    /// worker nodes) one tenant's jobs may hold at once, from 0.0 to 1.0. The rest stays free
    /// for other tenants, so one tenant's flood of slow jobs cannot stall everyone else.
    /// 1.0 turns the cap off (a single-tenant deployment).
    pub tenant_share: f64,
    /// How long the worker keeps trying to record a finished attempt (its completion or
    /// failure) while the store is unreachable, in seconds, before giving the job up to its
    /// lease (it then runs again). The lease is kept alive meanwhile.
    pub finalize_retry_secs: u64,
    /// Job events and usage rows this node may hold in memory waiting for the store (an
    /// outage or a slow database). At the cap the worker stops claiming new jobs until the
    /// store catches up; nothing already accepted is dropped. Jobs already running may add
    /// what their own limits allow past it.
    pub max_buffered_writes: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            // AI jobs spend most of an attempt parked in a model call (~115 KiB each, measured
            // with 10,000 parked), so slots are sized for waiting, not for cores: at 64, a
            // provider five times slower than usual backed the queue up at 10 jobs/s
            // (BENCHMARKS.md, "slow-day").
            slots: 256,
            lease_secs: 30,
            poll_ms: 1000,
            default_max_attempts: 5,
            tenant_share: 0.75,
            finalize_retry_secs: 600,
            max_buffered_writes: 100_000,
        }
    }
}

impl WorkerConfig {
    /// The most jobs one tenant may run at once across `live_nodes` worker nodes (`None`:
    /// no cap). At least one, so every tenant can make progress.
    pub fn tenant_cap(&self, live_nodes: u32) -> Option<u32> {
        if self.tenant_share >= 1.0 || self.tenant_share.is_nan() {
            return None;
        }
        let total = f64::from(self.slots) * f64::from(live_nodes.max(1));
        Some(((total * self.tenant_share.max(0.0)).floor() as u32).max(1))
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// An environment variable has a bad value or names an unknown key.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Load defaults, then `path` if given (it must exist), then `SLUICE_*` variables
    /// (`SLUICE_DATABASE__URL=…` sets `database.url`; sections and keys joined by `__`).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with(path, std::env::vars_os())
    }

    /// [`Config::load`] with the environment given.
    pub fn load_with(
        path: Option<&Path>,
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(layers::TomlFile::read(path)?);
        }
        let env = layers::EnvLayer::from_vars(vars)?;
        let label = path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<defaults+env>"));
        let config: Config = figment
            .merge(&env)
            .extract()
            .map_err(|e| from_figment(e, &label, &env))?;
        config.check().map_err(|message| ConfigError::Parse {
            path: label,
            message,
        })?;
        Ok(config)
    }

    /// A copy fit to print: secrets replaced by `<redacted>` (API keys already print so),
    /// passwords cut out of URLs. Provider headers are redacted whole, since they are where
    /// credentials other than the API key go.
    pub fn redacted(&self) -> Config {
        const REDACTED: &str = "<redacted>";
        let mut c = self.clone();
        if c.webhooks.secret.is_some() {
            c.webhooks.secret = Some(REDACTED.into());
        }
        for url in [
            &mut c.database.url,
            &mut c.telemetry.endpoint,
            &mut c.alerts.url,
            &mut c.webhooks.alert_url,
        ] {
            if let Some(u) = url.as_mut() {
                *u = redact_url(u);
            }
        }
        for provider in c.gateway.providers.values_mut() {
            for value in provider.headers.values_mut() {
                *value = REDACTED.into();
            }
        }
        c
    }

    /// The configuration as a TOML document (unset optional keys left out).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Values that parse but contradict each other or the store's own bounds.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.server;
        let l = &s.limits;
        if s.gauges_refresh_secs == 0 {
            return Err("server.gauges_refresh_secs must be at least 1".into());
        }
        if !(1..=sluice_store::MAX_KEY_BYTES).contains(&l.max_idempotency_key_bytes) {
            return Err(format!(
                "server.limits.max_idempotency_key_bytes must be 1 to {} (the store's limit)",
                sluice_store::MAX_KEY_BYTES
            ));
        }
        // The defaults given to jobs that ask for nothing must themselves be allowed.
        let default_timeout_ms = self.engine.default_timeout_secs.saturating_mul(1000);
        if l.max_timeout_ms < default_timeout_ms.max(1) {
            return Err(format!(
                "server.limits.max_timeout_ms ({}) is below engine.default_timeout_secs ({} ms)",
                l.max_timeout_ms, default_timeout_ms
            ));
        }
        if l.max_attempts < self.worker.default_max_attempts.max(1) {
            return Err(format!(
                "server.limits.max_attempts ({}) is below worker.default_max_attempts ({})",
                l.max_attempts, self.worker.default_max_attempts
            ));
        }
        if self.worker.max_buffered_writes == 0 {
            return Err("worker.max_buffered_writes must be at least 1".into());
        }
        self.metrics.validate()?;
        for (name, v) in [
            ("max_batch_jobs", l.max_batch_jobs),
            ("max_batch_body_bytes", l.max_batch_body_bytes),
            ("max_json_body_bytes", l.max_json_body_bytes),
        ] {
            if v == 0 {
                return Err(format!("server.limits.{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// A figment error as a [`ConfigError`] naming the file or the variable, and the key.
fn from_figment(e: figment::Error, file: &Path, env: &layers::EnvLayer) -> ConfigError {
    let message = match &e.kind {
        // Said the way the environment layer says it, with the table it is not a key of.
        figment::error::Kind::UnknownField(field, expected) => {
            let table = schema::display_path(&e.path[..e.path.len().saturating_sub(1)]);
            let at = if table.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{table}`")
            };
            format!(
                "unknown key `{field}` {at} (expected one of: {})",
                expected.join(", ")
            )
        }
        kind if e.path.is_empty() => kind.to_string(),
        kind => format!("`{}`: {kind}", schema::display_path(&e.path)),
    };
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name == layers::EnvLayer::NAME);
    match env.var_for(&e.path) {
        Some(name) if from_env => ConfigError::Env {
            name: name.to_string(),
            message,
        },
        _ => ConfigError::Parse {
            path: file.to_path_buf(),
            message,
        },
    }
}

#[cfg(test)]
mod tests;
