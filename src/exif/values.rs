//! Turning the API's numbers into EXIF values, and choosing between the
//! measured and the computed field.
//!
//! The rule every picker follows: `0.0` is a value. Only a field that is
//! absent (or unusable: non-finite, implausible, out of range) falls back to
//! the other one. Tools that tested `if value:` lost every heading of 0.0.

use crate::model::ImageMeta;
use ::exif::Rational;

/// Seconds of arc are stored in 1/10000 s: 2.8e-8 degree, far below the
/// 1e-5 degree precision promised for positions, and 60 s * 10000 still fits a `u32` easily.
const SECONDS_DENOM: u64 = 10_000;
/// Altitudes are stored in millimetres.
const ALTITUDE_DENOM: u32 = 1_000;
/// Headings are stored in hundredths of a degree.
const HEADING_DENOM: u32 = 100;
/// `altitude` is sometimes served as an unsigned 32-bit wrap of a negative
/// number: 4294967281.0 means -15 m.
const TWO_POW_31: f64 = 2_147_483_648.0;
const TWO_POW_32: f64 = 4_294_967_296.0;
/// Below the Dead Sea shore by a margin, above any airliner photo by a margin.
const ALTITUDE_RANGE: std::ops::RangeInclusive<f64> = -1_000.0..=20_000.0;

/// Degrees, minutes and seconds of `|degrees|` as EXIF rationals.
///
/// The sign is dropped: the caller writes it as the N/S or E/W ref. Rounding
/// happens once, on the total in 1/10000 arc-seconds, so a value such as
/// 10.999999999 carries into 11° 0' 0" instead of producing 60 seconds.
/// A non-finite input yields 0° 0' 0"; callers validate coordinates first.
pub fn decimal_to_dms(degrees: f64) -> [Rational; 3] {
    let units_per_degree = 3_600 * SECONDS_DENOM;
    let units_per_minute = 60 * SECONDS_DENOM;
    let total = if degrees.is_finite() {
        // Saturating float-to-int cast: huge inputs cannot panic.
        (degrees.abs() * units_per_degree as f64).round() as u64
    } else {
        0
    };
    let whole_degrees = total / units_per_degree;
    let rest = total % units_per_degree;
    let minutes = rest / units_per_minute;
    let seconds = rest % units_per_minute;
    [
        Rational {
            num: u32::try_from(whole_degrees).unwrap_or(u32::MAX),
            denom: 1,
        },
        Rational {
            // < 60, always fits.
            num: minutes as u32,
            denom: 1,
        },
        Rational {
            // < 600000, always fits.
            num: seconds as u32,
            denom: SECONDS_DENOM as u32,
        },
    ]
}

/// Metres above sea level from a raw API altitude, or `None` when the value
/// cannot be trusted.
///
/// A value above 2^31 is an unsigned wrap and is read as `raw - 2^32`.
/// Anything outside -1000..=20000 m after unwrapping, and any non-finite
/// value, is dropped: writing it would put the image in orbit or the mantle.
pub fn normalize_altitude(raw: f64) -> Option<f64> {
    if !raw.is_finite() {
        return None;
    }
    let unwrapped = if raw > TWO_POW_31 {
        raw - TWO_POW_32
    } else {
        raw
    };
    ALTITUDE_RANGE.contains(&unwrapped).then_some(unwrapped)
}

/// A compass heading in `[0, 360)`, or `None` when it is not finite.
///
/// Negative headings wrap to positive ones and 360 becomes 0.
pub fn normalize_heading(raw: f64) -> Option<f64> {
    if !raw.is_finite() {
        return None;
    }
    let wrapped = raw.rem_euclid(360.0);
    // rem_euclid of a tiny negative number rounds up to exactly 360.0.
    Some(if wrapped >= 360.0 { 0.0 } else { wrapped })
}

/// Metres from `altitude`, falling back to `computed_altitude`.
///
/// An `altitude` that [`normalize_altitude`] rejects counts as missing, so the
/// computed value is used rather than nothing.
pub(crate) fn pick_altitude(meta: &ImageMeta) -> Option<f64> {
    meta.altitude
        .and_then(normalize_altitude)
        .or_else(|| meta.computed_altitude.and_then(normalize_altitude))
}

/// Degrees from `computed_compass_angle`, falling back to `compass_angle`.
pub(crate) fn pick_heading(meta: &ImageMeta) -> Option<f64> {
    meta.computed_compass_angle
        .and_then(normalize_heading)
        .or_else(|| meta.compass_angle.and_then(normalize_heading))
}

/// `GPSAltitudeRef` (0 above, 1 below sea level) and the magnitude in mm.
pub(crate) fn altitude_rational(metres: f64) -> (u8, Rational) {
    // Range-checked by normalize_altitude, so the product fits a u32.
    let millimetres = (metres.abs() * f64::from(ALTITUDE_DENOM)).round() as u32;
    let below_sea_level = metres < 0.0 && millimetres > 0;
    (
        u8::from(below_sea_level),
        Rational {
            num: millimetres,
            denom: ALTITUDE_DENOM,
        },
    )
}

/// A heading in hundredths of a degree; 359.996 rounds to 0, not 360.
pub(crate) fn heading_rational(degrees: f64) -> Rational {
    let full_turn = 360 * HEADING_DENOM;
    let hundredths = (degrees * f64::from(HEADING_DENOM)).round() as u32 % full_turn;
    Rational {
        num: hundredths,
        denom: HEADING_DENOM,
    }
}

