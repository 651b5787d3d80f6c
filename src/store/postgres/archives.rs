//! Packings, adoptable copies and `verify`'s rows on PostgreSQL: the bodies
//! are `store/shared/archives.rs` (paths compared `COLLATE "C"`, planners
//! of one collection serialised by an advisory lock, every state move of a
//! packing conditional), but for the claim's packed-copy lookup.

use super::PgStore;
use crate::store::archives::{ClaimCopyRow, give_packed_copies};
use crate::store::interface::Archives;
use crate::store::*;

crate::store::shared::archives::shared_archive_statements!();

impl Archives for PgStore {
    crate::store::shared::shared_archives!();
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
        let rows: Vec<ClaimCopyRow> = sqlx::query_as(
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
        give_packed_copies(claimed, rows);
        Ok(())
    }
}
