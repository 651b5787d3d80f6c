//! Reading image rows back: archived pages for `metadata.jsonl`, failures,
//! and one row for tests and debugging. All on the read pool.

use super::{
    ArchivedImage, CollectionPosition, FailReason, FailedImage, ImageRecord, ImageState, Store,
    StoreError, StoreResult, on_postgres, parse_meta, to_u64,
};
use crate::stats::MinuteThroughput;
use sqlx::FromRow;

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
        on_postgres!(self.finished_images(job_id, after_row_id, limit));
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
        on_postgres!(self.collection_images(collection, after, limit));
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
        on_postgres!(self.job_collections(job_id));
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
        on_postgres!(self.finished_by_minute(since_ms));
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

    /// Images finished (done) since `since_ms`, and their bytes, across all
    /// jobs: the `status` command's throughput, readable from any process.
    pub async fn finished_since(&self, since_ms: i64) -> StoreResult<(u64, u64)> {
        on_postgres!(self.finished_since(since_ms));
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
        on_postgres!(self.failed_images(job_id, limit));
        let rows = sqlx::query(
            "SELECT rowid, image_id, attempts, last_error, fail_reason FROM images \
             WHERE job_id = ? AND state = 'failed' ORDER BY rowid LIMIT ?",
        )
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.iter()
            .map(|row| FailedRow::from_row(row)?.into_failed())
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
        on_postgres!(self.upcoming_urls(job_id, now_ms, limit));
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
        on_postgres!(self.image_by_id(job_id, image_id));
        let row = sqlx::query(
            "SELECT rowid, job_id, image_id, meta, url, state, attempts, run_at, lease_owner, \
             lease_until, bytes, path, last_error, fail_reason, deferrals, captured_at, updated_at, \
             sha256, kept_jpeg, packing_id FROM images WHERE job_id = ? AND image_id = ?",
        )
        .bind(job_id)
        .bind(image_id)
        .fetch_optional(self.reader()?)
        .await?;
        row.map(|row| ImageRow::from_row(&row)?.into_record())
            .transpose()
    }
}

fn archived_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ArchivedImage> {
    ArchivedRow::from_row(row)?.into_archived()
}

/// The columns of an [`ArchivedImage`], on either database.
#[derive(sqlx::FromRow)]
pub(super) struct ArchivedRow {
    rowid: i64,
    meta: String,
    path: Option<String>,
    bytes: Option<i64>,
    sha256: Option<String>,
    capture_order: i64,
    image_id: String,
}

impl ArchivedRow {
    pub(super) fn into_archived(self) -> StoreResult<ArchivedImage> {
        let row_id = self.rowid;
        Ok(ArchivedImage {
            row_id,
            meta: parse_meta(row_id, &self.meta)?,
            path: self.path.ok_or_else(|| {
                StoreError::Invalid(format!("image row {row_id} is done without a path"))
            })?,
            bytes: self.bytes.map(super::to_u64),
            sha256: self.sha256,
            position: CollectionPosition {
                capture_order: self.capture_order,
                image_id: self.image_id,
                row_id,
            },
        })
    }
}

/// The columns of a [`FailedImage`], on either database.
#[derive(sqlx::FromRow)]
pub(super) struct FailedRow {
    rowid: i64,
    image_id: String,
    attempts: i64,
    last_error: Option<String>,
    fail_reason: Option<String>,
}

impl FailedRow {
    pub(super) fn into_failed(self) -> StoreResult<FailedImage> {
        Ok(FailedImage {
            row_id: self.rowid,
            image_id: self.image_id,
            attempts: self.attempts,
            last_error: self.last_error,
            fail_reason: fail_reason(self.rowid, self.fail_reason)?,
        })
    }
}

/// Every column of an image row as [`ImageRecord`] shows it, on either database.
#[derive(sqlx::FromRow)]
pub(super) struct ImageRow {
    rowid: i64,
    job_id: i64,
    image_id: String,
    meta: String,
    url: Option<String>,
    state: String,
    attempts: i64,
    run_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    bytes: Option<i64>,
    path: Option<String>,
    last_error: Option<String>,
    fail_reason: Option<String>,
    deferrals: i64,
    captured_at: Option<i64>,
    updated_at: i64,
    sha256: Option<String>,
    kept_jpeg: bool,
    packing_id: Option<i64>,
}

impl ImageRow {
    pub(super) fn into_record(self) -> StoreResult<ImageRecord> {
        let row_id = self.rowid;
        Ok(ImageRecord {
            row_id,
            job_id: self.job_id,
            image_id: self.image_id,
            meta: parse_meta(row_id, &self.meta)?,
            url: self.url,
            state: self
                .state
                .parse::<ImageState>()
                .map_err(|e| StoreError::Invalid(format!("image row {row_id}: {e}")))?,
            attempts: self.attempts,
            run_at: self.run_at,
            lease_owner: self.lease_owner,
            lease_until: self.lease_until,
            bytes: self.bytes,
            path: self.path,
            last_error: self.last_error,
            fail_reason: fail_reason(row_id, self.fail_reason)?,
            deferrals: self.deferrals,
            captured_at: self.captured_at,
            updated_at: self.updated_at,
            sha256: self.sha256,
            kept_jpeg: self.kept_jpeg,
            packing_id: self.packing_id,
        })
    }
}

/// One `(minute, images, bytes)` row of [`Store::finished_by_minute`].
pub(super) fn minute_throughput((minute, images, bytes): (i64, i64, i64)) -> MinuteThroughput {
    MinuteThroughput {
        start_ms: minute * 60_000,
        images: to_u64(images),
        bytes: to_u64(bytes),
    }
}

/// Parses a stored `fail_reason` column.
fn fail_reason(row_id: i64, stored: Option<String>) -> StoreResult<Option<FailReason>> {
    stored
        .map(|r| r.parse::<FailReason>())
        .transpose()
        .map_err(|e| StoreError::Invalid(format!("image row {row_id}: {e}")))
}
