//! The HTTP API (`/v1/…`): translates requests into calls on the node's store, plugin cache
//! and event hub. [`app`] builds the router without a socket, so tests drive it directly;
//! [`serve`] binds it.
//!
//! Every error is `application/problem+json` ([`error::ApiError`]); every request is scoped to
//! the tenant of its API key ([`auth`]); another tenant's things answer 404, not 403.

pub mod auth;
mod budgets;
pub mod error;
pub mod extract;
mod jobs;
mod ops;
mod plugins;
mod sse;
mod usage;
mod webhooks;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::node::Node;
pub use error::{ApiError, ApiResult};

/// Whether `event` reports a terminal job status (`completed`, `dead`, `cancelled`).
pub fn is_terminal_status(event: &sluice_types::JobEvent) -> bool {
    jobs::is_terminal_event(event)
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Node,
    /// Requests without a key are let in as the dev tenant.
    pub dev_open: bool,
}

/// Whether `config` runs in open dev mode: `server.dev` and a loopback listen address.
pub fn dev_open(config: &Config) -> bool {
    config.server.dev && is_loopback(&config.server.listen)
}

/// Whether a `host:port` listen address is on loopback.
pub fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .map(|(host, _)| host == "localhost")
        .unwrap_or(false)
}

/// The API router for `node`.
pub fn app(node: Node) -> Router {
    let state = AppState {
        dev_open: dev_open(&node.config),
        node: node.clone(),
    };
    ops::install_metrics();
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/plugins", get(plugins::list))
        .route(
            "/v1/plugins/{name}",
            put(plugins::upload)
                .get(plugins::get)
                .delete(plugins::delete),
        )
        .route("/v1/plugins/{name}/activate", post(plugins::activate))
        .route("/v1/plugins/{name}/jobs", post(jobs::submit))
        .route("/v1/plugins/{name}/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs", get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/redrive", post(jobs::redrive_one))
        .route("/v1/jobs/{id}/events", get(sse::events))
        .route("/v1/dlq", get(jobs::list_dead))
        .route("/v1/dlq/redrive", post(jobs::redrive_dead))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/budgets", get(budgets::list))
        .route(
            "/v1/budgets/{name}",
            get(budgets::get).put(budgets::put).delete(budgets::delete),
        )
        .route("/v1/webhooks/deliveries", get(webhooks::list))
        .route("/v1/webhooks/deliveries/{id}", get(webhooks::get))
        .route("/v1/webhooks/deliveries/{id}/retry", post(webhooks::retry))
        .route("/v1/nodes", get(ops::nodes))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(node.config.server.max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Serve `app(node)` on `listener` until `shutdown` resolves (then finish in-flight requests).
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(node))
        .with_graceful_shutdown(shutdown)
        .await
}
