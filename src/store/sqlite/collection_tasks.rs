//! Collection packing leases and the upload ledger on SQLite.

use super::SqliteStore;
use crate::store::collection_tasks::*;
use crate::store::interface::*;
use crate::store::*;
use std::sync::Arc;
use std::time::Duration;

impl CollectionTasks for SqliteStore {
    async fn take_collection_task(
        &self,
        collection: &str,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<CollectionTask>> {
        // `excluded.until_ms - ttl` is `now_ms`.
        let epoch: Option<i64> = sqlx::query_scalar(
            "INSERT INTO collection_tasks (collection, owner, until_ms, epoch) \
             VALUES (?1, ?2, ?3 + ?4, 1) \
             ON CONFLICT (collection) DO UPDATE SET owner = excluded.owner, \
               until_ms = excluded.until_ms, epoch = collection_tasks.epoch + 1 \
             WHERE collection_tasks.owner IS NULL \
                OR collection_tasks.until_ms < excluded.until_ms - ?4 \
             RETURNING epoch",
        )
        .bind(collection)
        .bind(&**owner)
        .bind(now_ms)
        .bind(millis(ttl))
        .fetch_optional(self.writer()?)
        .await?;
        Ok(epoch.map(|epoch| CollectionTask {
            collection: collection.into(),
            owner: owner.clone(),
            epoch,
        }))
    }

    async fn renew_collection_task(
        &self,
        task: &CollectionTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE collection_tasks SET until_ms = ?4 + ?5 \
             WHERE collection = ?1 AND owner = ?2 AND epoch = ?3",
        )
        .bind(&*task.collection)
        .bind(&*task.owner)
        .bind(task.epoch)
        .bind(now_ms)
        .bind(millis(ttl))
        .execute(self.writer()?)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        sqlx::query(
            "UPDATE collection_tasks SET owner = NULL, until_ms = NULL \
             WHERE collection = ?1 AND owner = ?2 AND epoch = ?3",
        )
        .bind(&*task.collection)
        .bind(&*task.owner)
        .bind(task.epoch)
        .execute(self.writer()?)
        .await?;
        Ok(())
    }

    async fn check_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        let mut conn = self.writer()?.acquire().await?;
        check_sqlite(&mut conn, task).await
    }

    async fn record_upload(
        &self,
        task: &CollectionTask,
        upload_id: &str,
        path: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.writer()?.begin().await?;
        check_sqlite(&mut tx, task).await?;
        sqlx::query(
            "INSERT INTO multipart_uploads (upload_id, collection, path, started_at) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(upload_id)
        .bind(&*task.collection)
        .bind(path)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn recorded_uploads(&self, collection: &str) -> StoreResult<Vec<RecordedUpload>> {
        Ok(sqlx::query_as(
            "SELECT upload_id, path FROM multipart_uploads WHERE collection = ? \
             ORDER BY started_at, upload_id",
        )
        .bind(collection)
        .fetch_all(self.writer()?)
        .await?)
    }

    async fn forget_upload(&self, upload_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM multipart_uploads WHERE upload_id = ?")
            .bind(upload_id)
            .execute(self.writer()?)
            .await?;
        Ok(())
    }
}

/// Checks, inside a packing write's transaction, that `task` still holds
/// its collection.
pub(super) async fn check_sqlite(
    conn: &mut sqlx::SqliteConnection,
    task: &CollectionTask,
) -> StoreResult<()> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM collection_tasks WHERE collection = ?1 AND owner = ?2 AND epoch = ?3",
    )
    .bind(&*task.collection)
    .bind(&*task.owner)
    .bind(task.epoch)
    .fetch_optional(&mut *conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LostCollectionTask(task.collection.to_string())),
    }
}
