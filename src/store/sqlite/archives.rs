//! Packings, adoptable copies and `verify`'s rows on SQLite: the bodies
//! are `store/shared/archives.rs`, but for the claim's packed-copy lookup.

use super::SqliteStore;
use crate::store::archives::{ClaimCopyRow, give_packed_copies};
use crate::store::interface::Archives;
use crate::store::*;

crate::store::shared::archives::shared_archive_statements!();

impl Archives for SqliteStore {
    crate::store::shared::shared_archives!();
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
