//! Reading image rows back: archived pages for `metadata.jsonl`, failures,
//! and one row for tests and debugging. All on the read pool.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/images.rs` and
//! `postgres/images.rs`, behind [`super::interface`].

use super::{
    ArchivedImage, CollectionPosition, FailReason, FailedImage, ImageRecord, ImageState,
    StoreError, StoreResult, parse_meta, to_u64,
};
use crate::stats::MinuteThroughput;

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
