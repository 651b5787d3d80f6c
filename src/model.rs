//! Domain types shared by every layer: the image metadata the API serves, the
//! quality and bbox a job asks for, and the id rules that guard the file system.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// `as_str` and `FromStr` for a plain enum from one table of spellings (as
/// in jobs, flags and the API), so each is written once and the two cannot
/// disagree; the closure after `else` words the refusal of other text.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? } else $refuse:expr) => {
        impl $ty {
            /// The spelling in jobs, flags and the API.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)+
                }
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let refuse: fn(&str) -> String = $refuse;
                match s {
                    $($text => Ok($ty::$variant),)+
                    other => Err(refuse(other)),
                }
            }
        }
    };
}
pub(crate) use spelled;

/// The image fields we ask the API for, in the order `fields=` lists them.
/// Every `thumb_*_url` is requested so a refresh serves any quality.
pub const IMAGE_FIELDS: &[&str] = &[
    "id",
    "captured_at",
    "geometry",
    "computed_geometry",
    "altitude",
    "computed_altitude",
    "compass_angle",
    "computed_compass_angle",
    "sequence",
    "make",
    "model",
    "is_pano",
    "camera_type",
    "width",
    "height",
    "exif_orientation",
    "creator",
    "thumb_256_url",
    "thumb_1024_url",
    "thumb_2048_url",
    "thumb_original_url",
];

/// A GeoJSON point as the API serves it: `coordinates` is `[lon, lat]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// GeoJSON's `type` (always `Point` from the API); kept so the stored JSON round-trips.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `[lon, lat]`, as GeoJSON orders them.
    pub coordinates: Vec<f64>,
}

impl GeoPoint {
    /// `(lat, lon)` when the point has two finite coordinates in range.
    pub fn lat_lon(&self) -> Option<(f64, f64)> {
        match self.coordinates.as_slice() {
            [lon, lat, ..]
                if lon.is_finite()
                    && lat.is_finite()
                    && (-90.0..=90.0).contains(lat)
                    && (-180.0..=180.0).contains(lon) =>
            {
                Some((*lat, *lon))
            }
            _ => None,
        }
    }
}

/// One image as served by `GET /images` or `GET /?ids=`.
///
/// Every field is optional because the API omits fields freely; `0.0` is a
/// value, and only an absent field is `None`. Fields we do not model are kept
/// in `extra`, so `metadata.jsonl` loses nothing the API said.
///
/// Serialising never writes a URL (`thumb_*_url`, or any `*_url` key of
/// `extra`): URLs expire, so the JSON the store keeps and `metadata.jsonl`
/// holds is the metadata alone, with no copy of the image made to drop them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageMeta {
    /// The image id (the API serves it as text or a number; we keep text).
    #[serde(deserialize_with = "id_text_or_number")]
    pub id: String,
    /// Capture time, Unix ms: the date folder, EXIF time and file mtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<i64>,
    /// Where the camera said it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<GeoPoint>,
    /// Mapillary's corrected position, preferred for GPS tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_geometry: Option<GeoPoint>,
    /// Altitude the camera recorded, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude: Option<f64>,
    /// Mapillary's corrected altitude, preferred for GPS tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_altitude: Option<f64>,
    /// Heading the camera recorded, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compass_angle: Option<f64>,
    /// Mapillary's corrected heading, preferred for GPS tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_compass_angle: Option<f64>,
    /// The sequence the image belongs to: its folder under the date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    /// Camera make, for the EXIF tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
    /// Camera model, for the EXIF tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A panorama: gets GPano XMP and passes the panorama filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_pano: Option<bool>,
    /// The API's projection (`spherical`, `equirectangular`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_type: Option<String>,
    /// Width in pixels, as the API reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels, as the API reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// CDN URL of the 256 px image (expires; never stored).
    #[serde(default, skip_serializing)]
    pub thumb_256_url: Option<String>,
    /// CDN URL of the 1024 px image (expires; never stored).
    #[serde(default, skip_serializing)]
    pub thumb_1024_url: Option<String>,
    /// CDN URL of the 2048 px image (expires; never stored).
    #[serde(default, skip_serializing)]
    pub thumb_2048_url: Option<String>,
    /// CDN URL of the original image (expires; never stored).
    #[serde(default, skip_serializing)]
    pub thumb_original_url: Option<String>,
    /// Every other field the API served, kept as is for `metadata.jsonl` (URLs dropped).
    #[serde(flatten, serialize_with = "serialize_without_urls")]
    pub extra: Map<String, Value>,
}

