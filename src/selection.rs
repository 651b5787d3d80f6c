//! What a job archives: exactly one source (a user, an organization, some
//! sequences, some image ids) and any filters (bbox, capture dates,
//! panoramas), normalised so that two spellings of one selection are one
//! job. The filters are sent to the API where it takes them and applied
//! here to every image ([`Selection::matches`]), so nothing outside the
//! selection is archived even when the API ignores a parameter.

use crate::model::{
    Bbox, ImageMeta, spelled, validate_image_id, validate_sequence_id, validate_username,
};
use crate::units::clip;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Most sequences one job may name.
pub const MAX_SEQUENCES: usize = 1000;
/// Most image ids one job may name.
pub const MAX_IMAGE_IDS: usize = 10_000;
/// Shortest re-sync interval: more often would only hammer the API.
pub const MIN_RESYNC: Duration = Duration::from_secs(600);

/// Where a job's images come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A contributor's images; they land in the posted username's folder.
    Username(String),
    /// An organization's images (`organization_id`, digits).
    Organization(String),
    /// Every image of these sequences (sorted, without repeats).
    Sequences(Vec<String>),
    /// These images (sorted numerically, without repeats).
    Images(Vec<String>),
}

impl Source {
    /// The name the API and `/metrics` use for the kind of source.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Username(_) => "username",
            Source::Organization(_) => "organization",
            Source::Sequences(_) => "sequences",
            Source::Images(_) => "images",
        }
    }

    /// Checks and normalises: ids validated, lists deduplicated and sorted
    /// (image ids as numbers), sizes within bounds. Errors name the field.
    pub fn normalized(self) -> Result<Source, SelectionError> {
        match self {
            Source::Username(name) => {
                validate_username(&name).map_err(|e| SelectionError::new("username", e))?;
                Ok(Source::Username(name))
            }
            Source::Organization(id) => {
                if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SelectionError::new(
                        "organization_id",
                        format!("{:?} must be 1-32 digits", clip(&id, 40)),
                    ));
                }
                Ok(Source::Organization(id))
            }
            Source::Sequences(ids) => {
                let ids = checked_list("sequence_ids", ids, MAX_SEQUENCES, validate_sequence_id)?;
                let mut ids = ids;
                ids.sort();
                ids.dedup();
                Ok(Source::Sequences(ids))
            }
            Source::Images(ids) => {
                let mut ids = checked_list("image_ids", ids, MAX_IMAGE_IDS, validate_image_id)?;
                // Numeric order: digit strings compare by length, then text
                // (no leading zeros survive validation of real ids, but keep
                // "007" and "7" apart: they are different strings).
                ids.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
                ids.dedup();
                Ok(Source::Images(ids))
            }
        }
    }
}

fn checked_list(
    field: &'static str,
    ids: Vec<String>,
    max: usize,
    validate: fn(&str) -> Result<(), String>,
) -> Result<Vec<String>, SelectionError> {
    if ids.is_empty() {
        return Err(SelectionError::new(
            field,
            "must name at least one id".into(),
        ));
    }
    if ids.len() > max {
        return Err(SelectionError::new(
            field,
            format!("names {} ids; at most {max} are allowed", ids.len()),
        ));
    }
    for id in &ids {
        validate(id).map_err(|e| SelectionError::new(field, e))?;
    }
    Ok(ids)
}

/// Which images a job keeps by their panorama flag.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Pano {
    /// Panoramas and flat images alike.
    #[default]
    Any,
    /// Panoramas only.
    Only,
    /// Flat images only.
    Exclude,
}

spelled!(Pano {
    Any => "any",
    Only => "only",
    Exclude => "exclude",
} else |other| {
    let other = clip(other, 40);
    format!("unknown pano value {other:?}: expected any, only or exclude")
});

/// The filters of a job; every image must pass all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Filters {
    /// Only images inside this box.
    pub bbox: Option<Bbox>,
    /// Inclusive, Unix ms.
    pub start_captured_at: Option<i64>,
    /// Exclusive, Unix ms.
    pub end_captured_at: Option<i64>,
    /// Only panoramas, none, or either.
    pub pano: Pano,
}

