//! Every failure of an API call or a CDN download, classified once, here.
//!
//! The daemon must never guess from a message whether to retry: each variant
//! carries its decision ([`MapillaryError::decision`]), so the retry policy of
//! ARCHITECTURE.md invariants 3-6 (refresh, retry, rate limit, pause) lives in
//! one match.

use crate::metrics::{Classified, OutcomeClass};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// Longest `Retry-After` we honour. A server asking for more is obeyed for
/// this long and then asked again, so a bogus header cannot park the daemon.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Graph error codes that mean "application request limit reached".
const RATE_LIMIT_CODES: [i64; 4] = [4, 17, 32, 613];
/// Graph error code for an invalid or expired access token.
const BAD_TOKEN_CODE: i64 = 190;
/// Graph error code of `GET /?ids=` when any named id does not exist
/// ("(#803) Some of the aliases you requested do not exist: <id>").
const MISSING_ALIASES_CODE: i64 = 803;
/// Graph error code 100 ("unknown object") with this subcode: the object
/// does not exist (any more).
const UNKNOWN_OBJECT: (i64, i64) = (100, 33);
/// Graph error code -2 with this subcode: "Query Timeout" (`is_transient`
/// false, yet a retry with a smaller `limit` succeeds).
const QUERY_TIMEOUT: (i64, i64) = (-2, 3_404_014);

/// Every way an API call or download fails, classified so the caller knows whether it costs an attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapillaryError {
    /// Worth another attempt after a backoff: 5xx, resets, timeouts, short or
    /// invalid bodies, a non-JPEG image.
    #[error("transient failure: {0}")]
    Transient(String),
    /// HTTP 429 or Graph code 4/17/32/613. Costs no attempt.
    #[error("rate limited by the API{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The signed CDN URL is expired or refused: fetch a fresh one via `?ids=`.
    #[error("image URL expired or refused: {0}")]
    UrlExpired(String),
    /// Graph code 190 or HTTP 401: the job pauses until the token is fixed.
    #[error("the Mapillary token was rejected (check MAPILLARY_TOKEN): {0}")]
    BadToken(String),
    /// Graph code 100 or another 4xx: the request itself is wrong.
    #[error("bad request{}: {message}", code.map(|c| format!(" (code {c})")).unwrap_or_default())]
    BadRequest {
        /// The Graph error code, if the body had one.
        code: Option<i64>,
        /// The API's message.
        message: String,
    },
    /// HTTP 404 on a call or a download.
    #[error("not found: {0}")]
    NotFound(String),
    /// The API says objects we asked for do not exist: images deleted on
    /// Mapillary. `ids` are the ones it named (possibly none, possibly only
    /// one of several).
    #[error("Mapillary no longer has {}: {message}", describe_ids(ids))]
    Missing {
        /// The ids it named.
        ids: Vec<String>,
        /// The API's message.
        message: String,
    },
    /// Graph code -2 / subcode 3404014: a search took too long. It says it
    /// is not transient; a retry with a smaller `limit` succeeds.
    #[error("the API timed out on a search ({0}); retrying with smaller pages")]
    QueryTimeout(String),
    /// Nothing a retry could fix (bad configuration, unusable URL).
    #[error("{0}")]
    Fatal(String),
}

/// What the caller should do after an [`MapillaryError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Back off and try again; costs an attempt.
    Retryable,
    /// Wait (the client's limiter already holds all API calls); costs no attempt.
    RateLimited(Option<Duration>),
    /// Refresh the image URL via `GET /?ids=`; costs no attempt.
    RefreshUrl,
    /// Pause the job with the error as `last_error`; costs no attempt.
    PauseJob,
    /// Retrying cannot help: fail the image (or the call) for good.
    GiveUp,
    /// The object was deleted on Mapillary: fail it for good as deleted,
    /// costing no attempt.
    Gone,
}

