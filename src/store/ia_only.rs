//! Tars held on the Internet Archive only (`ia.delete_after_confirm`): the
//! store's side of removing a local tar once archive.org confirmed it. See
//! `migrations/sqlite/0013_tars_on_ia_only.sql`.
//!
//! The order makes a crash at any instant lose nothing: a confirmed tar is
//! recorded (a durable commit) before its file is removed, and marked
//! removed after; a record without `removed_at` is a removal the next run
//! finishes (removing a file already gone is fine). Once recorded, `verify`
//! reports the tar's images as held on the Internet Archive only, whether
//! the local file is gone yet or not, and `--repair` never re-queues them.

/// A tar packing held on the Internet Archive only, as `verify` weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarOnIaOnly {
    /// The packing whose tar was removed locally.
    pub packing_id: i64,
    /// Its done image rows (of the job asked about, or of any).
    pub images: u64,
}

/// The statements of the area; `$N` placeholders, which SQLite binds too.
/// The joins between `upload_files` and `packings` compare names byte for
/// byte (`COLLATE "C"` on PostgreSQL, whose packings columns use it).
macro_rules! ia_only_sql {
    (record) => {
        concat!(
            "INSERT INTO tars_on_ia_only (file_id, packing_id, recorded_at) \
             SELECT f.id, p.id, $2 FROM upload_files f \
             LEFT JOIN packings p ON p.collection = f.collection",
            super::dialect::bytewise!(),
            " AND p.tar_name = f.name",
            super::dialect::bytewise!(),
            " WHERE f.id = $1 AND f.kind = 'tar' AND f.state = 'confirmed' \
               AND (p.id IS NULL OR p.state = 'cleaned') \
             ON CONFLICT DO NOTHING"
        )
    };
    (to_remove) => {
        "SELECT f.id, f.item_id, f.collection, f.kind, f.name, f.local_path, f.bytes, f.md5, \
                f.state, f.attempts \
         FROM tars_on_ia_only t JOIN upload_files f ON f.id = t.file_id \
         WHERE f.collection = $1 AND t.removed_at IS NULL ORDER BY f.id"
    };
    (packings) => {
        concat!(
            "SELECT t.packing_id, (SELECT count(*) FROM images i",
            super::dialect::hint!("images_in_packing"),
            " WHERE i.packing_id = t.packing_id AND i.state = 'done' \
                AND (CAST($1 AS BIGINT) IS NULL OR i.job_id = $1)) AS images \
             FROM tars_on_ia_only t WHERE t.packing_id IS NOT NULL ORDER BY t.packing_id"
        )
    };
}
pub(super) use ia_only_sql;

/// The area's method bodies, the same on both backends: part of
/// [`super::interface::Uploads`], expanded into each backend's impl.
macro_rules! shared_ia_only {
    () => {
        async fn record_tar_on_ia_only(
            &self,
            file_id: i64,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            use sqlx::Connection;
            // The file goes next: this commit must survive a power loss,
            // or the tar would be gone with the database still counting on it.
            let mut conn = self.writer()?.acquire().await?;
            let before = super::dialect::raise_durability(&mut conn).await?;
            let recorded = async {
                let mut tx = conn.begin().await?;
                super::dialect::lock(&mut tx, $crate::store::shared::TxLock::DurableCommit).await?;
                sqlx::query($crate::store::ia_only::ia_only_sql!(record))
                    .bind(file_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let recorded: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM tars_on_ia_only WHERE file_id = $1)",
                )
                .bind(file_id)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                $crate::store::StoreResult::Ok(recorded)
            }
            .await;
            let restored = super::dialect::restore_durability(&mut conn, before).await;
            let recorded = recorded?;
            restored?;
            Ok(recorded)
        }

        async fn tars_to_remove(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::UploadFile>> {
            let rows: Vec<$crate::store::uploads::FileRow> =
                sqlx::query_as($crate::store::ia_only::ia_only_sql!(to_remove))
                    .bind(collection)
                    .fetch_all(self.writer()?)
                    .await?;
            rows.into_iter().map(|r| r.into_file()).collect()
        }

        async fn mark_tar_removed(
            &self,
            file_id: i64,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "UPDATE tars_on_ia_only SET removed_at = $2 \
                 WHERE file_id = $1 AND removed_at IS NULL",
            )
            .bind(file_id)
            .bind(now_ms)
            .execute(self.writer()?)
            .await?;
            Ok(())
        }

        async fn tars_on_ia_only(
            &self,
            job_id: Option<i64>,
        ) -> $crate::store::StoreResult<Vec<$crate::store::TarOnIaOnly>> {
            let rows: Vec<(i64, i64)> =
                sqlx::query_as($crate::store::ia_only::ia_only_sql!(packings))
                    .bind(job_id)
                    .fetch_all(self.reader()?)
                    .await?;
            Ok(rows
                .into_iter()
                .map(|(packing_id, images)| $crate::store::TarOnIaOnly {
                    packing_id,
                    images: $crate::store::to_u64(images),
                })
                .collect())
        }
    };
}
pub(super) use shared_ia_only;