impl Filters {
    /// Checks the filters together: start before end.
    pub fn checked(self) -> Result<Filters, SelectionError> {
        if let (Some(start), Some(end)) = (self.start_captured_at, self.end_captured_at)
            && start >= end
        {
            return Err(SelectionError::new(
                "start_captured_at",
                format!(
                    "{} is not before end_captured_at {}",
                    rfc3339(start),
                    rfc3339(end)
                ),
            ));
        }
        Ok(self)
    }

    /// Whether `image` passes every filter. An image without a position
    /// fails a bbox; without a capture time, a date range; without a
    /// panorama flag, `only` (and passes `exclude`).
    pub fn matches(&self, image: &ImageMeta) -> bool {
        if let Some(bbox) = self.bbox {
            let point = image.position();
            if !point.is_some_and(|(lat, lon)| bbox.contains(lat, lon)) {
                return false;
            }
        }
        if self.start_captured_at.is_some() || self.end_captured_at.is_some() {
            let Some(at) = image.captured_at else {
                return false;
            };
            if self.start_captured_at.is_some_and(|start| at < start)
                || self.end_captured_at.is_some_and(|end| at >= end)
            {
                return false;
            }
        }
        match self.pano {
            Pano::Any => true,
            Pano::Only => image.is_pano == Some(true),
            Pano::Exclude => image.is_pano != Some(true),
        }
    }
}

/// A whole selection: one source and its filters.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Where the images come from.
    pub source: Source,
    /// Which of them are kept.
    pub filters: Filters,
}

impl Selection {
    /// A username job without filters: what every job was before selections.
    pub fn user(username: &str) -> Selection {
        Selection {
            source: Source::Username(username.to_string()),
            filters: Filters::default(),
        }
    }

    /// Whether a listed image passes the filters (the API's own filtering is not trusted to be exact).
    pub fn matches(&self, image: &ImageMeta) -> bool {
        self.filters.matches(image)
    }

    /// A short human description (≤ 64 characters), for `/metrics` labels
    /// and log lines: never a whole 10,000-id list.
    pub fn summary(&self) -> String {
        let text = match &self.source {
            Source::Username(name) => format!("user {name}"),
            Source::Organization(id) => format!("organization {id}"),
            Source::Sequences(ids) => list_summary("sequence", ids),
            Source::Images(ids) => list_summary("image", ids),
        };
        clip(&text, 64).to_string()
    }

    /// The canonical JSON of the selection: fixed key order, normalised
    /// values. Two posts of one selection give the same text.
    pub fn canonical(&self) -> serde_json::Value {
        let f = &self.filters;
        serde_json::json!({
            "source": self.source,
            "bbox": f.bbox.map(|b| [b.west, b.south, b.east, b.north]),
            "start_captured_at": f.start_captured_at.map(rfc3339),
            "end_captured_at": f.end_captured_at.map(rfc3339),
            "pano": f.pano.as_str(),
        })
    }

    /// Parses what [`Selection::canonical`] wrote.
    pub fn from_canonical(value: &serde_json::Value) -> Result<Selection, String> {
        let source: Source = serde_json::from_value(value["source"].clone())
            .map_err(|e| format!("stored selection has no valid source: {e}"))?;
        let bbox = match &value["bbox"] {
            serde_json::Value::Null => None,
            other => {
                let corners: Vec<f64> = serde_json::from_value(other.clone())
                    .map_err(|e| format!("stored bbox: {e}"))?;
                Some(Bbox::from_slice(&corners)?)
            }
        };
        let date = |key: &str| -> Result<Option<i64>, String> {
            match value[key].as_str() {
                None => Ok(None),
                Some(text) => parse_date(text).map(Some),
            }
        };
        let pano = value["pano"].as_str().unwrap_or("any").parse::<Pano>()?;
        Ok(Selection {
            source,
            filters: Filters {
                bbox,
                start_captured_at: date("start_captured_at")?,
                end_captured_at: date("end_captured_at")?,
                pano,
            },
        })
    }
}

/// Image ids per `GET /?ids=` call: the API's limit.
pub const IDS_PER_CALL: usize = 50;

