//! Leases on a collection's packing and finishing: one packer/finaliser per
//! collection at a time in the whole cluster (a collection's tars are
//! numbered and written from one plan, and its item files from one view of
//! its rows). Shaped like the job task lease (owner, until, epoch); every
//! packing write checks owner and epoch inside its own transaction, so a
//! process that lost the lease while stalled (on a disk, S3 or the database)
//! cannot plan, record or clean a packing after another took over.
//!
//! Also the ledger of the multipart uploads a packer has begun: what a dead
//! or stalled packer left is aborted by the next one, so no half-uploaded tar
//! lingers in the bucket, or completes late.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/collection_tasks.rs` and
//! `postgres/collection_tasks.rs`, behind [`super::interface`].

use std::sync::Arc;

/// The right to pack and finish one collection, as taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionTask {
    /// The collection leased.
    pub collection: Arc<str>,
    /// Who holds the lease: every packing write checks it.
    pub owner: Arc<str>,
    /// The collection's take count at this take; only grows.
    pub epoch: i64,
}

/// A multipart upload a packer began and did not see end.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RecordedUpload {
    /// The bucket's id of the multipart upload, to abort it.
    pub upload_id: String,
    /// The archive path (rooted at the archive URL) being uploaded.
    pub path: String,
}
