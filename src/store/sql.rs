//! Every statement whose text is the same on SQLite and PostgreSQL,
//! written once. Placeholders are PostgreSQL's `$N`, which SQLite reads
//! as the N-th bound value too.

/// A round trip that touches no table: is the connection alive?
pub(super) const PING: &str = "SELECT 1";

/// A collection's tar names, oldest first.
pub(super) const TAR_NAMES: &str =
    "SELECT tar_name FROM packings WHERE collection = $1 ORDER BY id";

/// A done row still at its loose file (no written tar holds it).
pub(super) const IS_STILL_LOOSE: &str = "SELECT EXISTS (SELECT 1 FROM images \
               WHERE rowid = $1 AND state = 'done' AND path = $2 AND (packing_id IS NULL \
               OR packing_id IN (SELECT id FROM packings WHERE state = 'planned')))";

/// Whether a collection has any packing.
pub(super) const IS_PACKED_COLLECTION: &str =
    "SELECT EXISTS (SELECT 1 FROM packings WHERE collection = $1)";

/// Whether any tar is written yet (else no claim can have a packed copy).
pub(super) const ANY_TAR: &str = "SELECT EXISTS (SELECT 1 FROM packings WHERE state <> 'planned')";

/// A stopping daemon's heartbeat row goes.
pub(super) const FORGET_DAEMON: &str = "DELETE FROM daemons WHERE id = $1";

/// A collection's multipart uploads begun and not seen to end, oldest first.
pub(super) const RECORDED_UPLOADS: &str = "SELECT upload_id, path FROM multipart_uploads WHERE collection = $1 \
             ORDER BY started_at, upload_id";

/// An upload that completed or was aborted.
pub(super) const FORGET_UPLOAD: &str = "DELETE FROM multipart_uploads WHERE upload_id = $1";

/// The first page of a job's done images in `metadata.jsonl` order.
pub(super) const FINISHED_IMAGES_FIRST: &str = "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     WHERE job_id = $1 AND state = 'done' \
                     ORDER BY capture_order, rowid LIMIT $2";

/// The next page of a job's done images after row `$2`.
pub(super) const FINISHED_IMAGES_AFTER: &str = "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images \
                     WHERE job_id = $1 AND state = 'done' \
                       AND (capture_order, rowid) > \
                           (SELECT capture_order, rowid FROM images WHERE rowid = $2) \
                     ORDER BY capture_order, rowid LIMIT $3";

/// The collections a job has written to.
pub(super) const JOB_COLLECTIONS: &str =
    "SELECT collection FROM job_collections WHERE job_id = $1 ORDER BY collection";

/// A job's failed images, oldest first.
pub(super) const FAILED_IMAGES: &str = "SELECT rowid, image_id, attempts, last_error, fail_reason FROM images \
             WHERE job_id = $1 AND state = 'failed' ORDER BY rowid LIMIT $2";

/// Every column of one image row.
pub(super) const IMAGE_BY_ID: &str = "SELECT rowid, job_id, image_id, meta, url, state, attempts, run_at, lease_owner, \
             lease_until, bytes, path, last_error, fail_reason, deferrals, captured_at, updated_at, \
             sha256, kept_jpeg, packing_id FROM images WHERE job_id = $1 AND image_id = $2";

/// Where a part stands after a page: its cursor, and whether it is done.
pub(super) const MOVE_PART: &str =
    "UPDATE job_parts SET cursor = $1, done = $2 WHERE job_id = $3 AND seq = $4";

/// The job's last part number.
pub(super) const LAST_PART: &str = "SELECT max(seq) FROM job_parts WHERE job_id = $1";

/// What places a job's images in collections.
pub(super) const PLACEMENT: &str =
    "SELECT source_kind, username, quality, format FROM jobs WHERE id = $1";

/// A job's new re-sync interval.
pub(super) const SET_RESYNC_EVERY: &str = "UPDATE jobs SET resync_every_ms = $1 WHERE id = $2";

