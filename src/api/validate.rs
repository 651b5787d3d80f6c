//! Input rules for the HTTP API: what a job request may contain and how a
//! job id looks in a path.
//!
//! Each field gets its own deserializer so a rejection names the field and the
//! rule it broke ("bbox: west must be less than east"), instead of serde's
//! generic "invalid type" that leaves the user guessing which value was wrong.
//! Everything is checked before any handler runs, so bad input writes nothing.

use crate::api::error::ApiError;
use crate::model::{Bbox, OutputFormat, Packaging, Quality, UploadTarget, validate_username};
use crate::selection::{
    Filters, JobSpec, Pano, Resync, Selection, SelectionError, Source, parse_date, parse_interval,
};
use crate::units::clip;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::time::Duration;

/// Largest request body the API reads: 256 KiB (10,000 image ids fit);
/// larger bodies are refused with 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The body of `POST /jobs`, each field checked as it is read. Exactly one
/// source (`username`, `organization_id`, `sequence_ids`, `image_ids`) is
/// checked by [`CreateJobRequest::into_spec`].
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// Source: a contributor's images (1-64 characters: ASCII letters, digits, `_`, `-`, `.`).
    #[serde(default, deserialize_with = "username_field")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub username: Option<String>,
    /// Source: an organization's images (digits).
    #[serde(default, deserialize_with = "organization_field")]
    #[schema(value_type = Option<String>)]
    pub organization_id: Option<String>,
    /// Source: every image of these sequences (1-1,000 ids).
    #[serde(default, deserialize_with = "sequence_ids_field")]
    #[schema(value_type = Option<Vec<String>>)]
    pub sequence_ids: Option<Vec<String>>,
    /// Source: these images (1-10,000 ids of 1-32 digits).
    #[serde(default, deserialize_with = "image_ids_field")]
    #[schema(value_type = Option<Vec<String>>)]
    pub image_ids: Option<Vec<String>>,
    /// `original` when absent or null.
    #[serde(default = "default_quality", deserialize_with = "quality_field")]
    #[schema(value_type = Option<Quality>)]
    pub quality: Quality,
    /// Filter: `[west, south, east, north]` in degrees; no area filter when absent or null.
    #[serde(default, deserialize_with = "bbox_field")]
    #[schema(value_type = Option<Vec<f64>>, min_items = 4, max_items = 4)]
    pub bbox: Option<Bbox>,
    /// Filter: captured at or after (RFC 3339, or `YYYY-MM-DD` for midnight UTC).
    #[serde(default, deserialize_with = "start_field")]
    #[schema(value_type = Option<String>)]
    pub start_captured_at: Option<i64>,
    /// Filter: captured before (RFC 3339, or `YYYY-MM-DD` for midnight UTC).
    #[serde(default, deserialize_with = "end_field")]
    #[schema(value_type = Option<String>)]
    pub end_captured_at: Option<i64>,
    /// Filter: panoramas only, none, or any (default).
    #[serde(default, deserialize_with = "pano_field")]
    #[schema(value_type = Option<Pano>)]
    pub pano: Pano,
    /// `jpeg` (default) or `webp`.
    #[serde(default, deserialize_with = "format_field")]
    #[schema(value_type = Option<OutputFormat>)]
    pub format: OutputFormat,
    /// `none` (default) or `tar`; `tar` when `upload` is set (`none` with it is refused).
    #[serde(default, deserialize_with = "package_field")]
    #[schema(value_type = Option<Packaging>)]
    pub package: Option<Packaging>,
    /// `ia`: upload the packed collections to the Internet Archive once the job is done.
    #[serde(default, deserialize_with = "upload_field")]
    #[schema(value_type = Option<UploadTarget>)]
    pub upload: Option<UploadTarget>,
    /// Re-sync by itself this long after finishing (`90m`, `6h`, `7d`; at least 10 minutes);
    /// `null`: never; absent: `jobs.resync_every`.
    #[serde(default, deserialize_with = "resync_field")]
    #[schema(value_type = Option<String>)]
    pub resync_every: ResyncField,
}

/// `resync_every` as posted: absent (the configured default applies),
/// `null` (never), or an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResyncField {
    /// Not in the body: the configured default applies.
    #[default]
    Omitted,
    /// `null`: never re-sync.
    Never,
    /// An interval.
    Every(Duration),
}

