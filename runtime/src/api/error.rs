//! The one error type of the HTTP API: every failure is rendered as
//! `application/problem+json` (RFC 9457) and logged once, here. Its OpenAPI side is here
//! too: the [`Problem`] schema and one declaration of a route's error responses
//! ([`problems!`], over [`problem_responses`]).

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sluice_store::StoreError;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response as DocResponse, ResponseBuilder};
use utoipa::openapi::{Ref, RefOr};

use super::auth::Scope;

/// The media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An API failure: a status, a stable problem type and a human-readable detail.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The last path segment of the problem type URI (`not-found`, `invalid-component`, …).
    pub kind: &'static str,
    /// Short summary of the problem type.
    pub title: &'static str,
    /// What happened in this occurrence.
    pub detail: String,
    /// Extra members of the problem object.
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// A problem with no extension members.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            title,
            detail: detail.into(),
            extra: Map::new(),
        }
    }

    /// Add an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// 400 naming the offending `field` (a body field, query parameter or header).
    pub fn bad_field(field: &str, detail: impl Into<String>) -> Self {
        Self::bad_request(detail).with("field", field)
    }

    /// 422: `field` asks for more than the server's configured `limit` allows.
    pub fn limit_exceeded(field: &str, limit: impl Into<Value>, detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit-exceeded",
            "Limit exceeded",
            detail,
        )
        .with("field", field)
        .with("limit", limit)
    }

    /// 413: the body is larger than `limit` bytes (set by the configuration key `setting`).
    pub fn body_too_large(limit: usize, setting: &str) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!(
                "the request body is larger than this route's limit of {limit} bytes (`{setting}`)"
            ),
        )
        .with("limit", limit)
    }

    /// 404: the thing does not exist (or belongs to another tenant).
    pub fn not_found(what: &str, name: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("{what} `{name}` not found"),
        )
    }

    /// 401: no usable credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 403: the key lacks a scope.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, "Conflict", detail)
    }

    /// 500: a bug or an unexpected failure (details are logged, not returned).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the server failed to handle the request; see its logs",
        )
    }

    /// The problem document.
    pub fn body(&self) -> Value {
        let mut doc = json!({
            "type": format!("https://sluice.dev/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(map) = &mut doc {
            for (k, v) in &self.extra {
                map.insert(k.clone(), v.clone());
            }
        }
        doc
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.kind, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged once, here: server errors loudly, client errors for debugging.
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), kind = self.kind, detail = %self.detail, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), kind = self.kind, detail = %self.detail, "request rejected");
        }
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut res = (self.status, body).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, name } => ApiError::not_found(what, name),
            StoreError::Conflict { ref key, job_id } => {
                ApiError::conflict("idempotency-conflict", e.to_string())
                    .with("idempotency_key", key.clone())
                    .with("job_id", job_id.to_string())
            }
            StoreError::InputTooLarge { size, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "input-too-large",
                "Job input too large",
                format!("job input is {size} bytes; the limit is {limit} bytes"),
            )
            .with("field", "input")
            .with("limit", limit),
            StoreError::Invalid(msg) => ApiError::bad_request(msg),
            StoreError::QuotaExceeded { limit, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota-exceeded",
                "Too many jobs waiting",
                e.to_string(),
            )
            .with("limit", limit),
            e if e.is_storage_full() => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "storage-full",
                "Job store full",
                "the job store could not write to its disk (full, or at its size limit); \
                 nothing was stored: free space, then retry",
            )
            .with("cause", e.to_string()),
            e if e.is_transient() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                "the database is unavailable; retry later",
            )
            .with("cause", e.to_string()),
            e => ApiError::internal(e),
        }
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The error responses every route of a kind shares: those of its API key (none for the open
/// ops endpoints) and, where the route writes to the store, 507 for a full disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Common {
    /// The scope the route's key needs; `None`: no key.
    scope: Option<Scope>,
    /// Whether the route writes to the store (and so may find its disk full).
    writes: bool,
}

impl Common {
    /// No API key needed.
    pub(crate) const NO_KEY: Common = Common {
        scope: None,
        writes: false,
    };

    /// A key with `scope` needed.
    pub(crate) const fn key(scope: Scope) -> Common {
        Common {
            scope: Some(scope),
            writes: false,
        }
    }

    /// The route also writes to the store.
    pub(crate) const fn writes(self) -> Common {
        Common {
            writes: true,
            ..self
        }
    }
}

/// The error responses of one route for its OpenAPI operation: the [`Common`] ones and the
/// route's own `(status, what it means here)`, every one a [`Problem`] document.
pub(crate) fn problem_responses(
    common: Common,
    own: &[(u16, &str)],
) -> BTreeMap<String, RefOr<DocResponse>> {
    let mut statuses: Vec<(u16, String)> = Vec::new();
    if let Some(scope) = common.scope {
        statuses.push((401, "Missing or unknown API key".into()));
        statuses.push((403, format!("The key lacks the `{}` scope", scope.as_str())));
    }
    if common.writes {
        statuses.push((
            507,
            "The store's disk is full or at its size limit (`storage-full`): nothing was \
             stored; retry once space is freed"
                .into(),
        ));
    }
    statuses.extend(own.iter().map(|(code, what)| (*code, what.to_string())));
    statuses
        .into_iter()
        .map(|(code, description)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, content)
                .build();
            (code.to_string(), RefOr::T(response))
        })
        .collect()
}

/// Declares the error responses of a route, to name in its `#[utoipa::path(responses(…))]`:
/// a type whose responses are the [`Common`] ones and the route's own, each with what it
/// means on this route.
///
/// ```ignore
/// problems!(GetErrors, Common::key(Scope::Read), {
///     404 => "No such job for this tenant",
/// });
/// problems!(ListErrors, Common::key(Scope::Read)); // only the key's
/// ```
macro_rules! problems {
    ($(#[$meta:meta])* $name:ident, $common:expr) => {
        $crate::api::error::problems!($(#[$meta])* $name, $common, {});
    };
    ($(#[$meta:meta])* $name:ident, $common:expr, { $($code:literal => $what:expr),* $(,)? }) => {
        $(#[$meta])*
        pub(crate) struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::api::error::problem_responses($common, &[$(($code, $what)),*])
            }
        }
    };
}
pub(crate) use problems;

// The shape of `ApiError::body()`, for the OpenAPI document only (the body is built there).
/// An error (RFC 9457 problem details). The optional members are extensions some problems
/// carry.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Problem {
    /// `https://sluice.dev/problems/<kind>`: stable, for programs to switch on.
    #[schema(rename = "type", format = "uri")]
    type_: String,
    /// Short summary of the problem type.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What happened in this occurrence, for people.
    detail: String,
    /// `invalid-component`: why the component was rejected (`not_wasm`, `wrong_world`, …).
    kind: Option<String>,
    /// `forbidden`: the scope the API key lacks.
    required_scope: Option<String>,
    /// `idempotency-conflict`: the key, and the job it already names.
    idempotency_key: Option<String>,
    /// `idempotency-conflict`: the job the key already names.
    job_id: Option<String>,
    /// `job-finished`, `job-not-dead`: the job's status.
    job_status: Option<String>,
    /// `invalid-settings`, `limit-exceeded` and some `bad-request`s: the offending field,
    /// query parameter or header.
    field: Option<String>,
    /// `limit-exceeded`, `body-too-large`, `input-too-large`: the limit that was passed.
    limit: Option<u64>,
    /// Batch submissions: the index of the offending job.
    index: Option<u32>,
}
