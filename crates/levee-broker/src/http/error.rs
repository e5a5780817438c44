//! The HTTP layer's error, [`HttpError`], and how every response of the JSON API is written
//! (`json_response`, `json_text_response`: `application/json`, `no-store`).
//!
//! # Invariants
//! - Every error is answered with a JSON body `{"error": code, "message": text}` and a 4xx/5xx
//!   status ([`HttpError::status`]); [`HttpError::code`] is stable (clients match on it).
//!
//! It is a module of its own, not part of `http/mod.rs`, so that `json` and `snapshot` can use the
//! error without a loop through the router.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use levee_proto::ErrorCode;
use serde_json::{Value, json};

use crate::error::BrokerError;

/// An error of the HTTP layer, answered as a JSON body with [`HttpError::status`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request body is not valid JSON, or not of the expected shape (400).
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    /// A config field has a value outside its range or vocabulary (400).
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `"overflow"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A queue is registered but did not answer an inspect: it took longer than
    /// [`INSPECT_TIMEOUT`](super::INSPECT_TIMEOUT) or its task has stopped (503).
    #[error("queue {queue} is unavailable: {reason}")]
    Unavailable {
        /// The queue.
        queue: String,
        /// Why, e.g. `"no answer within 2s"`.
        reason: String,
    },
    /// No route for this path (404).
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// A request that is well-formed JSON but asks for something invalid (400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The broker refused or failed the operation; the status follows its error code.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl HttpError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadJson(_) | HttpError::InvalidConfig { .. } | HttpError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            HttpError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::NoRoute(_) => StatusCode::NOT_FOUND,
            HttpError::Broker(e) => match e.code() {
                ErrorCode::UnknownQueue | ErrorCode::UnknownExchange => StatusCode::NOT_FOUND,
                ErrorCode::QueueConfigMismatch
                | ErrorCode::ExchangeConfigMismatch
                | ErrorCode::ExchangeInUse => StatusCode::CONFLICT,
                ErrorCode::AccessDenied => StatusCode::FORBIDDEN,
                ErrorCode::InvalidName | ErrorCode::InvalidConfig => StatusCode::BAD_REQUEST,
                ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::NotLeader => StatusCode::MISDIRECTED_REQUEST,
                // Every other code (and any levee-proto adds: non_exhaustive) is a failure the
                // API cannot blame on the request: an explicit 500, never a success.
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// A short stable code for the JSON body, e.g. `"unknown-queue"`.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::BadJson(_) => "bad-json",
            HttpError::InvalidConfig { .. } => ErrorCode::InvalidConfig.name(),
            HttpError::Unavailable { .. } => "unavailable",
            HttpError::NoRoute(_) => "not-found",
            HttpError::BadRequest(_) => "bad-request",
            HttpError::Broker(e) => e.code().name(),
        }
    }

    pub(super) fn body(&self) -> Value {
        json!({ "error": self.code(), "message": self.to_string() })
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        json_response(self.status(), &self.body())
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut text = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
    text.push('\n');
    json_text_response(status, text)
}

pub(super) fn json_text_response(status: StatusCode, text: String) -> Response {
    let mut resp = (status, text).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The stable code of an error status answered by the framework rather than a handler (a
/// method not allowed, a body over the limit, ...).
fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::NOT_FOUND => "not-found",
        s if s.is_client_error() => "bad-request",
        _ => "internal",
    }
}

/// Makes every error answer JSON: a 4xx/5xx response whose body is not JSON (axum's own 405,
/// 413, query rejections) is replaced by `{"error": code, "message": text}` with the same
/// status and headers (`Allow`, `Retry-After`, ...).
pub(super) async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut out = json_response(
        status,
        &json!({ "error": status_code_name(status), "message": message }),
    );
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
