//! The [`crate::store::interface::Cluster`] half on PostgreSQL: heartbeats
//! on the database's clock,
//! and the cluster's API budget (`mld_api_slot`, `mld_api_hold` in
//! `migrations/postgres/0002`).

use super::PgStore;
use crate::store::cluster::ApiSlot;
use crate::store::interface::*;
use crate::store::{StoreResult, millis};
use std::time::Duration;

impl Cluster for PgStore {
    crate::store::shared::shared_cluster!();

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
