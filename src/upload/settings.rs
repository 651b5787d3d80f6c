//! The `[ia]` settings section: where and within which limits uploads go.
//! Its own validation, called by `config`'s.

use serde::Deserialize;
use std::time::Duration;

/// `[ia]`: the Internet Archive upload.
#[derive(Debug, Clone, Deserialize)]
pub struct IaSettings {
    /// IA's S3-like API (`https://s3.us.archive.org`; a fake in tests).
    pub endpoint: String,
    /// Most bytes of tars in one item.
    pub max_item_bytes: u64,
    /// Most files in one item, its own files included.
    pub max_item_files: u64,
    /// How long a sent file may wait to appear in the item's metadata.
    pub confirm_timeout_secs: u64,
    /// First wait between two looks at the item's metadata (doubles).
    pub confirm_poll_ms: u64,
    /// Longest wait after a `503 SlowDown` without Retry-After.
    pub slowdown_max_secs: u64,
    /// Remove a local tar once confirmed.
    pub delete_after_confirm: bool,
}

impl IaSettings {
    /// Checks every value, naming the key and never echoing a value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::config::check_http_url("ia.endpoint", &self.endpoint)?;
        let ranges: [(&'static str, u64, u64, u64); 5] = [
            ("ia.max_item_bytes", self.max_item_bytes, 1, 1 << 40),
            ("ia.max_item_files", self.max_item_files, 3, 100_000),
            (
                "ia.confirm_timeout_secs",
                self.confirm_timeout_secs,
                1,
                30 * 86_400,
            ),
            ("ia.confirm_poll_ms", self.confirm_poll_ms, 1, 3_600_000),
            ("ia.slowdown_max_secs", self.slowdown_max_secs, 1, 86_400),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err((key, format!("the value is out of range {min}..={max}")));
            }
        }
        Ok(())
    }

    /// `ia.confirm_timeout_secs`.
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.confirm_timeout_secs)
    }

    /// The item limits for [`super::plan`].
    pub fn limits(&self) -> super::plan::Limits {
        super::plan::Limits {
            max_bytes: self.max_item_bytes,
            max_files: self.max_item_files,
        }
    }
}
