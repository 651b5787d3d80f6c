//! Bearer-token guard for every endpoint except `GET /healthz` and the
//! operator's page.
//!
//! Health probes (Docker, Kubernetes) carry no credentials, so the liveness
//! check stays open; it reveals nothing but "the database answers". The page
//! and its assets are fixed, embedded files that hold no data (the page asks
//! for the token, then reads the API with it), so a browser can load them
//! first. The token is compared in constant time and never appears in a
//! response or a log.

use crate::api::AppState;
use crate::api::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;

/// Path that answers without a token.
pub const OPEN_PATH: &str = "/healthz";

pub async fn require_bearer(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.api_token.as_ref() else {
        return Ok(next.run(request).await);
    };
    let path = request.uri().path();
    let is_open = (path == OPEN_PATH || crate::api::page::PATHS.contains(&path))
        && (request.method() == Method::GET || request.method() == Method::HEAD);
    if is_open {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer_token(value.as_bytes()));
    match presented {
        Some(token) if constant_time_eq(expected.expose().as_bytes(), token) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme is
/// case-insensitive per RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without an early exit, so timing does not reveal how many
/// leading bytes of a guess were right. The loop runs over the expected
/// token only, so its duration depends on the secret's length, not the guess.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    let mut diff = expected.len() ^ presented.len();
    for (i, byte) in expected.iter().enumerate() {
        let other = presented.get(i).copied().unwrap_or(!byte);
        diff |= usize::from(byte ^ other);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_values() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b""), None);
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"secret", b""));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
