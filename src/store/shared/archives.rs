//! [`crate::store::interface::Archives`] written once for both backends
//! (the claim's packed-copy lookup aside, in each backend's `archives.rs`). Dialect holes:
//! `hint!` (SQLite's `INDEXED BY`, pinning the index each statement was
//! written for), `bytewise!` (PostgreSQL's `COLLATE "C"`: tar order, `after`
//! paging and the date-folder range are byte order, as SQLite's `BINARY`),
//! `in_list!`/`ids` (a list of row ids), `now!`.
//!
//! Every state move of a packing is conditional on the state it leaves, so
//! of two daemons moving one packing only the first does anything.

/// Reads of archived copies and of `verify`'s rows.
macro_rules! shared_archive_reads {
    () => {
        async fn archived_copy(
            &self,
            collection: &str,
            image_id: &str,
        ) -> $crate::store::StoreResult<Option<$crate::archive::ArchivedFile>> {
            use super::dialect::hint;
            // PostgreSQL cannot name an output column inside an ORDER BY
            // expression: the CASE is spelt out again.
            let row: Option<$crate::store::archives::CopyRow> = sqlx::query_as(concat!(
                "SELECT c.path, c.bytes, c.sha256, c.kept_jpeg, \
                        CASE WHEN p.state IN ('written', 'cleaned') THEN p.id END AS packed \
                 FROM images c",
                hint!("images_copies"),
                " LEFT JOIN packings p ON p.id = c.packing_id \
                 WHERE c.collection = $1 AND c.image_id = $2 AND c.state = 'done' \
                   AND c.path IS NOT NULL \
                 ORDER BY (CASE WHEN p.state IN ('written', 'cleaned') THEN p.id END) IS NULL, \
                          c.rowid LIMIT 1"
            ))
            .bind(collection)
            .bind(image_id)
            .fetch_optional(self.reader()?)
            .await?;
            Ok(row.and_then($crate::store::archives::CopyRow::into_archived))
        }

        async fn first_unpacked_path(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Option<String>> {
            use super::dialect::{bytewise, hint};
            Ok(sqlx::query_scalar(concat!(
                "SELECT path FROM images",
                hint!("images_to_pack"),
                " WHERE collection = $1 AND state = 'done' AND packing_id IS NULL \
                   AND path IS NOT NULL ORDER BY path",
                bytewise!(),
                " LIMIT 1"
            ))
            .bind(collection)
            .fetch_optional(self.reader()?)
            .await?)
        }

        async fn packed_files(
            &self,
            packing_id: i64,
            after: Option<&str>,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::PackedFile>> {
            use super::dialect::{bytewise, hint, row_ids_agg};
            type Row = (String, Option<i64>, Option<String>, Option<i64>, super::dialect::RowIds);
            let rows: Vec<Row> = sqlx::query_as(concat!(
                "SELECT path, max(bytes), max(sha256), max(captured_at), ",
                row_ids_agg!(),
                " FROM images",
                hint!("images_in_packing"),
                " WHERE packing_id = $1 AND path",
                bytewise!(),
                " > $2 AND state = 'done' GROUP BY path ORDER BY path",
                bytewise!(),
                " LIMIT $3"
            ))
            .bind(packing_id)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter()
                .map(|(path, bytes, sha256, captured_at, ids)| {
                    Ok($crate::store::PackedFile {
                        path,
                        bytes: bytes.map($crate::store::to_u64),
                        sha256,
                        captured_at,
                        row_ids: super::dialect::row_ids(ids, packing_id)?,
                    })
                })
                .collect()
        }

        async fn packing_size(&self, packing_id: i64) -> $crate::store::StoreResult<u64> {
            let bytes: i64 = sqlx::query_scalar(concat!(
                "SELECT CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM \
                 (SELECT max(bytes) AS bytes FROM images",
                super::dialect::hint!("images_in_packing"),
                " WHERE packing_id = $1 AND state = 'done' GROUP BY path) files"
            ))
            .bind(packing_id)
            .fetch_one(self.reader()?)
            .await?;
            Ok($crate::store::to_u64(bytes))
        }

        async fn collection_summary(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<(u64, Option<i64>, Option<i64>)> {
            let (count, first, last): (i64, Option<i64>, Option<i64>) = sqlx::query_as(concat!(
                "SELECT count(DISTINCT image_id), min(captured_at), max(captured_at) FROM images",
                super::dialect::hint!("images_in_collection"),
                " WHERE collection = $1 AND state = 'done'"
            ))
            .bind(collection)
            .fetch_one(self.reader()?)
            .await?;
            Ok(($crate::store::to_u64(count), first, last))
        }

        $crate::store::shared::archives::shared_verify_reads!();
    };
}
pub(in crate::store) use shared_archive_reads;

/// What `verify` reads: loose copies, written tars and their rows.
macro_rules! shared_verify_reads {
    () => {
        async fn loose_copies(
            &self,
            job_id: Option<i64>,
            after: i64,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::StoredCopy>> {
            use $crate::store::archives::StoredCopyRow;
            let rows: Vec<StoredCopyRow> = sqlx::query_as(
                "SELECT rowid, job_id, image_id, collection, path, bytes, sha256 FROM images \
                 WHERE rowid > $1 AND state = 'done' \
                   AND (CAST($2 AS BIGINT) IS NULL OR job_id = $2) \
                   AND (packing_id IS NULL \
                        OR packing_id IN (SELECT id FROM packings WHERE state = 'planned')) \
                 ORDER BY rowid LIMIT $3",
            )
            .bind(after)
            .bind(job_id)
            .bind(i64::from(limit))
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(StoredCopyRow::into_copy).collect()
        }

        async fn is_still_loose(&self, row_id: i64, path: &str) -> $crate::store::StoreResult<bool> {
            Ok(sqlx::query_scalar($crate::store::sql::IS_STILL_LOOSE)
                .bind(row_id)
                .bind(path)
                .fetch_one(self.reader()?)
                .await?)
        }

        async fn written_packings(
            &self,
            job_id: Option<i64>,
        ) -> $crate::store::StoreResult<Vec<$crate::store::Packing>> {
            use $crate::store::{archives::PackingRow, sql::packing_columns};
            let rows: Vec<PackingRow> = sqlx::query_as(concat!(
                "SELECT ",
                packing_columns!(),
                " FROM packings p WHERE state IN ('written', 'cleaned') \
                   AND (CAST($1 AS BIGINT) IS NULL OR EXISTS (SELECT 1 FROM images i",
                super::dialect::hint!("images_in_packing"),
                " WHERE i.packing_id = p.id AND i.job_id = $1 AND i.state = 'done')) \
                 ORDER BY collection",
                super::dialect::bytewise!(),
                ", id"
            ))
            .bind(job_id)
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(PackingRow::into_packing).collect()
        }

        async fn packing_rows(
            &self,
            packing_id: i64,
            job_id: Option<i64>,
        ) -> $crate::store::StoreResult<Vec<$crate::store::StoredCopy>> {
            use $crate::store::archives::StoredCopyRow;
            let rows: Vec<StoredCopyRow> = sqlx::query_as(concat!(
                "SELECT rowid, job_id, image_id, collection, path, bytes, sha256 FROM images",
                super::dialect::hint!("images_in_packing"),
                " WHERE packing_id = $1 AND state = 'done' \
                   AND (CAST($2 AS BIGINT) IS NULL OR job_id = $2) ORDER BY path",
                super::dialect::bytewise!(),
                ", rowid"
            ))
            .bind(packing_id)
            .bind(job_id)
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(StoredCopyRow::into_copy).collect()
        }

        async fn done_rows(&self, job_id: Option<i64>) -> $crate::store::StoreResult<u64> {
            use super::dialect::jobs_view;
            let count: i64 = match job_id {
                Some(id) => sqlx::query_scalar(concat!(
                    "SELECT n_done FROM ",
                    jobs_view!(),
                    " WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(self.reader()?)
                .await?
                .ok_or($crate::store::StoreError::NoSuchJob(id))?,
                None => {
                    sqlx::query_scalar(concat!(
                        "SELECT CAST(coalesce(sum(n_done), 0) AS BIGINT) FROM ",
                        jobs_view!()
                    ))
                    .fetch_one(self.reader()?)
                    .await?
                }
            };
            Ok($crate::store::to_u64(count))
        }
    };
}
pub(in crate::store) use shared_verify_reads;

/// Planning a packing and the moves that end it without a tar.
macro_rules! shared_packing_moves {
    () => {
        /// Planners of one collection take turns (a lock on SQLite's one
        /// writer, an advisory lock on PostgreSQL): the later one finds the
        /// folder's images already planned and returns `None` without
        /// inserting a packing.
        async fn plan_packing(
            &self,
            task: &$crate::store::CollectionTask,
            date: &str,
            folder: &str,
            tar_name: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Packing>> {
            let collection: &str = &task.collection;
            let mut tx = self.writer()?.begin().await?;
            super::task_lease::check(&mut tx, task).await?;
            super::dialect::lock(
                &mut tx,
                $crate::store::shared::TxLock::Collection(collection),
            )
            .await?;
            if !any_to_plan(&mut tx, collection, folder).await? {
                tx.rollback().await?;
                return Ok(None);
            }
            let id: i64 = sqlx::query_scalar(concat!(
                "INSERT INTO packings (collection, date, tar_name, state, created_at) \
                 VALUES ($1, $2, $3, 'planned', ",
                super::dialect::now!("$4"),
                ") RETURNING id"
            ))
            .bind(collection)
            .bind(date)
            .bind(tar_name)
            .bind(self.at(now_ms))
            .fetch_one(&mut *tx)
            .await?;
            join_folder(&mut tx, id, collection, folder).await?;
            let row: $crate::store::archives::PackingRow =
                sqlx::query_as($crate::store::sql::COUNT_MEMBERS)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            row.into_packing().map(Some)
        }

        /// The next step deletes the loose files, so this commit must
        /// survive a power loss, not only a process crash (see each
        /// dialect's `raise_durability`). Does nothing when the packing is no
        /// longer `planned` (another daemon wrote or dropped it first).
        async fn mark_packing_written(
            &self,
            task: &$crate::store::CollectionTask,
            packing: &$crate::store::Packing,
            written: &$crate::store::TarWritten,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            let mut conn = self.writer()?.acquire().await?;
            let before = super::dialect::raise_durability(&mut conn).await?;
            let at = self.at(now_ms);
            let committed = commit_packing_written(&mut conn, task, packing, written, at).await;
            let restored = super::dialect::restore_durability(&mut conn, before).await;
            committed?;
            restored
        }

        /// Does nothing when the packing is no longer `planned`: another
        /// daemon moved it on, and the rows this one found missing may be
        /// the ones that daemon already packed and cleaned.
        async fn abandon_empty_packing(
            &self,
            task: &$crate::store::CollectionTask,
            packing: &$crate::store::Packing,
            written: &$crate::store::TarWritten,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            let mut tx = self.writer()?.begin().await?;
            super::task_lease::check(&mut tx, task).await?;
            // Locks the packing row on PostgreSQL: its state cannot move
            // until this commits.
            let planned: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT id FROM packings WHERE id = $1 AND state = 'planned'",
                super::dialect::for_update!()
            ))
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
            sqlx::query(concat!(
                "DELETE FROM packings WHERE id = $1 AND state = 'planned' \
                   AND NOT EXISTS (SELECT 1 FROM images",
                super::dialect::hint!("images_in_packing"),
                " WHERE packing_id = $1)"
            ))
            .bind(packing.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }

        /// Moves only a `written` packing (on PostgreSQL the row lock orders
        /// it after any concurrent state move).
        async fn mark_packing_cleaned(
            &self,
            task: &$crate::store::CollectionTask,
            packing: &$crate::store::Packing,
        ) -> $crate::store::StoreResult<()> {
            let mut tx = self.writer()?.begin().await?;
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

        $crate::store::shared::archives::shared_repairs!();
    };
}
pub(in crate::store) use shared_packing_moves;

/// `verify --repair`'s writes.
macro_rules! shared_repairs {
    () => {
        async fn copy_sharers(&self, row_id: i64) -> $crate::store::StoreResult<Vec<(i64, bool)>> {
            Ok(sqlx::query_as(concat!(
                "SELECT s.rowid AS row_id, j.state = 'cancelled' AS cancelled \
                 FROM images r JOIN images s",
                super::dialect::hint!("images_copies"),
                " ON s.collection = r.collection AND s.image_id = r.image_id \
                   AND s.state = 'done' \
                 JOIN jobs j ON j.id = s.job_id \
                 WHERE r.rowid = $1 AND s.path = r.path \
                   AND s.packing_id IS NOT DISTINCT FROM r.packing_id"
            ))
            .bind(row_id)
            .fetch_all(self.writer()?)
            .await?)
        }

        async fn requeue_images(
            &self,
            row_ids: &[i64],
            reason: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<u64> {
            let mut tx = self.writer()?.begin().await?;
            let changed = requeue_in(&mut tx, row_ids, reason, self.at(now_ms)).await?;
            tx.commit().await?;
            Ok(changed)
        }

        async fn record_checksum(
            &self,
            row_id: i64,
            sha256: &str,
            bytes: u64,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "UPDATE images SET sha256 = $1, bytes = coalesce(bytes, $2) \
                 WHERE rowid = $3 AND state = 'done' AND sha256 IS NULL",
            )
            .bind(sha256)
            .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
            .bind(row_id)
            .execute(self.writer()?)
            .await?;
            Ok(())
        }
    };
}
pub(in crate::store) use shared_repairs;

/// The statements the `Archives` bodies run inside a transaction, as free
/// functions on the backend's connection; expanded once at the top of each
/// backend's `archives.rs`.
macro_rules! shared_archive_statements {
    () => {
        /// Whether done rows under `folder/` wait for a packing. '/' + 1 is
        /// '0': in byte order the range is exactly the paths under `folder/`.
        async fn any_to_plan(
            tx: &mut super::dialect::Conn,
            collection: &str,
            folder: &str,
        ) -> $crate::store::StoreResult<bool> {
            use super::dialect::{bytewise, hint};
            Ok(sqlx::query_scalar(concat!(
                "SELECT EXISTS (SELECT 1 FROM images",
                hint!("images_to_pack"),
                " WHERE collection = $1 AND state = 'done' AND packing_id IS NULL AND path",
                bytewise!(),
                " >= $2 || '/' AND path",
                bytewise!(),
                " < $2 || '0')"
            ))
            .bind(collection)
            .bind(folder)
            .fetch_one(&mut *tx)
            .await?)
        }

        /// The done rows under `folder/` join packing `id`.
        async fn join_folder(
            tx: &mut super::dialect::Conn,
            id: i64,
            collection: &str,
            folder: &str,
        ) -> $crate::store::StoreResult<u64> {
            use super::dialect::{bytewise, hint};
            Ok(sqlx::query(concat!(
                "UPDATE images",
                hint!("images_to_pack"),
                " SET packing_id = $1 \
                 WHERE collection = $2 AND state = 'done' AND packing_id IS NULL AND path",
                bytewise!(),
                " >= $3 || '/' AND path",
                bytewise!(),
                " < $3 || '0'"
            ))
            .bind(id)
            .bind(collection)
            .bind(folder)
            .execute(&mut *tx)
            .await?
            .rows_affected())
        }

        /// Done rows of other jobs archived meanwhile at a member's path
        /// join the packing: their loose file is the member.
        async fn attach_copies(
            tx: &mut super::dialect::Conn,
            packing: &$crate::store::Packing,
        ) -> $crate::store::StoreResult<()> {
            use super::dialect::hint;
            sqlx::query(concat!(
                "UPDATE images",
                hint!("images_to_pack"),
                " SET packing_id = $1 \
                 WHERE collection = $2 AND state = 'done' AND packing_id IS NULL \
                   AND path IN (SELECT path FROM images",
                hint!("images_in_packing"),
                " WHERE packing_id = $1)"
            ))
            .bind(packing.id)
            .bind(&packing.collection)
            .execute(&mut *tx)
            .await?;
            Ok(())
        }

        $crate::store::shared::archives::shared_archive_writes!();
    };
}
pub(in crate::store) use shared_archive_statements;

/// The written tar's commit and the re-queueing of rows it dropped.
macro_rules! shared_archive_writes {
    () => {
        /// Records a written tar on `conn`, in one transaction: the state
        /// move first (conditional, and on PostgreSQL it locks the packing
        /// row, so of two daemons that wrote the same tar only the first
        /// records it), then the members' checksums, the dropped rows
        /// re-queued and the sharers attached.
        async fn commit_packing_written(
            conn: &mut super::dialect::Conn,
            task: &$crate::store::CollectionTask,
            packing: &$crate::store::Packing,
            written: &$crate::store::TarWritten,
            at: super::dialect::At,
        ) -> $crate::store::StoreResult<()> {
            use sqlx::Connection;
            let mut tx = conn.begin().await?;
            super::task_lease::check(&mut tx, task).await?;
            super::dialect::lock(&mut tx, $crate::store::shared::TxLock::DurableCommit).await?;
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
                sqlx::query(concat!(
                    "UPDATE images SET sha256 = $1 WHERE rowid ",
                    super::dialect::in_list!("$2"),
                    " AND sha256 IS NULL"
                ))
                .bind(sha256)
                .bind(super::dialect::ids(row_ids))
                .execute(&mut *tx)
                .await?;
            }
            for (row_ids, reason) in &written.dropped {
                requeue_in(&mut tx, row_ids, reason, at).await?;
            }
            attach_copies(&mut tx, packing).await?;
            tx.commit().await?;
            Ok(())
        }

        /// Done rows back to `pending` with a fresh budget (their file is
        /// missing or corrupt), and their finished jobs back to work. Each
        /// statement reads the clock once, so a row's `run_at` and
        /// `updated_at` agree.
        async fn requeue_in(
            tx: &mut super::dialect::Conn,
            row_ids: &[i64],
            reason: &str,
            at: super::dialect::At,
        ) -> $crate::store::StoreResult<u64> {
            use super::dialect::{in_list, now};
            let ids = super::dialect::ids(row_ids);
            let changed = sqlx::query(concat!(
                "UPDATE images SET state = 'pending', attempts = 0, deferrals = 0, \
                 run_at = t.now_ms, path = NULL, bytes = NULL, sha256 = NULL, kept_jpeg = false, \
                 packing_id = NULL, last_error = $2, fail_reason = NULL, updated_at = t.now_ms \
                 FROM (SELECT ",
                now!("$1"),
                " AS now_ms) t WHERE images.rowid ",
                in_list!("$3"),
                " AND state = 'done'"
            ))
            .bind(at)
            .bind(reason)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(concat!(
                "UPDATE jobs SET state = CASE WHEN enumeration_complete \
                     THEN 'downloading' ELSE 'enumerating' END, \
                     progress_at = t.now_ms, stalled_at = NULL, updated_at = t.now_ms \
                 FROM (SELECT ",
                now!("$1"),
                " AS now_ms) t WHERE state IN ('done', 'failed') \
                   AND id IN (SELECT job_id FROM images WHERE rowid ",
                in_list!("$2"),
                ")"
            ))
            .bind(at)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
            Ok(changed)
        }
    };
}
pub(in crate::store) use shared_archive_writes;
