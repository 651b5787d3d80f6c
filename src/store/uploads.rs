//! The upload to the Internet Archive, as the database keeps it: a job's
//! upload track (`job_uploads`), the items a collection is split into
//! (`upload_items`) and each file placed in one (`upload_files`, pending →
//! sent → confirmed). See `migrations/sqlite/0012_ia_uploads.sql`.
//!
//! Items and files belong to a collection, not a job: two jobs archiving one
//! collection upload one item. A tar's placement is recorded once and never
//! moves (a partial unique index on `(collection, name)` for tars refuses a
//! second one); an item's own files (`metadata.jsonl.gz`, the thumbnail) may
//! change and are then marked pending again with their new checksum.
//!
//! This file holds what both backends share for the area: its types, row
//! mapping and the method bodies ([`shared_uploads`]), whose statements read
//! the same on both dialects.

use super::{Job, Store, StoreError, StoreResult, to_u64};

text_enum! {
    /// Where a job's upload track stands. `waiting`: the job is not done
    /// (packed) yet, or its upload has not begun; `confirming`: every file
    /// is sent, waiting for the item's metadata to list them.
    UploadState {
        /// The job is not packed yet, or its upload has not begun.
        Waiting => "waiting",
        /// Files are being sent.
        Uploading => "uploading",
        /// Every file is sent; the item's metadata does not list them all yet.
        Confirming => "confirming",
        /// The item lists every file with our MD5: the upload is finished.
        Confirmed => "confirmed",
        /// Stopped by the operator, or by a refusal that needs them (`last_error` says what).
        Paused => "paused",
        /// Given up after repeated errors; a retry starts it again.
        Failed => "failed",
    }
}

text_enum! {
    /// One file's way to an item: `sent` once IA-S3 answered 200 to its PUT,
    /// `confirmed` once the item's metadata lists it with our MD5.
    UploadFileState {
        /// Not sent yet (or to be sent again).
        Pending => "pending",
        /// IA-S3 answered 200 to its PUT.
        Sent => "sent",
        /// The item's metadata lists it with our MD5.
        Confirmed => "confirmed",
    }
}

text_enum! {
    /// What an item file is: a date tar (placed once, never moved) or one of
    /// the item's own files, rebuilt when the item changes.
    UploadFileKind {
        /// A date tar: placed once, never moved.
        Tar => "tar",
        /// One of the item's own files (metadata, thumbnail), rebuilt when the item changes.
        Item => "item",
    }
}

/// A job's upload track: the state the engine and the API move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTrack {
    /// The job asking for the upload.
    pub job_id: i64,
    /// Where the track stands.
    pub state: UploadState,
    /// What went wrong and what to do about it, for the operator.
    pub last_error: Option<String>,
}

/// One item (part) of a collection on archive.org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadItem {
    /// Row id, for placing files in it.
    pub id: i64,
    /// The collection the item holds (part of).
    pub collection: String,
    /// 1 for `<collection>`, N for `<collection>-N`.
    pub part: u32,
    /// The archive.org identifier.
    pub identifier: String,
    /// Bytes placed in the item: what its size limit is checked against.
    pub bytes: u64,
    /// Files placed in the item: what its file limit is checked against.
    pub files: u64,
}

/// One file placed in an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// Row id, for moving its state.
    pub id: i64,
    /// The item it is placed in.
    pub item_id: i64,
    /// Its collection.
    pub collection: String,
    /// Tar or item file.
    pub kind: UploadFileKind,
    /// The file's name in the item.
    pub name: String,
    /// Where the file is on this machine.
    pub local_path: String,
    /// Its size, sent as `Content-Length` and compared with the item's.
    pub bytes: u64,
    /// Its MD5 (lowercase hex), sent as `Content-MD5` and compared with the item's.
    pub md5: String,
    /// How far it got.
    pub state: UploadFileState,
    /// PUTs begun: more than one means a resend (after a crash or an error).
    pub attempts: u32,
}

/// A file to place in an item: what [`crate::store::Store::place_upload_file`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUploadFile<'a> {
    /// Tar or item file.
    pub kind: UploadFileKind,
    /// The file's name in the item.
    pub name: &'a str,
    /// Where the file is on this machine.
    pub local_path: &'a str,
    /// Its size.
    pub bytes: u64,
    /// Its MD5, lowercase hex.
    pub md5: &'a str,
}

/// What placing a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// A new row, pending.
    New,
    /// An item file whose content changed: pending again with the new checksum.
    Changed,
    /// Already placed as it is (or, for a tar, placed before in some item):
    /// nothing changed.
    Unchanged,
}

