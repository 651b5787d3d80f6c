//! Where archived files are: packings (one tar of one date of one
//! collection, `planned` → `written` → `cleaned`), copies another job
//! already archived, and the rows `verify` checks and repairs.
//!
//! An image's location is its row: `path` is the loose file, and while its
//! `packing_id` names a `written` or `cleaned` packing, the file is that
//! packing's tar member `path` relative to the collection folder instead.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/archives.rs` and
//! `postgres/archives.rs`, behind [`super::interface`].

use super::{StoreError, StoreResult};
use crate::archive::ArchivedFile;
use std::path::PathBuf;

text_enum! {
    /// Where a packing stands. Each step is durable before the next begins.
    PackingState {
        /// Images chosen; the tar may not exist yet, the loose files are the images.
        Planned => "planned",
        /// The tar is durable; the loose files may still be there.
        Written => "written",
        /// The loose files it replaced are gone.
        Cleaned => "cleaned",
    }
}

/// One tar of one capture date of one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// Its row id, which members' `packing_id` name.
    pub id: i64,
    /// The collection whose folder holds the tar.
    pub collection: String,
    /// `YYYY-MM-DD` or `unknown-date`: the folder it packs.
    pub date: String,
    /// `<date>.tar` or `<date>.<n>.tar`, in the collection folder.
    pub tar_name: String,
    /// How far the packing got (each step durable before the next).
    pub state: PackingState,
    /// Distinct files in the tar (once written).
    pub members: u64,
    /// The tar's size once written, for `verify` and item files.
    pub bytes: Option<u64>,
    /// The tar's SHA-256 once written, for `verify` and item files.
    pub sha256: Option<String>,
}

/// One file a packing holds: a distinct path among its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFile {
    /// The member's loose path (its name in the tar is relative to the collection folder).
    pub path: String,
    /// The file's size, when recorded.
    pub bytes: Option<u64>,
    /// The file's SHA-256, when recorded: a mismatch keeps it out of the tar.
    pub sha256: Option<String>,
    /// Capture time in ms, the member's mtime (deterministic tars).
    pub captured_at: Option<i64>,
    /// Every done row (of any job) archived at this path.
    pub row_ids: Vec<i64>,
}

/// One done row as `verify` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCopy {
    /// The image row, for a repair to re-queue.
    pub row_id: i64,
    /// The job the row belongs to, for `verify`'s per-job report.
    pub job_id: i64,
    /// The Mapillary image id, for messages.
    pub image_id: String,
    /// The collection folder the path must stay inside.
    pub collection: String,
    /// The loose file (or, for a packed row, the member's path).
    pub path: String,
    /// The recorded size, checked against the file.
    pub bytes: Option<u64>,
    /// The recorded SHA-256, checked against the file.
    pub sha256: Option<String>,
}

/// A packing's stored columns (`sql.rs`'s `packing_columns!`), read the same way
/// from either database.
#[derive(sqlx::FromRow)]
pub(super) struct PackingRow {
    id: i64,
    collection: String,
    date: String,
    tar_name: String,
    state: String,
    members: i64,
    bytes: Option<i64>,
    sha256: Option<String>,
}

impl PackingRow {
    pub(super) fn into_packing(self) -> StoreResult<Packing> {
        let id = self.id;
        Ok(Packing {
            id,
            collection: self.collection,
            date: self.date,
            tar_name: self.tar_name,
            state: self
                .state
                .parse()
                .map_err(|e| StoreError::Invalid(format!("packing {id}: {e}")))?,
            members: super::to_u64(self.members),
            bytes: self.bytes.map(super::to_u64),
            sha256: self.sha256,
        })
    }
}

/// A `verify` row (`rowid, job_id, image_id, collection, path, bytes,
/// sha256`) as plain values, read the same way from either database.
#[derive(sqlx::FromRow)]
pub(super) struct StoredCopyRow {
    rowid: i64,
    job_id: i64,
    image_id: String,
    collection: Option<String>,
    path: Option<String>,
    bytes: Option<i64>,
    sha256: Option<String>,
}

impl StoredCopyRow {
    /// The copy, or why a done row cannot be one.
    pub(super) fn into_copy(self) -> StoreResult<StoredCopy> {
        let row_id = self.rowid;
        Ok(StoredCopy {
            row_id,
            job_id: self.job_id,
            image_id: self.image_id,
            collection: self.collection.ok_or_else(|| {
                StoreError::Invalid(format!("image row {row_id} has no collection"))
            })?,
            path: self.path.ok_or_else(|| {
                StoreError::Invalid(format!("image row {row_id} is done without a path"))
            })?,
            bytes: self.bytes.map(super::to_u64),
            sha256: self.sha256,
        })
    }
}

/// An archived copy's columns (`path, bytes, sha256, kept_jpeg, packed`:
/// the id of the written tar holding it), read the same way from either
/// database.
#[derive(sqlx::FromRow)]
pub(super) struct CopyRow {
    path: Option<String>,
    bytes: Option<i64>,
    sha256: Option<String>,
    kept_jpeg: bool,
    packed: Option<i64>,
}

impl CopyRow {
    /// The copy; `None` for a row without a file.
    pub(super) fn into_archived(self) -> Option<ArchivedFile> {
        Some(ArchivedFile {
            path: PathBuf::from(self.path?),
            bytes: super::to_u64(self.bytes.unwrap_or(0)),
            sha256: self.sha256,
            kept_jpeg: self.kept_jpeg,
            packing_id: self.packed,
        })
    }
}

/// A packed copy found for a claimed `(collection, image_id)`.
#[derive(sqlx::FromRow)]
pub(super) struct ClaimCopyRow {
    collection: String,
    image_id: String,
    #[sqlx(flatten)]
    copy: CopyRow,
}

/// Gives each claimed image the packed copy found for it, if any (the
/// claim's lookup, one query per claim on either backend).
pub(super) fn give_packed_copies(claimed: &mut [super::ClaimedImage], rows: Vec<ClaimCopyRow>) {
    for row in rows {
        let Some(copy) = row.copy.into_archived() else {
            continue;
        };
        for image in claimed
            .iter_mut()
            .filter(|c| c.collection == row.collection && c.image_id == row.image_id)
        {
            image.packed_copy = Some(copy.clone());
        }
    }
}

/// What writing a packing's tar produced, for [`Store::mark_packing_written`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarWritten {
    /// Members written (distinct files).
    pub members: u64,
    /// The tar's size in bytes.
    pub bytes: u64,
    /// The tar's SHA-256 (hex), recorded on the packing.
    pub sha256: String,
    /// Rows that had no checksum, and the one their member got.
    pub hashed: Vec<(Vec<i64>, String)>,
    /// Rows left out of the tar (missing or mismatched loose file), and why.
    pub dropped: Vec<(Vec<i64>, String)>,
}
