//! Packings, adoptable copies and `verify`'s rows on SQLite: the bodies
//! are `store/shared/archives.rs`, but for the durable commit of a written
//! tar and the claim's packed-copy lookup.

use super::SqliteStore;
use crate::store::archives::{ClaimCopyRow, give_packed_copies};
use crate::store::interface::Archives;
use crate::store::*;

crate::store::shared::archives::shared_archive_statements!();

impl Archives for SqliteStore {
    crate::store::shared::shared_archives!();
    crate::store::shared::archives::shared_archive_reads!();
    crate::store::shared::archives::shared_packing_moves!();

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
        let committed = commit_packing_written(&mut conn, task, packing, written, now_ms).await;
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
        let rows: Vec<ClaimCopyRow> = sqlx::query_as(
            "SELECT c.collection, c.image_id, c.path, c.bytes, c.sha256, c.kept_jpeg, p.id AS packed \
             FROM json_each($1) w \
             JOIN images c INDEXED BY images_copies \
               ON c.collection = w.value ->> 0 AND c.image_id = w.value ->> 1 AND c.state = 'done' \
             JOIN packings p ON p.id = c.packing_id AND p.state IN ('written', 'cleaned')",
        )
        .bind(serde_json::Value::from(wanted).to_string())
        .fetch_all(self.reader()?)
        .await?;
        give_packed_copies(claimed, rows);
        Ok(())
    }
}
