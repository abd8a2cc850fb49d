//! The HTTP API (`/v1/…`): translates requests into calls on the node's store, plugin cache
//! and event hub. [`app`] builds the router without a socket, so tests drive it directly;
//! [`serve`] binds it.
//!
//! Every error is `application/problem+json` ([`error::ApiError`]); every request is scoped to
//! the tenant of its API key ([`auth`]); another tenant's things answer 404, not 403. Handlers
//! take a scoped principal ([`auth::Scoped`]) before their body, so keys and scopes are checked
//! before a body is read, and every body has its route's limit ([`extract::BodyLimit`]).
//!
//! Dev mode (no keys, on loopback) trusts whoever can reach the socket, so it also refuses what
//! a web page could send there: a `Host` that is not the listen address (DNS rebinding), and
//! state-changing requests without a JSON content type (cross-site form posts), see
//! [`dev_guard`].

pub mod auth;
mod budgets;
mod dashboard;
pub mod error;
pub mod extract;
mod gauges;
mod jobs;
mod ops;
mod plugins;
mod usage;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::config::Config;
use crate::node::Node;
pub use error::{ApiError, ApiResult};
// The job routes, by operation (the table below names the module of each handler).
use jobs::{cancel, events, read, redrive, submit};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Node,
    /// Requests without a key are let in as the dev tenant.
    pub dev_open: bool,
    /// Queue gauges for `/metrics` and `/readyz`, refreshed in the background.
    pub(crate) gauges: Arc<gauges::Gauges>,
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
            // Named here: routes refer to it from their error responses (`error::problems!`),
            // which do not register schemas themselves.
            components(schemas(error::Problem)),
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
                (name = "providers", description = "Model providers' health as this node sees it"),
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
    post "/v1/plugins/{name}/jobs" => submit::submit,
    post "/v1/plugins/{name}/jobs/batch" => submit::submit_batch,
    get "/v1/jobs" => read::list,
    get "/v1/jobs/{id}" => read::get,
    post "/v1/jobs/{id}/cancel" => cancel::cancel,
    post "/v1/jobs/{id}/redrive" => redrive::redrive_one,
    get "/v1/jobs/{id}/events" => events::events,
    get "/v1/dlq" => read::list_dead,
    post "/v1/dlq/redrive" => redrive::redrive_dead,
    get "/v1/usage" => usage::usage,
    get "/v1/budgets" => budgets::list,
    get "/v1/budgets/{name}" => budgets::get,
    put "/v1/budgets/{name}" => budgets::put,
    delete "/v1/budgets/{name}" => budgets::delete,
    get "/v1/webhooks/deliveries" => webhooks::list,
    get "/v1/webhooks/deliveries/{id}" => webhooks::get,
    post "/v1/webhooks/deliveries/{id}/retry" => webhooks::retry,
    get "/v1/nodes" => ops::nodes,
    get "/v1/providers" => ops::providers,
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

/// The API router for `node`, as if listening on `server.listen`.
pub fn app(node: Node) -> Router {
    let port = listen_port(&node.config.server.listen);
    app_on(node, port)
}

/// The port of a `host:port` listen address; `None` for port 0 (any: chosen when bound).
fn listen_port(listen: &str) -> Option<u16> {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
}

/// The API router for `node` listening on `port` (`None`: unknown, any port is accepted in
/// dev mode's `Host` check).
fn app_on(node: Node, port: Option<u16>) -> Router {
    let config = &node.config;
    let state = AppState {
        dev_open: dev_open(config),
        gauges: gauges::Gauges::new(
            node.store.clone(),
            Duration::from_secs(config.server.gauges_refresh_secs),
        ),
        node: node.clone(),
    };
    ops::install_metrics();
    let mut router = routes();
    if state.dev_open {
        // A route layer: it runs once a route matched, so it knows the upload route.
        router = router.route_layer(middleware::from_fn(content_type_guard));
    }
    let mut router = router
        // The dashboard page is not an API route (not in `ROUTES` or the document).
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.server.max_body_bytes));
    if state.dev_open {
        // Every request, routed or not.
        router = router.layer(middleware::from_fn_with_state(
            Arc::new(DevHosts { port }),
            host_guard,
        ));
    }
    router
        .layer(middleware::from_fn(close_after_refused_body))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A request refused before its body was read (no key, no scope, too large, a bad `Host`)