/// One piece of a job's enumeration, resumable on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum PartSpec {
    /// A `GET /images` query: the job's own, or one tile of its bbox.
    Listing {
        /// The tile of the job's bbox this part lists, or `None` for the whole query.
        bbox: Option<Bbox>,
    },
    /// One sequence: its image ids (`GET /image_ids`) become `Images` parts.
    Sequence(String),
    /// Up to 50 image ids, fetched with one `GET /?ids=`.
    Images(Vec<String>),
}

impl PartSpec {
    /// The part's kind as stored and shown (`listing`, `sequence`, `images`).
    pub fn kind(&self) -> &'static str {
        match self {
            PartSpec::Listing { .. } => "listing",
            PartSpec::Sequence(_) => "sequence",
            PartSpec::Images(_) => "images",
        }
    }

    /// `Images` parts for `ids`, 50 to a part.
    pub fn image_batches(ids: &[String]) -> Vec<PartSpec> {
        ids.chunks(IDS_PER_CALL)
            .map(|chunk| PartSpec::Images(chunk.to_vec()))
            .collect()
    }
}

/// How a submission sets a job's re-sync interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// Leave an existing job's interval as it is; a new job gets this one.
    /// What a post without `resync_every` asks for (with `jobs.resync_every`),
    /// and the one-shot `download` (with none).
    KeepOr(Option<Duration>),
    /// Set it (`None`: never re-sync by itself).
    Set(Option<Duration>),
}

/// Everything a submission asks for: the selection and how it is archived.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// What to archive.
    pub selection: Selection,
    /// Which size to download.
    pub quality: crate::model::Quality,
    /// JPEG as served, or re-encoded WebP.
    pub format: crate::model::OutputFormat,
    /// Loose files, or tars per date when done.
    pub package: crate::model::Packaging,
    /// Where the packed collections go once the job is done; `None`: they
    /// stay on this machine.
    pub upload: Option<crate::model::UploadTarget>,
    /// Whether and how often the job lists its source again.
    pub resync: Resync,
}

impl JobSpec {
    /// A username job with every default: what `download USERNAME` asks for.
    pub fn user(username: &str, quality: crate::model::Quality) -> JobSpec {
        JobSpec {
            selection: Selection::user(username),
            quality,
            format: Default::default(),
            package: Default::default(),
            upload: None,
            resync: Resync::KeepOr(None),
        }
    }

    /// This spec with a bbox filter (`None`: no area filter).
    pub fn with_bbox(mut self, bbox: Option<crate::model::Bbox>) -> JobSpec {
        self.selection.filters.bbox = bbox;
        self
    }

    /// The job's identity: the canonical selection plus quality, format,
    /// package and upload. Posts with the same key are one job. `upload` is
    /// in it only when set, so jobs stored before it existed keep their key.
    pub fn key(&self) -> String {
        let mut key = serde_json::json!({
            "selection": self.selection.canonical(),
            "quality": self.quality.as_str(),
            "format": self.format.as_str(),
            "package": self.package.as_str(),
        });
        if let Some(upload) = self.upload {
            key["upload"] = upload.as_str().into();
        }
        key.to_string()
    }

    /// The parts an enumeration starts from (and re-syncs restart from).
    pub fn initial_parts(&self) -> Vec<PartSpec> {
        match &self.selection.source {
            Source::Username(_) | Source::Organization(_) => vec![PartSpec::Listing {
                bbox: self.selection.filters.bbox,
            }],
            Source::Sequences(ids) => ids.iter().cloned().map(PartSpec::Sequence).collect(),
            Source::Images(ids) => PartSpec::image_batches(ids),
        }
    }
}

fn list_summary(noun: &str, ids: &[String]) -> String {
    match ids {
        [one] => format!("{noun} {one}"),
        [first, rest @ ..] => format!("{} {noun}s: {first} +{}", ids.len(), rest.len()),
        [] => format!("no {noun}s"),
    }
}

/// A rule an input broke, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SelectionError {
    /// The input field at fault, as the API and flags name it.
    pub field: &'static str,
    /// What is wrong with it (never echoing a secret).
    pub reason: String,
}

impl SelectionError {
    /// An error naming `field`.
    pub fn new(field: &'static str, reason: String) -> SelectionError {
        SelectionError { field, reason }
    }
}

