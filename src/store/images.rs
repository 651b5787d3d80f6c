//! Reading image rows back: archived pages for `metadata.jsonl`, failures,
//! and one row for tests and debugging. All on the read pool.

use super::{
    ArchivedImage, CollectionPosition, FailReason, FailedImage, ImageRecord, ImageState, Store,
    StoreError, StoreResult, parse_meta, to_u64,
};
use crate::stats::MinuteThroughput;
use sqlx::Row;

impl Store {
    /// One page of a job's archived (`done`) images in `metadata.jsonl` order:
    /// by `captured_at`, images without one last, ties by row id.
    ///
    /// Keyset paging: pass `None` for the first page, then the last returned
    /// `row_id`. Each page is an index seek, so writing a million-line file
    /// costs O(n) in total and holds one page in memory.
    pub async fn finished_images(
        &self,
        job_id: i64,
        after_row_id: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<ArchivedImage>> {
        let rows =
            match after_row_id {
                None => sqlx::query(
                    "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     WHERE job_id = ? AND state = 'done' \
                     ORDER BY capture_order, rowid LIMIT ?",
                )
                .bind(job_id)
                .bind(i64::from(limit))
                .fetch_all(self.reader()?)
                .await?,
                Some(after) => sqlx::query(
                    "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     WHERE job_id = ?1 AND state = 'done' \
                       AND (capture_order, rowid) > \
                           (SELECT capture_order, rowid FROM images WHERE rowid = ?2) \
                     ORDER BY capture_order, rowid LIMIT ?3",
                )
                .bind(job_id)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader()?)
                .await?,
            };
        rows.iter().map(archived_from_row).collect()
    }