/// leaves the rest of the body on the connection, so the connection cannot carry another
/// request: say `Connection: close`, or a client's pool reuses it and its next request fails.
async fn close_after_refused_body(req: Request, next: Next) -> Response {
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let mut res = next.run(req).await;
    if has_body && res.status().is_client_error() {
        res.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// The `Host`s dev mode answers: the loopback names, with the listen port.
struct DevHosts {
    /// `None`: any port (the listen port was 0 and no socket is known).
    port: Option<u16>,
}

impl DevHosts {
    /// Whether `host` (a `Host` header or a URI authority) names this server on loopback.
    fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        // `[::1]:8080`, `[::1]`, `localhost:8080`, `127.0.0.1`.
        let (name, port) = match host.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((inner, tail)) => (format!("[{inner}]"), tail.strip_prefix(':')),
                None => return false,
            },
            None => match host.split_once(':') {
                Some((n, p)) => (n.to_string(), Some(p)),
                None => (host.clone(), None),
            },
        };
        if !matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]") {
            return false;
        }
        match (port, self.port) {
            (_, None) => port.is_none_or(|p| p.parse::<u16>().is_ok()),
            (Some(p), Some(want)) => p.parse::<u16>() == Ok(want),
            // No port in `Host` means the scheme's default.
            (None, Some(want)) => want == 80,
        }
    }
}

/// Dev mode: refuse a `Host` other than the listen address. A web page whose name an attacker
/// re-points at 127.0.0.1 (DNS rebinding) sends its own name as `Host`, so it gets 403 here
/// instead of a keyless API.
async fn host_guard(State(hosts): State<Arc<DevHosts>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()));
    match host {
        Some(h) if hosts.allows(&h) => next.run(req).await,
        other => {
            let shown: String = other
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect::<String>();
            ApiError::forbidden(format!(
                "dev mode answers only requests to localhost, 127.0.0.1 or [::1] on its own port, not Host {shown:?}"
            ))
            .with("field", "Host")
            .into_response()
        }
    }
}

/// Dev mode: every state-changing request must say its body is JSON (a component upload: that
/// it is `application/wasm`), even with no body. A cross-site form can send neither without
/// a CORS preflight, which this server never grants.
async fn content_type_guard(req: Request, next: Next) -> Response {
    let changes_state = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !changes_state {
        return next.run(req).await;
    }
    let upload = req.method() == Method::PUT
        && req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| p.as_str() == "/v1/plugins/{name}");
    let ok = if upload {
        extract::media_type(req.headers()).as_deref() == Some("application/wasm")
    } else {
        extract::is_json(req.headers())
    };
    if ok {
        next.run(req).await
    } else {
        let expected = if upload {
            "application/wasm"
        } else {
            "application/json"
        };
        extract::unsupported_media_type(expected).into_response()
    }
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
    // The port actually bound (the configured one may be 0), for dev mode's `Host` check.
    let port = listener.local_addr()?.port();
    axum::serve(listener, app_on(node, Some(port).filter(|p| *p != 0)))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_hosts_are_loopback_names_on_the_listen_port() {
        let on = DevHosts { port: Some(8080) };
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST:8080",
        ] {
            assert!(on.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost:8081",
            "localhost",
            "127.0.0.1",
            "localhost.evil.example:8080",
            "127.0.0.2:8080",
            "[::1",
            "[::2]:8080",
            "localhost:8080:8080",
            "",
            "0.0.0.0:8080",
        ] {
            assert!(!on.allows(bad), "{bad}");
        }
        assert!(DevHosts { port: Some(80) }.allows("localhost"));
        let any = DevHosts { port: None };
        assert!(any.allows("127.0.0.1:41234") && any.allows("localhost"));
        assert!(!any.allows("evil.example:41234"));
        assert_eq!(listen_port("127.0.0.1:8080"), Some(8080));
        assert_eq!(listen_port("127.0.0.1:0"), None);
        assert_eq!(listen_port("[::1]:9"), Some(9));
    }
}