/// An image id as text; a numeric id (not what the API documents, but cheap
/// to accept) becomes its decimal text.
fn id_text_or_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
    struct IdVisitor;
    impl serde::de::Visitor<'_> for IdVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an image id (a string or a number)")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(IdVisitor)
}

/// Writes `extra` without its `*_url` keys: see [`ImageMeta`].
fn serialize_without_urls<S: serde::Serializer>(
    extra: &Map<String, Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(extra.iter().filter(|(key, _)| !key.ends_with("_url")))
}

impl ImageMeta {
    /// `(lat, lon)` from `computed_geometry`, falling back to `geometry`
    /// when that is absent or unusable: the position EXIF gets, and the one
    /// a bbox filter tests, so the two can never disagree.
    pub fn position(&self) -> Option<(f64, f64)> {
        self.computed_geometry
            .as_ref()
            .and_then(GeoPoint::lat_lon)
            .or_else(|| self.geometry.as_ref().and_then(GeoPoint::lat_lon))
    }

    /// The CDN URL for `quality`, if the API served one.
    pub fn url_for(&self, quality: Quality) -> Option<&str> {
        match quality {
            Quality::Original => self.thumb_original_url.as_deref(),
            Quality::Q2048 => self.thumb_2048_url.as_deref(),
            Quality::Q1024 => self.thumb_1024_url.as_deref(),
            Quality::Q256 => self.thumb_256_url.as_deref(),
        }
    }
}

/// An image of a listing page together with the JSON the store keeps of it.
/// The JSON is made where the page is decoded, off the async workers, so
/// storing a page is SQL only.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedImage {
    /// The decoded metadata.
    pub meta: ImageMeta,
    /// `meta` as stored: no URLs.
    pub stored: String,
}

impl ListedImage {
    /// `meta` with its stored JSON made now, off the async workers.
    pub fn new(meta: ImageMeta) -> Result<ListedImage, serde_json::Error> {
        let stored = serde_json::to_string(&meta)?;
        Ok(ListedImage { meta, stored })
    }
}

impl std::ops::Deref for ListedImage {
    type Target = ImageMeta;

    fn deref(&self) -> &ImageMeta {
        &self.meta
    }
}

/// What the store needs of an image it inserts: the metadata, and the JSON
/// it keeps of it (made ahead of time by a [`ListedImage`], on the spot by a
/// bare [`ImageMeta`]).
pub trait Storable: Sync {
    /// The image's metadata.
    fn meta(&self) -> &ImageMeta;
    /// The JSON the store keeps of it (no URLs).
    fn stored_json(&self) -> Result<std::borrow::Cow<'_, str>, serde_json::Error>;
}

impl Storable for ListedImage {
    fn meta(&self) -> &ImageMeta {
        &self.meta
    }

    fn stored_json(&self) -> Result<std::borrow::Cow<'_, str>, serde_json::Error> {
        Ok(std::borrow::Cow::Borrowed(&self.stored))
    }
}

impl Storable for ImageMeta {
    fn meta(&self) -> &ImageMeta {
        self
    }

    fn stored_json(&self) -> Result<std::borrow::Cow<'_, str>, serde_json::Error> {
        serde_json::to_string(self).map(std::borrow::Cow::Owned)
    }
}

/// The image size a job downloads. Serialised as the API's strings: `original`, `2048`, `1024`, `256`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub enum Quality {
    /// The full-size original.
    #[serde(rename = "original")]
    #[default]
    Original,
    /// 2048 px on the long side.
    #[serde(rename = "2048")]
    Q2048,
    /// 1024 px on the long side.
    #[serde(rename = "1024")]
    Q1024,
    /// 256 px on the long side.
    #[serde(rename = "256")]
    Q256,
}

impl Quality {
    /// Every quality, for parsing and listing them.
    pub const ALL: [Quality; 4] = [
        Quality::Original,
        Quality::Q2048,
        Quality::Q1024,
        Quality::Q256,
    ];

    /// The API's and the collection name's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Original => "original",
            Quality::Q2048 => "2048",
            Quality::Q1024 => "1024",
            Quality::Q256 => "256",
        }
    }

    /// The API field that carries this quality's URL.
    pub fn url_field(self) -> &'static str {
        match self {
            Quality::Original => "thumb_original_url",
            Quality::Q2048 => "thumb_2048_url",
            Quality::Q1024 => "thumb_1024_url",
            Quality::Q256 => "thumb_256_url",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quality::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                format!("unknown quality {s:?}: expected one of original, 2048, 1024, 256")
            })
    }
}

