//! The work queue: claim with a lease, then complete, fail or release, each
//! fenced by (lease owner, lease epoch) so a worker whose lease was taken over
//! cannot overwrite the new holder's outcome.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/queue.rs` and
//! `postgres/queue.rs`, behind [`super::interface`].

use super::{ClaimedImage, Lease, StoreError, StoreResult, parse_meta};
use crate::model::{OutputFormat, Quality};
use std::sync::Arc;
use std::time::Duration;

/// One claim as a backend's `claim_batch` takes it (the shared `claim`
/// answers a zero `limit` itself): up to `limit` due images for `owner`,
/// leased for `lease`, taking turns from the job after `after_job`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClaimBatch<'a> {
    pub(super) owner: &'a Arc<str>,
    pub(super) limit: u32,
    pub(super) lease: Duration,
    pub(super) now_ms: i64,
    pub(super) after_job: i64,
}

/// When a failed attempt's image is due again, if attempts remain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after which the image is failed for good.
    pub max_attempts: u32,
    /// Unix ms at which a retry is due.
    pub retry_at_ms: i64,
}

/// How a deferred image's delay grows: `base × 2^deferrals`, capped, times
/// `jitter` (0.5..=1.0 keeps retries of one batch from moving in lockstep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeferPolicy {
    /// The first deferral's delay; each next one doubles it.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// Fraction of the delay kept (0..=1): spreads rows that deferred together.
    pub jitter: f64,
}

/// The columns a claim returns, on either database.
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedRow {
    rowid: i64,
    pub(super) job_id: i64,
    image_id: String,
    meta: String,
    url: Option<String>,
    attempts: i64,
    lease_epoch: i64,
    run_at: i64,
    collection: Option<String>,
}

impl ClaimedRow {
    /// The claimed image, with its `run_at` to sort by.
    pub(super) fn into_claimed(
        self,
        owner: &Arc<str>,
        (quality, format): (Quality, OutputFormat),
    ) -> StoreResult<(i64, ClaimedImage)> {
        let row_id = self.rowid;
        Ok((
            self.run_at,
            ClaimedImage {
                lease: Lease {
                    row_id,
                    owner: owner.clone(),
                    attempt: self.attempts,
                    epoch: self.lease_epoch,
                },
                job_id: self.job_id,
                image_id: self.image_id,
                quality,
                format,
                collection: self.collection.ok_or_else(|| {
                    StoreError::Invalid(format!("image row {row_id} has no collection"))
                })?,
                meta: parse_meta(row_id, &self.meta)?,
                url: self.url,
                packed_copy: None,
            },
        ))
    }
}

/// RETURNING yields rows in no promised order; hand them out in queue order.
pub(super) fn in_queue_order(mut claimed: Vec<(i64, ClaimedImage)>) -> Vec<ClaimedImage> {
    claimed.sort_by_key(|(run_at, image)| (*run_at, image.lease.row_id));
    claimed.into_iter().map(|(_, image)| image).collect()
}

/// A job's stored quality and format.
pub(super) fn identity_from_fields(
    job_id: i64,
    quality: String,
    format: String,
) -> StoreResult<(Quality, OutputFormat)> {
    let corrupt = super::corrupt_row("job", job_id);
    Ok((
        quality.parse::<Quality>().map_err(corrupt)?,
        format.parse::<OutputFormat>().map_err(corrupt)?,
    ))
}
