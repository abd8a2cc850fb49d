//! The HTTP API (`/v1/…`): translates requests into calls on the node's store, plugin cache
//! and event hub. [`app`] builds the router without a socket, so tests drive it directly;
//! [`serve`] binds it.
//!
//! Every error is `application/problem+json` ([`error::ApiError`]); every request is scoped to
//! the tenant of its API key ([`auth`]); another tenant's things answer 404, not 403.

pub mod auth;
mod budgets;
mod dashboard;
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
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

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

/// Declares every route once. From one list it makes [`ROUTES`], the router [`app`] serves and
/// [`ApiDoc`], whose `paths(...)` names every routed handler: a handler without
/// `#[utoipa::path]` does not compile, and `openapi_documents_every_route` (`tests/api.rs`)
/// checks that each annotation has the method and path of its route.
macro_rules! api {
    ($( $method:ident $path:literal => $module:ident :: $handler:ident, )*) => {
        /// `(method, path)` of every route [`app`] serves; paths as routed (`{param}`), methods
        /// in lowercase.
        pub const ROUTES: &[(&str, &str)] = &[$( (stringify!($method), $path), )*];

        fn routes() -> Router<AppState> {
            Router::new() $( .route($path, axum::routing::$method($module::$handler)) )*
        }

        /// The OpenAPI document of [`app`], served at `/openapi.json`.
        #[derive(utoipa::OpenApi)]
        #[openapi(
            info(title = "Sluice API", description = API_DESCRIPTION),
            paths($( $module::$handler, )*),
            modifiers(&BearerAuth),
            security(("bearer" = [])),
            tags(
                (name = "ops", description = "Health, readiness, metrics and this document; no key needed"),
                (name = "plugins", description = "Upload, configure, roll back and delete plugins"),
                (name = "jobs", description = "Submit, follow, cancel and redrive jobs"),
                (name = "dlq", description = "The dead-letter queue"),
                (name = "usage", description = "Tokens, cost and latency"),
                (name = "budgets", description = "Hard budgets and their spend"),
                (name = "webhooks", description = "Webhook deliveries and their dead letters"),
            ),
        )]
        pub struct ApiDoc;
    };
}

// Add routes here, and only here: a route added to `app()` directly would be missing from
// `ROUTES` and from the document.
api! {
    get "/healthz" => ops::healthz,
    get "/readyz" => ops::readyz,
    get "/metrics" => ops::metrics,
    get "/openapi.json" => ops::openapi,
    get "/v1/plugins" => plugins::list,
    put "/v1/plugins/{name}" => plugins::upload,
    get "/v1/plugins/{name}" => plugins::get,
    patch "/v1/plugins/{name}" => plugins::patch_settings,
    delete "/v1/plugins/{name}" => plugins::delete,
    post "/v1/plugins/{name}/activate" => plugins::activate,
    post "/v1/plugins/{name}/jobs" => jobs::submit,
    post "/v1/plugins/{name}/jobs/batch" => jobs::submit_batch,
    get "/v1/jobs" => jobs::list,
    get "/v1/jobs/{id}" => jobs::get,
    post "/v1/jobs/{id}/cancel" => jobs::cancel,
    post "/v1/jobs/{id}/redrive" => jobs::redrive_one,
    get "/v1/jobs/{id}/events" => sse::events,
    get "/v1/dlq" => jobs::list_dead,
    post "/v1/dlq/redrive" => jobs::redrive_dead,
    get "/v1/usage" => usage::usage,
    get "/v1/budgets" => budgets::list,
    get "/v1/budgets/{name}" => budgets::get,
    put "/v1/budgets/{name}" => budgets::put,
    delete "/v1/budgets/{name}" => budgets::delete,
    get "/v1/webhooks/deliveries" => webhooks::list,
    get "/v1/webhooks/deliveries/{id}" => webhooks::get,
    post "/v1/webhooks/deliveries/{id}/retry" => webhooks::retry,
    get "/v1/nodes" => ops::nodes,
}

const API_DESCRIPTION: &str = "Deploy WebAssembly job handlers and run AI jobs.\n\n\
Errors are `application/problem+json` (RFC 9457). Every request is scoped to the tenant of its \
API key; another tenant's resources answer 404.\n\n\
Webhooks: a POST of the outcome with `Sluice-Signature: t=<unix>,v1=<hex HMAC-SHA256(tenant \
secret, \"<t>.<body>\")>`, `Sluice-Delivery` and `Sluice-Event`.";

/// Adds the `bearer` scheme that [`ApiDoc`]'s global `security` names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(utoipa::openapi::Components::new)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API key from `sluice keys create`: `Authorization: Bearer <key>`. \
                             Not needed in dev mode (`server.dev` on a loopback address).",
                        ))
                        .build(),
                ),
            );
    }
}

/// The API router for `node`.
pub fn app(node: Node) -> Router {
    let state = AppState {
        dev_open: dev_open(&node.config),
        node: node.clone(),
    };
    ops::install_metrics();
    routes()
        // The dashboard page is not an API route (not in `ROUTES` or the document).
        .merge(dashboard::routes())
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
