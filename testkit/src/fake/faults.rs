//! The faults the fake can inject: random per-request probabilities
//! ([`Faults`], with named presets) and scripted answers ([`Fault`]).

/// Per-request fault probabilities (0.0..=1.0), drawn from a seeded RNG.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    pub api_5xx_html: f64,
    pub api_429_retry_after: f64,
    pub api_429_plain: f64,
    pub api_code4_400: f64,
    pub api_invalid_json: f64,
    pub api_truncated: f64,
    pub api_reset: f64,
    pub cdn_5xx: f64,
    pub cdn_truncated: f64,
    pub cdn_reset: f64,
    pub cdn_html_200: f64,
    /// CDN bodies that stop half-way with the connection left open.
    pub cdn_stall: f64,
    /// HTTP 403 with Graph code 4: a rate limit that is not a 429.
    pub api_403_code4: f64,
    /// HTTP 400 with Graph code 17, 32 or 613 (other rate-limit codes).
    pub api_rate_codes: f64,
    /// HTTP 500 with a JSON Graph error body (`is_transient: true`).
    pub api_5xx_json: f64,
    /// HTTP 429 from the CDN (with `Retry-After: 1`).
    pub cdn_429: f64,
    /// A 302 to the same image at another URL of the CDN.
    pub cdn_redirect: f64,
    /// The real body, chunked, without a Content-Length.
    pub cdn_chunked: f64,
    pub overlapping_pages: f64,
    /// HTTP 500 "Query Timeout" (code -2, subcode 3404014), for `/images`
    /// and `/image_ids` requests only.
    pub api_query_timeout: f64,
}

impl Faults {
    /// Named mixes for the standalone server: `none`, `flaky`, `chaos`, `ratelimit`.
    pub fn preset(name: &str) -> Option<Faults> {
        let all = |api: f64, cdn: f64, overlap: f64| Faults {
            api_5xx_html: api,
            api_429_retry_after: api,
            api_429_plain: api,
            api_code4_400: api,
            api_invalid_json: api,
            api_truncated: api,
            api_reset: api,
            cdn_5xx: cdn,
            cdn_truncated: cdn,
            cdn_reset: cdn,
            cdn_html_200: cdn,
            cdn_stall: 0.0,
            api_403_code4: api,
            api_rate_codes: api,
            api_5xx_json: api,
            cdn_429: cdn,
            cdn_redirect: cdn,
            cdn_chunked: cdn,
            overlapping_pages: overlap,
            api_query_timeout: 0.0,
        };
        match name {
            "none" => Some(Faults::default()),
            "flaky" => Some(all(0.01, 0.02, 0.2)),
            "chaos" => Some(Faults {
                api_query_timeout: 0.04,
                ..all(0.04, 0.06, 0.5)
            }),
            "ratelimit" => Some(Faults {
                api_429_retry_after: 0.1,
                api_429_plain: 0.05,
                api_code4_400: 0.05,
                ..Faults::default()
            }),
            _ => None,
        }
    }
}

/// One scripted answer, consumed in order by the next requests of a route.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Serve normally (lets a script skip a request).
    Pass,
    Status500Html,
    Status503Html,
    /// HTTP 429 with a Graph code-4 body, with or without `Retry-After: <secs>`.
    RateLimit {
        retry_after: Option<u64>,
    },
    /// HTTP 400 with Graph code 4 (rate limited without a 429).
    RateLimitCode4,
    /// HTTP 401 with Graph code 190.
    BadToken,
    /// HTTP 400 with Graph code 100.
    BadParam,
    /// HTTP 200 with a body that is not JSON.
    InvalidJson,
    /// The real answer, with a Content-Length larger than the bytes sent, then a close.
    Truncated,
    /// The connection is reset instead of answered.
    Reset,
    /// HTTP 200 with an HTML body (for the CDN: not a JPEG).
    Html200,
    /// HTTP 403 "URL signature expired" with a short text body.
    Expired,
    /// HTTP 410.
    Gone,
    NotFound,
    /// The page repeats the last few ids of the previous page.
    OverlapPage,
    /// The real answer's headers and first half of its body, then nothing:
    /// the connection stays open and silent (a stalled transfer).
    Stall,
    /// Any Graph error: HTTP `status` with error `code`, optionally with
    /// `Retry-After: <secs>` (e.g. 403 code 4, 400 code 613).
    Graph {
        status: u16,
        code: i64,
        retry_after: Option<u64>,
    },
    /// HTTP 500 with a JSON Graph error body that says it is transient.
    Status500Json,
    /// A 302 to the same resource with an extra query parameter.
    Redirect,
    /// The real answer streamed in chunks, without a Content-Length.
    Chunked,
    /// HTTP 500 with the search's "Query Timeout" Graph error (code -2,
    /// subcode 3404014, `is_transient: false`). Only `/images` and
    /// `/image_ids` requests take it: scripted for the API, it waits at the
    /// head of the script (other requests are served as if the script were
    /// empty) until a listing request comes.
    QueryTimeout,
}

impl Fault {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Status500Html => "500-html",
            Fault::Status503Html => "503-html",
            Fault::RateLimit {
                retry_after: Some(_),
            } => "429-retry-after",
            Fault::RateLimit { retry_after: None } => "429-plain",
            Fault::RateLimitCode4 => "400-code4",
            Fault::BadToken => "401-code190",
            Fault::BadParam => "400-code100",
            Fault::InvalidJson => "invalid-json",
            Fault::Truncated => "truncated",
            Fault::Reset => "reset",
            Fault::Html200 => "html-200",
            Fault::Expired => "403-expired",
            Fault::Gone => "410-gone",
            Fault::NotFound => "404",
            Fault::OverlapPage => "overlap",
            Fault::Stall => "stall",
            Fault::Graph { .. } => "graph-error",
            Fault::Status500Json => "500-json",
            Fault::Redirect => "302",
            Fault::Chunked => "chunked",
            Fault::QueryTimeout => "500-query-timeout",
        }
    }
}
