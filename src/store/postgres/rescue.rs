//! PostgreSQL side of `store::rescue`: a dead daemon's leases and tasks
//! handed back in one short transaction, fenced by deleting its row.
//!
//! Lock order, chosen so a rescue never deadlocks with the writes a paused
//! daemon may still try: the daemons row, then job rows, then collection
//! rows, then image rows. A page write locks its job row before it touches
//! images, and a packing write its collection row before it touches images,
//! so both queue behind the rescue instead of crossing it.

use super::PgStore;
use crate::store::StoreResult;
use crate::store::interface::Rescue;
use crate::store::millis;
use crate::store::rescue::Rescued;
use std::time::Duration;

impl Rescue for PgStore {
    async fn rescue_dead_daemons(
        &self,
        rescuer: &str,
        dead_after: Duration,
        now_ms: i64,
    ) -> StoreResult<Vec<Rescued>> {
        let silent: Vec<String> = sqlx::query_scalar(
            "SELECT d.id FROM daemons d, (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t \
             WHERE d.heartbeat_at < t.now_ms - $2 AND d.id <> $3 ORDER BY d.heartbeat_at",
        )
        .bind(self.at(now_ms))
        .bind(millis(dead_after))
        .bind(rescuer)
        .fetch_all(self.pool())
        .await?;
        let mut rescued = Vec::with_capacity(silent.len());
        for daemon in silent {
            if let Some(rescue) = self.rescue_daemon(&daemon, dead_after, now_ms).await? {
                rescued.push(rescue);
            }
        }
        Ok(rescued)
    }

    async fn rescue_daemon(
        &self,
        daemon: &str,
        dead_after: Duration,
        now_ms: i64,
    ) -> StoreResult<Option<Rescued>> {
        let mut tx = self.pool().begin().await?;
        // The fence. The delete locks the row: a concurrent rescuer waits,
        // then finds it gone; a heartbeat committed first made it fresh,
        // and READ COMMITTED re-checks the condition on that new version.
        let gone: Option<(i64, i64)> = sqlx::query_as(
            "DELETE FROM daemons d USING (SELECT coalesce($2::BIGINT, mld_now_ms()) AS now_ms) t \
             WHERE d.id = $1 AND d.heartbeat_at < t.now_ms - $3 \
             RETURNING t.now_ms, t.now_ms - d.heartbeat_at",
        )
        .bind(daemon)
        .bind(self.at(now_ms))
        .bind(millis(dead_after))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((now, silent_ms)) = gone else {
            tx.rollback().await?;
            return Ok(None);
        };
        let (images, job_tasks, collection_tasks) = free_leases_of(&mut tx, daemon, now).await?;
        tx.commit().await?;
        Ok(Some(Rescued {
            daemon: daemon.to_string(),
            silent_for: Duration::from_millis(silent_ms.max(0).unsigned_abs()),
            images,
            job_tasks,
            collection_tasks,
        }))
    }
}

/// Frees a dead daemon's leases inside the rescue's transaction: its job
/// and collection tasks, and its in-flight images. Returns how many of
/// each (images, job tasks, collection tasks).
async fn free_leases_of(
    tx: &mut sqlx::PgConnection,
    daemon: &str,
    now: i64,
) -> StoreResult<(u64, u64, u64)> {
    // Freed, not handed to anyone: whoever asks next takes them (and
    // bumps their epoch, which fences the dead owner out for good).
    let job_tasks = free_tasks_of(
        tx,
        "UPDATE jobs SET task_owner = NULL, task_until = NULL WHERE task_owner = $1",
        daemon,
    )
    .await?;
    let collection_tasks = free_tasks_of(
        tx,
        "UPDATE collection_tasks SET owner = NULL, until_ms = NULL WHERE owner = $1",
        daemon,
    )
    .await?;
    // As a lease expiry counts it: the attempt the dead daemon made
    // stays spent (the claim that takes the row again adds the next).
    // `run_at` is kept: the rows go back at their place at the head of
    // the queue, as the claim takes expired leases first, rather than
    // behind every image due since.
    let images = sqlx::query(
        "UPDATE images SET state = 'pending', lease_owner = NULL, lease_until = NULL, \
         run_at = least(run_at, $2), updated_at = $2 \
         WHERE state = 'in_progress' AND lease_owner = $1",
    )
    .bind(daemon)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok((images, job_tasks, collection_tasks))
}

/// Runs one kind's `free` statement (`$1` the daemon); how many leases it freed.
async fn free_tasks_of(
    tx: &mut sqlx::PgConnection,
    free: &'static str,
    daemon: &str,
) -> StoreResult<u64> {
    Ok(sqlx::query(free)
        .bind(daemon)
        .execute(tx)
        .await?
        .rows_affected())
}
