//! Reading image rows back on SQLite, all on the read pool: the bodies
//! are `store/shared.rs`'s, but for throughput by minute.

use super::SqliteStore;
use crate::stats::MinuteThroughput;
use crate::store::StoreResult;
use crate::store::images::minute_throughput;
use crate::store::interface::Images;

impl Images for SqliteStore {
    crate::store::shared::shared_images!();

    async fn finished_by_minute(&self, since_ms: i64) -> StoreResult<Vec<MinuteThroughput>> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT updated_at / 60000 AS minute, count(*), coalesce(sum(bytes), 0) \
             FROM images INDEXED BY images_finished \
             WHERE state = 'done' AND updated_at >= $1 GROUP BY minute ORDER BY minute",
        )
        .bind(since_ms.max(0))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows.into_iter().map(minute_throughput).collect())
    }
}
