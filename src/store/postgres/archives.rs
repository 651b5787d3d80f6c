//! The [`crate::store::interface::Archives`] half on PostgreSQL.
//!
//! What differs, and why:
//! - Paths are compared and ordered `COLLATE "C"` (byte order, as SQLite's
//!   `BINARY`), whatever the database's collation: tar order, `after`
//!   paging and the date-folder range depend on it.
//! - Several daemons may pack the same collection at once. Planning holds
//!   `pg_advisory_xact_lock(hashtext(collection))`; every state move of a
//!   packing is a conditional update of its row (which locks it), and does
//!   nothing when another daemon moved it first.
//! - `json_each` over id lists is `= ANY($n::BIGINT[])` with a `Vec<i64>`.

use super::PgStore;
use crate::archive::ArchivedFile;
use crate::store::CollectionTask;
use crate::store::archives::{
    PACKING_COLUMNS, PackingRow, archived_from_fields, copy_from_fields, packed_file_from_fields,
};
use crate::store::interface::*;
use crate::store::sql;
use crate::store::{
    ClaimedImage, PackedFile, Packing, StoreError, StoreResult, StoredCopy, TarWritten, to_u64,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

fn packing_from_row(row: &PgRow) -> StoreResult<Packing> {
    <PackingRow as sqlx::FromRow<_>>::from_row(row)?.into_packing()
}

fn copy_from_row(row: &PgRow) -> StoreResult<StoredCopy> {
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

fn archived_from_row(row: &PgRow, path: String) -> StoreResult<ArchivedFile> {
    Ok(archived_from_fields(
        path,
        row.try_get("bytes")?,
        row.try_get("sha256")?,
        row.try_get("kept_jpeg")?,
        row.try_get("packed")?,
    ))
}

impl Archives for PgStore {
    crate::store::shared::shared_archives!();
    async fn archived_copy(
        &self,
        collection: &str,
        image_id: &str,
    ) -> StoreResult<Option<ArchivedFile>> {
        // PostgreSQL cannot name an output column inside an ORDER BY
        // expression: the CASE is spelt out again.
        let row = sqlx::query(
            "SELECT c.path, c.bytes, c.sha256, c.kept_jpeg, \
                    CASE WHEN p.state IN ('written', 'cleaned') THEN p.id END AS packed \
             FROM images c LEFT JOIN packings p ON p.id = c.packing_id \
             WHERE c.collection = $1 AND c.image_id = $2 AND c.state = 'done' AND c.path IS NOT NULL \
             ORDER BY (CASE WHEN p.state IN ('written', 'cleaned') THEN p.id END) IS NULL, c.rowid \
             LIMIT 1",
        )
        .bind(collection)
        .bind(image_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let path: String = row.try_get("path")?;
        archived_from_row(&row, path).map(Some)
    }
    /// PostgreSQL: path order is byte order.
    async fn first_unpacked_path(&self, collection: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT path FROM images \
             WHERE collection = $1 AND state = 'done' AND packing_id IS NULL AND path IS NOT NULL \
             ORDER BY path COLLATE \"C\" LIMIT 1",
        )
        .bind(collection)
        .fetch_optional(self.pool())
        .await?)
    }

    /// PostgreSQL: Daemons planning the same collection at once
    /// take turns; the later one finds the folder's images already planned
    /// and returns `None` without inserting a packing.
    async fn plan_packing(
        &self,
        task: &CollectionTask,
        date: &str,
        folder: &str,
        tar_name: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Packing>> {
        let collection: &str = &task.collection;
        let mut tx = self.pool().begin().await?;
        super::task_lease::check(&mut tx, task).await?;
        // One planner per collection at a time, until this commits: a second
        // daemon then sees the images joined (`packing_id` set) and the tar
        // name taken, so it can neither plan the same images again nor
        // fail on the name. (The UPDATE below alone would not plan a row
        // twice either: it re-checks `packing_id IS NULL` after waiting.)
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(collection)
            .execute(&mut *tx)
            .await?;
        // '/' + 1 is '0': in byte order the range is exactly the paths under
        // `folder/`.
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM images \
               WHERE collection = $1 AND state = 'done' AND packing_id IS NULL \
                 AND path COLLATE \"C\" >= $2 || '/' AND path COLLATE \"C\" < $2 || '0')",
        )
        .bind(collection)
        .bind(folder)
        .fetch_one(&mut *tx)
        .await?;
        if !any {
            tx.rollback().await?;
            return Ok(None);
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO packings (collection, date, tar_name, state, created_at) \
             VALUES ($1, $2, $3, 'planned', coalesce($4::BIGINT, mld_now_ms())) RETURNING id",
        )
        .bind(collection)
        .bind(date)
        .bind(tar_name)
        .bind(self.at(now_ms))
        .fetch_one(&mut *tx)
        .await?;
        let joined = sqlx::query(
            "UPDATE images SET packing_id = $1 \
             WHERE collection = $2 AND state = 'done' AND packing_id IS NULL \
               AND path COLLATE \"C\" >= $3 || '/' AND path COLLATE \"C\" < $3 || '0'",
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

    /// PostgreSQL: tar order is byte order.
    async fn packed_files(
        &self,
        packing_id: i64,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<PackedFile>> {
        let rows = sqlx::query(
            "SELECT path, max(bytes) AS bytes, max(sha256) AS sha256, max(captured_at) AS captured_at, \
                    array_agg(rowid ORDER BY rowid) AS row_ids \
             FROM images \
             WHERE packing_id = $1 AND path COLLATE \"C\" > $2 AND state = 'done' \
             GROUP BY path ORDER BY path COLLATE \"C\" LIMIT $3",
        )
        .bind(packing_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(packed_file_from_fields(
                    row.try_get("path")?,
                    row.try_get("bytes")?,
                    row.try_get("sha256")?,
                    row.try_get("captured_at")?,
                    row.try_get("row_ids")?,
                ))
            })
            .collect()
    }
    async fn packing_size(&self, packing_id: i64) -> StoreResult<u64> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(bytes), 0)::BIGINT FROM (SELECT max(bytes) AS bytes FROM images \
             WHERE packing_id = $1 AND state = 'done' GROUP BY path) files",
        )
        .bind(packing_id)
        .fetch_one(self.pool())
        .await?;
        Ok(to_u64(bytes))
    }

    /// PostgreSQL: Does nothing when the packing is no longer
    /// `planned` (another daemon wrote or dropped it first).
    async fn mark_packing_written(
        &self,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        // The next step deletes the loose files, so this commit must survive
        // a power loss. On SQLite that takes `synchronous=FULL` for the
        // commit; on PostgreSQL a commit is flushed to the WAL before it
        // returns under the server's default `synchronous_commit = on`.
        // `commit_packing_written` only raises the setting for its own
        // transaction if someone turned it `off`.
        self.commit_packing_written(task, packing, written, now_ms)
            .await
    }

    /// PostgreSQL: Does nothing when the packing is no longer
    /// `planned`: another daemon moved it on, and the rows this daemon
    /// found missing may be the ones that daemon already packed and cleaned.
    async fn abandon_empty_packing(
        &self,
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        super::task_lease::check(&mut tx, task).await?;
        // Locks the packing row: its state cannot move until this commits.
        let planned: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM packings WHERE id = $1 AND state = 'planned' FOR UPDATE",
        )
        .bind(packing.id)
        .fetch_optional(&mut *tx)
        .await?;
        if planned.is_none() {
            tx.rollback().await?;
            return Ok(());
        }
        for (row_ids, reason) in &written.dropped {
            requeue_in(&mut tx, row_ids, reason, self.at(now_ms)).await?;
        }
        sqlx::query(
            "DELETE FROM packings WHERE id = $1 AND state = 'planned' \
               AND NOT EXISTS (SELECT 1 FROM images WHERE packing_id = $1)",
        )
        .bind(packing.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// PostgreSQL: Moves only a `written` packing (the row lock
    /// orders it after any concurrent state move).
    async fn mark_packing_cleaned(
        &self,
        task: &CollectionTask,
        packing: &Packing,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        super::task_lease::check(&mut tx, task).await?;
        let moved = sqlx::query(
            "UPDATE packings SET state = 'cleaned' WHERE id = $1 AND state = 'written'",
        )
        .bind(packing.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(());
        }
        attach_copies(&mut tx, packing).await?;
        tx.commit().await?;
        Ok(())
    }
    async fn copy_sharers(&self, row_id: i64) -> StoreResult<Vec<(i64, bool)>> {
        let rows = sqlx::query(
            "SELECT s.rowid AS row_id, j.state = 'cancelled' AS cancelled \
             FROM images r \
             JOIN images s \
               ON s.collection = r.collection AND s.image_id = r.image_id AND s.state = 'done' \
             JOIN jobs j ON j.id = s.job_id \
             WHERE r.rowid = $1 AND s.path = r.path AND s.packing_id IS NOT DISTINCT FROM r.packing_id",
        )
        .bind(row_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("row_id")?, row.try_get("cancelled")?)))
            .collect()
    }
    async fn requeue_images(&self, row_ids: &[i64], reason: &str, now_ms: i64) -> StoreResult<u64> {
        let mut tx = self.pool().begin().await?;
        let changed = requeue_in(&mut tx, row_ids, reason, self.at(now_ms)).await?;
        tx.commit().await?;
        Ok(changed)
    }
    async fn record_checksum(&self, row_id: i64, sha256: &str, bytes: u64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE images SET sha256 = $1, bytes = coalesce(bytes, $2) \
             WHERE rowid = $3 AND state = 'done' AND sha256 IS NULL",
        )
        .bind(sha256)
        .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
        .bind(row_id)
        .execute(self.pool())
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
             WHERE rowid > $1 AND state = 'done' AND ($2::BIGINT IS NULL OR job_id = $2) \
               AND (packing_id IS NULL OR packing_id IN (SELECT id FROM packings WHERE state = 'planned')) \
             ORDER BY rowid LIMIT $3",
        )
        .bind(after)
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(copy_from_row).collect()
    }
    async fn is_still_loose(&self, row_id: i64, path: &str) -> StoreResult<bool> {
        let found: Option<i32> = sqlx::query_scalar(sql::IS_STILL_LOOSE)
            .bind(row_id)
            .bind(path)
            .fetch_optional(self.pool())
            .await?;
        Ok(found.is_some())
    }

    /// PostgreSQL: collections in byte order.
    async fn written_packings(&self, job_id: Option<i64>) -> StoreResult<Vec<Packing>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PACKING_COLUMNS} FROM packings p WHERE state IN ('written', 'cleaned') \
               AND ($1::BIGINT IS NULL OR EXISTS (SELECT 1 FROM images i \
                    WHERE i.packing_id = p.id AND i.job_id = $1 AND i.state = 'done')) \
             ORDER BY collection COLLATE \"C\", id"
        )))
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(packing_from_row).collect()
    }

    /// PostgreSQL: paths in byte order.
    async fn packing_rows(
        &self,
        packing_id: i64,
        job_id: Option<i64>,
    ) -> StoreResult<Vec<StoredCopy>> {
        let rows = sqlx::query(
            "SELECT rowid, job_id, image_id, collection, path, bytes, sha256 FROM images \
             WHERE packing_id = $1 AND state = 'done' AND ($2::BIGINT IS NULL OR job_id = $2) \
             ORDER BY path COLLATE \"C\", rowid",
        )
        .bind(packing_id)
        .bind(job_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(copy_from_row).collect()
    }

    /// PostgreSQL: counts come from `job_rows` (current counters).
    async fn done_rows(&self, job_id: Option<i64>) -> StoreResult<u64> {
        let count: i64 = match job_id {
            Some(id) => sqlx::query_scalar("SELECT n_done FROM job_rows WHERE id = $1")
                .bind(id)
                .fetch_optional(self.pool())
                .await?
                .ok_or(StoreError::NoSuchJob(id))?,
            None => {
                sqlx::query_scalar("SELECT coalesce(sum(n_done), 0)::BIGINT FROM job_rows")
                    .fetch_one(self.pool())
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
             FROM images WHERE collection = $1 AND state = 'done'",
        )
        .bind(collection)
        .fetch_one(self.pool())
        .await?;
        Ok((to_u64(count), first, last))
    }
}

impl PgStore {
    /// Gives each claimed image the copy another job packed into a tar of
    /// its collection, if any, on `conn` (the claim's transaction).
    pub(super) async fn attach_packed_copies_on(
        conn: &mut sqlx::PgConnection,
        claimed: &mut [ClaimedImage],
    ) -> StoreResult<()> {
        if claimed.is_empty() {
            return Ok(());
        }
        let any_tar: bool = sqlx::query_scalar(sql::ANY_TAR)
            .fetch_one(&mut *conn)
            .await?;
        if !any_tar {
            return Ok(());
        }
        let collections: Vec<&str> = claimed.iter().map(|c| c.collection.as_str()).collect();
        let image_ids: Vec<&str> = claimed.iter().map(|c| c.image_id.as_str()).collect();
        let rows = sqlx::query(
            "SELECT c.collection, c.image_id, c.path, c.bytes, c.sha256, c.kept_jpeg, p.id AS packed \
             FROM unnest($1::TEXT[], $2::TEXT[]) AS w(collection, image_id) \
             JOIN images c \
               ON c.collection = w.collection AND c.image_id = w.image_id AND c.state = 'done' \
             JOIN packings p ON p.id = c.packing_id AND p.state IN ('written', 'cleaned')",
        )
        .bind(&collections)
        .bind(&image_ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let collection: String = row.try_get("collection")?;
            let image_id: String = row.try_get("image_id")?;
            let Some(path) = row.try_get::<Option<String>, _>("path")? else {
                continue;
            };
            let copy = archived_from_row(&row, path)?;
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
        task: &CollectionTask,
        packing: &Packing,
        written: &TarWritten,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        super::task_lease::check(&mut tx, task).await?;
        // Durable commit even where `synchronous_commit` was set `off`
        // (`local` and stronger settings are left alone); `is_local`: for
        // this transaction only.
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'local', true) \
             WHERE current_setting('synchronous_commit') = 'off'",
        )
        .execute(&mut *tx)
        .await?;
        // The state move first: it locks the packing row, so of two daemons
        // that wrote the same tar only the first records it (the SQLite
        // twin updates the packing last; nothing below reads it).
        let moved = sqlx::query(
            "UPDATE packings SET state = 'written', members = $1, bytes = $2, sha256 = $3 \
             WHERE id = $4 AND state = 'planned'",
        )
        .bind(i64::try_from(written.members).unwrap_or(i64::MAX))
        .bind(i64::try_from(written.bytes).unwrap_or(i64::MAX))
        .bind(&written.sha256)
        .bind(packing.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(());
        }
        for (row_ids, sha256) in &written.hashed {
            sqlx::query(
                "UPDATE images SET sha256 = $1 WHERE rowid = ANY($2::BIGINT[]) AND sha256 IS NULL",
            )
            .bind(sha256)
            .bind(row_ids)
            .execute(&mut *tx)
            .await?;
        }
        for (row_ids, reason) in &written.dropped {
            requeue_in(&mut tx, row_ids, reason, self.at(now_ms)).await?;
        }
        attach_copies(&mut tx, packing).await?;
        tx.commit().await?;
        Ok(())
    }
}
async fn attach_copies(tx: &mut sqlx::PgConnection, packing: &Packing) -> StoreResult<()> {
    sqlx::query(
        "UPDATE images SET packing_id = $1 \
         WHERE collection = $2 AND state = 'done' AND packing_id IS NULL \
           AND path IN (SELECT path FROM images WHERE packing_id = $1)",
    )
    .bind(packing.id)
    .bind(&packing.collection)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// PostgreSQL: `now` is [`PgStore::at`]'s value; each statement
/// reads the clock once, so a row's `run_at` and `updated_at` agree.
async fn requeue_in(
    tx: &mut sqlx::PgConnection,
    row_ids: &[i64],
    reason: &str,
    now: Option<i64>,
) -> StoreResult<u64> {
    let changed = sqlx::query(
        "UPDATE images SET state = 'pending', attempts = 0, deferrals = 0, run_at = t.now, \
         path = NULL, bytes = NULL, sha256 = NULL, kept_jpeg = false, packing_id = NULL, \
         last_error = $2, fail_reason = NULL, updated_at = t.now \
         FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now) t \
         WHERE rowid = ANY($3::BIGINT[]) AND state = 'done'",
    )
    .bind(now)
    .bind(reason)
    .bind(row_ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE jobs SET state = CASE WHEN enumeration_complete \
             THEN 'downloading' ELSE 'enumerating' END, \
             progress_at = t.now, stalled_at = NULL, updated_at = t.now \
         FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now) t \
         WHERE state IN ('done', 'failed') \
           AND id IN (SELECT job_id FROM images WHERE rowid = ANY($2::BIGINT[]))",
    )
    .bind(now)
    .bind(row_ids)
    .execute(&mut *tx)
    .await?;
    Ok(changed)
}
