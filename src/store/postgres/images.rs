//! The [`crate::store::interface::Images`] half on PostgreSQL.

use super::PgStore;
use crate::stats::MinuteThroughput;
use crate::store::images::{ArchivedRow, minute_throughput};
use crate::store::interface::*;
use crate::store::{ArchivedImage, CollectionPosition, StoreResult};
use sqlx::FromRow;
use sqlx::postgres::PgRow;

fn archived(rows: Vec<PgRow>) -> StoreResult<Vec<ArchivedImage>> {
    rows.iter()
        .map(|row| ArchivedRow::from_row(row)?.into_archived())
        .collect()
}

impl Images for PgStore {
    crate::store::shared::shared_images!();

    /// PostgreSQL: `image_id` sorts by the database's collation,
    /// which orders Mapillary's digit-only ids as SQLite does.
    async fn collection_images(
        &self,
        collection: &str,
        after: Option<&CollectionPosition>,
        limit: u32,
    ) -> StoreResult<Vec<ArchivedImage>> {
        let rows =
            match after {
                None => sqlx::query(
                    "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     WHERE collection = $1 AND state = 'done' \
                     ORDER BY capture_order, image_id, rowid LIMIT $2",
                )
                .bind(collection)
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?,
                Some(after) => sqlx::query(
                    "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     WHERE collection = $1 AND state = 'done' \
                       AND (capture_order, image_id, rowid) > ($2, $3, $4) \
                     ORDER BY capture_order, image_id, rowid LIMIT $5",
                )
                .bind(collection)
                .bind(after.capture_order)
                .bind(&after.image_id)
                .bind(after.row_id)
                .bind(i64::from(limit))
                .fetch_all(self.pool())
                .await?,
            };
        archived(rows)
    }
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
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(minute_throughput).collect())
    }
    async fn finished_since(&self, since_ms: i64) -> StoreResult<(u64, u64)> {
        let (count, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(bytes), 0)::BIGINT FROM images \
             WHERE state = 'done' AND updated_at > $1",
        )
        .bind(since_ms)
        .fetch_one(self.pool())
        .await?;
        Ok((count.max(0) as u64, bytes.max(0) as u64))
    }

    /// PostgreSQL: Due by the database's clock, read once (an init
    /// plan, so it bounds the index scan).
    async fn upcoming_urls(
        &self,
        job_id: i64,
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, String, Option<String>)>> {
        Ok(sqlx::query_as(
            "SELECT rowid, image_id, url FROM images \
             WHERE job_id = $1 AND state = 'pending' \
               AND run_at <= (SELECT coalesce($2::BIGINT, mld_now_ms())) \
             ORDER BY run_at, rowid LIMIT $3",
        )
        .bind(job_id)
        .bind(self.at(now_ms))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?)
    }
}
