//! The one error type every handler returns, and its JSON shape.
//!
//! The API promises `{"error": "<message>"}` with a 4xx/5xx status for every
//! failure, so everything (extractor rejections, fallbacks, auth, store
//! failures) funnels through [`ApiError`]. Store errors are logged in full
//! and answered with a generic message: SQL details are for the operator's
//! log, not for the client.

use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An HTTP API error: its status code and a JSON `{"error": …}` body that never shows a secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request: not JSON, bad path parameter, bad header.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed JSON whose content breaks a rule (unknown quality, bad bbox...).
    #[error("{0}")]
    Unprocessable(String),
    /// A body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A body over the limit (refused from its declared length).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A token is configured and the request has none or another.
    #[error("authentication required: send the header `Authorization: Bearer <api token>`")]
    Unauthorized,
    /// A foreign Host without a token, or a cross-site state change.
    #[error("{0}")]
    Forbidden(String),
    /// No such route or job.
    #[error("{0}")]
    NotFound(String),
    /// A route that exists, with another method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request is valid but the job's current state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// The store failed: logged in full, answered 500 without details.
    #[error("database error (details are in the server log)")]
    Store(#[from] StoreError),
    /// The database does not answer (`/healthz` says 503).
    #[error("database is not answering")]
    Unavailable,
    /// The request (its body included) took longer than `api.request_timeout_secs`.
    #[error("{0}")]
    RequestTimeout(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The 404 for a job id that is not in the store.
    pub fn job_not_found(id: i64) -> ApiError {
        ApiError::NotFound(format!("job {id} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Store(err) = &self {
            tracing::error!(error = %err, "HTTP API request failed on the database");
        }
        let status = self.status();
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Fallback for paths no route knows.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", shorten(uri.path())))
}

/// Fallback for a known path asked with a method it does not serve.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "method {method} is not allowed on {}",
        shorten(uri.path())
    ))
}

/// Echoed paths are capped so a long URL cannot bloat the error.
fn shorten(path: &str) -> &str {
    crate::units::clip(path, 200)
}
