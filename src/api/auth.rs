//! Bearer-token guard for every endpoint except `GET /healthz` and the
//! operator's page.
//!
//! Health probes (Docker, Kubernetes) carry no credentials, so the liveness
//! check stays open; it reveals nothing but "the database answers". The page
//! and its assets are fixed, embedded files that hold no data (the page asks
//! for the token, then reads the API with it), so a browser can load them
//! first. The token is compared in constant time and never appears in a
//! response or a log.
//!
//! A failed authentication is counted (`mapillary_http_auth_failures_total`)
//! and logged at warn, at most once a minute per client address: someone
//! guessing tokens shows up in the log without being able to flood it.

use crate::api::AppState;
use crate::api::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one warning per address in this long.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past it, the stale ones are forgotten (and
/// if all are fresh, all of them: a flood from many addresses must not grow
/// memory without bound).
const MAX_REMEMBERED: usize = 4096;

/// Path that answers without a token.
pub const OPEN_PATH: &str = "/healthz";

/// Whether GET and HEAD of `path` answer without a token: [`OPEN_PATH`]
/// and the operator page's (which hold no data). The description's 401s
/// follow the same rule.
pub fn is_open_path(path: &str) -> bool {
    path == OPEN_PATH || crate::api::page::PATHS.contains(&path)
}

/// Middleware: with `api.token` set, every request but [`OPEN_PATH`] needs
/// `Authorization: Bearer <token>` (compared in constant time); failures are
/// counted and logged once per address a while.
pub async fn require_bearer(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.api_token.as_ref() else {
        return Ok(next.run(request).await);
    };
    let path = request.uri().path();
    let is_open =
        is_open_path(path) && (request.method() == Method::GET || request.method() == Method::HEAD);
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
        _ => {
            failed(&state, &request);
            Err(ApiError::Unauthorized)
        }
    }
}

/// Counts a failed authentication and logs it unless this address was
/// logged within the last minute.
fn failed(state: &AppState, request: &Request) {
    crate::metrics::add(&state.metrics.http_auth_failures, 1);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip());
    if state.auth_failures.should_log(peer, Instant::now()) {
        tracing::warn!(
            %peer,
            path = %request.uri().path(),
            "HTTP API request with a missing or wrong token refused (further failures from this \
             address are counted in mapillary_http_auth_failures_total and logged at most once a minute)"
        );
    }
}

/// When each address's last failed authentication was logged.
#[derive(Debug, Default)]
pub struct FailureLog(Mutex<HashMap<IpAddr, Instant>>);

impl FailureLog {
    /// Whether a failure from `peer` at `now` is to be logged (and if so,
    /// remembers it).
    pub fn should_log(&self, peer: IpAddr, now: Instant) -> bool {
        let mut logged = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if logged
            .get(&peer)
            .is_some_and(|last| now.saturating_duration_since(*last) < LOG_EVERY)
        {
            return false;
        }
        if logged.len() >= MAX_REMEMBERED {
            logged.retain(|_, last| now.saturating_duration_since(*last) < LOG_EVERY);
            if logged.len() >= MAX_REMEMBERED {
                logged.clear();
            }
        }
        logged.insert(peer, now);
        true
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
    fn failures_are_logged_once_a_minute_per_address() {
        let log = FailureLog::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert!(log.should_log(a, t0));
        assert!(!log.should_log(a, t0 + Duration::from_secs(59)));
        assert!(log.should_log(b, t0 + Duration::from_secs(1)));
        assert!(log.should_log(a, t0 + Duration::from_secs(60)));
        assert!(!log.should_log(a, t0 + Duration::from_secs(61)));
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
