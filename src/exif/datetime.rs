//! `captured_at` (milliseconds since the epoch) as EXIF date-time strings.
//!
//! Always UTC: the API's value is an instant, and writing it in the host's
//! local zone is the bug other tools shipped. The offset tags say `+00:00` so
//! readers do not guess a zone either.

use chrono::{DateTime, Datelike};

/// The value every `OffsetTime*` tag gets.
pub const UTC_OFFSET: &str = "+00:00";

/// One instant in EXIF's text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExifDateTime {
    /// `YYYY:MM:DD HH:MM:SS` in UTC.
    pub datetime: String,
    /// The milliseconds as exactly three digits, for the `SubSecTime*` tags.
    pub subsec: String,
}

/// The UTC date-time of `ms` milliseconds since the Unix epoch.
///
/// `None` when the instant falls outside years 1..=9999, which EXIF's
/// four-digit year cannot express. Instants before 1970 are fine: the
/// milliseconds are taken with floor semantics, so -1 ms is
/// `1969:12:31 23:59:59` and subsec `999`.
pub fn timestamp_to_exif_datetime(ms: i64) -> Option<ExifDateTime> {
    let instant = DateTime::from_timestamp_millis(ms)?;
    if !(1..=9999).contains(&instant.year()) {
        return None;
    }
    Some(ExifDateTime {
        datetime: instant.format("%Y:%m:%d %H:%M:%S").to_string(),
        subsec: format!("{:03}", ms.rem_euclid(1000)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(ms: i64) -> (String, String) {
        let v = timestamp_to_exif_datetime(ms).expect("in range");
        (v.datetime, v.subsec)
    }

    #[test]
    fn epoch_and_milliseconds() {
        assert_eq!(dt(0), ("1970:01:01 00:00:00".into(), "000".into()));
        assert_eq!(
            dt(1_700_000_000_123),
            ("2023:11:14 22:13:20".into(), "123".into())
        );
        assert_eq!(dt(5), ("1970:01:01 00:00:00".into(), "005".into()));
    }

    #[test]
    fn utc_date_across_midnight() {
        // 2021-06-30 23:59:59.999 UTC, then one millisecond later.
        let before = 1_625_097_599_999;
        assert_eq!(dt(before), ("2021:06:30 23:59:59".into(), "999".into()));
        assert_eq!(dt(before + 1), ("2021:07:01 00:00:00".into(), "000".into()));
    }

    #[test]
    fn before_the_epoch_uses_floor() {
        assert_eq!(dt(-1), ("1969:12:31 23:59:59".into(), "999".into()));
    }

    #[test]
    fn out_of_range_is_none() {
        assert_eq!(timestamp_to_exif_datetime(i64::MAX), None);
        assert_eq!(timestamp_to_exif_datetime(i64::MIN), None);
        // Year 10000.
        assert_eq!(timestamp_to_exif_datetime(253_402_300_800_000), None);
        assert!(timestamp_to_exif_datetime(253_402_300_799_999).is_some());
    }
}
