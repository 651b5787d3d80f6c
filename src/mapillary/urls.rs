//! URL surgery: token stripping, signed-URL expiry, and keeping API calls on
//! the API origin (ARCHITECTURE.md invariant 2: the token goes only to the
//! API host and never into storage or logs).
//!
//! Query strings are edited as raw text, pair by pair, so every parameter we
//! keep is byte-for-byte what the server sent: a stored `next` cursor must
//! round-trip exactly.

use crate::model::{Bbox, IMAGE_FIELDS};
use crate::selection::{Filters, Pano, Source, rfc3339};
use url::Url;

const TOKEN_PARAM: &str = "access_token";

/// `url` without any `access_token` parameter (matched case-insensitively,
/// also when percent-encoded). Works on unparseable input too, since the
/// point is that a token never survives into storage or logs.
pub fn strip_token(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((head, frag)) => (head, Some(frag)),
        None => (url, None),
    };
    let Some((base, query)) = before_fragment.split_once('?') else {
        return url.to_string();
    };
    keep_pairs(base, query, fragment, |pair| {
        !pair.is_empty() && !is_token_pair(pair)
    })
}

/// `base`, then the pairs of `query` that `keep` keeps (byte for byte, in
/// their order), then `#fragment`.
fn keep_pairs(
    base: &str,
    query: &str,
    fragment: Option<&str>,
    keep: impl Fn(&str) -> bool,
) -> String {
    let kept: Vec<&str> = query.split('&').filter(|pair| keep(pair)).collect();
    let mut out = String::with_capacity(base.len() + query.len() + 1);
    out.push_str(base);
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// [`strip_token`], and also every query parameter whose name or value,
/// decoded, contains `secret`: a server that echoes the token under another
/// name (or encoded) must not get it into a stored cursor either.
pub fn strip_secret(url: &str, secret: &str) -> String {
    let stripped = strip_token(url);
    let secret = secret.trim();
    if secret.is_empty() {
        return stripped;
    }
    let Some((base, rest)) = stripped.split_once('?') else {
        return stripped;
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    keep_pairs(base, query, fragment, |pair| {
        !url::form_urlencoded::parse(pair.as_bytes())
            .any(|(k, v)| k.contains(secret) || v.contains(secret))
    })
}

/// Whether `text`, raw or percent-decoded, contains `secret`.
pub fn mentions_secret(text: &str, secret: &str) -> bool {
    let secret = secret.trim();
    !secret.is_empty()
        && (text.contains(secret)
            || url::form_urlencoded::parse(text.replace('&', "%26").as_bytes())
                .any(|(k, v)| k.contains(secret) || v.contains(secret)))
}

fn is_token_pair(pair: &str) -> bool {
    let key = pair.split_once('=').map_or(pair, |(k, _)| k);
    url::form_urlencoded::parse(key.as_bytes())
        .next()
        .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(TOKEN_PARAM))
}

/// The expiry of a signed CDN URL: its `oe=` parameter, hex Unix seconds.
pub fn url_expires_at(url: &str) -> Option<i64> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key != "oe" {
            return None;
        }
        i64::from_str_radix(value, 16).ok()
    })
}

/// The first `GET /images` page of a user or an organization, token-free,
/// with every filter the API takes: the `bbox` of this `tile` (the job's own
/// bbox, or a quarter of it), the capture dates and the panorama flag.
pub(crate) fn listing_url(
    base: &Url,
    source: &Source,
    filters: &Filters,
    tile: Option<Bbox>,
    page_size: u32,
) -> String {
    let mut url = endpoint(base, "images");
    {
        let mut q = url.query_pairs_mut();
        match source {
            Source::Username(name) => {
                q.append_pair("creator_username", name);
            }
            Source::Organization(id) => {
                q.append_pair("organization_id", id);
            }
            // Sequences and image ids are not listed with `/images`.
            Source::Sequences(_) | Source::Images(_) => {}
        }
        q.append_pair("fields", &IMAGE_FIELDS.join(","));
        q.append_pair("limit", &page_size.to_string());
        if let Some(b) = tile {
            q.append_pair("bbox", &b.to_query());
        }
        if let Some(start) = filters.start_captured_at {
            q.append_pair("start_captured_at", &rfc3339(start));
        }
        if let Some(end) = filters.end_captured_at {
            q.append_pair("end_captured_at", &rfc3339(end));
        }
        match filters.pano {
            Pano::Any => {}
            Pano::Only => {
                q.append_pair("is_pano", "true");
            }
            Pano::Exclude => {
                q.append_pair("is_pano", "false");
            }
        }
    }
    url.into()
}

