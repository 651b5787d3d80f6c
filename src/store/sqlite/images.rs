//! Reading image rows back on SQLite, all on the read pool.

use super::SqliteStore;
use crate::stats::MinuteThroughput;
use crate::store::images::*;
use crate::store::interface::*;
use crate::store::*;
use sqlx::FromRow;

impl Images for SqliteStore {
    crate::store::shared::shared_images!();

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
                     INDEXED BY images_in_collection WHERE collection = ? AND state = 'done' \
                     ORDER BY capture_order, image_id, rowid LIMIT ?",
                )
                .bind(collection)
                .bind(i64::from(limit))
                .fetch_all(self.reader()?)
                .await?,
                Some(after) => sqlx::query(
                    "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     INDEXED BY images_in_collection WHERE collection = ? AND state = 'done' \
                       AND (capture_order, image_id, rowid) > (?, ?, ?) \
                     ORDER BY capture_order, image_id, rowid LIMIT ?",
                )
                .bind(collection)
                .bind(after.capture_order)
                .bind(&after.image_id)
                .bind(after.row_id)
                .bind(i64::from(limit))
                .fetch_all(self.reader()?)
                .await?,
            };
        rows.iter().map(archived_from_row).collect()
    }

    async fn finished_by_minute(&self, since_ms: i64) -> StoreResult<Vec<MinuteThroughput>> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT updated_at / 60000 AS minute, count(*), ifnull(sum(bytes), 0) \
             FROM images INDEXED BY images_finished \
             WHERE state = 'done' AND updated_at >= ? GROUP BY minute ORDER BY minute",
        )
        .bind(since_ms.max(0))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows.into_iter().map(minute_throughput).collect())
    }

    async fn finished_since(&self, since_ms: i64) -> StoreResult<(u64, u64)> {
        let (count, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), ifnull(sum(bytes), 0) FROM images \
             WHERE state = 'done' AND updated_at > ?",
        )
        .bind(since_ms)
        .fetch_one(self.reader()?)
        .await?;
        Ok((count.max(0) as u64, bytes.max(0) as u64))
    }

    async fn upcoming_urls(
        &self,
        job_id: i64,
        now_ms: i64,
        limit: u32,
    ) -> StoreResult<Vec<(i64, String, Option<String>)>> {
        let rows = sqlx::query_as(
            "SELECT rowid, image_id, url FROM images INDEXED BY images_due \
             WHERE job_id = ? AND state = 'pending' AND run_at <= ? \
             ORDER BY run_at, rowid LIMIT ?",
        )
        .bind(job_id)
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows)
    }
}

fn archived_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ArchivedImage> {
    ArchivedRow::from_row(row)?.into_archived()
}
