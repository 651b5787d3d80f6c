//! Where archived files are: packings (one tar of one date of one
//! collection, `planned` → `written` → `cleaned`), copies another job
//! already archived, and the rows `verify` checks and repairs.
//!
//! An image's location is its row: `path` is the loose file, and while its
//! `packing_id` names a `written` or `cleaned` packing, the file is that
//! packing's tar member `path` relative to the collection folder instead.

use super::collection_tasks::{CollectionTask, check_sqlite};
use super::{ClaimedImage, Store, StoreError, StoreResult, on_postgres};
use crate::archive::ArchivedFile;
use sqlx::Row;
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
    pub id: i64,
    pub collection: String,
    /// `YYYY-MM-DD` or `unknown-date`: the folder it packs.
    pub date: String,
    /// `<date>.tar` or `<date>.<n>.tar`, in the collection folder.
    pub tar_name: String,
    pub state: PackingState,
    /// Distinct files in the tar (once written).
    pub members: u64,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
}

/// One file a packing holds: a distinct path among its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFile {
    pub path: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub captured_at: Option<i64>,
    /// Every done row (of any job) archived at this path.
    pub row_ids: Vec<i64>,
}

/// One done row as `verify` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCopy {
    pub row_id: i64,
    pub job_id: i64,
    pub image_id: String,
    pub collection: String,
    pub path: String,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
}

pub(super) const PACKING_COLUMNS: &str =
    "id, collection, date, tar_name, state, members, bytes, sha256";

fn packing_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Packing> {
    packing_from_fields(
        row.try_get("id")?,
        row.try_get("collection")?,
        row.try_get("date")?,
        row.try_get("tar_name")?,
        row.try_get("state")?,
        row.try_get("members")?,
        row.try_get("bytes")?,
        row.try_get("sha256")?,
    )
}

/// A packing from its stored columns ([`PACKING_COLUMNS`], in order),
/// whichever database they came from.
#[allow(clippy::too_many_arguments)]
pub(super) fn packing_from_fields(
    id: i64,
    collection: String,
    date: String,
    tar_name: String,
    state: String,
    members: i64,
    bytes: Option<i64>,
    sha256: Option<String>,
) -> StoreResult<Packing> {
    Ok(Packing {
        id,
        collection,
        date,
        tar_name,
        state: state
            .parse()
            .map_err(|e| StoreError::Invalid(format!("packing {id}: {e}")))?,
        members: super::to_u64(members),
        bytes: bytes.map(super::to_u64),
        sha256,
    })
}

fn copy_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<StoredCopy> {
    copy_from_fields(
        row.try_get("rowid")?,
        row.try_get("job_id")?,
        row.try_get("image_id")?,
        row.try_get("collection")?,
        row.try_get("path")?,
        row.try_get("bytes")?,
        row.try_get("sha256")?,
    )
}

/// A done row from its stored columns (`rowid, job_id, image_id,
/// collection, path, bytes, sha256`), whichever database they came from.
pub(super) fn copy_from_fields(
    row_id: i64,
    job_id: i64,
    image_id: String,
    collection: Option<String>,
    path: Option<String>,
    bytes: Option<i64>,
    sha256: Option<String>,
) -> StoreResult<StoredCopy> {
    Ok(StoredCopy {
        row_id,
        job_id,
        image_id,
        collection: collection
            .ok_or_else(|| StoreError::Invalid(format!("image row {row_id} has no collection")))?,
        path: path.ok_or_else(|| {
            StoreError::Invalid(format!("image row {row_id} is done without a path"))
        })?,
        bytes: bytes.map(super::to_u64),
        sha256,
    })
}

/// An archived copy from its stored columns, whichever database they came
/// from: a missing size reads as 0, `packing_id` only for a written tar.
pub(super) fn archived_from_fields(
    path: String,
    bytes: Option<i64>,
    sha256: Option<String>,
    kept_jpeg: bool,
    packing_id: Option<i64>,
) -> ArchivedFile {
    ArchivedFile {
        path: PathBuf::from(path),
        bytes: super::to_u64(bytes.unwrap_or(0)),
        sha256,
        kept_jpeg,
        packing_id,
    }
}