/// `link` with its `limit` parameter set to `limit` (added when missing),
/// every other pair kept byte for byte: a stored cursor asks for smaller
/// pages after a query timeout.
pub fn with_limit(link: &str, limit: u32) -> String {
    let (head, fragment) = match link.split_once('#') {
        Some((h, f)) => (h, Some(f)),
        None => (link, None),
    };
    let (base, query) = head.split_once('?').unwrap_or((head, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("limit"))
        .map(str::to_string)
        .collect();
    pairs.push(format!("limit={limit}"));
    let mut out = format!("{base}?{}", pairs.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// `<base>/<name>` keeping any path prefix of the base (e.g. a proxy's `/v4`).
pub(crate) fn endpoint(base: &Url, name: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{}", base.path().trim_end_matches('/'), name);
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// The URL a stored page link is actually fetched from: on the API origin,
/// token-free. A link on another origin (or relative) keeps its path and
/// query but is moved onto `base`, so the token can only ever go there.
pub(crate) fn onto_api_origin(base: &Url, link: &str) -> Result<Url, String> {
    let clean = strip_token(link.trim());
    let parsed = match Url::parse(&clean) {
        Ok(u) => u,
        Err(url::ParseError::RelativeUrlWithoutBase) => base
            .join(&clean)
            .map_err(|e| format!("page link is not a URL: {e}"))?,
        Err(e) => return Err(format!("page link is not a URL: {e}")),
    };
    if parsed.origin() == base.origin()
        && parsed.username().is_empty()
        && parsed.password().is_none()
    {
        return Ok(parsed);
    }
    let mut rebased = base.clone();
    rebased.set_path(parsed.path());
    rebased.set_query(parsed.query());
    rebased.set_fragment(None);
    Ok(rebased)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_secret_under_any_name_and_encoding() {
        let secret = "MLY|1|abc";
        let next =
            "https://h/images?after=Q&echo=oauth%3AMLY%7C1%7Cabc&limit=5&Access_Token=MLY|1|abc#f";
        let clean = strip_secret(next, secret);
        assert_eq!(clean, "https://h/images?after=Q&limit=5#f");
        assert!(!mentions_secret(&clean, secret));
        assert!(mentions_secret("https://h/x?a=MLY%7C1%7Cabc", secret));
        assert!(mentions_secret("https://h/MLY|1|abc/x", secret));
        assert_eq!(strip_secret("https://h/x?a=1", ""), "https://h/x?a=1");
    }

    #[test]
    fn strips_token_in_any_case_and_position() {
        assert_eq!(
            strip_token("https://g.com/images?access_token=MLY|1|a&after=xyz&limit=5"),
            "https://g.com/images?after=xyz&limit=5"
        );
        assert_eq!(
            strip_token("https://g.com/images?after=xyz&Access_Token=MLY%7C1%7Ca"),
            "https://g.com/images?after=xyz"
        );
        assert_eq!(
            strip_token("https://g.com/images?ACCESS_TOKEN=t"),
            "https://g.com/images"
        );
        assert_eq!(
            strip_token("https://g.com/x?a=1&access%5Ftoken=t#frag"),
            "https://g.com/x?a=1#frag"
        );
        assert_eq!(
            strip_token("https://g.com/x?access_token"),
            "https://g.com/x"
        );
        assert_eq!(
            strip_token("https://g.com/x?a=1&&access_token=t&"),
            "https://g.com/x?a=1"
        );
    }

    #[test]
    fn strip_keeps_other_params_byte_for_byte() {
        let url = "https://g.com/images?fields=id%2Ccaptured_at&after=QVFI%3D&my_access_token=keep";
        assert_eq!(strip_token(url), url);
        assert_eq!(strip_token("not a url at all"), "not a url at all");
    }

    #[test]
    fn expiry_from_oe() {
        assert_eq!(
            url_expires_at("https://cdn/x.jpg?stp=a&oe=65A1B2C3&_nc_sig=z"),
            Some(0x65A1B2C3)
        );
        assert_eq!(
            url_expires_at("https://cdn/x.jpg?oe=6a1b2c3d"),
            Some(0x6a1b2c3d)
        );
        assert_eq!(url_expires_at("https://cdn/x.jpg?noe=1"), None);
        assert_eq!(url_expires_at("https://cdn/x.jpg?oe=zz"), None);
        assert_eq!(url_expires_at("https://cdn/x.jpg"), None);
    }

    #[test]
    fn first_page_has_every_parameter() {
        let base = Url::parse("https://graph.mapillary.com").unwrap();
        let bbox = Bbox::new(2.25, 48.8, 2.45, 48.9).unwrap();
        let tile = Bbox::new(2.25, 48.8, 2.35, 48.85).unwrap();
        let filters = Filters {
            bbox: Some(bbox),
            start_captured_at: Some(1_704_067_200_000),
            end_captured_at: Some(1_706_745_600_000),
            pano: Pano::Exclude,
        };
        let source = Source::Username("alice".into());
        let url = Url::parse(&listing_url(&base, &source, &filters, Some(tile), 500)).unwrap();
        assert_eq!(url.path(), "/images");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["creator_username"], "alice");
        assert_eq!(q["fields"], IMAGE_FIELDS.join(","));
        assert_eq!(q["limit"], "500");
        assert_eq!(
            q["bbox"], "2.25,48.8,2.35,48.85",
            "the tile, not the whole box"
        );
        assert_eq!(q["start_captured_at"], "2024-01-01T00:00:00.000Z");
        assert_eq!(q["end_captured_at"], "2024-02-01T00:00:00.000Z");
        assert_eq!(q["is_pano"], "false");
        assert!(!q.contains_key("access_token"));
        let org = Source::Organization("42".into());
        let url = Url::parse(&listing_url(&base, &org, &Filters::default(), None, 9)).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["organization_id"], "42");
        assert!(!q.contains_key("creator_username") && !q.contains_key("bbox"));
    }

    #[test]
    fn the_limit_of_a_stored_link_is_rewritten() {
        assert_eq!(
            with_limit("https://h/images?fields=a%2Cb&limit=2000&after=QV", 1000),
            "https://h/images?fields=a%2Cb&after=QV&limit=1000"
        );
        assert_eq!(
            with_limit("https://h/images", 100),
            "https://h/images?limit=100"
        );
    }

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let base = Url::parse("http://proxy.local/v4/").unwrap();
        assert_eq!(
            endpoint(&base, "images").as_str(),
            "http://proxy.local/v4/images"
        );
    }

    #[test]
    fn foreign_links_are_rebased_onto_the_api() {
        let base = Url::parse("http://127.0.0.1:9000/").unwrap();
        let same =
            onto_api_origin(&base, "http://127.0.0.1:9000/images?after=a&access_token=t").unwrap();
        assert_eq!(same.as_str(), "http://127.0.0.1:9000/images?after=a");
        let foreign = onto_api_origin(&base, "https://evil.example:443/images?after=b").unwrap();
        assert_eq!(foreign.as_str(), "http://127.0.0.1:9000/images?after=b");
        let userinfo = onto_api_origin(&base, "http://u:p@127.0.0.1:9000/images").unwrap();
        assert_eq!(userinfo.as_str(), "http://127.0.0.1:9000/images");
        let relative = onto_api_origin(&base, "/images?after=c").unwrap();
        assert_eq!(relative.as_str(), "http://127.0.0.1:9000/images?after=c");
    }
}
