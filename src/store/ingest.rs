//! Writing enumeration pages: image rows plus where the job's current part
//! stands, in one transaction.
//!
//! Rows go in as multi-row `INSERT ... VALUES (..),(..)` statements of a few
//! fixed sizes. Fixed sizes keep the statements in sqlx's prepared-statement
//! cache, and many rows per statement amortise the per-statement round trip to
//! the connection's worker thread, which is what limits a one-row-at-a-time
//! insert well below 100k rows/s.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/ingest.rs` and
//! `postgres/ingest.rs`, behind [`super::interface`].

use super::{FailReason, JobTask, StoreError, StoreResult};
use crate::model::{ImageMeta, OutputFormat, Quality, Storable, collection_name};
use crate::selection::PartSpec;
use std::borrow::Cow;

/// One image, serialised before the transaction starts so the writer is held
/// only for SQL.
pub(super) struct PreparedRow<'a> {
    pub(super) image_id: &'a str,
    pub(super) meta: Cow<'a, str>,
    pub(super) url: Option<&'a str>,
    pub(super) captured_at: Option<i64>,
    pub(super) collection: Cow<'a, str>,
}

/// What becomes of the job's current part once a page of it is stored.
#[derive(Debug, Clone, Copy)]
pub enum PartStep<'a> {
    /// More pages follow from this `next` link (stored token-free).
    Next(&'a str),
    /// The part is finished.
    Done,
    /// The part is finished and these take its place at the end of the
    /// list: a sequence's image batches, or a capped tile's quarters.
    Replace(&'a [PartSpec]),
}

/// One enumeration page to store ([`super::Store::store_page`]): the part
/// it belongs to, what it holds, what becomes of the part and under which
/// job task lease (`None`: the caller holds none, as the one-shot command).
#[derive(Debug, Clone, Copy)]
pub struct PageWrite<'a, S> {
    /// The job listed.
    pub job_id: i64,
    /// The part's `seq`: a page for a part no longer open is refused.
    pub part: i64,
    /// The page's images (repeated ids are ignored).
    pub images: &'a [S],
    /// Images the API says do not exist, recorded failed for good.
    pub missing: &'a [MissingImage<'a>],
    /// What becomes of the part.
    pub step: PartStep<'a>,
    /// The lease the write is fenced by, if any.
    pub task: Option<&'a JobTask>,
    /// The caller's now (ms).
    pub now_ms: i64,
}

/// A page's rows as the backends insert them, prepared before the
/// transaction: the rows, the missing images and the page's time.
pub(super) struct PreparedPage<'a> {
    pub(super) job_id: i64,
    pub(super) rows: &'a [PreparedRow<'a>],
    pub(super) missing: &'a [MissingImage<'a>],
    /// The page's time (the database's on PostgreSQL, read once).
    pub(super) now: i64,
}

/// An image the API says does not exist, recorded failed for good so the
/// job shows it: an image-id job naming an unknown id, say.
#[derive(Debug, Clone, Copy)]
pub struct MissingImage<'a> {
    /// The id the API said does not exist.
    pub image_id: &'a str,
    /// Why it is failed for good (deleted, or an error).
    pub reason: FailReason,
    /// What the API said, kept as the row's last error.
    pub message: &'a str,
}

/// How a job places its images: one collection for a username job, the
/// creator's for the rest.
pub(super) struct Placement {
    username: Option<String>,
    quality: Quality,
    format: OutputFormat,
}

impl Placement {
    /// From the job's stored `source_kind`, `username`, `quality` and `format`.
    pub(super) fn from_fields(
        job_id: i64,
        (kind, username, quality, format): (String, String, String, String),
    ) -> StoreResult<Placement> {
        let corrupt = |e: String| StoreError::Invalid(format!("job {job_id}: {e}"));
        Ok(Placement {
            username: (kind == "username").then_some(username),
            quality: quality.parse().map_err(corrupt)?,
            format: format.parse().map_err(corrupt)?,
        })
    }

    fn collection<'a>(&'a self, meta: &'a ImageMeta) -> String {
        let user = self.username.as_deref().or_else(|| meta.creator_username());
        collection_name(user, self.quality, self.format)
    }
}

/// Removes any `access_token` query parameter from an enumeration `next` URL
/// (invariant 2: the token never reaches the database), with the client's own
/// [`crate::mapillary::strip_token`]. As a second line of defence, a cursor
/// that still mentions a token anywhere is refused rather than stored.
pub fn strip_token(cursor: &str) -> Result<String, String> {
    let stripped = crate::mapillary::strip_token(cursor);
    if stripped.to_ascii_lowercase().contains("access_token") {
        return Err("refusing to store a cursor that may carry the access token".into());
    }
    Ok(stripped)
}

/// The cursor a page's step stores on its part: token-free.
pub(super) fn step_cursor(step: PartStep<'_>) -> StoreResult<Option<String>> {
    Ok(match step {
        PartStep::Next(next) => Some(strip_token(next).map_err(StoreError::Invalid)?),
        PartStep::Done | PartStep::Replace(_) => None,
    })
}

/// A page's rows, serialised and placed, in insertion order.
pub(super) fn prepare_rows<'a>(
    images: &'a [impl Storable],
    placement: &Placement,
) -> StoreResult<Vec<PreparedRow<'a>>> {
    let mut rows = images
        .iter()
        .map(|image| {
            let meta = image.meta();
            Ok(PreparedRow {
                image_id: meta.id.as_str(),
                meta: image
                    .stored_json()
                    .map_err(|e| StoreError::Invalid(format!("image {:?}: {e}", meta.id)))?,
                url: meta.url_for(placement.quality),
                captured_at: meta.captured_at,
                collection: Cow::Owned(placement.collection(meta)),
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    // Numeric order (digit ids of one length sort as numbers): inserting
    // into the (job_id, image_id) index in key order keeps each B-tree
    // descent near the previous one, ~15% less CPU when a page's ids are
    // scattered. Claim order within a page follows; the API promises none.
    rows.sort_unstable_by(|a, b| {
        (a.image_id.len(), a.image_id).cmp(&(b.image_id.len(), b.image_id))
    });
    Ok(rows)
}

/// The collections a page's rows go to, sorted, once each.
pub(super) fn page_collections<'a>(rows: &'a [PreparedRow<'_>]) -> Vec<&'a str> {
    let mut collections: Vec<&str> = rows.iter().map(|r| r.collection.as_ref()).collect();
    collections.sort_unstable();
    collections.dedup();
    collections
}

/// The stored metadata of an image the API says does not exist.
pub(super) fn missing_meta(image: &MissingImage<'_>) -> String {
    serde_json::json!({ "id": image.image_id }).to_string()
}
