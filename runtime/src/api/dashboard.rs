//! The dashboard: one static page (HTML, JS, CSS embedded in the binary) at `/` and
//! `/dashboard`, which reads and acts only through the public `/v1/...` API with the caller's
//! key, exactly as any other client. It is not an API route, so it is not in [`super::ROUTES`]
//! or the OpenAPI document, and it serves no tenant data itself: the page holds none until
//! the API hands it some.
//!
//! Tenant-controlled text (outputs, tags, errors) reaches the page only through the API and is
//! rendered as text (`textContent`, never `innerHTML`); the Content-Security-Policy below
//! backs that up by refusing inline scripts, other origins and framing.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");

/// Only the page's own script, style and API; no inline code, no framing, no forms posted
/// elsewhere. `img-src` allows `data:` for nothing but the favicon-less default; charts are
/// inline SVG built with DOM calls, which CSP does not restrict.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The dashboard's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CSP),
        ),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
        (
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        ),
        // The assets change with the binary; a stale page after an upgrade would talk to an
        // API it does not know.
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
