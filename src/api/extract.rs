//! Extractors whose every rejection is an [`ApiError`], so a client never
//! sees axum's plain-text rejections.

use crate::api::error::ApiError;
use crate::api::validate::{MAX_BODY_BYTES, is_json_content_type, parse_job_id, parse_json_body};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON body: content type checked, size capped, parsed with clear messages.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().map(is_json_content_type))
        {
            Some(Ok(true)) => {}
            Some(_) => {
                return Err(ApiError::UnsupportedMediaType(
                    "Content-Type must be application/json".into(),
                ));
            }
            None => {
                return Err(ApiError::UnsupportedMediaType(
                    "missing Content-Type header: send the body as application/json".into(),
                ));
            }
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
                    "request body is larger than {MAX_BODY_BYTES} bytes"
                )),
                _ => ApiError::BadRequest(format!(
                    "could not read the request body: {}",
                    rejection.body_text()
                )),
            }
        })?;
        parse_json_body(&body).map(ApiJson)
    }
}

/// The `{id}` of a `/jobs/{id}` path, as a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::BadRequest(format!("bad job id in path: {}", rejection.body_text()))
            })?;
        parse_job_id(&raw).map(JobId)
    }
}
