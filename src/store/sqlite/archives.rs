//! Packings, adoptable copies and `verify`'s rows on SQLite.

use super::SqliteStore;
use crate::archive::ArchivedFile;
use crate::store::archives::*;
use crate::store::interface::*;
use crate::store::sql;
use crate::store::*;
use sqlx::Row;

impl Archives for SqliteStore {
    crate::store::shared::shared_archives!();

    async fn archived_copy(
        &self,
        collection: &str,
        image_id: &str,
    ) -> StoreResult<Option<ArchivedFile>> {
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

    async fn first_unpacked_path(&self, collection: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT path FROM images INDEXED BY images_to_pack \
             WHERE collection = ? AND state = 'done' AND packing_id IS NULL AND path IS NOT NULL \
             ORDER BY path LIMIT 1",
        )
        .bind(collection)
        .fetch_optional(self.reader()?)
        .await?)
    }

    async fn plan_packing(
        &self,
        task: &CollectionTask,
        date: &str,
        folder: &str,
        tar_name: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Packing>> {
        let collection: &str = &task.collection;
        let mut tx = self.writer()?.begin().await?;
        super::task_lease::check(&mut tx, task).await?;
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
        let row = sqlx::query(sql::COUNT_MEMBERS)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        packing_from_row(&row).map(Some)
    }

    async fn packed_files(
        &self,
        packing_id: i64,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<PackedFile>> {
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

    async fn packing_size(&self, packing_id: i64) -> StoreResult<u64> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT ifnull(sum(bytes), 0) FROM (SELECT max(bytes) AS bytes FROM images \
             INDEXED BY images_in_packing WHERE packing_id = ? AND state = 'done' GROUP BY path)",
        )
        .bind(packing_id)
        .fetch_one(self.reader()?)
        .await?;
        Ok(to_u64(bytes))
    }

    async fn mark_packing_written(
        &self,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
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

    async fn abandon_empty_packing(
        &self,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.writer()?.begin().await?;
        super::task_lease::check(&mut tx, task).await?;
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

    async fn mark_packing_cleaned(
        &self,
        task: &CollectionTask,
        packing: &Packing,
    ) -> StoreResult<()> {
        let mut tx = self.writer()?.begin().await?;
        super::task_lease::check(&mut tx, task).await?;
        attach_copies(&mut tx, packing).await?;
        sqlx::query("UPDATE packings SET state = 'cleaned' WHERE id = ?")
            .bind(packing.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn copy_sharers(&self, row_id: i64) -> StoreResult<Vec<(i64, bool)>> {
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

    async fn requeue_images(&self, row_ids: &[i64], reason: &str, now_ms: i64) -> StoreResult<u64> {
        let mut tx = self.writer()?.begin().await?;
        let changed = requeue_in(&mut tx, row_ids, reason, now_ms).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn record_checksum(&self, row_id: i64, sha256: &str, bytes: u64) -> StoreResult<()> {
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

    async fn loose_copies(
        &self,
        job_id: Option<i64>,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredCopy>> {
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

    async fn is_still_loose(&self, row_id: i64, path: &str) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(sql::IS_STILL_LOOSE)
            .bind(row_id)
            .bind(path)
            .fetch_optional(self.reader()?)
            .await?;
        Ok(found.is_some())
    }

    async fn written_packings(&self, job_id: Option<i64>) -> StoreResult<Vec<Packing>> {
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

    async fn packing_rows(
        &self,
        packing_id: i64,
        job_id: Option<i64>,
    ) -> StoreResult<Vec<StoredCopy>> {
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

    async fn done_rows(&self, job_id: Option<i64>) -> StoreResult<u64> {
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
        Ok(to_u64(count))
    }

    async fn collection_summary(
        &self,
        collection: &str,
    ) -> StoreResult<(u64, Option<i64>, Option<i64>)> {
        let (count, first, last): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(DISTINCT image_id), min(captured_at), max(captured_at) \
             FROM images INDEXED BY images_in_collection WHERE collection = ? AND state = 'done'",
        )
        .bind(collection)
        .fetch_one(self.reader()?)
        .await?;
        Ok((to_u64(count), first, last))
    }
}

impl SqliteStore {
    /// Gives each claimed image the copy another job packed into a tar of
    /// its collection, if any: one query per claim (none at all while no tar
    /// exists), so workers need no lookup of their own.
    pub(super) async fn attach_packed_copies(
        &self,
        claimed: &mut [ClaimedImage],
    ) -> StoreResult<()> {
        if claimed.is_empty() {
            return Ok(());
        }
        let any_tar: bool = sqlx::query_scalar(sql::ANY_TAR)
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
        super::task_lease::check(&mut tx, task).await?;
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
}

fn packing_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Packing> {
    <PackingRow as sqlx::FromRow<_>>::from_row(row)?.into_packing()
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

/// `[1,2,3]` for `json_each`.
fn ids_json(ids: &[i64]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
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
