//! Collection packing leases and the upload ledger on SQLite.

use super::SqliteStore;
use super::task_lease;
use crate::store::collection_tasks::*;
use crate::store::interface::*;
use crate::store::task_lease::LeaseKey;
use crate::store::*;
use std::sync::Arc;
use std::time::Duration;

impl CollectionTasks for SqliteStore {
    crate::store::shared::shared_collection_tasks!();

    async fn take_collection_task(
        &self,
        collection: &str,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<CollectionTask>> {
        task_lease::take(
            self.writer()?,
            LeaseKey::Name(collection),
            owner,
            ttl,
            now_ms,
        )
        .await
    }

    async fn renew_collection_task(
        &self,
        task: &CollectionTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        task_lease::renew(self.writer()?, task, ttl, now_ms).await
    }

    async fn release_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        task_lease::release(self.writer()?, task).await
    }

    async fn check_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        let mut conn = self.writer()?.acquire().await?;
        task_lease::check(&mut conn, task).await
    }

    async fn record_upload(
        &self,
        task: &CollectionTask,
        upload_id: &str,
        path: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.writer()?.begin().await?;
        task_lease::check(&mut tx, task).await?;
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
}
