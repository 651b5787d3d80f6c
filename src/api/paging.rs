//! Paging, one convention for every list (as GitHub's API pages): the
//! answer is a JSON array, and while more remain a
//! `Link: </path?…&after=<last key>>; rel="next"` header names the next
//! page. Keyset paging: `after` is the last key the client saw, so a page
//! is one index seek and rows added or changed meanwhile never shift it.
//!
//! The link is a path-absolute reference (RFC 8288 resolves it against the
//! request URL), so it stays right behind a proxy that rewrites the scheme
//! or host.

use crate::api::error::ApiError;
use crate::store::{ImageFilter, ImageState};
use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A page's size when the client does not say.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most a client may ask for at once.
pub const MAX_LIMIT: u32 = 1000;
/// The longest image id `after` takes (ids are a few dozen digits).
pub const MAX_AFTER_LEN: usize = 256;

/// `GET /jobs`'s query: `limit` and `after` (a job id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsQuery {
    /// Jobs per page.
    pub limit: u32,
    /// The last job id seen.
    pub after: Option<i64>,
}

/// `GET /jobs/{id}/images`'s query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesQuery {
    /// Images per page.
    pub limit: u32,
    /// The last image id seen.
    pub after: Option<String>,
    /// Which images (state, failure reason).
    pub filter: ImageFilter,
}

/// The query's pairs, each name at most once, every name one of `known`;
/// anything else is a 422 naming it.
fn pairs(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut seen: Vec<(String, String)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !known.contains(&key.as_ref()) {
            return Err(ApiError::Unprocessable(format!(
                "unknown query parameter {:?}; this endpoint takes {}",
                clip(&key),
                known.join(", ")
            )));
        }
        if seen.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::Unprocessable(format!(
                "query parameter {key} is given twice"
            )));
        }
        seen.push((key.into_owned(), value.into_owned()));
    }
    Ok(seen)
}

/// `limit`: an integer from 1 to [`MAX_LIMIT`].
fn parse_limit(value: &str) -> Result<u32, ApiError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) && value.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(ApiError::Unprocessable(format!(
            "limit must be an integer from 1 to {MAX_LIMIT}, got {:?}",
            clip(value)
        ))),
    }
}

impl JobsQuery {
    /// Parses `limit=1..1000&after=<job id>`; without them, the first
    /// [`DEFAULT_LIMIT`] jobs.
    pub fn parse(query: Option<&str>) -> Result<JobsQuery, ApiError> {
        let mut parsed = JobsQuery {
            limit: DEFAULT_LIMIT,
            after: None,
        };
        for (key, value) in pairs(query, &["limit", "after"])? {
            match key.as_str() {
                "limit" => parsed.limit = parse_limit(&value)?,
                _ => match value.parse::<i64>() {
                    Ok(id) if id >= 0 && value.bytes().all(|b| b.is_ascii_digit()) => {
                        parsed.after = Some(id)
                    }
                    _ => {
                        return Err(ApiError::Unprocessable(format!(
                            "after must be a job id (a non-negative integer: the last id of \
                             the page before), got {:?}",
                            clip(&value)
                        )));
                    }
                },
            }
        }
        Ok(parsed)
    }
}

impl ImagesQuery {
    /// Parses `state=failed|pending|in_progress|done`, `reason=deleted|error`
    /// (failed images only), `limit` and `after` (an image id).
    pub fn parse(query: Option<&str>) -> Result<ImagesQuery, ApiError> {
        let mut parsed = ImagesQuery {
            limit: DEFAULT_LIMIT,
            after: None,
            filter: ImageFilter::default(),
        };
        for (key, value) in pairs(query, &["state", "reason", "limit", "after"])? {
            match key.as_str() {
                "state" => {
                    let must_be = "failed, pending, in_progress or done";
                    parsed.filter.state = Some(parse_value("state", must_be, &value)?);
                }
                "reason" => {
                    let must_be = "deleted or error";
                    parsed.filter.reason = Some(parse_value("reason", must_be, &value)?);
                }
                "limit" => parsed.limit = parse_limit(&value)?,
                _ if value.is_empty()
                    || value.len() > MAX_AFTER_LEN
                    || value.chars().any(char::is_control) =>
                {
                    return Err(ApiError::Unprocessable(format!(
                        "after must be an image id (the last one of the page before): 1 to \
                         {MAX_AFTER_LEN} bytes, no control characters"
                    )));
                }
                _ => parsed.after = Some(value),
            }
        }
        if let (Some(state), Some(_)) = (parsed.filter.state, parsed.filter.reason)
            && state != ImageState::Failed
        {
            return Err(ApiError::Unprocessable(format!(
                "reason applies to failed images only; drop it or ask for state=failed, not {state}"
            )));
        }
        Ok(parsed)
    }