/// A job's upload as the job object shows it (`upload: {...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct UploadProgress {
    /// The job.
    #[serde(skip)]
    pub job_id: i64,
    /// Where the track stands.
    pub state: UploadState,
    /// Items (parts) of the job's collections.
    pub items: u64,
    /// Files placed in them.
    pub files_total: u64,
    /// Files the items' metadata lists with our MD5.
    pub files_confirmed: u64,
    /// Bytes of the files sent (or confirmed).
    pub bytes_sent: u64,
    /// Bytes of every file placed.
    pub bytes_total: u64,
    /// What went wrong and what to do about it.
    pub last_error: Option<String>,
}

/// `upload_items` columns as read by both backends.
#[derive(sqlx::FromRow)]
pub(super) struct ItemRow {
    id: i64,
    collection: String,
    part: i64,
    identifier: String,
    bytes: i64,
    files: i64,
}

impl From<ItemRow> for UploadItem {
    fn from(row: ItemRow) -> UploadItem {
        UploadItem {
            id: row.id,
            collection: row.collection,
            part: u32::try_from(row.part).unwrap_or(0),
            identifier: row.identifier,
            bytes: to_u64(row.bytes),
            files: to_u64(row.files),
        }
    }
}

/// `upload_files` columns as read by both backends.
#[derive(sqlx::FromRow)]
pub(super) struct FileRow {
    id: i64,
    item_id: i64,
    collection: String,
    kind: String,
    name: String,
    local_path: String,
    bytes: i64,
    md5: String,
    state: String,
    attempts: i64,
}

impl FileRow {
    pub(super) fn into_file(self) -> StoreResult<UploadFile> {
        let corrupt = super::corrupt_row("upload file", self.id);
        Ok(UploadFile {
            id: self.id,
            item_id: self.item_id,
            collection: self.collection,
            kind: self.kind.parse().map_err(corrupt)?,
            name: self.name,
            local_path: self.local_path,
            bytes: to_u64(self.bytes),
            md5: self.md5,
            state: self.state.parse().map_err(corrupt)?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
        })
    }
}

/// `job_uploads` plus its sums, as read by both backends.
#[derive(sqlx::FromRow)]
pub(super) struct ProgressRow {
    job_id: i64,
    state: String,
    last_error: Option<String>,
    items: i64,
    files_total: i64,
    files_confirmed: i64,
    bytes_sent: i64,
    bytes_total: i64,
}

impl ProgressRow {
    pub(super) fn into_progress(self) -> StoreResult<UploadProgress> {
        let state = self.state.parse().map_err(|e: String| {
            StoreError::Invalid(format!("job {}'s upload: {e}", self.job_id))
        })?;
        Ok(UploadProgress {
            job_id: self.job_id,
            state,
            items: to_u64(self.items),
            files_total: to_u64(self.files_total),
            files_confirmed: to_u64(self.files_confirmed),
            bytes_sent: to_u64(self.bytes_sent),
            bytes_total: to_u64(self.bytes_total),
            last_error: self.last_error,
        })
    }
}

/// Reads a track row.
pub(super) fn track_from(
    (job_id, state, last_error): (i64, String, Option<String>),
) -> StoreResult<UploadTrack> {
    let state = state
        .parse()
        .map_err(|e: String| StoreError::Invalid(format!("job {job_id}'s upload: {e}")))?;
    Ok(UploadTrack {
        job_id,
        state,
        last_error,
    })
}