/// One packed file from its grouped columns, whichever database they came
/// from.
pub(super) fn packed_file_from_fields(
    path: String,
    bytes: Option<i64>,
    sha256: Option<String>,
    captured_at: Option<i64>,
    row_ids: Vec<i64>,
) -> PackedFile {
    PackedFile {
        path,
        bytes: bytes.map(super::to_u64),
        sha256,
        captured_at,
        row_ids,
    }
}

/// `[1,2,3]` for `json_each`.
fn ids_json(ids: &[i64]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

impl Store {
    /// An archived copy of `image_id` in `collection`, made by any job: a
    /// packed one first (with its `packing_id`), else a loose one. The caller
    /// adopts a packed copy as is; a loose one only if its file is there.
    pub async fn archived_copy(
        &self,
        collection: &str,
        image_id: &str,
    ) -> StoreResult<Option<ArchivedFile>> {
        on_postgres!(self.archived_copy(collection, image_id));
        let row = sqlx::query(
            "SELECT c.path, c.bytes, c.sha256, c.kept_jpeg, \
                    CASE WHEN p.state IN ('written', 'cleaned') THEN p.id END AS packed \
             FROM images c INDEXED BY images_copies LEFT JOIN packings p ON p.id = c.packing_id \
             WHERE c.collection = ? AND c.image_id = ? AND c.state = 'done' AND c.path IS NOT NULL \
             ORDER BY packed IS NULL, c.rowid LIMIT 1",
        )
        .bind(collection)
        .bind(image_id)
        .fetch_optional(self.reader()?)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(archived_from_fields(
            row.try_get("path")?,
            row.try_get("bytes")?,
            row.try_get("sha256")?,
            row.try_get("kept_jpeg")?,
            row.try_get("packed")?,
        )))
    }

    /// Gives each claimed image the copy another job packed into a tar of
    /// its collection, if any: one query per claim (none at all while no tar
    /// exists), so workers need no lookup of their own.
    pub(super) async fn attach_packed_copies(
        &self,
        claimed: &mut [ClaimedImage],
    ) -> StoreResult<()> {
        on_postgres!(self.attach_packed_copies(claimed));
        if claimed.is_empty() {
            return Ok(());
        }
        let any_tar: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM packings WHERE state <> 'planned')")
                .fetch_one(self.reader()?)
                .await?;
        if !any_tar {
            return Ok(());
        }
        let wanted: Vec<serde_json::Value> = claimed
            .iter()
            .map(|c| serde_json::json!([c.collection, c.image_id]))
            .collect();
        let rows = sqlx::query(
            "SELECT c.collection, c.image_id, c.path, c.bytes, c.sha256, c.kept_jpeg, p.id AS packed \
             FROM json_each(?) w \
             JOIN images c INDEXED BY images_copies \
               ON c.collection = w.value ->> 0 AND c.image_id = w.value ->> 1 AND c.state = 'done' \
             JOIN packings p ON p.id = c.packing_id AND p.state IN ('written', 'cleaned')",
        )
        .bind(serde_json::Value::from(wanted).to_string())
        .fetch_all(self.reader()?)
        .await?;
        for row in rows {
            let collection: String = row.try_get("collection")?;
            let image_id: String = row.try_get("image_id")?;
            let Some(path) = row.try_get::<Option<String>, _>("path")? else {
                continue;
            };
            let copy = archived_from_fields(
                path,
                row.try_get("bytes")?,
                row.try_get("sha256")?,
                row.try_get("kept_jpeg")?,
                row.try_get("packed")?,
            );
            for image in claimed
                .iter_mut()
                .filter(|c| c.collection == collection && c.image_id == image_id)
            {
                image.packed_copy = Some(copy.clone());
            }
        }
        Ok(())
    }

    /// A collection's packings not yet `cleaned`, oldest first: what a crash
    /// interrupted.
    pub async fn unfinished_packings(&self, collection: &str) -> StoreResult<Vec<Packing>> {
        on_postgres!(self.unfinished_packings(collection));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PACKING_COLUMNS} FROM packings \
             WHERE collection = ? AND state <> 'cleaned' ORDER BY id"
        )))
        .bind(collection)
        .fetch_all(self.reader()?)
        .await?;
        rows.iter().map(packing_from_row).collect()
    }

    /// One packing by id.
    pub async fn packing(&self, id: i64) -> StoreResult<Option<Packing>> {
        on_postgres!(self.packing(id));
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PACKING_COLUMNS} FROM packings WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(self.reader()?)
        .await?;
        row.as_ref().map(packing_from_row).transpose()
    }

    /// Every packing of a collection, in order of creation.
    pub async fn packings(&self, collection: &str) -> StoreResult<Vec<Packing>> {
        on_postgres!(self.packings(collection));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PACKING_COLUMNS} FROM packings WHERE collection = ? ORDER BY id"
        )))
        .bind(collection)
        .fetch_all(self.reader()?)
        .await?;
        rows.iter().map(packing_from_row).collect()
    }

    /// The first loose path (in path order) of a collection's done images
    /// that no packing holds yet: its date folder is the next to pack.
    pub async fn first_unpacked_path(&self, collection: &str) -> StoreResult<Option<String>> {
        on_postgres!(self.first_unpacked_path(collection));
        Ok(sqlx::query_scalar(
            "SELECT path FROM images INDEXED BY images_to_pack \
             WHERE collection = ? AND state = 'done' AND packing_id IS NULL AND path IS NOT NULL \
             ORDER BY path LIMIT 1",
        )
        .bind(collection)
        .fetch_optional(self.reader()?)
        .await?)
    }

    /// Tar names a collection's packings already use.
    pub async fn tar_names(&self, collection: &str) -> StoreResult<Vec<String>> {
        on_postgres!(self.tar_names(collection));
        Ok(
            sqlx::query_scalar("SELECT tar_name FROM packings WHERE collection = ? ORDER BY id")
                .bind(collection)
                .fetch_all(self.reader()?)
                .await?,
        )
    }

    /// Plans one tar: every done, unpacked image of `task`'s collection whose
    /// loose path lies under `folder` (the date folder, no trailing `/`) joins
    /// a new `planned` packing named `tar_name`, in one transaction. `None`
    /// when there was nothing to pack. Refused once `task` is lost, as are
    /// every packing write below.
    pub async fn plan_packing(
        &self,
        task: &CollectionTask,
        date: &str,
        folder: &str,
        tar_name: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Packing>> {
        on_postgres!(self.plan_packing(task, date, folder, tar_name, now_ms));
        let collection: &str = &task.collection;
        let mut tx = self.writer()?.begin().await?;
        check_sqlite(&mut tx, task).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO packings (collection, date, tar_name, state, created_at) \
             VALUES (?, ?, ?, 'planned', ?) RETURNING id",
        )
        .bind(collection)
        .bind(date)
        .bind(tar_name)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?;
        // '/' + 1 is '0': the range is exactly the paths under `folder/`.
        let joined = sqlx::query(
            "UPDATE images INDEXED BY images_to_pack SET packing_id = ?1 \
             WHERE collection = ?2 AND state = 'done' AND packing_id IS NULL \
               AND path >= ?3 || '/' AND path < ?3 || '0'",
        )
        .bind(id)
        .bind(collection)
        .bind(folder)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if joined == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE packings SET members = \
               (SELECT count(DISTINCT path) FROM images WHERE packing_id = ?1) \
             WHERE id = ?1 RETURNING {PACKING_COLUMNS}"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        packing_from_row(&row).map(Some)
    }

    /// The files of a packing in tar order (by path), a page at a time: pass
    /// the last path returned as `after`.
    pub async fn packed_files(
        &self,
        packing_id: i64,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<PackedFile>> {
        on_postgres!(self.packed_files(packing_id, after, limit));
        let rows = sqlx::query(
            "SELECT path, max(bytes) AS bytes, max(sha256) AS sha256, max(captured_at) AS captured_at, \
                    group_concat(rowid) AS row_ids \
             FROM images INDEXED BY images_in_packing \
             WHERE packing_id = ?1 AND path > ?2 AND state = 'done' \
             GROUP BY path ORDER BY path LIMIT ?3",
        )
        .bind(packing_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.iter()
            .map(|row| {
                let ids: String = row.try_get("row_ids")?;
                Ok(packed_file_from_fields(
                    row.try_get("path")?,
                    row.try_get("bytes")?,
                    row.try_get("sha256")?,
                    row.try_get("captured_at")?,
                    ids.split(',')
                        .map(|id| id.parse::<i64>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| StoreError::Invalid(format!("packing {packing_id}: {e}")))?,
                ))
            })
            .collect()
    }

    /// Sum of a packing's file sizes: the room its tar needs.
    pub async fn packing_size(&self, packing_id: i64) -> StoreResult<u64> {
        on_postgres!(self.packing_size(packing_id));
        let bytes: i64 = sqlx::query_scalar(
            "SELECT ifnull(sum(bytes), 0) FROM (SELECT max(bytes) AS bytes FROM images \
             INDEXED BY images_in_packing WHERE packing_id = ? AND state = 'done' GROUP BY path)",
        )
        .bind(packing_id)
        .fetch_one(self.reader()?)
        .await?;
        Ok(super::to_u64(bytes))
    }

    /// The tar is durable: record its size and hash, give rows without a
    /// checksum the one packing computed, let go of (and re-queue) the rows
    /// whose loose file was missing or did not match, and bring in rows of
    /// other jobs that archived a member path meanwhile. One transaction.
    pub async fn mark_packing_written(
        &self,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        on_postgres!(self.mark_packing_written(task, packing, written, now_ms));
        // The next step deletes the loose files, so this commit must survive
        // a power loss, not only a process crash: under the default
        // `synchronous=NORMAL` it could roll back, the packing would be
        // `planned` again with its files gone, and the rewrite would replace
        // the full tar with an empty one. FULL fsyncs the WAL at this commit
        // (and with it every earlier one); then the setting goes back.
        let mut conn = self.writer()?.acquire().await?;
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        let committed = self
            .commit_packing_written(&mut conn, task, packing, written, now_ms)
            .await;
        let restore = match synchronous {
            0 => "PRAGMA synchronous = OFF",
            2 => "PRAGMA synchronous = FULL",
            3 => "PRAGMA synchronous = EXTRA",
            _ => "PRAGMA synchronous = NORMAL",
        };
        let restored = sqlx::query(restore).execute(&mut *conn).await;
        committed?;
        restored?;
        Ok(())
    }

    /// Drops a `planned` packing whose tar came out empty (every loose file
    /// it planned was gone or damaged): its rows go back to the queue with
    /// their reasons, and the packing row goes, so the date's next tar takes
    /// the name this one would have had.
    pub async fn abandon_empty_packing(
        &self,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        on_postgres!(self.abandon_empty_packing(task, packing, written, now_ms));
        let mut tx = self.writer()?.begin().await?;
        check_sqlite(&mut tx, task).await?;
        for (row_ids, reason) in &written.dropped {
            requeue_in(&mut tx, row_ids, reason, now_ms).await?;
        }
        sqlx::query(
            "DELETE FROM packings WHERE id = ?1 AND state = 'planned' \
               AND NOT EXISTS (SELECT 1 FROM images INDEXED BY images_in_packing WHERE packing_id = ?1)",
        )
        .bind(packing.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn commit_packing_written(
        &self,
        conn: &mut sqlx::SqliteConnection,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        use sqlx::Connection;
        let mut tx = conn.begin().await?;
        check_sqlite(&mut tx, task).await?;
        for (row_ids, sha256) in &written.hashed {
            sqlx::query(
                "UPDATE images SET sha256 = ? WHERE rowid IN (SELECT value FROM json_each(?)) \
                 AND sha256 IS NULL",
            )
            .bind(sha256)
            .bind(ids_json(row_ids))
            .execute(&mut *tx)
            .await?;
        }
        for (row_ids, reason) in &written.dropped {
            requeue_in(&mut tx, row_ids, reason, now_ms).await?;
        }
        attach_copies(&mut tx, packing).await?;
        sqlx::query(
            "UPDATE packings SET state = 'written', members = ?, bytes = ?, sha256 = ? WHERE id = ?",
        )
        .bind(i64::try_from(written.members).unwrap_or(i64::MAX))
        .bind(i64::try_from(written.bytes).unwrap_or(i64::MAX))
        .bind(&written.sha256)
        .bind(packing.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The loose files are gone: the packing is finished.
    pub async fn mark_packing_cleaned(
        &self,
        task: &CollectionTask,
        packing: &Packing,
    ) -> StoreResult<()> {
        on_postgres!(self.mark_packing_cleaned(task, packing));
        let mut tx = self.writer()?.begin().await?;
        check_sqlite(&mut tx, task).await?;
        attach_copies(&mut tx, packing).await?;
        sqlx::query("UPDATE packings SET state = 'cleaned' WHERE id = ?")
            .bind(packing.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Done rows that share row `row_id`'s copy (same collection, image,
    /// path and packing: one loose file or one tar member), with whether
    /// each one's job was cancelled.
    pub async fn copy_sharers(&self, row_id: i64) -> StoreResult<Vec<(i64, bool)>> {
        on_postgres!(self.copy_sharers(row_id));
        let rows = sqlx::query(
            "SELECT s.rowid AS row_id, j.state = 'cancelled' AS cancelled \
             FROM images r \
             JOIN images s INDEXED BY images_copies \
               ON s.collection = r.collection AND s.image_id = r.image_id AND s.state = 'done' \
             JOIN jobs j ON j.id = s.job_id \
             WHERE r.rowid = ?1 AND s.path = r.path AND s.packing_id IS r.packing_id",
        )
        .bind(row_id)
        .fetch_all(self.writer()?)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("row_id")?, row.try_get("cancelled")?)))
            .collect()
    }

    /// Sends done images back to the queue to be archived again (their copy
    /// is missing or corrupt), and reopens their finished jobs so a daemon,
    /// or the next `download`, fetches them. Every row sharing the copy must
    /// go together: one left `done` would hand the damaged copy back to the
    /// others as theirs. `reason` becomes their `last_error`. Returns how
    /// many rows changed.
    pub async fn requeue_images(
        &self,
        row_ids: &[i64],
        reason: &str,
        now_ms: i64,
    ) -> StoreResult<u64> {
        on_postgres!(self.requeue_images(row_ids, reason, now_ms));
        let mut tx = self.writer()?.begin().await?;
        let changed = requeue_in(&mut tx, row_ids, reason, now_ms).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Stores the checksum `verify` computed for a file archived before
    /// checksums existed. Never overwrites one.
    pub async fn record_checksum(&self, row_id: i64, sha256: &str, bytes: u64) -> StoreResult<()> {
        on_postgres!(self.record_checksum(row_id, sha256, bytes));
        sqlx::query(
            "UPDATE images SET sha256 = ?, bytes = ifnull(bytes, ?) \
             WHERE rowid = ? AND state = 'done' AND sha256 IS NULL",
        )
        .bind(sha256)
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .bind(row_id)
        .execute(self.writer()?)
        .await?;
        Ok(())
    }

    /// Done rows whose file is loose (no packing, or one still `planned`),
    /// of one job or all, by row id: pass the last `row_id` as `after`.
    pub async fn loose_copies(
        &self,
        job_id: Option<i64>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredCopy>> {
        on_postgres!(self.loose_copies(job_id, after, limit));
        let rows = sqlx::query(
            "SELECT rowid, job_id, image_id, collection, path, bytes, sha256 FROM images \
             WHERE rowid > ?1 AND state = 'done' AND (?2 IS NULL OR job_id = ?2) \
               AND (packing_id IS NULL OR packing_id IN (SELECT id FROM packings WHERE state = 'planned')) \
             ORDER BY rowid LIMIT ?3",
        )
        .bind(after)
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.iter().map(copy_from_row).collect()
    }

    /// Whether row `row_id` is still done at the loose file `path` (not yet
    /// in a written tar): what [`Store::loose_copies`] said a moment ago.
    pub async fn is_still_loose(&self, row_id: i64, path: &str) -> StoreResult<bool> {
        on_postgres!(self.is_still_loose(row_id, path));
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM images WHERE rowid = ?1 AND state = 'done' AND path = ?2 \
               AND (packing_id IS NULL OR packing_id IN (SELECT id FROM packings WHERE state = 'planned'))",
        )
        .bind(row_id)
        .bind(path)
        .fetch_optional(self.reader()?)
        .await?;
        Ok(found.is_some())
    }

    /// Packings whose tar holds images (of one job, or of any).
    pub async fn written_packings(&self, job_id: Option<i64>) -> StoreResult<Vec<Packing>> {
        on_postgres!(self.written_packings(job_id));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PACKING_COLUMNS} FROM packings p WHERE state IN ('written', 'cleaned') \
               AND (?1 IS NULL OR EXISTS (SELECT 1 FROM images i INDEXED BY images_in_packing \
                    WHERE i.packing_id = p.id AND i.job_id = ?1 AND i.state = 'done')) \
             ORDER BY collection, id"
        )))
        .bind(job_id)
        .fetch_all(self.reader()?)
        .await?;
        rows.iter().map(packing_from_row).collect()
    }

    /// The done rows a packing holds (of one job, or of any).
    pub async fn packing_rows(
        &self,
        packing_id: i64,
        job_id: Option<i64>,
    ) -> StoreResult<Vec<StoredCopy>> {
        on_postgres!(self.packing_rows(packing_id, job_id));
        let rows = sqlx::query(
            "SELECT rowid, job_id, image_id, collection, path, bytes, sha256 \
             FROM images INDEXED BY images_in_packing \
             WHERE packing_id = ?1 AND state = 'done' AND (?2 IS NULL OR job_id = ?2) \
             ORDER BY path, rowid",
        )
        .bind(packing_id)
        .bind(job_id)
        .fetch_all(self.reader()?)
        .await?;
        rows.iter().map(copy_from_row).collect()
    }

    /// How many done rows there are (of one job, or of all): `verify`'s total.
    pub async fn done_rows(&self, job_id: Option<i64>) -> StoreResult<u64> {
        on_postgres!(self.done_rows(job_id));
        let count: i64 = match job_id {
            Some(id) => sqlx::query_scalar("SELECT n_done FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(self.reader()?)
                .await?
                .ok_or(StoreError::NoSuchJob(id))?,
            None => {
                sqlx::query_scalar("SELECT ifnull(sum(n_done), 0) FROM jobs")
                    .fetch_one(self.reader()?)
                    .await?
            }
        };
        Ok(super::to_u64(count))
    }

    /// Whether any tar was ever planned for `collection`: its item files are
    /// then the packed kind (`metadata.jsonl.gz`, thumbnail, `.meta/`).
    pub async fn is_packed_collection(&self, collection: &str) -> StoreResult<bool> {
        on_postgres!(self.is_packed_collection(collection));
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM packings WHERE collection = ?)")
                .bind(collection)
                .fetch_one(self.reader()?)
                .await?,
        )
    }

    /// What a packed collection's `.meta/` says about it: distinct images
    /// and the first and last capture times (Unix ms).
    pub async fn collection_summary(
        &self,
        collection: &str,
    ) -> StoreResult<(u64, Option<i64>, Option<i64>)> {
        on_postgres!(self.collection_summary(collection));
        let (count, first, last): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(DISTINCT image_id), min(captured_at), max(captured_at) \
             FROM images INDEXED BY images_in_collection WHERE collection = ? AND state = 'done'",
        )
        .bind(collection)
        .fetch_one(self.reader()?)
        .await?;
        Ok((super::to_u64(count), first, last))
    }
}

