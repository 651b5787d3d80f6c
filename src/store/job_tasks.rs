//! Leases on a job's task: its enumeration, or its finishing (metadata,
//! packing). One process works on a job at a time; on a shared PostgreSQL
//! queue that is one daemon in the cluster. A lease expires unless renewed,
//! so a dead daemon's job is taken over; every page write checks the lease's
//! epoch in its own transaction, so a daemon that lost the lease without
//! knowing it (stalled on the network) cannot move the job's cursor.

use super::{Store, StoreResult, on_postgres};
use std::sync::Arc;
use std::time::Duration;

/// The right to work on one job's task, as taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTask {
    pub job_id: i64,
    pub owner: Arc<str>,
    /// The job's task count at this take; only grows.
    pub epoch: i64,
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Takes the job's task lease for `owner` until `now_ms + ttl`: when
    /// nobody holds it, or its holder's lease expired. `None`: another
    /// owner holds it.
    pub async fn take_job_task(
        &self,
        job_id: i64,
        owner: &Arc<str>,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<JobTask>> {
        on_postgres!(self.take_job_task(job_id, owner, ttl, now_ms));
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

    /// Extends a held lease to `now_ms + ttl`; `false` if it was lost.
    pub async fn renew_job_task(
        &self,
        task: &JobTask,
        ttl: Duration,
        now_ms: i64,
    ) -> StoreResult<bool> {
        on_postgres!(self.renew_job_task(task, ttl, now_ms));
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

    /// Gives a held lease up (the task ended); a lost one is left alone.
    pub async fn release_job_task(&self, task: &JobTask) -> StoreResult<()> {
        on_postgres!(self.release_job_task(task));
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
