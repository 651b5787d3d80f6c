//! The operator's page: `GET /` and its two assets, embedded in the binary.
//!
//! Three fixed files, no build step, nothing from another host: the page works
//! offline and under a Content-Security-Policy that allows only this origin
//! (no inline script or style; the script sets styles through the CSSOM).
//! The files hold no data: the script reads `/status` and steers jobs through
//! the same JSON API as any client, with the bearer token the operator types
//! into it. So they are served without a token (`auth` lists [`PATHS`]), and
//! the token is never in them.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The page.
pub const INDEX_PATH: &str = "/";
/// Its script.
pub const SCRIPT_PATH: &str = "/assets/app.js";
/// Its stylesheet.
pub const STYLE_PATH: &str = "/assets/style.css";
/// Every path this module serves: open to `GET`/`HEAD` without a token.
pub const PATHS: &[&str] = &[INDEX_PATH, SCRIPT_PATH, STYLE_PATH];

/// This origin only; no inline code; `data:` images for the empty favicon.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// A hash of the body, fixed at compile time: a new build with a changed
    /// page gets a new tag, so `no-cache` revalidation never serves a stale
    /// script beside a new page.
    etag: u64,
}

impl Asset {
    const fn new(body: &'static str, content_type: &'static str) -> Asset {
        Asset {
            body,
            content_type,
            etag: fnv1a(body.as_bytes()),
        }
    }
}

static INDEX: Asset = Asset::new(include_str!("page/index.html"), "text/html; charset=utf-8");
static SCRIPT: Asset = Asset::new(
    include_str!("page/app.js"),
    "text/javascript; charset=utf-8",
);
static STYLE: Asset = Asset::new(include_str!("page/style.css"), "text/css; charset=utf-8");

/// `GET /`.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    summary = "The operator's page (no token needed: it holds no data)",
    security(()),
    responses(
        (status = 200, description = "The operator's page", content_type = "text/html; charset=utf-8", body = String),
        (status = 304, description = "The copy named by If-None-Match is current")
    )
)]
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /assets/app.js`.
#[utoipa::path(
    get,
    path = "/assets/app.js",
    tag = "page",
    summary = "The page's script (no token needed: it holds no data)",
    security(()),
    responses(
        (status = 200, description = "The page's script", content_type = "text/javascript; charset=utf-8", body = String),
        (status = 304, description = "The copy named by If-None-Match is current")
    )
)]
pub async fn script(headers: HeaderMap) -> Response {
    serve(&SCRIPT, &headers)
}

/// `GET /assets/style.css`.
#[utoipa::path(
    get,
    path = "/assets/style.css",
    tag = "page",
    summary = "The page's stylesheet (no token needed: it holds no data)",
    security(()),
    responses(
        (status = 200, description = "The page's stylesheet", content_type = "text/css; charset=utf-8", body = String),
        (status = 304, description = "The copy named by If-None-Match is current")
    )
)]
pub async fn style(headers: HeaderMap) -> Response {
    serve(&STYLE, &headers)
}

/// The asset, or `304` when the client's copy is current; either way with
/// the security headers (a 304 may stand in for the page).
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(|tag| tag.trim().trim_start_matches("W/"))
                .any(|tag| tag == etag || tag == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    // Revalidate every time (cheap: a 304), so an upgrade shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// FNV-1a, 64-bit: a `const fn` hash, enough to tell two builds' files apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_only_its_own_assets_and_has_no_inline_code() {
        let html = INDEX.body;
        assert!(html.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(html.contains(&format!("href=\"{STYLE_PATH}\"")));
        for forbidden in [
            "<script>", "style=", "onclick", "onload", "http://", "https://",
        ] {
            assert!(!html.contains(forbidden), "index.html holds {forbidden:?}");
        }
        // The SVG namespace is a name, not a request.
        let script = SCRIPT
            .body
            .replace("'http://www.w3.org/2000/svg'", "SVG_NS");
        for asset in [script.as_str(), STYLE.body] {
            for forbidden in ["http://", "https://", "@import", "innerHTML", "eval("] {
                assert!(!asset.contains(forbidden), "an asset holds {forbidden:?}");
            }
        }
    }

    #[test]
    fn the_page_stays_small() {
        let total = INDEX.body.len() + SCRIPT.body.len() + STYLE.body.len();
        assert!(total < 60 * 1024, "the page weighs {total} bytes");
    }

    #[test]
    fn etags_differ_between_assets() {
        assert_ne!(INDEX.etag, SCRIPT.etag);
        assert_ne!(SCRIPT.etag, STYLE.etag);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_matching_if_none_match_gets_304_with_the_same_headers() {
        let first = serve(&SCRIPT, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, etag.clone());
        let again = serve(&SCRIPT, &request);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag);
        assert!(
            again
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY)
        );
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(serve(&SCRIPT, &request).status(), StatusCode::OK);
    }
}
