//! Asking the Internet Archive whether an item already exists, so a new
//! username job can skip a collection someone has already published
//! (`archive.skip_if_on_ia`). archive.org answers `GET /metadata/<id>` with
//! `{}` for an unknown item and a non-empty `metadata` object for a real one;
//! a "dark" (withdrawn) item does not count. Any failure is "unknown", and
//! the job goes ahead: an unreachable archive.org never blocks a job.
//!
//! A client of its own: the Mapillary token must never travel to another host.

use std::time::Duration;

/// How long to wait for archive.org before going ahead without it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The public page of an item.
pub fn item_url(ia_url: &str, identifier: &str) -> String {
    under(ia_url, "details", identifier).unwrap_or_else(|_| {
        format!(
            "{}/details/{}",
            ia_url.trim_end_matches('/'),
            url::form_urlencoded::byte_serialize(identifier.as_bytes()).collect::<String>()
        )
    })
}

/// `<ia_url>/<section>/<identifier>`, the identifier one percent-encoded
/// path segment: whatever it holds (`?`, `#`, `/`, `%`), it cannot change
/// the URL's query, fragment or path.
fn under(ia_url: &str, section: &str, identifier: &str) -> Result<String, String> {
    let mut url =
        url::Url::parse(ia_url).map_err(|e| format!("archive.ia_url is not a URL: {e}"))?;
    url.path_segments_mut()
        .map_err(|_| "archive.ia_url cannot take a path".to_string())?
        .pop_if_empty()
        .push(section)
        .push(identifier);
    Ok(url.into())
}

/// `Ok(true)` when `identifier` is a live item on the archive at `ia_url`,
/// `Ok(false)` when it is not; `Err` says why we could not tell.
pub async fn item_exists(ia_url: &str, identifier: &str) -> Result<bool, String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("mapillary-downloader/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let url = under(ia_url, "metadata", identifier)?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("GET {url}: not JSON: {e}"))?;
    Ok(is_live_item(&body))
}

/// archive.org's answer describes a live item: a non-empty `metadata`
/// object, and not dark.
pub fn is_live_item(body: &serde_json::Value) -> bool {
    let has_metadata = body
        .get("metadata")
        .and_then(|m| m.as_object())
        .is_some_and(|m| !m.is_empty());
    let dark = body.get("is_dark").and_then(|d| d.as_bool()) == Some(true);
    has_metadata && !dark
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_a_non_empty_metadata_object_of_a_live_item_counts() {
        assert!(!is_live_item(&json!({})));
        assert!(!is_live_item(&json!({"metadata": {}})));
        assert!(!is_live_item(&json!({"metadata": "x"})));
        assert!(is_live_item(&json!({"metadata": {"identifier": "a"}})));
        assert!(!is_live_item(
            &json!({"metadata": {"identifier": "a"}, "is_dark": true})
        ));
        assert_eq!(
            item_url("https://archive.org/", "mapillary-a-2048"),
            "https://archive.org/details/mapillary-a-2048"
        );
    }

    #[test]
    fn identifiers_are_one_percent_encoded_segment() {
        assert_eq!(
            under("https://archive.org", "metadata", "a?b#c/d%e").unwrap(),
            "https://archive.org/metadata/a%3Fb%23c%2Fd%25e"
        );
        assert_eq!(
            under("http://127.0.0.1:9/ia/", "metadata", "mapillary-x-2048").unwrap(),
            "http://127.0.0.1:9/ia/metadata/mapillary-x-2048"
        );
        assert_eq!(
            item_url("https://archive.org", "x?y"),
            "https://archive.org/details/x%3Fy"
        );
    }
}
