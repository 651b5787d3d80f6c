//! What daemons sharing one queue know of each other: who is alive (a
//! heartbeat row each, for `/status`, the page and `/metrics`), and the
//! Graph API budget they share. On SQLite one daemon runs: it keeps its
//! heartbeat row too (one behaviour), and its own limiter is the budget.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/cluster.rs` and
//! `postgres/cluster.rs`, behind [`super::interface`].

use std::time::Duration;

/// A daemon as it announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonInfo {
    /// Its lease owner id (pid + random), unique per process.
    pub id: String,
    /// The machine's name, for operators reading `/status`.
    pub host: String,
    /// Its worker count, for operators reading `/status`.
    pub workers: u32,
}

/// A daemon whose heartbeat is recent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDaemon {
    /// The daemon's id (also its lease owner prefix).
    pub id: String,
    /// The machine's name, as it reported it.
    pub host: String,
    /// Its worker count, as it reported it.
    pub workers: u32,
    /// Unix ms.
    pub started_at: i64,
    /// Since its last heartbeat, by the queue's clock.
    pub heartbeat_age: Duration,
}

/// What the shared API budget says about the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiSlot {
    /// Call now.
    Now,
    /// The slot is taken: call after this wait.
    After(Duration),
    /// A rate-limit hold is in force: ask again after this wait.
    Held(Duration),
}

impl ApiSlot {
    /// From `mld_api_slot`'s answer: 0, +wait or −hold (ms).
    pub(super) fn from_ms(ms: i64) -> ApiSlot {
        match ms {
            0 => ApiSlot::Now,
            ms if ms > 0 => ApiSlot::After(Duration::from_millis(ms.unsigned_abs())),
            ms => ApiSlot::Held(Duration::from_millis(ms.unsigned_abs())),
        }
    }
}

pub(super) fn live_from_fields(
    id: String,
    host: String,
    workers: i64,
    started_at: i64,
    age_ms: i64,
) -> LiveDaemon {
    LiveDaemon {
        id,
        host,
        workers: u32::try_from(workers).unwrap_or(0),
        started_at,
        heartbeat_age: Duration::from_millis(age_ms.max(0).unsigned_abs()),
    }
}
