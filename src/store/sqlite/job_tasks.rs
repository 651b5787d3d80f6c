//! Job task leases on SQLite.

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::job_tasks::*;
use crate::store::*;
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
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET task_owner = ?2, task_until = ?3 + ?4, task_epoch = task_epoch + 1 \
             WHERE id = ?1 AND (task_owner IS NULL OR task_until < ?3) RETURNING task_epoch",
        )
        .bind(job_id)
        .bind(&**owner)
        .bind(now_ms)
        .bind(millis(ttl))
        .fetch_optional(self.writer()?)
        .await?;
        Ok(epoch.map(|epoch| JobTask {
            job_id,
            owner: owner.clone(),
            epoch,
        }))
    }

    async fn renew_job_task(
        &self,
        task: &JobTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE jobs SET task_until = ?4 + ?5 \
             WHERE id = ?1 AND task_owner = ?2 AND task_epoch = ?3",
        )
        .bind(task.job_id)
        .bind(&*task.owner)
        .bind(task.epoch)
        .bind(now_ms)
        .bind(millis(ttl))
        .execute(self.writer()?)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release_job_task(&self, task: &JobTask) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET task_owner = NULL, task_until = NULL \
             WHERE id = ?1 AND task_owner = ?2 AND task_epoch = ?3",
        )
        .bind(task.job_id)
        .bind(&*task.owner)
        .bind(task.epoch)
        .execute(self.writer()?)
        .await?;
        Ok(())
    }
}

/// Checks, inside a page's transaction, that `task` still holds its job.
pub(super) async fn check_sqlite(
    tx: &mut sqlx::SqliteConnection,
    task: &JobTask,
) -> StoreResult<()> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE id = ?1 AND task_owner = ?2 AND task_epoch = ?3",
    )
    .bind(task.job_id)
    .bind(&*task.owner)
    .bind(task.epoch)
    .fetch_optional(&mut *tx)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(super::StoreError::LostJobTask(task.job_id)),
    }
}
