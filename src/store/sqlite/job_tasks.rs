//! Job task leases on SQLite.

use super::SqliteStore;
use super::task_lease;
use crate::store::interface::JobTasks;
use crate::store::task_lease::LeaseKey;
use crate::store::{JobTask, StoreResult};
use std::sync::Arc;
use std::time::Duration;

impl JobTasks for SqliteStore {
    async fn take_job_task(
        &self,
        job_id: i64,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<JobTask>> {
        task_lease::take(self.writer()?, LeaseKey::Id(job_id), owner, ttl, now_ms).await
    }

    async fn renew_job_task(
        &self,
        task: &JobTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        task_lease::renew(self.writer()?, task, ttl, now_ms).await
    }

    async fn release_job_task(&self, task: &JobTask) -> StoreResult<()> {
        task_lease::release(self.writer()?, task).await
    }
}
