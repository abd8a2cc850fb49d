//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/v1/nodes`,
//! `/v1/providers`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::auth::{Administrator, Reader, Scope};
use super::error::{ApiError, ApiResult, Common, problems};
use super::{ApiDoc, AppState};

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder once per process. If another recorder is already
/// installed (an embedding application's), `/metrics` renders only what this one sees.
pub(crate) fn install_metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| match crate::metrics::prometheus_builder().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only queue gauges");
            PrometheusBuilder::new().build_recorder().handle()
        }
    })
}

/// Body of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok`.
    status: &'static str,
}

/// Liveness: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    security(()),
    responses((status = 200, description = "The process is up", body = Health))
)]
pub(crate) async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Body of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Ready {
    /// `ready`.
    status: &'static str,
    /// `ok`.
    store: &'static str,
}

problems!(ReadyzErrors, Common::NO_KEY, {
    503 => "The store is unreachable",
});

/// Readiness: the store answered its last reading (migrations are applied when it opens).
///
/// Answered from the queue gauges, which are read at most every `server.gauges_refresh_secs`:
/// probes never query the store themselves.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Ready),
        ReadyzErrors,
    )
)]
pub(crate) async fn readyz(State(st): State<AppState>) -> Response {
    let not_ready = |why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("the store is not reachable: {why}"),
        )
        .into_response()
    };
    match st.gauges.read().await.map(|r| r.stats) {
        Some(Ok(_)) => axum::Json(Ready {
            status: "ready",
            store: "ok",
        })
        .into_response(),
        Some(Err(e)) => not_ready(e),
        None => not_ready("it has not answered yet".into()),
    }
}

problems!(MetricsErrors, Common::key(Scope::Read));

/// Prometheus metrics: queue depth by state, DLQ depth, jobs, model calls, webhooks.
///
/// Needs a key with the `read` scope (none in dev mode on loopback). Queue depths are the
/// last reading of the store, taken at most every `server.gauges_refresh_secs`
/// (`sluice_gauges_age_seconds` says how old it is).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        MetricsErrors,
    )
)]
pub(crate) async fn metrics(State(st): State<AppState>, _principal: Reader) -> Response {
    let handle = install_metrics();
    handle.run_upkeep();
    let mut body = handle.render();
    let reading = st.gauges.read().await;
    if let Some(r) = &reading {
        body.push_str(
            "# HELP sluice_gauges_age_seconds Age of the queue gauges' last reading of the store.\n",
        );
        body.push_str("# TYPE sluice_gauges_age_seconds gauge\n");
        body.push_str(&format!(
            "sluice_gauges_age_seconds {:.3}\n",
            r.at.elapsed().as_secs_f64()
        ));
    }
    if let Some(b) = reading.as_ref().and_then(|r| r.breakdown.as_ref()) {
        body.push_str(&crate::metrics::render_breakdown(
            b,
            &st.node.config.metrics.plugin_labels,
            chrono::Utc::now(),
        ));
    }
    match reading.map(|r| r.stats) {
        Some(Ok(q)) => {
            body.push_str("# HELP sluice_queue_depth Jobs in the queue by state.\n");
            body.push_str("# TYPE sluice_queue_depth gauge\n");
            for (state, n) in [
                ("scheduled", q.scheduled),
                ("queued", q.queued),
                ("retrying", q.retrying),
                ("running", q.running),
            ] {
                body.push_str(&format!("sluice_queue_depth{{state=\"{state}\"}} {n}\n"));
            }
            body.push_str("# HELP sluice_dlq_depth Dead jobs (the dead-letter queue).\n");
            body.push_str("# TYPE sluice_dlq_depth gauge\n");
            body.push_str(&format!("sluice_dlq_depth {}\n", q.dead));
            body.push_str("# TYPE sluice_store_up gauge\nsluice_store_up 1\n");
        }
        // The refresh task logged why.
        Some(Err(_)) | None => {
            body.push_str("# TYPE sluice_store_up gauge\nsluice_store_up 0\n");
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// This document: OpenAPI 3.1, generated from the handlers' annotations.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub(crate) async fn openapi() -> Response {
    // Built once: the document is fixed at compile time.
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    match DOC.get_or_init(|| ApiDoc::openapi().to_json().map_err(|e| e.to_string())) {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response(),
        Err(e) => {
            ApiError::internal(format!("rendering the OpenAPI document: {e}")).into_response()
        }
    }
}

/// A node sharing this database.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NodeView {
    /// Unique per process.
    id: String,
    /// The machine's host name.
    hostname: String,
    /// Sluice version.
    version: String,
    /// Roles it runs (`api,worker`).
    roles: String,
    /// When it started.
    started_at: chrono::DateTime<chrono::Utc>,
    /// Its last heartbeat.
    last_seen: chrono::DateTime<chrono::Utc>,
}

/// The live nodes.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NodeList {
    /// Oldest first. Nodes running the worker role split every provider rate limit evenly.
    nodes: Vec<NodeView>,
}