/// The file format a job archives in.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// The CDN's JPEG, tagged: `<id>.jpg`.
    #[default]
    Jpeg,
    /// Re-encoded lossy WebP with the same tags: `<id>.webp`, in a
    /// `-webp` collection.
    Webp,
}

spelled!(OutputFormat {
    Jpeg => "jpeg",
    Webp => "webp",
} else |other| format!("unknown format {other:?}: expected jpeg or webp"));

impl OutputFormat {
    /// The collection folder's suffix: the Python tool's `-webp`.
    pub fn collection_suffix(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "",
            OutputFormat::Webp => "-webp",
        }
    }
}

/// How a job's collections are packaged when it finishes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Packaging {
    /// Loose files in date folders.
    #[default]
    None,
    /// One tar per capture date, plus the Internet Archive's item files.
    Tar,
}

spelled!(Packaging {
    None => "none",
    Tar => "tar",
} else |other| format!("unknown package {other:?}: expected none or tar"));

/// Where a job's packed collections go once it is done (`"upload": "ia"`):
/// the Internet Archive, or nowhere (no field). Part of the job's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadTarget {
    /// archive.org, through its S3-like API: one item per collection.
    Ia,
}

spelled!(UploadTarget {
    Ia => "ia",
} else |other| format!("unknown upload {other:?}: expected ia"));

/// The collection folder of a contributor's images:
/// `mapillary-<username>-<quality>[-webp]`. A username that is not a safe
/// path component (or none at all) gives the `unknown` collection.
pub fn collection_name(username: Option<&str>, quality: Quality, format: OutputFormat) -> String {
    let user = username
        .filter(|u| validate_username(u).is_ok())
        .unwrap_or("unknown");
    format!("mapillary-{user}-{quality}{}", format.collection_suffix())
}

impl ImageMeta {
    /// `creator.username`, as the API serves it (not validated).
    pub fn creator_username(&self) -> Option<&str> {
        self.extra.get("creator")?.get("username")?.as_str()
    }
}

/// A bounding box `[west, south, east, north]` in degrees, validated on build.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(into = "[f64; 4]")]
pub struct Bbox {
    /// Smallest longitude, degrees.
    pub west: f64,
    /// Smallest latitude, degrees.
    pub south: f64,
    /// Largest longitude, degrees.
    pub east: f64,
    /// Largest latitude, degrees.
    pub north: f64,
}

impl From<Bbox> for [f64; 4] {
    fn from(b: Bbox) -> Self {
        [b.west, b.south, b.east, b.north]
    }
}

impl Bbox {
    /// The rule for a bbox: four finite numbers, w<e, s<n, inside ±180/±90.
    pub fn new(west: f64, south: f64, east: f64, north: f64) -> Result<Bbox, String> {
        let all = [west, south, east, north];
        if all.iter().any(|v| !v.is_finite()) {
            return Err("bbox values must be finite numbers".into());
        }
        if !(-180.0..=180.0).contains(&west) || !(-180.0..=180.0).contains(&east) {
            return Err("bbox longitudes must lie within -180..180".into());
        }
        if !(-90.0..=90.0).contains(&south) || !(-90.0..=90.0).contains(&north) {
            return Err("bbox latitudes must lie within -90..90".into());
        }
        if west >= east {
            return Err("bbox west must be less than east".into());
        }
        if south >= north {
            return Err("bbox south must be less than north".into());
        }
        // -0.0 + 0.0 is 0.0: a `-0` must not make a second identity.
        let (west, south, east, north) = (west + 0.0, south + 0.0, east + 0.0, north + 0.0);
        Ok(Bbox {
            west,
            south,
            east,
            north,
        })
    }

    /// A bbox from `[west, south, east, north]` as JSON or flags give it, checked like [`Bbox::new`].
    pub fn from_slice(values: &[f64]) -> Result<Bbox, String> {
        match values {
            [w, s, e, n] => Bbox::new(*w, *s, *e, *n),
            _ => Err(format!(
                "bbox must have exactly four numbers [west, south, east, north], got {}",
                values.len()
            )),
        }
    }

