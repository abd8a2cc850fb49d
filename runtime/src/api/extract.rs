//! Extractors that wrap axum's so bad input gets our problem JSON, not a plain-text
//! rejection, and so no body is read past its route's limit.
//!
//! Handlers take their body last, after the scoped principal ([`super::auth::Scoped`]): a
//! request without the right key is refused before a byte of its body is read.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::config::Config;

/// The largest body a request type may have. Every JSON body names its own bound, so a route
/// cannot be added without one; the server's `server.max_body_bytes` caps them all.
pub trait BodyLimit {
    /// The limit in bytes, and the configuration key that sets it.
    fn body_limit(config: &Config) -> (usize, &'static str) {
        (
            config.server.limits.max_json_body_bytes,
            "server.limits.max_json_body_bytes",
        )
    }
}

/// `T`'s limit, never above `server.max_body_bytes`.
fn limit_of<T: BodyLimit>(config: &Config) -> (usize, &'static str) {
    let (limit, key) = T::body_limit(config);
    if limit <= config.server.max_body_bytes {
        (limit, key)
    } else {
        (config.server.max_body_bytes, "server.max_body_bytes")
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|m| {
        m == "application/json"
            || m.strip_prefix("application/")
                .is_some_and(|sub| sub.ends_with("+json"))
    })
}

/// The media type of `Content-Type`, lowercased, without parameters.
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = v.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

pub(crate) fn unsupported_media_type(expected: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        format!("expected a body with `Content-Type: {expected}`"),
    )
    .with("field", "Content-Type")
}

/// Read at most `limit` bytes of `body`: a `Content-Length` above it is refused before any
/// byte is read, a body that turns out longer is refused once `limit` bytes arrived.
async fn read_limited(
    headers: &HeaderMap,
    body: axum::body::Body,
    (limit, setting): (usize, &'static str),
) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit, setting));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(limit, setting))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "Could not read the request body",
            e.to_string(),
        )),
    }
}

/// A JSON body (`Content-Type: application/json`), at most `T`'s [`BodyLimit`].
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T> FromRequest<AppState> for Json<T>
where
    T: DeserializeOwned + BodyLimit,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // The media type first: a form post is refused without reading it.
        if !is_json(req.headers()) {
            return Err(unsupported_media_type("application/json"));
        }
        let (parts, body) = req.into_parts();
        let bytes = read_limited(&parts.headers, body, limit_of::<T>(&state.node.config)).await?;
        // axum's parser, for its error classes and the path of a bad field in the message.
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, &()).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The raw bytes of an optional JSON body, at most `server.limits.max_json_body_bytes`
/// (the redrive endpoints parse it themselves: an empty body means the defaults).
#[derive(Debug, Clone)]
pub struct JsonBytes(pub Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        struct Small;
        impl BodyLimit for Small {}
        let (parts, body) = req.into_parts();
        read_limited(&parts.headers, body, limit_of::<Small>(&state.node.config))
            .await
            .map(JsonBytes)
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type("application/json"),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            e.body_text(),
        ),
        JsonRejection::JsonDataError(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "Invalid request body",
            e.body_text(),
        ),
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::bad_request(other.body_text()),
    }
}

/// The raw body (component uploads), limited by `server.max_body_bytes`.
#[derive(Debug, Clone)]
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.node.config.server.max_body_bytes;
        let (parts, body) = req.into_parts();
        read_limited(&parts.headers, body, (limit, "server.max_body_bytes"))
            .await
            .map(Body)
    }
}

fn bytes_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            "the request body is larger than the server's limit (`server.max_body_bytes`)",
        )
    } else {
        ApiError::new(
            r.status(),
            "bad-body",
            "Could not read the request body",
            r.body_text(),
        )
    }
}

/// Query parameters.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad-query",
                    "Invalid query parameters",
                    r.body_text(),
                )
            })
    }
}

/// Path parameters.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad-path",
                    "Invalid path parameter",
                    r.body_text(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_type(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        h
    }

    #[test]
    fn json_media_types() {
        assert!(is_json(&with_type("application/json")));
        assert!(is_json(&with_type("Application/JSON; charset=utf-8")));
        assert!(is_json(&with_type("application/merge-patch+json")));
        assert!(!is_json(&with_type("text/plain")));
        assert!(!is_json(&with_type("application/x-www-form-urlencoded")));
        assert!(!is_json(&with_type("application/jsonx")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn bodies_stop_at_their_limit() {
        let ok = read_limited(
            &HeaderMap::new(),
            axum::body::Body::from(vec![b'x'; 10]),
            (10, "k"),
        )
        .await
        .unwrap();
        assert_eq!(ok.len(), 10);
        let err = read_limited(
            &HeaderMap::new(),
            axum::body::Body::from(vec![b'x'; 11]),
            (10, "k"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.extra["limit"], 10);
        // A declared length past the limit is refused without reading.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1000000"));
        let err = read_limited(&h, axum::body::Body::empty(), (10, "k"))
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
