//! [`crate::store::interface::JobTasks`] and
//! [`crate::store::interface::CollectionTasks`] written once for both
//! backends, over the one lease protocol (`store/task_lease.rs`, expanded
//! per backend in its `task_lease.rs`).

/// A task kind's take, renew and release over the one lease protocol:
/// `take_task` names the row by `$key` (the kind's `TaskLease::Key`).
macro_rules! task_lease_methods {
    ($take:ident, $renew:ident, $release:ident, $task:ty, $key:ident: $key_ty:ty) => {
        async fn $take(
            &self,
            $key: $key_ty,
            owner: &std::sync::Arc<str>,
            ttl: std::time::Duration,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<$task>> {
            super::task_lease::take(self.writer()?, $key, owner, ttl, self.at(now_ms)).await
        }

        async fn $renew(
            &self,
            task: &$task,
            ttl: std::time::Duration,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            super::task_lease::renew(self.writer()?, task, ttl, self.at(now_ms)).await
        }

        async fn $release(&self, task: &$task) -> $crate::store::StoreResult<()> {
            super::task_lease::release(self.writer()?, task).await
        }
    };
}
pub(in crate::store) use task_lease_methods;

/// The `JobTasks` methods, expanded inside a backend's `impl JobTasks for …`.
macro_rules! shared_job_tasks {
    () => {
        $crate::store::shared::tasks::task_lease_methods!(
            take_job_task, renew_job_task, release_job_task, $crate::store::JobTask, job_id: i64
        );
    };
}
pub(in crate::store) use shared_job_tasks;

/// The `CollectionTasks` methods, expanded inside a backend's
/// `impl CollectionTasks for …`.
macro_rules! shared_collection_tasks {
    () => {
        $crate::store::shared::tasks::task_lease_methods!(
            take_collection_task, renew_collection_task, release_collection_task,
            $crate::store::CollectionTask, collection: &str
        );

        async fn check_collection_task(
            &self,
            task: &$crate::store::CollectionTask,
        ) -> $crate::store::StoreResult<()> {
            let mut conn = self.writer()?.acquire().await?;
            super::task_lease::check(&mut conn, task).await
        }

        /// Recorded under the lease, so an upload begun by a packer that
        /// lost it is never written down as this one's.
        async fn record_upload(
            &self,
            task: &$crate::store::CollectionTask,
            upload_id: &str,
            path: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            let mut tx = self.writer()?.begin().await?;
            super::task_lease::check(&mut tx, task).await?;
            sqlx::query(concat!(
                "INSERT INTO multipart_uploads (upload_id, collection, path, started_at) \
                 VALUES ($1, $2, $3, ",
                super::dialect::now!("$4"),
                ")"
            ))
            .bind(upload_id)
            .bind(&*task.collection)
            .bind(path)
            .bind(self.at(now_ms))
            .execute(&mut *tx)
            .await?;
            Ok(tx.commit().await?)
        }

        // On the writer: a packer reads back what it just recorded.
        async fn recorded_uploads(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::RecordedUpload>> {
            Ok(sqlx::query_as($crate::store::sql::RECORDED_UPLOADS)
                .bind(collection)
                .fetch_all(self.writer()?)
                .await?)
        }

        async fn forget_upload(&self, upload_id: &str) -> $crate::store::StoreResult<()> {
            self.delete_keyed($crate::store::sql::FORGET_UPLOAD, upload_id)
                .await
        }
    };
}
pub(in crate::store) use shared_collection_tasks;