impl CreateJobRequest {
    /// The job it asks for: exactly one source, filters checked together,
    /// lists normalised; `default_resync` (`jobs.resync_every`) when the
    /// post has no `resync_every`.
    pub fn into_spec(self, default_resync: Option<Duration>) -> Result<JobSpec, ApiError> {
        let mut sources = Vec::new();
        if let Some(name) = self.username {
            sources.push(("username", Source::Username(name)));
        }
        if let Some(id) = self.organization_id {
            sources.push(("organization_id", Source::Organization(id)));
        }
        if let Some(ids) = self.sequence_ids {
            sources.push(("sequence_ids", Source::Sequences(ids)));
        }
        if let Some(ids) = self.image_ids {
            sources.push(("image_ids", Source::Images(ids)));
        }
        let source = match sources.len() {
            1 => sources.remove(0).1,
            0 => {
                return Err(ApiError::Unprocessable(
                    "a job needs exactly one source: username, organization_id, sequence_ids or image_ids"
                        .into(),
                ));
            }
            _ => {
                let names: Vec<&str> = sources.iter().map(|(name, _)| *name).collect();
                return Err(ApiError::Unprocessable(format!(
                    "a job takes exactly one source, got {}",
                    names.join(" and ")
                )));
            }
        };
        let unprocessable = |e: SelectionError| ApiError::Unprocessable(e.to_string());
        let filters = Filters {
            bbox: self.bbox,
            start_captured_at: self.start_captured_at,
            end_captured_at: self.end_captured_at,
            pano: self.pano,
        }
        .checked()
        .map_err(unprocessable)?;
        let selection = Selection {
            source: source.normalized().map_err(unprocessable)?,
            filters,
        };
        let package = match (self.upload, self.package) {
            (Some(_), Some(Packaging::None)) => {
                return Err(ApiError::Unprocessable(
                    "upload: ia needs package: tar (leave package out, or set it to \"tar\")"
                        .into(),
                ));
            }
            (Some(_), _) => Packaging::Tar,
            (None, package) => package.unwrap_or_default(),
        };
        Ok(JobSpec {
            selection,
            quality: self.quality,
            format: self.format,
            package,
            upload: self.upload,
            // Not part of the identity: posting a job again without it
            // keeps the interval the job has.
            resync: match self.resync_every {
                ResyncField::Omitted => Resync::KeepOr(default_resync),
                ResyncField::Never => Resync::Set(None),
                ResyncField::Every(interval) => Resync::Set(Some(interval)),
            },
        })
    }
}

fn default_quality() -> Quality {
    Quality::Original
}

fn username_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(name) => {
            validate_username(&name).map_err(|e| D::Error::custom(format!("username: {e}")))?;
            Ok(Some(name))
        }
        other => Err(D::Error::custom(format!(
            "username must be a string, got {}",
            kind(&other)
        ))),
    }
}

fn organization_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(id) => Ok(Some(id)),
        other => Err(D::Error::custom(format!(
            "organization_id must be a string of digits, got {}",
            kind(&other)
        ))),
    }
}

/// A list of id strings; checked further (count, each id) by the source.
fn id_list<'de, D: Deserializer<'de>>(
    d: D,
    field: &str,
    what: &str,
) -> Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(id) => Ok(id),
                other => Err(D::Error::custom(format!(
                    "{field} must hold strings ({what}), got {}",
                    kind(&other)
                ))),
            })
            .collect::<Result<Vec<String>, D::Error>>()
            .map(Some),
        other => Err(D::Error::custom(format!(
            "{field} must be an array of {what}, got {}",
            kind(&other)
        ))),
    }
}

fn sequence_ids_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    id_list(d, "sequence_ids", "sequence ids")
}

fn image_ids_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    id_list(d, "image_ids", "image ids of digits")
}

fn date_field<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(text) => parse_date(&text)
            .map(Some)
            .map_err(|e| D::Error::custom(format!("{field}: {e}"))),
        other => Err(D::Error::custom(format!(
            "{field} must be a date string (RFC 3339 or YYYY-MM-DD), got {}",
            kind(&other)
        ))),
    }
}

