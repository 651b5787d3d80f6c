//! Human-readable sizes, rates and durations for logs, progress bars and
//! `status` output.
//!
//! Sizes use binary units (KiB = 1024 B) and say so: disk tools (`du -h`,
//! `ls -h`) count in powers of two, and users compare our numbers with
//! theirs. Precision shrinks as the number grows so every value stays
//! about four significant characters wide: `999 B`, `1.5 KiB`, `12.3 MiB`,
//! `2.00 GiB`.

use std::time::Duration;

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `s` cut to at most `max_bytes` at a character boundary: text echoed
/// into an error or a label (an id, a query value, a path) cannot bloat it.
pub fn clip(s: &str, max_bytes: usize) -> &str {
    &s[..s.floor_char_boundary(max_bytes)]
}

/// `1234567` -> `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `0 B`, `999 B`, `1.0 KiB`, `1.5 MiB`, `2.00 GiB`.
///
/// Bytes are exact; KiB and MiB get one decimal; GiB and above get two,
/// since an archive's total lives there and a tenth of a GiB is 100 MiB.
pub fn format_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // 1023.96 KiB would print as "1024.0 KiB": move it up a unit.
    let decimals = if unit >= 3 { 2 } else { 1 };
    let scale = 10f64.powi(decimals);
    if (value * scale).round() / scale >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if unit >= 3 { 2 } else { 1 };
    format!("{value:.prec$} {}", UNITS[unit], prec = decimals as usize)
}

/// `1.2 MiB/s`, `512 B/s`. Negative or non-finite rates read `0 B/s`.
pub fn format_rate(bytes_per_sec: f64) -> String {
    if !bytes_per_sec.is_finite() || bytes_per_sec <= 0.0 {
        return "0 B/s".to_string();
    }
    if bytes_per_sec < 1024.0 {
        return format!("{} B/s", bytes_per_sec.round() as u64);
    }
    // Saturating cast: rates beyond u64 are not a real concern.
    format!("{}/s", format_bytes(bytes_per_sec.round() as u64))
}

/// `45s`, `3m 07s`, `2h 05m`, `3d 04h`: the two largest units, the second
/// zero-padded so columns line up. Sub-second parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours:02}h")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_whole_characters() {
        assert_eq!(clip("abc", 64), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        // "é" is two bytes: a cut through it keeps the character out.
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("aé", 3), "aé");
        assert_eq!(clip("", 0), "");
    }

    #[test]
    fn digits_group_by_thousands() {
        for (n, grouped) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(group_digits(n), grouped);
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(1024 * 1024 * 3 / 2), "1.5 MiB");
        assert_eq!(format_bytes(2 * 1024 * 1024 * 1024), "2.00 GiB");
        assert_eq!(format_bytes(5 * 1024u64.pow(4)), "5.00 TiB");
        assert_eq!(format_bytes(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn bytes_never_print_1024_of_a_unit() {
        assert_eq!(format_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(format_bytes(1024 * 1024 * 1024 - 1), "1.00 GiB");
        assert_eq!(format_bytes(1_048_000), "1023.4 KiB");
    }

    #[test]
    fn rates() {
        assert_eq!(format_rate(0.0), "0 B/s");
        assert_eq!(format_rate(-5.0), "0 B/s");
        assert_eq!(format_rate(f64::NAN), "0 B/s");
        assert_eq!(format_rate(512.4), "512 B/s");
        assert_eq!(format_rate(1.2 * 1024.0 * 1024.0), "1.2 MiB/s");
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(45_900)), "45s");
        assert_eq!(format_duration(Duration::from_secs(187)), "3m 07s");
        assert_eq!(
            format_duration(Duration::from_secs(2 * 3600 + 5 * 60 + 59)),
            "2h 05m"
        );
        assert_eq!(
            format_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 04h"
        );
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h 00m");
    }
}
