//! The [`crate::store::interface::CollectionTasks`] half on PostgreSQL, on
//! the database's clock.

use super::PgStore;
use super::task_lease;
use crate::store::StoreResult;
use crate::store::collection_tasks::CollectionTask;
use crate::store::interface::*;
use crate::store::task_lease::LeaseKey;
use std::sync::Arc;
use std::time::Duration;

impl CollectionTasks for PgStore {
    crate::store::shared::shared_collection_tasks!();

    async fn take_collection_task(
        &self,
        collection: &str,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<CollectionTask>> {
        task_lease::take(
            self.pool(),
            LeaseKey::Name(collection),
            owner,
            ttl,
            self.at(now_ms),
        )
        .await
    }

    async fn renew_collection_task(
        &self,
        task: &CollectionTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        task_lease::renew(self.pool(), task, ttl, self.at(now_ms)).await
    }

    async fn release_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        task_lease::release(self.pool(), task).await
    }

    async fn check_collection_task(&self, task: &CollectionTask) -> StoreResult<()> {
        let mut conn = self.pool().acquire().await?;
        task_lease::check(&mut conn, task).await
    }

    async fn record_upload(
        &self,
        task: &CollectionTask,
        upload_id: &str,
        path: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool().begin().await?;
        task_lease::check(&mut tx, task).await?;
        sqlx::query(
            "INSERT INTO multipart_uploads (upload_id, collection, path, started_at) \
             VALUES ($1, $2, $3, coalesce($4::BIGINT, mld_now_ms()))",
        )
        .bind(upload_id)
        .bind(&*task.collection)
        .bind(path)
        .bind(self.at(now_ms))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