/// RFC 3339 UTC with milliseconds and `Z`: how dates are echoed and keyed.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A capture-date bound: RFC 3339 (any offset; becomes UTC), or
/// `YYYY-MM-DD` meaning midnight UTC. Returns Unix ms.
///
/// Only dates whose UTC form has a four-digit year are taken: the bound is
/// stored and echoed as RFC 3339, which cannot write `+10000` or `-0001`
/// readably, and a stored bound that cannot be read back would break every
/// listing of the jobs.
pub fn parse_date(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let ms = if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        at.timestamp_millis()
    } else if let Some(ms) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
    {
        ms
    } else {
        return Err(format!(
            "{:?} is not a date: use RFC 3339 (2024-05-01T12:00:00Z) or YYYY-MM-DD",
            clip(text, 40)
        ));
    };
    let readable = DateTime::<Utc>::from_timestamp_millis(ms)
        .is_some_and(|at| (0..=9999).contains(&at.year()));
    if !readable {
        return Err(format!(
            "{:?} is out of range: the year (in UTC) must be 0000 to 9999",
            clip(text, 40)
        ));
    }
    Ok(ms)
}

/// A re-sync interval: one or more `<number><unit>` with units `s`, `m`,
/// `h`, `d`, `w` (`"90m"`, `"6h"`, `"1d12h"`), at least 10 minutes.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{:?} is not a duration like \"90m\", \"6h\" or \"7d\"",
            clip(text, 40)
        )
    };
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
        any = true;
    }
    if !any || !number.is_empty() {
        return Err(bad());
    }
    let interval = Duration::from_secs(total);
    if interval < MIN_RESYNC {
        return Err(format!(
            "{:?} is shorter than the 10-minute minimum",
            clip(text, 40)
        ));
    }
    if total > 366 * 86_400 {
        return Err(format!("{:?} is longer than a year", clip(text, 40)));
    }
    Ok(interval)
}

/// An interval in the shortest form [`parse_interval`] reads back.
pub fn format_interval(interval: Duration) -> String {
    let mut secs = interval.as_secs();
    let mut out = String::new();
    for (unit, size) in [
        ("w", 604_800),
        ("d", 86_400),
        ("h", 3600),
        ("m", 60),
        ("s", 1),
    ] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())?;
        let filters = &self.filters;
        if let Some(b) = filters.bbox {
            write!(f, ", bbox {}", b.to_query())?;
        }
        match (filters.start_captured_at, filters.end_captured_at) {
            (Some(s), Some(e)) => write!(f, ", {} to {}", day(s), day(e))?,
            (Some(s), None) => write!(f, ", since {}", day(s))?,
            (None, Some(e)) => write!(f, ", until {}", day(e))?,
            (None, None) => {}
        }
        match filters.pano {
            Pano::Any => Ok(()),
            Pano::Only => f.write_str(", panoramas only"),
            Pano::Exclude => f.write_str(", no panoramas"),
        }
    }
}

