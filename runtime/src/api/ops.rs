//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/v1/nodes`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};

use super::AppState;
use super::auth::{Principal, Scope};
use super::error::{ApiError, ApiResult};

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder once per process. If another recorder is already
/// installed (an embedding application's), `/metrics` renders only what this one sees.
pub(crate) fn install_metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only queue gauges");
            PrometheusBuilder::new().build_recorder().handle()
        }
    })
}

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the store answers (migrations are applied when it opens).
pub(crate) async fn readyz(State(st): State<AppState>) -> Response {
    match st.node.store.queue_stats().await {
        Ok(_) => axum::Json(json!({ "status": "ready", "store": "ok" })).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            format!("the store is not reachable: {e}"),
        )
        .into_response(),
    }
}

/// `GET /metrics`: Prometheus text; queue depths are read from the store at scrape time.
pub(crate) async fn metrics(State(st): State<AppState>) -> Response {
    let handle = install_metrics();
    handle.run_upkeep();
    let mut body = handle.render();
    match st.node.store.queue_stats().await {
        Ok(q) => {
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
        Err(e) => {
            tracing::warn!(error = %e, "queue stats for /metrics failed");
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

/// The OpenAPI document (maintained by hand next to this file).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /openapi.json`
pub(crate) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `GET /v1/nodes` (admin): the nodes sharing this database, as the limit share sees them.
pub(crate) async fn nodes(
    State(st): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Value>> {
    principal.require(Scope::Admin)?;
    let nodes = st
        .node
        .store
        .list_nodes(crate::node::cluster::NODE_TTL)
        .await?;
    Ok(axum::Json(json!({ "nodes": nodes })))
}