    /// This query's next page, after image `last`, as a path and query.
    pub fn next_page(&self, path: &str, last: &str) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(state) = self.filter.state {
            query.append_pair("state", state.as_str());
        }
        if let Some(reason) = self.filter.reason {
            query.append_pair("reason", reason.as_str());
        }
        query.append_pair("limit", &self.limit.to_string());
        query.append_pair("after", last);
        format!("{path}?{}", query.finish())
    }
}

/// A page as the API answers it: the items as a JSON array, with a
/// `Link: <next>; rel="next"` header when `next` is set.
pub fn paged<T: Serialize>(items: Vec<T>, next: Option<String>) -> Response {
    let mut response = Json(items).into_response();
    if let Some(value) =
        next.and_then(|n| HeaderValue::from_str(&format!("<{n}>; rel=\"next\"")).ok())
    {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

/// `value` as a `T`, or 422 saying what the parameter `name` must be.
fn parse_value<T: std::str::FromStr>(
    name: &str,
    must_be: &str,
    value: &str,
) -> Result<T, ApiError> {
    value.parse().map_err(|_| {
        ApiError::Unprocessable(format!("{name} must be {must_be}, got {:?}", clip(value)))
    })
}

/// A value echoed in an error, cut to 64 bytes.
fn clip(s: &str) -> &str {
    crate::units::clip(s, 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FailReason;

    #[test]
    fn jobs_query_defaults_bounds_and_refusals() {
        assert_eq!(
            JobsQuery::parse(None).unwrap(),
            JobsQuery {
                limit: 100,
                after: None
            }
        );
        assert_eq!(
            JobsQuery::parse(Some("limit=1000&after=7")).unwrap(),
            JobsQuery {
                limit: 1000,
                after: Some(7)
            }
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=+5",
            "limit=x",
            "after=-1",
            "after=1.5",
            "after=",
            "page=2",
            "limit=5&limit=6",
        ] {
            let err = JobsQuery::parse(Some(bad)).unwrap_err();
            assert!(matches!(err, ApiError::Unprocessable(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn images_query_and_its_next_link() {
        let q = ImagesQuery::parse(Some("state=failed&reason=deleted&limit=2")).unwrap();
        assert_eq!(q.filter.state, Some(ImageState::Failed));
        assert_eq!(q.filter.reason, Some(FailReason::Deleted));
        assert_eq!(
            q.next_page("/jobs/3/images", "a b&c"),
            "/jobs/3/images?state=failed&reason=deleted&limit=2&after=a+b%26c"
        );
        let back =
            ImagesQuery::parse(Some("state=failed&reason=deleted&limit=2&after=a+b%26c")).unwrap();
        assert_eq!(back.after.as_deref(), Some("a b&c"));
        // Each refusal names what is wrong.
        for (bad, says) in [
            ("state=lost", "state must be failed, pending"),
            ("reason=gone", "reason must be deleted or error"),
            ("state=done&reason=error", "reason applies to failed"),
            ("after=", "after must be an image id"),
            ("after=a%00b", "after must be an image id"),
            ("limit=0", "limit must be an integer"),
            ("sort=asc", "unknown query parameter \"sort\""),
        ] {
            let err = ImagesQuery::parse(Some(bad)).unwrap_err();
            assert!(matches!(err, ApiError::Unprocessable(_)), "{bad}: {err}");
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        assert!(ImagesQuery::parse(Some("reason=error")).is_ok());
    }

    #[test]
    fn a_page_names_its_next_only_when_there_is_one() {
        let last = paged(vec![1, 2], None);
        assert!(last.headers().get(header::LINK).is_none());
        let more = paged(vec![1, 2], Some("/jobs?limit=2&after=2".into()));
        assert_eq!(
            more.headers()[header::LINK],
            "</jobs?limit=2&after=2>; rel=\"next\""
        );
    }
}