/// `YYYY-MM-DD` when the instant is a UTC midnight, else the full RFC 3339.
fn day(ms: i64) -> String {
    let full = rfc3339(ms);
    match full.strip_suffix("T00:00:00.000Z") {
        Some(date) => date.to_string(),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GeoPoint;

    #[test]
    fn dates_normalise_to_one_identity() {
        let a = parse_date("2024-01-01").unwrap();
        let b = parse_date("2024-01-01T00:00:00Z").unwrap();
        let c = parse_date("2024-01-01T01:00:00+01:00").unwrap();
        assert_eq!((a, a), (b, c));
        assert_eq!(rfc3339(a), "2024-01-01T00:00:00.000Z");
        assert!(parse_date("2024-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }

    /// A bound RFC 3339 cannot write with four digits is refused, so every
    /// stored bound reads back (one did not, and broke every job listing).
    #[test]
    fn dates_outside_four_digit_years_are_refused() {
        for bad in [
            "+10000-01-01",
            "-0001-01-01",
            "0000-01-01T00:00:00+01:00",
            "9999-12-31T23:00:00-02:00",
        ] {
            let error = parse_date(bad).unwrap_err();
            assert!(error.contains("out of range"), "{bad}: {error}");
        }
        for good in ["0000-01-01", "9999-12-31T23:59:59.999Z", "1900-01-01"] {
            let ms = parse_date(good).unwrap();
            assert_eq!(parse_date(&rfc3339(ms)), Ok(ms), "{good}");
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_interval("1d12h").unwrap(),
            Duration::from_secs(129_600)
        );
        assert_eq!(format_interval(Duration::from_secs(129_600)), "1d12h");
        assert_eq!(format_interval(Duration::from_secs(6 * 3600)), "6h");
        for bad in [
            "",
            "6",
            "h",
            "5m",
            "6x",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_are_deduplicated_sorted_and_bounded() {
        let s = Source::Images(vec!["30".into(), "4".into(), "30".into(), "100".into()])
            .normalized()
            .unwrap();
        assert_eq!(
            s,
            Source::Images(vec!["4".into(), "30".into(), "100".into()])
        );
        assert!(Source::Images(vec![]).normalized().is_err());
        assert!(Source::Images(vec!["1a".into()]).normalized().is_err());
        let many = (0..=MAX_IMAGE_IDS).map(|i| (i + 1).to_string()).collect();
        assert!(Source::Images(many).normalized().is_err());
        let s = Source::Sequences(vec!["b".into(), "a".into(), "b".into()])
            .normalized()
            .unwrap();
        assert_eq!(s, Source::Sequences(vec!["a".into(), "b".into()]));
        assert!(Source::Sequences(vec!["a/b".into()]).normalized().is_err());
        assert!(Source::Organization("12x".into()).normalized().is_err());
    }

    #[test]
    fn filters_match_locally() {
        let image = |lat: f64, at: Option<i64>, pano: Option<bool>| ImageMeta {
            id: "1".into(),
            captured_at: at,
            geometry: Some(GeoPoint {
                kind: None,
                coordinates: vec![13.0, lat],
            }),
            is_pano: pano,
            ..Default::default()
        };
        let f = Filters {
            bbox: Some(Bbox::new(12.0, 50.0, 14.0, 52.0).unwrap()),
            start_captured_at: Some(1000),
            end_captured_at: Some(2000),
            pano: Pano::Exclude,
        };
        assert!(f.matches(&image(51.0, Some(1000), Some(false))));
        assert!(f.matches(&image(51.0, Some(1999), None)));
        assert!(
            !f.matches(&image(51.0, Some(2000), Some(false))),
            "end is exclusive"
        );
        assert!(!f.matches(&image(51.0, None, Some(false))), "no date");
        assert!(!f.matches(&image(53.0, Some(1500), Some(false))), "outside");
        assert!(
            !f.matches(&image(51.0, Some(1500), Some(true))),
            "a panorama"
        );
        let only = Filters {
            pano: Pano::Only,
            ..Filters::default()
        };
        assert!(only.matches(&image(0.0, None, Some(true))));
        assert!(!only.matches(&image(0.0, None, None)));
        // An unusable computed position falls back to `geometry`, as EXIF
        // does: the filter tests the position the file is tagged with.
        let mut odd = image(51.0, Some(1500), Some(false));
        odd.computed_geometry = Some(GeoPoint {
            kind: None,
            coordinates: vec![200.0, 51.0],
        });
        assert_eq!(odd.position(), Some((51.0, 13.0)));
        assert!(f.matches(&odd));
        odd.computed_geometry = Some(GeoPoint {
            kind: None,
            coordinates: vec![13.5, 53.0],
        });
        assert!(!f.matches(&odd), "a usable computed position wins");
    }

    #[test]
    fn canonical_round_trips_and_summaries_are_short() {
        let selection = Selection {
            source: Source::Images((1..=10_000).map(|i| i.to_string()).collect()),
            filters: Filters {
                bbox: Some(Bbox::new(-1.5, 2.0, 3.0, 4.25).unwrap()),
                start_captured_at: Some(parse_date("2024-01-01").unwrap()),
                end_captured_at: None,
                pano: Pano::Only,
            },
        };
        let back = Selection::from_canonical(&selection.canonical()).unwrap();
        assert_eq!(back, selection);
        assert!(selection.summary().len() <= 64, "{}", selection.summary());
        assert_eq!(selection.summary(), "10000 images: 1 +9999");
        assert_eq!(
            selection.to_string(),
            "10000 images: 1 +9999, bbox -1.5,2,3,4.25, since 2024-01-01, panoramas only"
        );
    }
}
