//! Heartbeats on SQLite (one daemon: its own limiter is the API budget).

use super::SqliteStore;
use crate::store::cluster::*;
use crate::store::interface::*;
use crate::store::*;
use std::time::Duration;

impl Cluster for SqliteStore {
    crate::store::shared::shared_cluster!();

    async fn take_api_slot(
        &self,
        _interval: Duration,
        _tolerance: Duration,
    ) -> StoreResult<ApiSlot> {
        Ok(ApiSlot::Now)
    }

    async fn hold_api_calls(&self, _pause: Duration) -> StoreResult<()> {
        Ok(())
    }
}

/// One engine per SQLite file (the data dir's lock file): no other daemon
/// to rescue; the start-up reset hands back what a crash left.
impl Rescue for SqliteStore {
    async fn rescue_dead_daemons(
        &self,
        _rescuer: &str,
        _dead_after: Duration,
        _now_ms: i64,
    ) -> StoreResult<Vec<Rescued>> {
        Ok(Vec::new())
    }

    async fn rescue_daemon(
        &self,
        _daemon: &str,
        _dead_after: Duration,
        _now_ms: i64,
    ) -> StoreResult<Option<Rescued>> {
        Ok(None)
    }
}
