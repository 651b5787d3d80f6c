//! Job task leases on PostgreSQL, on the database's clock.

use super::PgStore;
use super::task_lease;
use crate::store::interface::JobTasks;
use crate::store::task_lease::LeaseKey;
use crate::store::{JobTask, StoreResult};
use std::sync::Arc;
use std::time::Duration;

impl JobTasks for PgStore {
    async fn take_job_task(
        &self,
        job_id: i64,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<JobTask>> {
        task_lease::take(
            self.pool(),
            LeaseKey::Id(job_id),
            owner,
            ttl,
            self.at(now_ms),
        )
        .await
    }

    async fn renew_job_task(
        &self,
        task: &JobTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        task_lease::renew(self.pool(), task, ttl, self.at(now_ms)).await
    }

    async fn release_job_task(&self, task: &JobTask) -> StoreResult<()> {
        task_lease::release(self.pool(), task).await
    }
}