    /// The `bbox=` query value: `minLon,minLat,maxLon,maxLat`.
    pub fn to_query(&self) -> String {
        format!("{},{},{},{}", self.west, self.south, self.east, self.north)
    }

    /// Whether a point lies inside (edges included): the local filter of listed images.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        (self.west..=self.east).contains(&lon) && (self.south..=self.north).contains(&lat)
    }
}

impl FromStr for Bbox {
    type Err = String;
    /// Parses the CLI form `W,S,E,N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let values = s
            .split(',')
            .map(|part| {
                part.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("bbox value {part:?} is not a number"))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        Bbox::from_slice(&values)
    }
}

impl<'de> Deserialize<'de> for Bbox {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let values = Vec::<f64>::deserialize(d)?;
        Bbox::from_slice(&values).map_err(serde::de::Error::custom)
    }
}

/// Checks a Mapillary username before it reaches a path, a query or an
/// archive.org identifier: `[A-Za-z0-9_.-]{1,64}`, not `.` or `..`. ASCII
/// only, so no look-alike (fullwidth letters) or direction override
/// (U+202E) can make one name read as another, and no `?#%/` can change a
/// URL it is put in.
pub fn validate_username(name: &str) -> Result<(), String> {
    const RULE: &str = "1-64 characters of letters A-Z/a-z, digits, `_`, `.` and `-`";
    if name.is_empty() {
        return Err(format!("username must not be empty: {RULE}"));
    }
    if name.len() > 64 {
        return Err(format!("username is longer than 64 characters: {RULE}"));
    }
    if name == "." || name == ".." {
        return Err("username must not be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "username contains a forbidden character {:?} (U+{:04X}): {RULE}",
            c, c as u32
        ));
    }
    Ok(())
}

/// Invariant 10: an image id must be digits before it names a file.
pub fn validate_image_id(id: &str) -> Result<(), String> {
    if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("invalid image id {id:?}: expected 1-32 digits"))
    }
}

/// Invariant 10: a sequence id must be `[A-Za-z0-9_-]{1,64}` before it names a folder.
pub fn validate_sequence_id(id: &str) -> Result<(), String> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "invalid sequence id {id:?}: expected 1-64 characters of [A-Za-z0-9_-]"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_a_value_when_parsing() {
        let m: ImageMeta =
            serde_json::from_str(r#"{"id":"1","compass_angle":0.0,"altitude":0}"#).unwrap();
        assert_eq!(m.compass_angle, Some(0.0));
        assert_eq!(m.altitude, Some(0.0));
        assert_eq!(m.computed_compass_angle, None);
    }

    #[test]
    fn serialising_drops_every_url_and_keeps_unknown_fields() {
        let m: ImageMeta = serde_json::from_str(
            r#"{"id":"1","thumb_256_url":"http://x","quality_score":0.5,"thumb_5120_url":"y"}"#,
        )
        .unwrap();
        assert_eq!(m.url_for(Quality::Q256), Some("http://x"), "parsed");
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v, serde_json::json!({"id":"1","quality_score":0.5}));
    }

    #[test]
    fn bbox_rules() {
        assert!("1,2,3,4".parse::<Bbox>().is_ok());
        assert!("3,2,1,4".parse::<Bbox>().is_err());
        assert!("1,2,3".parse::<Bbox>().is_err());
        assert!("1,2,3,NaN".parse::<Bbox>().is_err());
        assert!("-181,2,3,4".parse::<Bbox>().is_err());
        assert!(serde_json::from_str::<Bbox>("[1,2,3,91]").is_err());
    }

    #[test]
    fn id_rules() {
        assert!(validate_image_id("1383728082010917").is_ok());
        assert!(validate_image_id("../etc").is_err());
        assert!(validate_image_id("").is_err());
        assert!(validate_sequence_id("aB3_-x").is_ok());
        assert!(validate_sequence_id("a/b").is_err());
        assert!(validate_sequence_id(&"a".repeat(65)).is_err());
        assert!(validate_username("alice").is_ok());
        assert!(validate_username("a/b").is_err());
        assert!(validate_username("a\u{7}").is_err());
        assert!(validate_username("A.b_c-9").is_ok());
        assert!(validate_username(&"a".repeat(64)).is_ok());
        assert!(validate_username(&"a".repeat(65)).is_err());
        for bad in [
            "a\u{202e}b",
            "ａlice",
            "a?b",
            "a#b",
            "a%2F",
            "a b",
            "é",
            "..",
            "a+b",
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }
}