impl MapillaryError {
    /// What the caller should do about this error (see [`RetryDecision`]).
    pub fn decision(&self) -> RetryDecision {
        match self {
            MapillaryError::Transient(_) | MapillaryError::QueryTimeout(_) => {
                RetryDecision::Retryable
            }
            MapillaryError::RateLimited { retry_after } => RetryDecision::RateLimited(*retry_after),
            MapillaryError::UrlExpired(_) => RetryDecision::RefreshUrl,
            MapillaryError::BadToken(_) => RetryDecision::PauseJob,
            MapillaryError::BadRequest { .. }
            | MapillaryError::NotFound(_)
            | MapillaryError::Fatal(_) => RetryDecision::GiveUp,
            MapillaryError::Missing { .. } => RetryDecision::Gone,
        }
    }
}

/// The `outcome` label of `/metrics` follows the retry decision.
impl Classified for MapillaryError {
    fn outcome_class(&self) -> OutcomeClass {
        match self.decision() {
            RetryDecision::RateLimited(_) => OutcomeClass::RateLimited,
            RetryDecision::Retryable | RetryDecision::RefreshUrl => OutcomeClass::Transient,
            RetryDecision::PauseJob | RetryDecision::GiveUp | RetryDecision::Gone => {
                OutcomeClass::Fatal
            }
        }
    }
}

fn describe_ids(ids: &[String]) -> String {
    match ids {
        [] => "some of the requested objects".to_string(),
        [one] => format!("image {one}"),
        many => format!("images {}", many.join(", ")),
    }
}

/// The ids a "does not exist" message names: every run of 1 to 32 digits
/// (image ids are digits), in order, without repeats.
fn ids_named_in(message: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let tail = message.split_once(':').map_or(message, |(_, rest)| rest);
    for run in tail.split(|c: char| !c.is_ascii_digit()) {
        if !run.is_empty() && run.len() <= 32 && !ids.iter().any(|id| id == run) {
            ids.push(run.to_string());
        }
    }
    ids
}

#[derive(Deserialize)]
struct GraphErrorBody {
    error: GraphError,
}

/// The `error` object of a Graph error body.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct GraphError {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub error_subcode: Option<i64>,
}