/// The heading as [`heading_rational`] stores it, for the XMP copy.
pub(crate) fn rounded_heading(degrees: f64) -> f64 {
    f64::from(heading_rational(degrees).num) / f64::from(HEADING_DENOM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GeoPoint;

    fn dms_to_decimal(dms: &[Rational; 3]) -> f64 {
        dms[0].to_f64() + dms[1].to_f64() / 60.0 + dms[2].to_f64() / 3600.0
    }

    #[test]
    fn dms_is_precise_to_a_hundred_thousandth_of_a_degree() {
        for value in [
            0.0,
            1e-9,
            12.345678,
            -33.8688197,
            151.2092955,
            -179.9999999,
            180.0,
            89.99999999,
            10.999999999,
            45.5,
        ] {
            let dms = decimal_to_dms(value);
            assert!(dms[1].num < 60, "{value}: minutes {:?}", dms[1]);
            assert!(dms[2].to_f64() < 60.0, "{value}: seconds {:?}", dms[2]);
            let back = dms_to_decimal(&dms);
            assert!(
                (back - value.abs()).abs() <= 1e-5,
                "{value} -> {dms:?} -> {back}"
            );
        }
    }

    #[test]
    fn dms_carries_rounded_seconds_into_the_next_degree() {
        let dms = decimal_to_dms(10.999_999_999);
        assert_eq!((dms[0].num, dms[1].num, dms[2].num), (11, 0, 0));
    }

    #[test]
    fn dms_of_nonsense_does_not_panic() {
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let _ = decimal_to_dms(value);
        }
        assert_eq!(decimal_to_dms(f64::NAN)[0].num, 0);
    }

    #[test]
    fn altitude_unwraps_and_drops_implausible_values() {
        assert_eq!(normalize_altitude(4_294_967_281.0), Some(-15.0));
        assert_eq!(normalize_altitude(0.0), Some(0.0));
        assert_eq!(normalize_altitude(-12.5), Some(-12.5));
        assert_eq!(normalize_altitude(8_848.86), Some(8_848.86));
        assert_eq!(normalize_altitude(20_000.0), Some(20_000.0));
        assert_eq!(normalize_altitude(-1_000.0), Some(-1_000.0));
        assert_eq!(normalize_altitude(20_000.1), None);
        assert_eq!(normalize_altitude(-1_000.1), None);
        assert_eq!(normalize_altitude(2_147_483_648.0), None);
        assert_eq!(normalize_altitude(3_000_000_000.0), None);
        assert_eq!(normalize_altitude(1e12), None);
        assert_eq!(normalize_altitude(f64::NAN), None);
        assert_eq!(normalize_altitude(f64::INFINITY), None);
    }

    #[test]
    fn heading_wraps_into_zero_to_360() {
        assert_eq!(normalize_heading(0.0), Some(0.0));
        assert_eq!(normalize_heading(360.0), Some(0.0));
        assert_eq!(normalize_heading(725.5), Some(5.5));
        assert_eq!(normalize_heading(-90.0), Some(270.0));
        assert_eq!(normalize_heading(-1e-20), Some(0.0));
        assert_eq!(normalize_heading(f64::NAN), None);
        assert_eq!(normalize_heading(f64::NEG_INFINITY), None);
    }

    #[test]
    fn heading_rational_never_reaches_360() {
        assert_eq!(heading_rational(359.996).num, 0);
        assert_eq!(heading_rational(359.994).num, 35_999);
        assert_eq!(heading_rational(0.0).num, 0);
        assert_eq!(rounded_heading(12.345_6), 12.35);
    }

    #[test]
    fn altitude_rational_sets_the_ref_by_sign() {
        let (r, v) = altitude_rational(-15.0);
        assert_eq!((r, v.num, v.denom), (1, 15_000, 1_000));
        let (r, v) = altitude_rational(0.0);
        assert_eq!((r, v.num), (0, 0));
        let (r, v) = altitude_rational(-0.0001);
        assert_eq!((r, v.num), (0, 0));
        let (r, v) = altitude_rational(123.4567);
        assert_eq!((r, v.num), (0, 123_457));
    }

    fn point(lon: f64, lat: f64) -> GeoPoint {
        GeoPoint {
            kind: Some("Point".into()),
            coordinates: vec![lon, lat],
        }
    }

    #[test]
    fn zero_is_a_value_and_only_missing_falls_back() {
        let mut meta = ImageMeta {
            computed_compass_angle: Some(0.0),
            compass_angle: Some(90.0),
            altitude: Some(0.0),
            computed_altitude: Some(50.0),
            ..ImageMeta::default()
        };
        assert_eq!(pick_heading(&meta), Some(0.0));
        assert_eq!(pick_altitude(&meta), Some(0.0));
        meta.computed_compass_angle = None;
        meta.altitude = None;
        assert_eq!(pick_heading(&meta), Some(90.0));
        assert_eq!(pick_altitude(&meta), Some(50.0));
        meta.computed_compass_angle = Some(f64::NAN);
        assert_eq!(pick_heading(&meta), Some(90.0));
        meta.altitude = Some(1e9);
        assert_eq!(pick_altitude(&meta), Some(50.0));
    }

    #[test]
    fn position_prefers_computed_geometry() {
        let mut meta = ImageMeta {
            geometry: Some(point(2.0, 1.0)),
            computed_geometry: Some(point(4.0, 3.0)),
            ..ImageMeta::default()
        };
        assert_eq!(meta.position(), Some((3.0, 4.0)));
        meta.computed_geometry = Some(point(f64::NAN, 3.0));
        assert_eq!(meta.position(), Some((1.0, 2.0)));
        meta.computed_geometry = Some(point(0.0, 0.0));
        assert_eq!(meta.position(), Some((0.0, 0.0)));
        meta.computed_geometry = None;
        meta.geometry = None;
        assert_eq!(meta.position(), None);
    }
}
