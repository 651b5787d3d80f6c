//! Input rules for the HTTP API: what a job request may contain and how a
//! job id looks in a path.
//!
//! Each field gets its own deserializer so a rejection names the field and the
//! rule it broke ("bbox: west must be less than east"), instead of serde's
//! generic "invalid type" that leaves the user guessing which value was wrong.
//! Everything is checked before any handler runs, so bad input writes nothing.

use crate::api::error::ApiError;
use crate::model::{Bbox, Quality, validate_username};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Largest request body the API reads: bodies over 64 KiB are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The body of `POST /jobs`, fully validated once deserialised.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    #[serde(deserialize_with = "username_field")]
    pub username: String,
    /// `original` when absent or null.
    #[serde(default = "default_quality", deserialize_with = "quality_field")]
    pub quality: Quality,
    /// No area filter when absent or null.
    #[serde(default, deserialize_with = "bbox_field")]
    pub bbox: Option<Bbox>,
}

fn default_quality() -> Quality {
    Quality::Original
}

fn username_field<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(name) => {
            validate_username(&name).map_err(|e| D::Error::custom(format!("username: {e}")))?;
            Ok(name)
        }
        other => Err(D::Error::custom(format!(
            "username must be a string, got {}",
            kind(&other)
        ))),
    }
}

fn quality_field<'de, D: Deserializer<'de>>(d: D) -> Result<Quality, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Quality::Original),
        Value::String(s) => s
            .parse::<Quality>()
            .map_err(|e| D::Error::custom(format!("quality: {e}"))),
        other => Err(D::Error::custom(format!(
            "quality must be one of the strings \"original\", \"2048\", \"1024\", \"256\", got {}",
            kind(&other)
        ))),
    }
}

fn bbox_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bbox>, D::Error> {
    const SHAPE: &str = "bbox must be null or an array of four numbers [west, south, east, north]";
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => {
            let values = items
                .iter()
                .map(Value::as_f64)
                .collect::<Option<Vec<f64>>>()
                .ok_or_else(|| D::Error::custom(format!("{SHAPE}, got a non-number inside")))?;
            Bbox::from_slice(&values)
                .map(Some)
                .map_err(|e| D::Error::custom(format!("bbox: {e}")))
        }
        other => Err(D::Error::custom(format!("{SHAPE}, got {}", kind(&other)))),
    }
}

/// A JSON type's name, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a JSON body into `T`: broken JSON is 400, JSON that breaks a rule
/// (wrong type, unknown field, bad value) is 422.
pub fn parse_json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        Category::Data => ApiError::Unprocessable(format!("invalid request: {e}")),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::BadRequest(format!("request body is not valid JSON: {e}"))
        }
    })
}

/// Accepts `application/json`, with or without parameters such as a charset.
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The query of `POST /jobs/{id}/retry`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryParams {
    /// Re-queue images deleted on Mapillary too (they normally stay failed:
    /// a retry cannot bring them back).
    pub include_deleted: bool,
}

impl RetryParams {
    /// Parses `include_deleted=true|false`; anything else is a 400 that says
    /// what was wrong.
    pub fn parse(query: Option<&str>) -> Result<RetryParams, ApiError> {
        let mut params = RetryParams::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match (key.as_ref(), value.as_ref()) {
                ("include_deleted", "true" | "1") => params.include_deleted = true,
                ("include_deleted", "false" | "0") => params.include_deleted = false,
                ("include_deleted", other) => {
                    return Err(ApiError::BadRequest(format!(
                        "include_deleted must be true or false, got {:?}",
                        truncate(other, 64)
                    )));
                }
                (other, _) => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {:?}; this endpoint takes include_deleted",
                        truncate(other, 64)
                    )));
                }
            }
        }
        Ok(params)
    }
}

/// A job id as it appears in a path: a positive decimal integer.
pub fn parse_job_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(ApiError::BadRequest(format!(
            "job id must be a positive integer, got {:?}",
            truncate(raw, 64)
        ))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CreateJobRequest, ApiError> {
        parse_json_body(body.as_bytes())
    }

    #[test]
    fn minimal_request_defaults_quality_and_bbox() {
        let req = parse(r#"{"username":"alice"}"#).unwrap();
        assert_eq!(req.username, "alice");
        assert_eq!(req.quality, Quality::Original);
        assert_eq!(req.bbox, None);
        let req = parse(r#"{"username":"alice","quality":null,"bbox":null}"#).unwrap();
        assert_eq!(req.quality, Quality::Original);
        assert_eq!(req.bbox, None);
    }

    #[test]
    fn full_request() {
        let req = parse(r#"{"username":"bob","quality":"256","bbox":[1,2.5,3,4]}"#).unwrap();
        assert_eq!(req.quality, Quality::Q256);
        assert_eq!(req.bbox, Some(Bbox::new(1.0, 2.5, 3.0, 4.0).unwrap()));
    }

    fn message(result: Result<CreateJobRequest, ApiError>) -> (u16, String) {
        let err = result.unwrap_err();
        (err.status().as_u16(), err.to_string())
    }

    #[test]
    fn rule_breaks_name_the_field() {
        let cases = [
            (r#"{"username":"a","quality":"4096"}"#, 422, "quality"),
            (r#"{"username":"a","quality":2048}"#, 422, "quality"),
            (r#"{"username":"a","bbox":[3,2,1,4]}"#, 422, "west"),
            (r#"{"username":"a","bbox":[1,2,3]}"#, 422, "four numbers"),
            (r#"{"username":"a","bbox":["1",2,3,4]}"#, 422, "non-number"),
            (r#"{"username":"a","bbox":"1,2,3,4"}"#, 422, "bbox"),
            (r#"{"username":""}"#, 422, "empty"),
            (r#"{"username":"a/b"}"#, 422, "forbidden"),
            (r#"{"username":7}"#, 422, "username must be a string"),
            (r#"{"quality":"256"}"#, 422, "missing field `username`"),
            (
                r#"{"username":"a","extra":1}"#,
                422,
                "unknown field `extra`",
            ),
            (r#"{"username":"a","username":"b"}"#, 422, "duplicate field"),
            (r#"[]"#, 422, "invalid request"),
            (r#"{"username":"a""#, 400, "not valid JSON"),
            (r#""#, 400, "not valid JSON"),
            (r#"{"username":"a"} x"#, 400, "not valid JSON"),
        ];
        for (body, status, needle) in cases {
            let (got_status, got) = message(parse(body));
            assert_eq!(got_status, status, "{body}: {got}");
            assert!(got.contains(needle), "{body}: {got:?} lacks {needle:?}");
        }
    }

    #[test]
    fn oversized_username_is_refused() {
        let body = format!(r#"{{"username":"{}"}}"#, "x".repeat(101));
        let (status, msg) = message(parse(&body));
        assert_eq!(status, 422);
        assert!(msg.contains("longer than 100"), "{msg}");
        let body = format!(r#"{{"username":"{}"}}"#, "x".repeat(100));
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonx"));
        assert!(!is_json_content_type(""));
    }

    #[test]
    fn job_ids() {
        assert_eq!(parse_job_id("42").unwrap(), 42);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.5",
            "abc",
            "99999999999999999999",
            " 1",
        ] {
            let err = parse_job_id(bad).unwrap_err();
            assert_eq!(err.status().as_u16(), 400, "{bad}");
        }
    }
}
