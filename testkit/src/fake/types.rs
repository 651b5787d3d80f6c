//! The fake's own vocabulary: an image as the Graph API serves it, its
//! GeoJSON point, and the four qualities. They mirror the daemon's
//! `model::{ImageMeta, GeoPoint, Quality}` field for field and string for
//! string, without depending on the daemon (see the crate docs); `to()`
//! crosses over through JSON, exactly as the data does on the wire.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// Serialises `value` to JSON and reads it back as a `T`.
fn convert<S: Serialize, T: DeserializeOwned>(value: &S) -> T {
    let json = serde_json::to_value(value).expect("a fake value serialises to JSON");
    serde_json::from_value(json).unwrap_or_else(|e| {
        panic!(
            "cannot read {} as {}: {e}",
            std::any::type_name::<S>(),
            std::any::type_name::<T>()
        )
    })
}

/// A GeoJSON point as the API serves it: `coordinates` is `[lon, lat]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
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

/// One image as the fake serves it (`GET /images`, `GET /?ids=`): the
/// Graph API's JSON fields, every one optional but `id`, unknown ones in
/// `extra`. The fake's truth for assertions; `to()` turns it into the
/// daemon's `ImageMeta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FakeImage {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<GeoPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_geometry: Option<GeoPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_altitude: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compass_angle: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computed_compass_angle: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_pano: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_256_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_1024_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_2048_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_original_url: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl FakeImage {
    /// The image as another type with the API's JSON shape, e.g. the daemon's
    /// `ImageMeta`: `let meta: ImageMeta = image.to();`. Panics if `T` cannot
    /// read it.
    pub fn to<T: DeserializeOwned>(&self) -> T {
        convert(self)
    }

    /// The point the daemon tags and filters by: `computed_geometry`, else `geometry`.
    pub fn position(&self) -> Option<(f64, f64)> {
        self.computed_geometry
            .as_ref()
            .or(self.geometry.as_ref())
            .and_then(GeoPoint::lat_lon)
    }

    /// A copy without any `*_url` field: URLs expire, the fake issues its own.
    pub fn without_urls(&self) -> FakeImage {
        let mut copy = self.clone();
        copy.thumb_256_url = None;
        copy.thumb_1024_url = None;
        copy.thumb_2048_url = None;
        copy.thumb_original_url = None;
        copy.extra.retain(|key, _| !key.ends_with("_url"));
        copy
    }
}

/// An image size, with the API's strings: "original", "2048", "1024", "256".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quality {
    #[serde(rename = "original")]
    Original,
    #[serde(rename = "2048")]
    Q2048,
    #[serde(rename = "1024")]
    Q1024,
    #[serde(rename = "256")]
    Q256,
}

impl Quality {
    pub const ALL: [Quality; 4] = [
        Quality::Original,
        Quality::Q2048,
        Quality::Q1024,
        Quality::Q256,
    ];

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

    /// The same quality as another type serialised as the API's string, e.g.
    /// the daemon's `model::Quality`.
    pub fn to<T: DeserializeOwned>(self) -> T {
        convert(&self)
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
            .ok_or_else(|| format!("unknown quality {s:?}: expected original, 2048, 1024 or 256"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_round_trips_through_json_with_unknown_fields() {
        let json = r#"{"id":"1","compass_angle":0.0,"sequence":"s","creator":{"id":"7"},"thumb_256_url":"u"}"#;
        let image: FakeImage = serde_json::from_str(json).unwrap();
        assert_eq!(image.compass_angle, Some(0.0));
        assert_eq!(image.extra["creator"]["id"], "7");
        let back: Value = image.to();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
        assert_eq!(
            serde_json::to_value(image.without_urls()).unwrap(),
            serde_json::json!({"id":"1","compass_angle":0.0,"sequence":"s","creator":{"id":"7"}})
        );
    }

    #[test]
    fn qualities_use_the_api_strings() {
        for q in Quality::ALL {
            assert_eq!(q.to::<String>(), q.as_str());
            assert_eq!(q.as_str().parse::<Quality>(), Ok(q));
            assert!(q.url_field().contains(q.as_str()));
        }
        assert!("4096".parse::<Quality>().is_err());
    }
}