fn start_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    date_field(d, "start_captured_at")
}

fn end_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    date_field(d, "end_captured_at")
}

/// A string naming one of a set of values (`null` gives the default).
fn choice<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String> + Default>(
    d: D,
    field: &str,
    choices: &str,
) -> Result<T, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(T::default()),
        Value::String(s) => s
            .parse::<T>()
            .map_err(|e| D::Error::custom(format!("{field}: {e}"))),
        other => Err(D::Error::custom(format!(
            "{field} must be one of the strings {choices}, got {}",
            kind(&other)
        ))),
    }
}

fn pano_field<'de, D: Deserializer<'de>>(d: D) -> Result<Pano, D::Error> {
    choice(d, "pano", "\"any\", \"only\", \"exclude\"")
}

fn format_field<'de, D: Deserializer<'de>>(d: D) -> Result<OutputFormat, D::Error> {
    choice(d, "format", "\"jpeg\", \"webp\"")
}

fn package_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Packaging>, D::Error> {
    choice(d, "package", "\"none\", \"tar\"").map(Some)
}

fn upload_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UploadTarget>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => s
            .parse()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("upload: {e}"))),
        other => Err(D::Error::custom(format!(
            "upload must be null or the string \"ia\", got {}",
            kind(&other)
        ))),
    }
}

