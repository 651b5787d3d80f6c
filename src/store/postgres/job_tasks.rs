//! PostgreSQL twin of `store::job_tasks`, on the database's clock.

use super::PgStore;
use crate::store::interface::*;
use crate::store::job_tasks::JobTask;
use crate::store::millis;
use crate::store::{StoreError, StoreResult};
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
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET task_owner = $2, task_until = clock.now_ms + $4, \
             task_epoch = task_epoch + 1 \
             FROM (SELECT coalesce($3::BIGINT, mld_now_ms()) AS now_ms) clock \
             WHERE id = $1 AND (task_owner IS NULL OR task_until < clock.now_ms) \
             RETURNING task_epoch",
        )
        .bind(job_id)
        .bind(&**owner)
        .bind(self.at(now_ms))
        .bind(millis(ttl))
        .fetch_optional(self.pool())
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
            "UPDATE jobs SET task_until = coalesce($4::BIGINT, mld_now_ms()) + $5 \
             WHERE id = $1 AND task_owner = $2 AND task_epoch = $3",
        )
        .bind(task.job_id)
        .bind(&*task.owner)
        .bind(task.epoch)
        .bind(self.at(now_ms))
        .bind(millis(ttl))
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn release_job_task(&self, task: &JobTask) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET task_owner = NULL, task_until = NULL \
             WHERE id = $1 AND task_owner = $2 AND task_epoch = $3",
        )
        .bind(task.job_id)
        .bind(&*task.owner)
        .bind(task.epoch)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Checks, inside a page's transaction, that `task` still holds its job;
/// locks the job row so a take-over waits for the page to commit.
pub(super) async fn check(tx: &mut sqlx::PgConnection, task: &JobTask) -> StoreResult<()> {
    let held: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM jobs WHERE id = $1 AND task_owner = $2 AND task_epoch = $3 \
         FOR NO KEY UPDATE",
    )
    .bind(task.job_id)
    .bind(&*task.owner)
    .bind(task.epoch)
    .fetch_optional(&mut *tx)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LostJobTask(task.job_id)),
    }
}