/// A job's lowered listing page size.
pub(super) const SET_PAGE_SIZE: &str = "UPDATE jobs SET page_size = $1 WHERE id = $2";

/// Ids of the jobs paused for a reason, oldest first.
pub(super) const JOBS_PAUSED_FOR: &str =
    "SELECT id FROM jobs WHERE state = 'paused' AND pause_reason = $1 ORDER BY id";

/// Jobs an older binary wrote without a selection or identity.
pub(super) const LEGACY_JOBS: &str = "SELECT id, username, quality, bbox_west, bbox_south, bbox_east, bbox_north \
             FROM jobs WHERE selection IS NULL OR job_key IS NULL";

/// A legacy job's canonical selection and identity.
pub(super) const SET_SELECTION: &str = "UPDATE jobs SET selection = $1, job_key = $2 WHERE id = $3";

/// A job's parts, dropped before a re-sync lists them again.
pub(super) const DELETE_PARTS: &str = "DELETE FROM job_parts WHERE job_id = $1";

/// One part of a job's enumeration.
pub(super) const INSERT_PART: &str = "INSERT INTO job_parts (job_id, seq, kind, west, south, east, north, item) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Every job's task lease dropped (a restart of a queue this process has alone).
pub(super) const DROP_JOB_TASKS: &str =
    "UPDATE jobs SET task_owner = NULL, task_until = NULL WHERE task_owner IS NOT NULL";

/// The archive root the stored paths begin with.
pub(super) const ARCHIVE_ROOT: &str = "SELECT value FROM store_facts WHERE key = 'archive_root'";

/// Every stored path: loose files and tars.
pub(super) const ALL_PATHS: &str = "SELECT path FROM images WHERE path IS NOT NULL \
                 UNION ALL SELECT collection || '/' || tar_name FROM packings LIMIT 1";

/// Stored paths that do not begin with the root `$1`.
pub(super) const PATHS_OUTSIDE_ROOT: &str = "SELECT path FROM images WHERE path IS NOT NULL \
                   AND substr(path, 1, length($1) + 1) <> $1 || '/' LIMIT 1";

/// Moves paths under old root `$1` onto root `$2`.
pub(super) const REBASE_PATHS: &str = "UPDATE images SET path = $2 || substr(path, length($1) + 1) \
                 WHERE substr(path, 1, length($1) + 1) = $1 || '/'";

/// Records the archive root.
pub(super) const SET_ARCHIVE_ROOT: &str = "INSERT INTO store_facts (key, value) VALUES ('archive_root', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The columns a [`super::archives::PackingRow`] reads, for `concat!`.
macro_rules! packing_columns {
    () => {
        "id, collection, date, tar_name, state, members, bytes, sha256"
    };
}
pub(super) use packing_columns;

/// `SELECT` of a packing's columns from `packings`, then the rest of the
/// statement: one literal, so each statement below stays `&'static str`.
macro_rules! select_packings {
    ($rest:literal) => {
        concat!("SELECT ", packing_columns!(), " FROM packings ", $rest)
    };
}

/// A collection's packings not yet cleaned, oldest first.
pub(super) const UNFINISHED_PACKINGS: &str =
    select_packings!("WHERE collection = $1 AND state <> 'cleaned' ORDER BY id");

/// One packing.
pub(super) const PACKING: &str = select_packings!("WHERE id = $1");

/// A collection's packings, oldest first.
pub(super) const PACKINGS: &str = select_packings!("WHERE collection = $1 ORDER BY id");

/// A planned packing's count of distinct files, stored; returns the packing.
pub(super) const COUNT_MEMBERS: &str = concat!(
    "UPDATE packings SET members = \
       (SELECT count(DISTINCT path) FROM images WHERE packing_id = $1) \
     WHERE id = $1 RETURNING ",
    packing_columns!()
);