/// What writing a packing's tar produced, for [`Store::mark_packing_written`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarWritten {
    pub members: u64,
    pub bytes: u64,
    pub sha256: String,
    /// Rows that had no checksum, and the one their member got.
    pub hashed: Vec<(Vec<i64>, String)>,
    /// Rows left out of the tar (missing or mismatched loose file), and why.
    pub dropped: Vec<(Vec<i64>, String)>,
}

/// Done rows of other jobs archived meanwhile at a member's path join the
/// packing: their loose file is the member.
async fn attach_copies(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    packing: &Packing,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE images INDEXED BY images_to_pack SET packing_id = ?1 \
         WHERE collection = ?2 AND state = 'done' AND packing_id IS NULL \
           AND path IN (SELECT path FROM images INDEXED BY images_in_packing WHERE packing_id = ?1)",
    )
    .bind(packing.id)
    .bind(&packing.collection)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn requeue_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    row_ids: &[i64],
    reason: &str,
    now_ms: i64,
) -> StoreResult<u64> {
    let ids = ids_json(row_ids);
    let changed = sqlx::query(
        "UPDATE images SET state = 'pending', attempts = 0, deferrals = 0, run_at = ?1, \
         path = NULL, bytes = NULL, sha256 = NULL, kept_jpeg = 0, packing_id = NULL, \
         last_error = ?2, fail_reason = NULL, updated_at = ?1 \
         WHERE rowid IN (SELECT value FROM json_each(?3)) AND state = 'done'",
    )
    .bind(now_ms)
    .bind(reason)
    .bind(&ids)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE jobs SET state = CASE WHEN enumeration_complete = 1 \
             THEN 'downloading' ELSE 'enumerating' END, \
             progress_at = ?1, stalled_at = NULL, updated_at = ?1 \
         WHERE state IN ('done', 'failed') \
           AND id IN (SELECT job_id FROM images WHERE rowid IN (SELECT value FROM json_each(?2)))",
    )
    .bind(now_ms)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(changed)
}
