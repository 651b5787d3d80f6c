//! Wall-clock time as the store records it: Unix milliseconds. Callers pass
//! it into every store query, so tests choose the clock.

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
