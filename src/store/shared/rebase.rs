//! [`crate::store::interface::Rebase`] written once for both backends: one
//! transaction (on PostgreSQL behind an advisory lock, so of daemons
//! starting together one rebases and the others find nothing to do).

/// `impl Rebase for $store` and the `rebase_paths` it runs, expanded once
/// in each backend's `rebase.rs`: `$store` is the backend's store type.
macro_rules! shared_rebase {
    ($store:ty) => {
        impl $crate::store::interface::Rebase for $store {
            $crate::store::shared::rebase::shared_rebase_methods!();
        }

        /// Moves every stored path under an old root onto `root`, one old
        /// root at a time (a full scan each, run only when the root changed).
        async fn rebase_paths(
            tx: &mut super::dialect::Conn,
            root: &str,
        ) -> $crate::store::StoreResult<u64> {
            use $crate::store::rebase::{MAX_OLD_ROOTS, old_root_of};
            use $crate::store::sql;
            let mut rewritten = 0;
            for _ in 0..MAX_OLD_ROOTS {
                let stray: Option<String> = sqlx::query_scalar(sql::PATHS_OUTSIDE_ROOT)
                    .bind(root)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(path) = stray else { break };
                let Some(old) = old_root_of(&path) else {
                    tracing::warn!(%path, "an image path outside any archive layout; left as it is");
                    break;
                };
                let result = sqlx::query(sql::REBASE_PATHS)
                    .bind(old)
                    .bind(root)
                    .execute(&mut *tx)
                    .await?;
                let rows = result.rows_affected();
                tracing::info!(from = old, to = %root, rows, "image paths rebased onto the archive directory");
                rewritten += rows;
            }
            Ok(rewritten)
        }
    };
}
pub(in crate::store) use shared_rebase;

/// The `Rebase` methods, inside the `impl` [`shared_rebase!`] writes.
macro_rules! shared_rebase_methods {
    () => {
        async fn recorded_archive_root(&self) -> $crate::store::StoreResult<Option<String>> {
            Ok(sqlx::query_scalar($crate::store::sql::ARCHIVE_ROOT)
                .fetch_optional(self.reader()?)
                .await?)
        }

        async fn rebase_archive(
            &self,
            archive_dir: &std::path::Path,
        ) -> $crate::store::StoreResult<u64> {
            use $crate::store::rebase::{archive_root, in_bucket, switch_refused};
            use $crate::store::sql;
            let root = archive_root(archive_dir)?;
            let mut tx = self.writer()?.begin().await?;
            super::dialect::lock(&mut tx, $crate::store::shared::TxLock::Rebase).await?;
            let recorded: Option<String> = sqlx::query_scalar(sql::ARCHIVE_ROOT)
                .fetch_optional(&mut *tx)
                .await?;
            if recorded.as_deref() == Some(root.as_str()) {
                return Ok(0);
            }
            // A bucket does not move with the data dir: paths never rebase
            // onto or off one. A database with archived files stays with its
            // archive.
            if in_bucket(&root) || recorded.as_deref().is_some_and(in_bucket) {
                // A file's row, or a tar's (whose rows a repair may have reset).
                let archived: Option<String> = sqlx::query_scalar(sql::ALL_PATHS)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(path) = archived {
                    return Err(switch_refused(recorded, &path, &root));
                }
            }
            let rewritten = rebase_paths(&mut tx, &root).await?;
            sqlx::query(sql::SET_ARCHIVE_ROOT)
                .bind(&root)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(rewritten)
        }
    };
}
pub(in crate::store) use shared_rebase_methods;
