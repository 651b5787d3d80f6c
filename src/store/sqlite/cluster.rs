//! Heartbeats on SQLite (one daemon: its own limiter is the API budget).

use super::SqliteStore;
use crate::store::cluster::*;
use crate::store::interface::*;
use crate::store::*;
use std::time::Duration;

impl Cluster for SqliteStore {
    crate::store::shared::shared_cluster!();

    async fn heartbeat(&self, daemon: &DaemonInfo, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO daemons (id, host, workers, started_at, heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = ?4, workers = ?3",
        )
        .bind(&daemon.id)
        .bind(&daemon.host)
        .bind(i64::from(daemon.workers))
        .bind(now_ms)
        .execute(self.writer()?)
        .await?;
        Ok(())
    }

    async fn live_daemons(&self, within: Duration, now_ms: i64) -> StoreResult<Vec<LiveDaemon>> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, host, workers, started_at, ?1 - heartbeat_at FROM daemons \
             WHERE heartbeat_at >= ?1 - ?2 ORDER BY id",
        )
        .bind(now_ms)
        .bind(millis(within))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, host, workers, started, age)| {
                live_from_fields(id, host, workers, started, age)
            })
            .collect())
    }

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