    /// One page of a collection's archived images in `metadata.jsonl` order
    /// (capture time, images without one last, then image id), whichever
    /// jobs archived them. Keyset paging: pass `None` first, then the last
    /// returned image's [`ArchivedImage::position`]. An image archived by two
    /// jobs comes twice, next to each other.
    pub async fn collection_images(
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

    /// The collections a job has written to.
    pub async fn job_collections(&self, job_id: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT collection FROM job_collections WHERE job_id = ? ORDER BY collection",
        )
        .bind(job_id)
        .fetch_all(self.reader()?)
        .await?)
    }

    /// Images finished (done) at or after `since_ms`, counted per wall-clock
    /// minute, across all jobs, oldest first: the throughput history as the
    /// database knows it, so a `status` command or a restarted daemon shows
    /// the hour that passed. One range scan of the `images_finished` index.
    pub async fn finished_by_minute(&self, since_ms: i64) -> StoreResult<Vec<MinuteThroughput>> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT updated_at / 60000 AS minute, count(*), ifnull(sum(bytes), 0) \
             FROM images INDEXED BY images_finished \
             WHERE state = 'done' AND updated_at >= ? GROUP BY minute ORDER BY minute",
        )
        .bind(since_ms.max(0))
        .fetch_all(self.reader()?)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(minute, images, bytes)| MinuteThroughput {
                start_ms: minute * 60_000,
                images: to_u64(images),
                bytes: to_u64(bytes),
            })
            .collect())
    }

    /// Images finished (done) since `since_ms`, and their bytes, across all
    /// jobs: the `status` command's throughput, readable from any process.
    pub async fn finished_since(&self, since_ms: i64) -> StoreResult<(u64, u64)> {
        let (count, bytes): (i64, i64) = sqlx::query_as(
            "SELECT count(*), ifnull(sum(bytes), 0) FROM images \
             WHERE state = 'done' AND updated_at > ?",
        )
        .bind(since_ms)
        .fetch_one(self.reader()?)
        .await?;
        Ok((count.max(0) as u64, bytes.max(0) as u64))
    }

    /// Up to `limit` of a job's failed images with their last error, oldest first.
    pub async fn failed_images(&self, job_id: i64, limit: u32) -> StoreResult<Vec<FailedImage>> {
        let rows = sqlx::query(
            "SELECT rowid, image_id, attempts, last_error, fail_reason FROM images \
             WHERE job_id = ? AND state = 'failed' ORDER BY rowid LIMIT ?",
        )
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(FailedImage {
                    row_id: row.try_get("rowid")?,
                    image_id: row.try_get("image_id")?,
                    attempts: row.try_get("attempts")?,
                    last_error: row.try_get("last_error")?,
                    fail_reason: fail_reason(row_id_of(row)?, row.try_get("fail_reason")?)?,
                })
            })
            .collect()
    }

    /// The next `limit` due pending images of a job, in claim order, with
    /// their stored URL: `(row_id, image_id, url)`. The dispatcher refreshes
    /// the stale ones together with the images it claimed, so one
    /// `GET /?ids=` serves up to 50 images even when claims come one by one.
    pub async fn upcoming_urls(
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

    /// Everything stored about one image of a job.
    pub async fn image_by_id(
        &self,
        job_id: i64,
        image_id: &str,
    ) -> StoreResult<Option<ImageRecord>> {
        let row = sqlx::query(
            "SELECT rowid, job_id, image_id, meta, url, state, attempts, run_at, lease_owner, \
             lease_until, bytes, path, last_error, fail_reason, deferrals, captured_at, updated_at, \
             sha256, kept_jpeg, packing_id FROM images WHERE job_id = ? AND image_id = ?",
        )
        .bind(job_id)
        .bind(image_id)
        .fetch_optional(self.reader()?)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let row_id: i64 = row.try_get("rowid")?;
        let meta: String = row.try_get("meta")?;
        let state: String = row.try_get("state")?;
        Ok(Some(ImageRecord {
            row_id,
            job_id: row.try_get("job_id")?,
            image_id: row.try_get("image_id")?,
            meta: parse_meta(row_id, &meta)?,
            url: row.try_get("url")?,
            state: state
                .parse::<ImageState>()
                .map_err(|e| StoreError::Invalid(format!("image row {row_id}: {e}")))?,
            attempts: row.try_get("attempts")?,
            run_at: row.try_get("run_at")?,
            lease_owner: row.try_get("lease_owner")?,
            lease_until: row.try_get("lease_until")?,
            bytes: row.try_get("bytes")?,
            path: row.try_get("path")?,
            last_error: row.try_get("last_error")?,
            fail_reason: fail_reason(row_id, row.try_get("fail_reason")?)?,
            deferrals: row.try_get("deferrals")?,
            captured_at: row.try_get("captured_at")?,
            updated_at: row.try_get("updated_at")?,
            sha256: row.try_get("sha256")?,
            kept_jpeg: row.try_get("kept_jpeg")?,
            packing_id: row.try_get("packing_id")?,
        }))
    }
}

fn archived_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ArchivedImage> {
    let row_id: i64 = row.try_get("rowid")?;
    let meta: String = row.try_get("meta")?;
    let path: Option<String> = row.try_get("path")?;
    Ok(ArchivedImage {
        row_id,
        meta: parse_meta(row_id, &meta)?,
        path: path.ok_or_else(|| {
            StoreError::Invalid(format!("image row {row_id} is done without a path"))
        })?,
        bytes: row.try_get::<Option<i64>, _>("bytes")?.map(super::to_u64),
        sha256: row.try_get("sha256")?,
        position: CollectionPosition {
            capture_order: row.try_get("capture_order")?,
            image_id: row.try_get("image_id")?,
            row_id,
        },
    })
}

fn row_id_of(row: &sqlx::sqlite::SqliteRow) -> StoreResult<i64> {
    Ok(row.try_get("rowid")?)
}

/// Parses a stored `fail_reason` column.
fn fail_reason(row_id: i64, stored: Option<String>) -> StoreResult<Option<FailReason>> {
    stored
        .map(|r| r.parse::<FailReason>())
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("image row {row_id}: {e}")))
}