/// Parses `{"error":{...}}` if the body is one; HTML and garbage give `None`.
pub(crate) fn parse_graph_error(body: &[u8]) -> Option<GraphError> {
    serde_json::from_slice::<GraphErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

/// `Retry-After` as delta-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if let Ok(secs) = raw.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(secs) = raw.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
        let when = SystemTime::from(when);
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Classifies a non-2xx answer of the API host by status AND Graph code.
/// `redact` scrubs server-provided text so a token echoed back never escapes.
pub(crate) fn classify_api_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    redact: impl Fn(&str) -> String,
) -> MapillaryError {
    let graph = parse_graph_error(body).unwrap_or_default();
    let detail = match &graph.message {
        Some(m) => format!("HTTP {}: {}", status.as_u16(), redact(m)),
        None => format!("HTTP {}", status.as_u16()),
    };
    let code = graph.code;
    if status == StatusCode::TOO_MANY_REQUESTS
        || code.is_some_and(|c| RATE_LIMIT_CODES.contains(&c))
    {
        return MapillaryError::RateLimited {
            retry_after: parse_retry_after(headers),
        };
    }
    if status == StatusCode::UNAUTHORIZED || code == Some(BAD_TOKEN_CODE) {
        return MapillaryError::BadToken(detail);
    }
    if code == Some(QUERY_TIMEOUT.0) && graph.error_subcode == Some(QUERY_TIMEOUT.1) {
        return MapillaryError::QueryTimeout(detail);
    }
    let unknown_object =
        code == Some(UNKNOWN_OBJECT.0) && graph.error_subcode == Some(UNKNOWN_OBJECT.1);
    if code == Some(MISSING_ALIASES_CODE) || unknown_object {
        let message = graph.message.as_deref().map(&redact).unwrap_or_default();
        return MapillaryError::Missing {
            ids: ids_named_in(&message),
            message: format!("API answered {detail}"),
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return MapillaryError::Transient(format!("API answered {detail}"));
    }
    if status == StatusCode::NOT_FOUND {
        return MapillaryError::NotFound(format!("API answered {detail}"));
    }
    if status.is_client_error() {
        return MapillaryError::BadRequest {
            code,
            message: format!("API answered {detail}"),
        };
    }
    // 1xx/3xx: redirects are never followed (the token must stay on the API host).
    MapillaryError::Fatal(format!("API answered unexpected {detail}"))
}

/// Classifies a non-2xx answer of the CDN. A 429 is a rate limit (no
/// attempt, `Retry-After` honoured), not a fault of the image.
pub(crate) fn classify_cdn_status(status: StatusCode, headers: &HeaderMap) -> MapillaryError {
    let code = status.as_u16();
    match status {
        StatusCode::TOO_MANY_REQUESTS => MapillaryError::RateLimited {
            retry_after: parse_retry_after(headers),
        },
        // A refused signature, or an object the CDN no longer has: a fresh
        // URL from the API settles it (the refresh learns whether the image
        // was deleted on Mapillary).
        StatusCode::FORBIDDEN | StatusCode::GONE | StatusCode::NOT_FOUND => {
            MapillaryError::UrlExpired(format!("CDN answered HTTP {code}"))
        }
        StatusCode::REQUEST_TIMEOUT => {
            MapillaryError::Transient(format!("CDN answered HTTP {code}"))
        }
        s if s.is_server_error() => MapillaryError::Transient(format!("CDN answered HTTP {code}")),
        s if s.is_client_error() => MapillaryError::BadRequest {
            code: None,
            message: format!("CDN answered HTTP {code}"),
        },
        _ => MapillaryError::Fatal(format!("CDN answered unexpected HTTP {code}")),
    }
}

/// A transport failure (connect, reset, timeout, body cut short). Always
/// transient; the message drops the URL, which may be signed.
pub(crate) fn transport_error(what: &str, err: reqwest::Error) -> MapillaryError {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "body interrupted"
    } else {
        "request failed"
    };
    let mut source = String::new();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&err);
    while let Some(c) = cause {
        source = c.to_string();
        cause = c.source();
    }
    if source.is_empty() {
        MapillaryError::Transient(format!("{what} {kind}"))
    } else {
        MapillaryError::Transient(format!("{what} {kind}: {source}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn classify(status: u16, body: &str, retry_after: Option<&str>) -> MapillaryError {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        classify_api_status(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            body.as_bytes(),
            |s| s.to_string(),
        )
    }

    fn graph(code: i64) -> String {
        format!(r#"{{"error":{{"message":"m","type":"OAuthException","code":{code}}}}}"#)
    }

    #[test]
    fn rate_limits_by_status_and_by_code() {
        assert_eq!(
            classify(429, "", Some("7")),
            MapillaryError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(429, "", None),
            MapillaryError::RateLimited { retry_after: None }
        );
        for code in [4, 17, 32, 613] {
            assert!(matches!(
                classify(400, &graph(code), None),
                MapillaryError::RateLimited { .. }
            ));
            assert!(matches!(
                classify(403, &graph(code), None),
                MapillaryError::RateLimited { .. }
            ));
        }
    }

    #[test]
    fn token_bad_request_server_errors() {
        assert!(matches!(
            classify(401, "", None),
            MapillaryError::BadToken(_)
        ));
        assert!(matches!(
            classify(400, &graph(190), None),
            MapillaryError::BadToken(_)
        ));
        assert!(matches!(
            classify(400, &graph(100), None),
            MapillaryError::BadRequest {
                code: Some(100),
                ..
            }
        ));
        assert!(matches!(
            classify(503, "<html>down</html>", None),
            MapillaryError::Transient(_)
        ));
        assert!(matches!(
            classify(404, "", None),
            MapillaryError::NotFound(_)
        ));
        assert!(matches!(classify(302, "", None), MapillaryError::Fatal(_)));
    }

    #[test]
    fn query_timeouts_are_retried_whatever_is_transient_says() {
        let body = r#"{"error":{"message":"Query Timeout","type":"OAuthException","code":-2,"error_subcode":3404014,"is_transient":false}}"#;
        for status in [400, 500, 504] {
            let err = classify(status, body, None);
            assert!(
                matches!(err, MapillaryError::QueryTimeout(_)),
                "{status}: {err:?}"
            );
            assert_eq!(err.decision(), RetryDecision::Retryable);
        }
    }

    #[test]
    fn missing_objects_name_their_ids() {
        let body = r#"{"error":{"message":"(#803) Some of the aliases you requested do not exist: 9701265521175550","type":"OAuthException","code":803}}"#;
        let err = classify(400, body, None);
        assert_eq!(err.decision(), RetryDecision::Gone);
        assert!(
            matches!(&err, MapillaryError::Missing { ids, .. } if ids == &["9701265521175550"])
        );
        let many = r#"{"error":{"message":"(#803) Some of the aliases you requested do not exist: 12, 345,12","code":803}}"#;
        assert!(
            matches!(classify(400, many, None), MapillaryError::Missing { ids, .. } if ids == ["12", "345"])
        );
        let unknown = r#"{"error":{"message":"Unsupported get request. Object with ID '77' does not exist","code":100,"error_subcode":33}}"#;
        assert!(
            matches!(classify(400, unknown, None), MapillaryError::Missing { ids, .. } if ids == ["77"])
        );
        // Code 100 without subcode 33 is a bad parameter, not a deleted image.
        assert!(matches!(
            classify(400, &graph(100), None),
            MapillaryError::BadRequest { .. }
        ));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(120)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(parse_retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        let future = chrono::Utc::now() + chrono::Duration::seconds(30);
        let date = future.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let d = parse_retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn cdn_statuses() {
        for status in [
            StatusCode::FORBIDDEN,
            StatusCode::GONE,
            StatusCode::NOT_FOUND,
        ] {
            assert!(matches!(
                classify_cdn_status(status, &HeaderMap::new()),
                MapillaryError::UrlExpired(_)
            ));
        }
        assert!(matches!(
            classify_cdn_status(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
            MapillaryError::Transient(_)
        ));
    }

    #[test]
    fn decisions() {
        assert_eq!(
            MapillaryError::Transient("x".into()).decision(),
            RetryDecision::Retryable
        );
        assert_eq!(
            MapillaryError::RateLimited { retry_after: None }.decision(),
            RetryDecision::RateLimited(None)
        );
        assert_eq!(
            MapillaryError::UrlExpired("x".into()).decision(),
            RetryDecision::RefreshUrl
        );
        assert_eq!(
            MapillaryError::BadToken("x".into()).decision(),
            RetryDecision::PauseJob
        );
        assert_eq!(
            MapillaryError::NotFound("x".into()).decision(),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn outcomes_follow_the_retry_decision() {
        assert_eq!(
            OutcomeClass::of(&Ok::<(), MapillaryError>(())),
            OutcomeClass::Ok
        );
        let limited: Result<(), _> = Err(MapillaryError::RateLimited { retry_after: None });
        assert_eq!(OutcomeClass::of(&limited), OutcomeClass::RateLimited);
        let transient: Result<(), _> = Err(MapillaryError::Transient("x".into()));
        assert_eq!(OutcomeClass::of(&transient), OutcomeClass::Transient);
        let fatal: Result<(), _> = Err(MapillaryError::BadToken("x".into()));
        assert_eq!(OutcomeClass::of(&fatal), OutcomeClass::Fatal);
    }
}