problems!(NodesErrors, Common::key(Scope::Admin));

/// The nodes sharing this database, seen within the last 15 s (admin).
#[utoipa::path(
    get,
    path = "/v1/nodes",
    operation_id = "list_nodes",
    tag = "ops",
    responses(
        (status = 200, description = "Live nodes", body = NodeList),
        NodesErrors,
    )
)]
pub(crate) async fn nodes(
    State(st): State<AppState>,
    _principal: Administrator,
) -> ApiResult<axum::Json<NodeList>> {
    let nodes = st
        .node
        .store
        .list_nodes(crate::node::cluster::NODE_TTL)
        .await?
        .into_iter()
        .map(|n| NodeView {
            id: n.id,
            hostname: n.hostname,
            version: n.version,
            roles: n.roles,
            started_at: n.started_at,
            last_seen: n.last_seen,
        })
        .collect();
    Ok(axum::Json(NodeList { nodes }))
}

/// A model provider's state on this node.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProviderView {
    /// The configured name.
    name: String,
    /// `openai`, `anthropic`, `simulated`, …
    kind: String,
    /// The circuit breaker: `closed`, `half_open` or `open`.
    breaker: String,
    /// Attempts in the window (this node's last 200 attempts at this provider).
    attempts: u32,
    /// Of which failed (an error status, a timeout, a broken stream).
    errors: u32,
    /// `errors / attempts` (0 without attempts).
    error_rate: f64,
    /// Median attempt duration, ms; absent without attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ms: Option<u64>,
    /// 95th percentile attempt duration, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    p95_ms: Option<u64>,
}

/// The providers, by name.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProviderList {
    /// Every configured provider, sorted by name.
    providers: Vec<ProviderView>,
}

problems!(ProvidersErrors, Common::key(Scope::Read));

/// Model providers' health as the answering node sees it: breaker state, and the error rate
/// and p50/p95 duration of its last 200 attempts at each (read).
///
/// Each node keeps its own breakers and window; behind a load balancer, successive answers
/// may come from different nodes.
#[utoipa::path(
    get,
    path = "/v1/providers",
    operation_id = "list_providers",
    tag = "providers",
    responses(
        (status = 200, description = "Providers", body = ProviderList),
        ProvidersErrors,
    )
)]
pub(crate) async fn providers(
    State(st): State<AppState>,
    _principal: Reader,
) -> axum::Json<ProviderList> {
    let providers = st
        .node
        .gateway
        .provider_health()
        .into_iter()
        .map(|h| ProviderView {
            name: h.name,
            kind: h.kind,
            breaker: h.breaker.as_str().to_string(),
            attempts: h.attempts,
            errors: h.errors,
            error_rate: h.error_rate,
            p50_ms: h.p50_ms,
            p95_ms: h.p95_ms,
        })
        .collect();
    axum::Json(ProviderList { providers })
}