fn resync_field<'de, D: Deserializer<'de>>(d: D) -> Result<ResyncField, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(ResyncField::Never),
        Value::String(text) => parse_interval(&text)
            .map(ResyncField::Every)
            .map_err(|e| D::Error::custom(format!("resync_every: {e}"))),
        other => Err(D::Error::custom(format!(
            "resync_every must be null or a duration string like \"6h\", got {}",
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
    let classify = |e: serde_json::Error| match e.classify() {
        Category::Data => ApiError::Unprocessable(format!("invalid request: {e}")),
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::BadRequest(format!("request body is not valid JSON: {e}"))
        }
    };
    // Serde would read a struct from an array too; a request is an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let value: Value = serde_json::from_slice(body).map_err(classify)?;
        return Err(ApiError::Unprocessable(format!(
            "invalid request: the body must be a JSON object, got {}",
            kind(&value)
        )));
    }
    serde_json::from_slice(body).map_err(classify)
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
                        clip(other, 64)
                    )));
                }
                (other, _) => {
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter {:?}; this endpoint takes include_deleted",
                        clip(other, 64)
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
            clip(raw, 64)
        ))),
    }
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
        assert_eq!(req.username.as_deref(), Some("alice"));
        assert_eq!(req.quality, Quality::Original);
        assert_eq!(req.bbox, None);
        let req = parse(r#"{"username":"alice","quality":null,"bbox":null}"#).unwrap();
        assert_eq!(req.quality, Quality::Original);
        assert_eq!(req.bbox, None);
    }

    #[test]
    fn upload_ia_packs_as_tar_and_is_part_of_the_identity() {
        let plain = spec(r#"{"username":"a","package":"tar"}"#).unwrap();
        let upload = spec(r#"{"username":"a","upload":"ia"}"#).unwrap();
        assert_eq!(upload.package, Packaging::Tar);
        assert_eq!(upload.upload, Some(UploadTarget::Ia));
        assert_ne!(plain.key(), upload.key());
        assert!(!plain.key().contains("upload"), "older jobs keep their key");
    }

    #[test]
    fn selections_normalise_to_one_identity() {
        let a = spec(
            r#"{"image_ids":["30","4","30"],"start_captured_at":"2024-01-01","pano":"exclude"}"#,
        )
        .unwrap();
        let b = spec(
            r#"{"image_ids":["4","30"],"start_captured_at":"2024-01-01T00:00:00Z","pano":"exclude","quality":"original","format":"jpeg","package":"none"}"#,
        )
        .unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(
            a.selection.source,
            Source::Images(vec!["4".into(), "30".into()])
        );
        let other = spec(r#"{"image_ids":["4","30"],"start_captured_at":"2024-01-02"}"#).unwrap();
        assert_ne!(a.key(), other.key());
        assert_eq!(a.resync, Resync::KeepOr(None));
        let every = parse(r#"{"username":"a","resync_every":"6h"}"#)
            .unwrap()
            .into_spec(Some(Duration::from_secs(60 * 60 * 24)))
            .unwrap();
        assert_eq!(
            every.resync,
            Resync::Set(Some(Duration::from_secs(6 * 3600)))
        );
        let default = parse(r#"{"username":"a"}"#)
            .unwrap()
            .into_spec(Some(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(
            default.resync,
            Resync::KeepOr(Some(Duration::from_secs(3600)))
        );
        let never = parse(r#"{"username":"a","resync_every":null}"#)
            .unwrap()
            .into_spec(Some(Duration::from_secs(3600)))
            .unwrap();
        assert_eq!(never.resync, Resync::Set(None));
    }

    #[test]
    fn full_request() {
        let req = parse(r#"{"username":"bob","quality":"256","bbox":[1,2.5,3,4]}"#).unwrap();
        assert_eq!(req.quality, Quality::Q256);
        assert_eq!(req.bbox, Some(Bbox::new(1.0, 2.5, 3.0, 4.0).unwrap()));
    }

    /// Parses and checks a body as `POST /jobs` does.
    fn spec(body: &str) -> Result<JobSpec, ApiError> {
        parse(body)?.into_spec(None)
    }

    fn message<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
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
            (r#"{"quality":"256"}"#, 422, "exactly one source"),
            (
                r#"{"username":"a","organization_id":"1"}"#,
                422,
                "exactly one source, got username and organization_id",
            ),
            (
                r#"{"organization_id":12}"#,
                422,
                "organization_id must be a string",
            ),
            (r#"{"organization_id":"12a"}"#, 422, "organization_id: "),
            (
                r#"{"sequence_ids":[]}"#,
                422,
                "sequence_ids: must name at least one",
            ),
            (
                r#"{"sequence_ids":"abc"}"#,
                422,
                "sequence_ids must be an array",
            ),
            (r#"{"sequence_ids":["a/b"]}"#, 422, "invalid sequence id"),
            (r#"{"image_ids":[1]}"#, 422, "image_ids must hold strings"),
            (r#"{"image_ids":["12x"]}"#, 422, "invalid image id"),
            (
                r#"{"username":"a","start_captured_at":"yesterday"}"#,
                422,
                "start_captured_at",
            ),
            (
                r#"{"username":"a","end_captured_at":5}"#,
                422,
                "end_captured_at must be a date",
            ),
            (
                r#"{"username":"a","start_captured_at":"2024-02-01","end_captured_at":"2024-01-01"}"#,
                422,
                "not before end_captured_at",
            ),
            (
                r#"{"username":"a","pano":"sometimes"}"#,
                422,
                "pano: unknown pano value",
            ),
            (
                r#"{"username":"a","pano":true}"#,
                422,
                "pano must be one of",
            ),
            (
                r#"{"username":"a","format":"png"}"#,
                422,
                "format: unknown format",
            ),
            (
                r#"{"username":"a","package":"zip"}"#,
                422,
                "package: unknown package",
            ),
            (
                r#"{"username":"a","upload":"ia","package":"none"}"#,
                422,
                "upload: ia needs package: tar",
            ),
            (
                r#"{"username":"a","upload":"s3"}"#,
                422,
                "upload: unknown upload",
            ),
            (
                r#"{"username":"a","resync_every":"5m"}"#,
                422,
                "10-minute minimum",
            ),
            (
                r#"{"username":"a","resync_every":"often"}"#,
                422,
                "resync_every",
            ),
            (
                r#"{"username":"a","resync_every":6}"#,
                422,
                "resync_every must be null",
            ),
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
            let (got_status, got) = message(spec(body));
            assert_eq!(got_status, status, "{body}: {got}");
            assert!(got.contains(needle), "{body}: {got:?} lacks {needle:?}");
        }
    }

    #[test]
    fn oversized_username_is_refused() {
        let body = format!(r#"{{"username":"{}"}}"#, "x".repeat(65));
        let (status, msg) = message(spec(&body));
        assert_eq!(status, 422);
        assert!(msg.contains("longer than 64"), "{msg}");
        let body = format!(r#"{{"username":"{}"}}"#, "x".repeat(64));
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
