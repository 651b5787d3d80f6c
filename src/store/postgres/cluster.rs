//! The [`crate::store::interface::Cluster`] half on PostgreSQL: heartbeats
//! on the database's clock,
//! and the cluster's API budget (`mld_api_slot`, `mld_api_hold` in
//! `migrations/postgres/0002`).

use super::PgStore;
use crate::store::cluster::{ApiSlot, DaemonInfo, LiveDaemon, live_from_fields};
use crate::store::interface::*;
use crate::store::{StoreResult, millis};
use std::time::Duration;

impl Cluster for PgStore {
    crate::store::shared::shared_cluster!();

    async fn heartbeat(&self, daemon: &DaemonInfo, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO daemons (id, host, workers, started_at, heartbeat_at) \
             SELECT $1, $2, $3, t.now_ms, t.now_ms FROM (SELECT coalesce($4::BIGINT, mld_now_ms()) AS now_ms) t \
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, workers = EXCLUDED.workers",
        )
        .bind(&daemon.id)
        .bind(&daemon.host)
        .bind(i64::from(daemon.workers))
        .bind(self.at(now_ms))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn live_daemons(&self, within: Duration, now_ms: i64) -> StoreResult<Vec<LiveDaemon>> {
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT d.id, d.host, d.workers, d.started_at, t.now_ms - d.heartbeat_at \
             FROM daemons d, (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t \
             WHERE d.heartbeat_at >= t.now_ms - $2 ORDER BY d.id",
        )
        .bind(self.at(now_ms))
        .bind(millis(within))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, host, workers, started, age)| {
                live_from_fields(id, host, workers, started, age)
            })
            .collect())
    }

    async fn take_api_slot(&self, interval: Duration, tolerance: Duration) -> StoreResult<ApiSlot> {
        let ms: i64 = sqlx::query_scalar("SELECT mld_api_slot($1, $2)")
            .bind(millis(interval))
            .bind(millis(tolerance))
            .fetch_one(self.pool())
            .await?;
        Ok(ApiSlot::from_ms(ms))
    }

    async fn hold_api_calls(&self, pause: Duration) -> StoreResult<()> {
        sqlx::query("SELECT mld_api_hold($1)")
            .bind(millis(pause))
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
