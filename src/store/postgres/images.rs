//! Reading image rows back on PostgreSQL: the bodies are `store/shared.rs`'s,
//! but for throughput by minute, read from the per-minute table.

use super::PgStore;
use crate::stats::MinuteThroughput;
use crate::store::StoreResult;
use crate::store::images::minute_throughput;
use crate::store::interface::Images;

impl Images for PgStore {
    crate::store::shared::shared_images!();

    async fn finished_by_minute(&self, since_ms: i64) -> StoreResult<Vec<MinuteThroughput>> {
        // From the per-minute table the update trigger feeds (folded and
        // not yet folded), never the images table: every daemon's `/status`
        // reads this, at any throughput. (An image done then re-queued stays
        // counted in its minute: it was archived then.)
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT minute, sum(images)::BIGINT, sum(bytes)::BIGINT FROM ( \
                 SELECT minute, images, bytes FROM done_minutes \
                 UNION ALL SELECT minute, images, bytes FROM done_minute_deltas) m \
             WHERE minute >= $1 / 60000 GROUP BY minute ORDER BY minute",
        )
        .bind(since_ms.max(0))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows.into_iter().map(minute_throughput).collect())
    }
}