/// An `i64` column from a count or size.
pub(super) fn col(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The statements of the area; `$N` placeholders, which SQLite binds too.
pub(super) mod sql {
    pub const ENABLE: &str = "INSERT INTO job_uploads (job_id, updated_at) VALUES ($1, $2) \
                              ON CONFLICT (job_id) DO NOTHING";
    pub const TRACK: &str = "SELECT job_id, state, last_error FROM job_uploads WHERE job_id = $1";
    pub const TRACKS: &str = "SELECT job_id, state, last_error FROM job_uploads ORDER BY job_id";
    pub const SET_STATE: &str = "UPDATE job_uploads SET state = $1, last_error = $2, updated_at = $3 \
                                 WHERE job_id = $4 AND state = $5";
    pub const ITEMS: &str = "SELECT id, collection, part, identifier, bytes, files FROM upload_items \
                             WHERE collection = $1 ORDER BY part";
    pub const ITEM: &str = "SELECT id, collection, part, identifier, bytes, files FROM upload_items \
                            WHERE collection = $1 AND part = $2";
    pub const ADD_ITEM: &str = "INSERT INTO upload_items (collection, part, identifier) \
                                VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
    pub const FILES: &str = "SELECT id, item_id, collection, kind, name, local_path, bytes, md5, \
                             state, attempts FROM upload_files WHERE collection = $1 \
                             ORDER BY item_id, id";
    pub const INSERT_FILE: &str = "INSERT INTO upload_files \
                                   (item_id, collection, kind, name, local_path, bytes, md5) \
                                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
    pub const CHANGE_ITEM_FILE: &str = "UPDATE upload_files \
                                        SET local_path = $1, bytes = $2, md5 = $3, state = 'pending' \
                                        WHERE item_id = $4 AND name = $5 AND kind = 'item' \
                                        AND (md5 <> $3 OR bytes <> $2)";
    pub const GROW_ITEM: &str =
        "UPDATE upload_items SET bytes = bytes + $1, files = files + $2 WHERE id = $3";
    pub const BEGIN_SEND: &str = "UPDATE upload_files SET attempts = attempts + 1 WHERE id = $1";
    pub const SET_FILE_STATE: &str = "UPDATE upload_files SET state = $1, sent_at = coalesce(sent_at, $2) \
                                      WHERE id = $3 AND state = $4";
    /// Every track with its sums over the files of the job's collections.
    pub const PROGRESS: &str = "SELECT u.job_id, u.state, u.last_error, \
         (SELECT count(*) FROM upload_items i JOIN job_collections c2 \
            ON c2.collection = i.collection WHERE c2.job_id = u.job_id) AS items, \
         count(f.id) AS files_total, \
         CAST(coalesce(sum(CASE WHEN f.state = 'confirmed' THEN 1 ELSE 0 END), 0) AS BIGINT) \
            AS files_confirmed, \
         CAST(coalesce(sum(CASE WHEN f.state <> 'pending' THEN f.bytes ELSE 0 END), 0) AS BIGINT) \
            AS bytes_sent, \
         CAST(coalesce(sum(f.bytes), 0) AS BIGINT) AS bytes_total \
         FROM job_uploads u \
         LEFT JOIN job_collections c ON c.job_id = u.job_id \
         LEFT JOIN upload_files f ON f.collection = c.collection \
         WHERE (CAST($1 AS BIGINT) IS NULL OR u.job_id = CAST($1 AS BIGINT)) \
         GROUP BY u.job_id, u.state, u.last_error ORDER BY u.job_id";
}

/// [`super::interface::Uploads`], the same body on both backends.
macro_rules! shared_uploads {
    () => {
        async fn enable_upload(
            &self,
            job_id: i64,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            let done = sqlx::query($crate::store::uploads::sql::ENABLE)
                .bind(job_id)
                .bind(now_ms)
                .execute(self.writer()?)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn upload_track(
            &self,
            job_id: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::UploadTrack>> {
            sqlx::query_as($crate::store::uploads::sql::TRACK)
                .bind(job_id)
                .fetch_optional(self.writer()?)
                .await?
                .map($crate::store::uploads::track_from)
                .transpose()
        }

        async fn upload_tracks(
            &self,
        ) -> $crate::store::StoreResult<Vec<$crate::store::UploadTrack>> {
            sqlx::query_as($crate::store::uploads::sql::TRACKS)
                .fetch_all(self.writer()?)
                .await?
                .into_iter()
                .map($crate::store::uploads::track_from)
                .collect()
        }

        async fn set_upload_state(
            &self,
            job_id: i64,
            from: $crate::store::UploadState,
            to: $crate::store::UploadState,
            last_error: Option<&str>,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            let done = sqlx::query($crate::store::uploads::sql::SET_STATE)
                .bind(to.as_str())
                .bind(last_error)
                .bind(now_ms)
                .bind(job_id)
                .bind(from.as_str())
                .execute(self.writer()?)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn upload_items(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::UploadItem>> {
            let rows: Vec<$crate::store::uploads::ItemRow> =
                sqlx::query_as($crate::store::uploads::sql::ITEMS)
                    .bind(collection)
                    .fetch_all(self.writer()?)
                    .await?;
            Ok(rows.into_iter().map(Into::into).collect())
        }

        async fn add_upload_item(
            &self,
            collection: &str,
            part: u32,
            identifier: &str,
        ) -> $crate::store::StoreResult<$crate::store::UploadItem> {
            let pool = self.writer()?;
            sqlx::query($crate::store::uploads::sql::ADD_ITEM)
                .bind(collection)
                .bind(i64::from(part))
                .bind(identifier)
                .execute(pool)
                .await?;
            let row: Option<$crate::store::uploads::ItemRow> =
                sqlx::query_as($crate::store::uploads::sql::ITEM)
                    .bind(collection)
                    .bind(i64::from(part))
                    .fetch_optional(pool)
                    .await?;
            match row {
                Some(row) if row.identifier_is(identifier) => Ok(row.into()),
                _ => Err($crate::store::StoreError::Invalid(format!(
                    "item {identifier} is taken by another collection or part"
                ))),
            }
        }

        async fn place_upload_file(
            &self,
            item: &$crate::store::UploadItem,
            file: &$crate::store::NewUploadFile<'_>,
        ) -> $crate::store::StoreResult<$crate::store::Placed> {
            use $crate::store::uploads::{col, sql};
            let mut tx = self.writer()?.begin().await?;
            let old: Option<(i64,)> =
                sqlx::query_as("SELECT bytes FROM upload_files WHERE item_id = $1 AND name = $2")
                    .bind(item.id)
                    .bind(file.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let inserted = sqlx::query(sql::INSERT_FILE)
                .bind(item.id)
                .bind(&item.collection)
                .bind(file.kind.as_str())
                .bind(file.name)
                .bind(file.local_path)
                .bind(col(file.bytes))
                .bind(file.md5)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let placed = if inserted == 1 {
                sqlx::query(sql::GROW_ITEM)
                    .bind(col(file.bytes))
                    .bind(1_i64)
                    .bind(item.id)
                    .execute(&mut *tx)
                    .await?;
                $crate::store::Placed::New
            } else if let Some((old_bytes,)) = old {
                let changed = sqlx::query(sql::CHANGE_ITEM_FILE)
                    .bind(file.local_path)
                    .bind(col(file.bytes))
                    .bind(file.md5)
                    .bind(item.id)
                    .bind(file.name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed == 1 {
                    sqlx::query(sql::GROW_ITEM)
                        .bind(col(file.bytes) - old_bytes)
                        .bind(0_i64)
                        .bind(item.id)
                        .execute(&mut *tx)
                        .await?;
                    $crate::store::Placed::Changed
                } else {
                    $crate::store::Placed::Unchanged
                }
            } else {
                $crate::store::Placed::Unchanged
            };
            tx.commit().await?;
            Ok(placed)
        }

        async fn upload_files(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::UploadFile>> {
            let rows: Vec<$crate::store::uploads::FileRow> =
                sqlx::query_as($crate::store::uploads::sql::FILES)
                    .bind(collection)
                    .fetch_all(self.writer()?)
                    .await?;
            rows.into_iter().map(|r| r.into_file()).collect()
        }

        async fn begin_file_send(&self, file_id: i64) -> $crate::store::StoreResult<()> {
            sqlx::query($crate::store::uploads::sql::BEGIN_SEND)
                .bind(file_id)
                .execute(self.writer()?)
                .await?;
            Ok(())
        }

        async fn set_file_state(
            &self,
            file_id: i64,
            from: $crate::store::UploadFileState,
            to: $crate::store::UploadFileState,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            let done = sqlx::query($crate::store::uploads::sql::SET_FILE_STATE)
                .bind(to.as_str())
                .bind(now_ms)
                .bind(file_id)
                .bind(from.as_str())
                .execute(self.writer()?)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn upload_progress(
            &self,
            job_id: Option<i64>,
        ) -> $crate::store::StoreResult<Vec<$crate::store::UploadProgress>> {
            let rows: Vec<$crate::store::uploads::ProgressRow> =
                sqlx::query_as($crate::store::uploads::sql::PROGRESS)
                    .bind(job_id)
                    .fetch_all(self.reader()?)
                    .await?;
            rows.into_iter().map(|r| r.into_progress()).collect()
        }
    };
}
pub(super) use shared_uploads;

impl ItemRow {
    /// Whether the row is the item asked for (and not a clash with another
    /// collection's identifier).
    pub(super) fn identifier_is(&self, identifier: &str) -> bool {
        self.identifier == identifier
    }
}

impl Store {
    /// Fills each job's `upload` from its track: one query for one job, one
    /// for all tracks otherwise (few jobs upload, so it stays small).
    pub async fn with_uploads(&self, jobs: &mut [Job]) -> StoreResult<()> {
        let only = match jobs {
            [one] => Some(one.id),
            [] => return Ok(()),
            _ => None,
        };
        let progress = self.upload_progress(only).await?;
        for job in jobs {
            job.upload = progress.iter().find(|p| p.job_id == job.id).cloned();
        }
        Ok(())
    }
}
