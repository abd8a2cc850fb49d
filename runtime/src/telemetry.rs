//! OpenTelemetry traces: the subscriber the binary installs, OTLP/HTTP export, and the trace
//! context a job carries from the request that submitted it to its webhook.
//!
//! Off by default, at no cost: with no endpoint (neither `[telemetry] endpoint` nor
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) no OpenTelemetry layer
//! is installed, [`enabled`] is false, and nothing below runs.
//!
//! When on, spans go to a batch processor on its own thread with a bounded queue
//! (`max_queue_size`): ending a span only pushes to that queue, and when it is full (a
//! collector down or slow) spans are dropped and counted, never waited for. Export requests run
//! on the tokio runtime with the node's own HTTP client and a per-request timeout.
//!
//! The standard variables win over the file: `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` (`http/protobuf` only: gRPC is not built in),
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SDK_DISABLED`.
//!
//! # One trace per job
//! `POST /v1/plugins/{name}/jobs` with a W3C `traceparent` starts a `job` span as its child
//! (without one, a new trace); the `job` span's context is stored with the job
//! ([`sluice_store::JobStore::set_job_trace`]). Each attempt, on whichever node claims it, is a
//! `job.attempt` span under it, the handler run (`handler.run`) under that, and the gateway's
//! `gen_ai.*` spans (one per model call, one `gen_ai.attempt` per provider attempt) under the
//! handler. Webhook deliveries of the job send the `job` span's context as `traceparent`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL of a collector (`http://localhost:4318`); traces go to
    /// `<endpoint>/v1/traces`. Unset (and no `OTEL_EXPORTER_OTLP_*ENDPOINT`): tracing is off.
    pub endpoint: Option<String>,
    /// `http/protobuf` (the only one built in).
    pub protocol: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio`.
    pub sampler: String,
    /// The ratio of the `*traceidratio` samplers, 0 to 1.
    pub sampler_arg: f64,
    /// Which spans are exported (an `EnvFilter` directive, independent of `RUST_LOG`).
    pub filter: String,
    /// Per export request timeout, in seconds.
    pub timeout_secs: u64,
    /// Spans buffered for export; past it, new spans are dropped (never waited for).
    pub max_queue_size: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            endpoint: None,
            protocol: "http/protobuf".into(),
            service_name: "sluice".into(),
            sampler: "parentbased_always_on".into(),
            sampler_arg: 1.0,
            // Provider attempts are debug spans of the gateway; handler logs and progress are
            // debug events (see `job_event`).
            filter: "info,sluice_gateway=debug,sluice::telemetry::job_event=debug".into(),
            timeout_secs: 10,
            max_queue_size: 8192,
        }
    }
}

/// The configuration in force after the standard `OTEL_*` variables are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The full traces URL.
    pub traces_url: String,
    /// `service.name`.
    pub service_name: String,
    /// The sampler's name and argument.
    pub sampler: (String, f64),
}

impl TelemetryConfig {
    /// Apply the `OTEL_*` variables (read through `env`) over this section. `Ok(None)`: off.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, String> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let base = |u: &str| format!("{}/v1/traces", u.trim_end_matches('/'));
        let traces_url = match (
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
            self.endpoint.as_deref().filter(|e| !e.trim().is_empty()),
        ) {
            (Some(u), _, _) => u,
            (None, Some(u), _) => base(&u),
            (None, None, Some(u)) => base(u),
            (None, None, None) => return Ok(None),
        };
        if !(traces_url.starts_with("http://") || traces_url.starts_with("https://")) {
            return Err(format!(
                "the OTLP endpoint must be an http(s) URL, not {traces_url:?}"
            ));
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| self.protocol.clone());
        if protocol != "http/protobuf" {
            return Err(format!(
                "OTLP protocol {protocol:?} is not supported: this build exports http/protobuf \
                 only (point it at the collector's OTLP/HTTP port, usually 4318)"
            ));
        }
        let sampler = env("OTEL_TRACES_SAMPLER").unwrap_or_else(|| self.sampler.clone());
        let arg = match env("OTEL_TRACES_SAMPLER_ARG") {
            Some(a) => a
                .parse::<f64>()
                .map_err(|_| format!("OTEL_TRACES_SAMPLER_ARG must be a number, not {a:?}"))?,
            None => self.sampler_arg,
        };
        if !(0.0..=1.0).contains(&arg) {
            return Err(format!(
                "the sampler ratio must be between 0 and 1, not {arg}"
            ));
        }
        sampler_from(&sampler, arg)?;
        Ok(Some(Resolved {
            traces_url,
            service_name: env("OTEL_SERVICE_NAME").unwrap_or_else(|| self.service_name.clone()),
            sampler: (sampler, arg),
        }))
    }
}

fn sampler_from(name: &str, arg: f64) -> Result<Sampler, String> {
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(arg),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(arg)))
        }
        other => return Err(format!("unknown trace sampler {other:?}")),
    })
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported (checked before any tracing-only work, such as reading a job's
/// stored trace context).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped (call before the runtime goes away).
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown() {
                eprintln!("warning: flushing traces at exit failed: {e}");
            }
        }
    }
}

/// Install the process's subscriber: logs to stderr filtered by `RUST_LOG` (default `warn`),
/// plus, when `config` (with the `OTEL_*` variables) turns it on, span export over OTLP/HTTP
/// with requests run on `handle`. Errors are configuration errors; a collector that is down
/// is not one (spans are dropped while it is).
pub fn init(
    config: &TelemetryConfig,
    handle: tokio::runtime::Handle,
) -> Result<TelemetryGuard, String> {
    let log_filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter);
    let resolved = config.resolve(|k| std::env::var(k).ok());
    let resolved = match resolved {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing_subscriber::registry().with(fmt).init();
            return Ok(TelemetryGuard(None));
        }
        Err(e) => {
            tracing_subscriber::registry().with(fmt).init();
            return Err(e);
        }
    };
    let provider = otlp_provider(config, &resolved, handle)?;
    let filter = EnvFilter::try_new(&config.filter)
        .map_err(|e| format!("[telemetry] filter {:?}: {e}", config.filter))?;
    tracing_subscriber::registry()
        .with(fmt)
        .with(layer(&provider).with_filter(filter))
        .init();
    Ok(TelemetryGuard(Some(provider)))
}

/// The production provider: OTLP/HTTP protobuf to `resolved.traces_url` through a bounded
/// batch processor, requests run on `handle`.
pub fn otlp_provider(
    config: &TelemetryConfig,
    resolved: &Resolved,
    handle: tokio::runtime::Handle,
) -> Result<SdkTracerProvider, String> {
    let timeout = Duration::from_secs(config.timeout_secs.max(1));
    let client = ExportClient {
        client: reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("building the OTLP HTTP client: {e}"))?,
        handle,
    };
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(resolved.traces_url.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(timeout)
        .build()
        .map_err(|e| format!("building the OTLP exporter: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(config.max_queue_size.max(1))
                .build(),
        )
        .build();
    provider_with(processor, resolved)
}

/// A tracer provider exporting through `processor` with `resolved`'s resource and sampler,
/// made the one [`job_submitted`] and the webhook sender use. Tests pass an in-memory
/// exporter's processor here: everything else is wired as in production.
pub fn provider_with(
    processor: impl opentelemetry_sdk::trace::SpanProcessor + 'static,
    resolved: &Resolved,
) -> Result<SdkTracerProvider, String> {
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler_from(&resolved.sampler.0, resolved.sampler.1)?)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(resolved.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    if PROVIDER.set(provider.clone()).is_err() {
        return Err("telemetry is already initialised in this process".into());
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sluice"))
        .with_threads(false)
}

/// Parse a W3C `traceparent` (version `00`, 55 characters). Anything else is ignored, as the
/// W3C recommendation says: the job then starts a new trace.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    if value.len() != 55 {
        return None;
    }
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Format a span context as a W3C `traceparent`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8() & 1
    )
}

/// A job was accepted: record its `job` span (a child of the submitter's `traceparent`, if
/// valid) and return the context to store with the job. `None` when tracing is off.
pub fn job_submitted(
    traceparent: Option<&str>,
    job: uuid::Uuid,
    tenant: &str,
    plugin: &str,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    let provider = PROVIDER.get()?;
    let tracer = provider.tracer("sluice");
    let parent = match traceparent.and_then(parse_traceparent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    let span = tracer
        .span_builder(format!("job {plugin}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("sluice.job.id", job.to_string()),
            KeyValue::new("sluice.tenant", tenant.to_string()),
            KeyValue::new("sluice.plugin", plugin.to_string()),
        ])
        .start_with_context(&tracer, &parent);
    use opentelemetry::trace::Span as _;
    let sc = span.span_context().clone();
    drop(span);
    sc.is_valid().then(|| format_traceparent(&sc))
}

/// After a submission: record the `job` span and store its context with the job. Tracing
/// never fails a submission: a store error is logged and the job runs untraced.
pub async fn record_submit(
    node: &crate::node::Node,
    headers: &axum::http::HeaderMap,
    job: uuid::Uuid,
    tenant: &str,
    plugin: &str,
) {
    if !enabled() {
        return;
    }
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    if let Some(tp) = job_submitted(parent, job, tenant, plugin)
        && let Err(e) = node.store.set_job_trace(job, &tp).await
    {
        tracing::warn!(job = %job, error = %e, "could not store the job's trace context");
    }
}

/// The stored trace context of a claimed job (`None` when tracing is off: no query).
///
/// The context is written just after the job is enqueued, so a worker can claim a brand-new
/// job first: for a first attempt of a job less than a second old, a missing row is read again
/// a few times (at most ~150 ms in all) before the attempt starts a trace of its own.
pub async fn claimed_job_trace(
    node: &crate::node::Node,
    job: &sluice_store::ClaimedJob,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    let young = job.attempt == 1
        && job.run == 0
        && chrono::Utc::now() - job.created_at < chrono::TimeDelta::seconds(1);
    let mut waits = [10u64, 40, 100].into_iter();
    loop {
        match node.store.job_trace(job.id).await {
            Ok(Some(tp)) => return Some(tp),
            Ok(None) if young => match waits.next() {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => return None,
            },
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(job = %job.id, error = %e, "could not read the job's trace context");
                return None;
            }
        }
    }
}

/// The `traceparent` a webhook delivery of job `job` sends (`None`: tracing off, not a job's
/// delivery, or the job was not traced).
pub async fn delivery_traceparent(
    node: &crate::node::Node,
    job: Option<uuid::Uuid>,
) -> Option<String> {
    if !enabled() {
        return None;
    }
    node.store.job_trace(job?).await.ok().flatten()
}

/// Record a handler's log line or progress as an event of the current span (the handler's
/// `handler.run`, when emitted from a host call). Token deltas and model calls are not: the
/// model-call spans carry them. Their target is `sluice::telemetry::job_event`, at debug (so
/// `RUST_LOG=info` does not print every handler's log line).
pub fn job_event(event: &sluice_types::JobEvent) {
    job_event::record(event);
}

mod job_event {
    use sluice_types::JobEvent;

    pub(super) fn record(event: &JobEvent) {
        match event {
            JobEvent::Log { level, message, .. } => tracing::debug!(
                sluice.log.level = ?level,
                sluice.log.message = %message,
                "log"
            ),
            JobEvent::Progress { message, fraction } => tracing::debug!(
                sluice.progress.message = %message,
                sluice.progress.fraction = fraction.map(f64::from),
                "progress"
            ),
            _ => {}
        }
    }
}

/// The span of one attempt of `job`, a child of the job's stored context when there is one.
pub fn attempt_span(job: &sluice_store::ClaimedJob, stored: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "job.attempt",
        otel.name = %format!("job.attempt {}", job.plugin),
        otel.kind = "consumer",
        sluice.job.id = %job.id,
        sluice.tenant = %job.tenant,
        sluice.plugin = %job.plugin,
        sluice.plugin.version = job.plugin_version,
        sluice.attempt = job.attempt,
        sluice.run = job.run,
        sluice.outcome = tracing::field::Empty,
        sluice.error.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(sc) = stored.and_then(parse_traceparent) {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(Context::new().with_remote_span_context(sc));
    }
    span
}

/// The HTTP client the exporter uses: the node's reqwest, with each request run on the tokio
/// runtime (the batch processor's thread has none) and a bounded response body.
#[derive(Debug, Clone)]
struct ExportClient {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

/// Largest collector response read (it carries at most a partial-success message).
const MAX_EXPORT_RESPONSE_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let request = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        let task = self.handle.spawn(async move {
            let mut res = request.send().await?;
            let mut out = opentelemetry_http::Response::builder().status(res.status());
            if let Some(h) = out.headers_mut() {
                *h = res.headers().clone();
            }
            let mut body = Vec::new();
            while let Some(chunk) = res.chunk().await? {
                if body.len() + chunk.len() > MAX_EXPORT_RESPONSE_BYTES {
                    return Err::<_, opentelemetry_http::HttpError>(
                        "the collector's response is too large".into(),
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Ok(out.body(opentelemetry_http::Bytes::from(body))?)
        });
        task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_junk_is_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(format_traceparent(&sc), tp);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn off_by_default_and_env_wins() {
        let c = TelemetryConfig::default();
        assert_eq!(c.resolve(|_| None), Ok(None));
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318/".to_string()),
            "OTEL_SERVICE_NAME" => Some("svc".to_string()),
            "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_string()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".to_string()),
            _ => None,
        };
        let r = c.resolve(env).unwrap().unwrap();
        assert_eq!(r.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(r.service_name, "svc");
        assert_eq!(r.sampler, ("traceidratio".to_string(), 0.25));
        let grpc = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4317".to_string()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_string()),
            _ => None,
        };
        assert!(c.resolve(grpc).unwrap_err().contains("http/protobuf"));
        let disabled = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4318".to_string()),
            "OTEL_SDK_DISABLED" => Some("true".to_string()),
            _ => None,
        };
        assert_eq!(c.resolve(disabled), Ok(None));
    }
}
