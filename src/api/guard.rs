//! Checks every request meets before any handler (and before the token):
//!
//! - **Host** (without a token only): the daemon in a container listens on
//!   `0.0.0.0` and cannot tell a private caller from a public one, and a web
//!   page can point a name it controls at 127.0.0.1 (DNS rebinding) to read
//!   and steer the API from the operator's own browser. So without a token a
//!   request must name a trusted host: `localhost`, `127.0.0.1`, `[::1]`,
//!   the listen address or one of `api.allowed_hosts` (port ignored).
//!   `/healthz` is exempt: container and Kubernetes probes use whatever name.
//! - **Origin** (always, on state changes): a page on another site can make
//!   the operator's browser POST here (a `text/plain` form needs no
//!   preflight). Browsers say where a request comes from, so a state change
//!   with `Sec-Fetch-Site: cross-site` or an `Origin` other than this
//!   server's own is refused. A request without `Origin` (curl, scripts) is
//!   not a browser's cross-site request and passes.
//! - **Declared length**: a `Content-Length` over the body limit is answered
//!   413 at once, before any of the body is read, and the connection closed.

use crate::api::AppState;
use crate::api::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Names trusted without a token, besides `AppState::trusted_hosts`.
const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// Middleware run before auth: a foreign `Host` without a token gets 403, a
/// cross-site state change gets 403, a declared body over the limit 413, so
/// a browser page elsewhere can neither read nor steer the daemon.
pub async fn check_request(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(refusal) = check(&state, &request) {
        let mut response = refusal.into_response();
        if response.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            // The body stays unread: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    next.run(request).await
}

fn check(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let headers = request.headers();
    let host = host_of(request);
    if state.api_token.is_none() && request.uri().path() != crate::api::auth::OPEN_PATH {
        let trusted = host.as_deref().is_some_and(|host| {
            let name = host_name(host);
            LOOPBACK_NAMES.contains(&name.as_str()) || state.trusted_hosts.contains(&name)
        });
        if !trusted {
            return Err(ApiError::Forbidden(
                "this Host is not trusted: without an API token the daemon answers only requests \
                 to localhost, 127.0.0.1, [::1], its listen address or a name in api.allowed_hosts"
                    .into(),
            ));
        }
    }
    if changes_state(request.method()) {
        check_origin(headers, host.as_deref())?;
    }
    if let Some(length) = declared_length(headers)
        && length > crate::api::validate::MAX_BODY_BYTES as u64
    {
        return Err(ApiError::PayloadTooLarge(format!(
            "the body may be at most {} bytes",
            crate::api::validate::MAX_BODY_BYTES
        )));
    }
    Ok(())
}

/// Everything but the safe methods changes (or may change) state.
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses a browser's cross-site state change.
fn check_origin(headers: &HeaderMap, host: Option<&str>) -> Result<(), ApiError> {
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let foreign_origin = match headers.get(header::ORIGIN) {
        None => false,
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
            let host = host.unwrap_or("").to_ascii_lowercase();
            host.is_empty()
                || (origin != format!("http://{host}") && origin != format!("https://{host}"))
        }
    };
    if cross_site || foreign_origin {
        return Err(ApiError::Forbidden(
            "a cross-site request may not change anything: send it from this server's own page, \
             or without an Origin header (curl, scripts)"
                .into(),
        ));
    }
    Ok(())
}

/// The `Host` header (HTTP/1.1 always sends it), else the URI's authority.
fn host_of(request: &Request) -> Option<String> {
    match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok().map(|h| h.trim().to_string()),
        None => request.uri().authority().map(|a| a.as_str().to_string()),
    }
}

/// The name of a `Host` value: the port cut off, lower-case, without a
/// trailing dot; an IPv6 address keeps its brackets.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        for (host, name) in [
            ("127.0.0.1:8080", "127.0.0.1"),
            ("LocalHost.", "localhost"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("evil.example:1", "evil.example"),
            ("evil.example:x", "evil.example:x"),
        ] {
            assert_eq!(host_name(host), name, "{host}");
        }
    }

    #[test]
    fn origins_must_be_this_server() {
        let mut headers = HeaderMap::new();
        assert!(check_origin(&headers, Some("127.0.0.1:80")).is_ok(), "curl");
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:80"),
        );
        assert!(check_origin(&headers, Some("127.0.0.1:80")).is_ok());
        assert!(check_origin(&headers, Some("127.0.0.1:81")).is_err());
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_origin(&headers, Some("127.0.0.1:80")).is_err());
        let mut headers = HeaderMap::new();
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(check_origin(&headers, Some("127.0.0.1:80")).is_err());
        headers.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_origin(&headers, Some("127.0.0.1:80")).is_ok());
    }
}
