//! PostgreSQL twin of `store::archives`.

use super::PgStore;
use crate::archive::ArchivedFile;
use crate::store::{ClaimedImage, StoreResult, to_u64};
use sqlx::Row;
use std::path::PathBuf;

impl PgStore {
    /// Gives each claimed image the copy another job packed into a tar of
    /// its collection, if any (see the SQLite twin).
    pub(super) async fn attach_packed_copies(
        &self,
        claimed: &mut [ClaimedImage],
    ) -> StoreResult<()> {
        if claimed.is_empty() {
            return Ok(());
        }
        let any_tar: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM packings WHERE state <> 'planned')")
                .fetch_one(self.pool())
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
        .fetch_all(self.pool())
        .await?;
        for row in rows {
            let collection: String = row.try_get("collection")?;
            let image_id: String = row.try_get("image_id")?;
            let Some(path) = row.try_get::<Option<String>, _>("path")? else {
                continue;
            };
            let copy = ArchivedFile {
                path: PathBuf::from(path),
                bytes: to_u64(row.try_get::<Option<i64>, _>("bytes")?.unwrap_or(0)),
                sha256: row.try_get("sha256")?,
                kept_jpeg: row.try_get("kept_jpeg")?,
                packing_id: row.try_get("packed")?,
            };
            for image in claimed
                .iter_mut()
                .filter(|c| c.collection == collection && c.image_id == image_id)
            {
                image.packed_copy = Some(copy.clone());
            }
        }
        Ok(())
    }
}
