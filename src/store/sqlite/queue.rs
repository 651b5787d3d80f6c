//! The work queue on SQLite: the claim is one `UPDATE ... RETURNING` on the writer, every
//! outcome one fenced statement; completions share a commit when they queue (`completions`).

use super::SqliteStore;
use crate::archive::ArchivedFile;
use crate::store::interface::*;
use crate::store::queue::*;
use crate::store::sql;
use crate::store::*;
use sqlx::{FromRow, Row};
use std::sync::Arc;
use std::time::Duration;

/// One statement claims up to `?4` rows: first expired leases (crashed or
/// stuck attempts, oldest lease first), then due pending rows of one active
/// job that has any, in (run_at, rowid) order. The job is the first one after
/// job `?5` in id order, wrapping around, so successive claims take turns
/// between jobs and a huge job never starves a small one.
///
/// Why not one `ORDER BY run_at` over every job: an `OR` of the two row kinds
/// makes SQLite collect and sort every due row (O(due rows), ~40 ms at 200k),
/// and a single (run_at) index walks through every due row of a paused job
/// before reaching an active one. Picking the job first keeps each arm an
/// ordered range scan of a partial index, so a claim is O(limit + jobs).
/// `INDEXED BY` pins those indexes: without `ANALYZE` statistics the planner
/// otherwise picks the `(job_id, image_id)` index and sorts all of a job's rows.
/// `jobs NOT INDEXED` walks the few jobs in id order instead of sorting them.
/// (Measured: without `INDEXED BY images_leased` the expired-lease arm visits
/// every row of every active job, ~0.5 s per claim at 1M rows.)
const CLAIM_SQL: &str = "\
UPDATE images
SET state = 'in_progress', attempts = attempts + 1, lease_epoch = lease_epoch + 1,
    lease_owner = ?1, lease_until = ?2, updated_at = ?3
WHERE rowid IN (
    SELECT rowid FROM (
        SELECT rowid FROM images INDEXED BY images_leased
        WHERE state = 'in_progress' AND lease_until < ?3
          AND job_id IN (SELECT id FROM jobs WHERE state IN ('enumerating', 'downloading'))
        ORDER BY lease_until
        LIMIT ?4)
    UNION ALL
    SELECT rowid FROM (
        SELECT rowid FROM images INDEXED BY images_due
        WHERE state = 'pending' AND run_at <= ?3
          AND job_id = coalesce(
              (SELECT j.id FROM jobs j NOT INDEXED
               WHERE j.id > ?5 AND j.state IN ('enumerating', 'downloading')
                 AND EXISTS (SELECT 1 FROM images p INDEXED BY images_due
                             WHERE p.job_id = j.id AND p.state = 'pending' AND p.run_at <= ?3)
               ORDER BY j.id
               LIMIT 1),
              (SELECT j.id FROM jobs j NOT INDEXED
               WHERE j.state IN ('enumerating', 'downloading')
                 AND EXISTS (SELECT 1 FROM images p INDEXED BY images_due
                             WHERE p.job_id = j.id AND p.state = 'pending' AND p.run_at <= ?3)
               ORDER BY j.id
               LIMIT 1))
        ORDER BY run_at, rowid
        LIMIT ?4)
    LIMIT ?4)
RETURNING rowid, job_id, image_id, meta, url, attempts, lease_epoch, run_at, collection";

/// The fence every outcome carries: only the current lease holder, on the
/// claim it made (the row's epoch, which every claim bumps and nothing
/// resets), may change an in-flight row. Binds `rowid`, owner and epoch, in
/// that order, after the statement's other parameters.
macro_rules! fence {
    () => {
        " WHERE rowid = ? AND state = 'in_progress' AND lease_owner = ? AND lease_epoch = ?"
    };
}

/// Binds a [`Lease`] to the three `?` of [`fence!`].
fn bind_lease<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    lease: &'q Lease,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    query
        .bind(lease.row_id)
        .bind(&*lease.owner)
        .bind(lease.epoch)
}

impl Queue for SqliteStore {
    async fn claim(
        &self,
        owner: &Arc<str>,
        limit: u32,
        lease: Duration,
        now_ms: i64,
        after_job: i64,
    ) -> StoreResult<Vec<ClaimedImage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(CLAIM_SQL)
            .bind(&**owner)
            .bind(now_ms.saturating_add(millis(lease)))
            .bind(now_ms)
            .bind(i64::from(limit))
            .bind(after_job)
            .fetch_all(self.writer()?)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let row = ClaimedRow::from_row(row)?;
            let identity = self.job_identity(row.job_id).await?;
            claimed.push(row.into_claimed(owner, identity)?);
        }
        let mut claimed = in_queue_order(claimed);
        self.attach_packed_copies(&mut claimed).await?;
        Ok(claimed)
    }

    async fn complete_image(
        &self,
        lease: &Lease,
        file: &ArchivedFile,
        now_ms: i64,
    ) -> StoreResult<Completion> {
        // Written in a group with the completions that queue meanwhile
        // (see `completions`): one commit for all of them.
        let packing = self
            .completions
            .complete(self.writer()?, lease, file, now_ms)
            .await?;
        Ok(match packing {
            None => Completion::LeaseLost,
            Some(Some(_)) if file.packing_id.is_none() => Completion::JoinedTar,
            Some(_) => Completion::Done,
        })
    }

    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        policy: RetryPolicy,
        now_ms: i64,
    ) -> StoreResult<FailOutcome> {
        let query = sqlx::query(concat!(
            "UPDATE images SET \
             state = CASE WHEN attempts >= ? THEN 'failed' ELSE 'pending' END, \
             fail_reason = CASE WHEN attempts >= ? THEN 'error' ELSE NULL END, \
             run_at = CASE WHEN attempts >= ? THEN run_at ELSE ? END, \
             last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?",
            fence!(),
            " RETURNING state, run_at"
        ))
        .bind(i64::from(policy.max_attempts))
        .bind(i64::from(policy.max_attempts))
        .bind(i64::from(policy.max_attempts))
        .bind(policy.retry_at_ms)
        .bind(error)
        .bind(now_ms);
        let row = bind_lease(query, lease)
            .fetch_optional(self.writer()?)
            .await?;
        let Some(row) = row else {
            return Ok(FailOutcome::LeaseLost);
        };
        let state: String = row.try_get("state")?;
        Ok(if state == "failed" {
            FailOutcome::FailedForGood
        } else {
            FailOutcome::Retrying {
                run_at: row.try_get("run_at")?,
            }
        })
    }

    async fn fail_for_good(
        &self,
        lease: &Lease,
        reason: FailReason,
        error: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let query = sqlx::query(concat!(
            "UPDATE images SET state = 'failed', fail_reason = ?, last_error = ?, \
             attempts = CASE WHEN ? = 'deleted' THEN max(attempts - 1, 0) ELSE attempts END, \
             lease_owner = NULL, lease_until = NULL, updated_at = ?",
            fence!()
        ))
        .bind(reason.as_str())
        .bind(error)
        .bind(reason.as_str())
        .bind(now_ms);
        let result = bind_lease(query, lease).execute(self.writer()?).await?;
        Ok(result.rows_affected() == 1)
    }

    async fn mark_pending_deleted(
        &self,
        row_ids: &[i64],
        error: &str,
        now_ms: i64,
    ) -> StoreResult<u64> {
        if row_ids.is_empty() {
            return Ok(0);
        }
        let ids = serde_json::Value::from(row_ids.to_vec()).to_string();
        let result = sqlx::query(
            "UPDATE images SET state = 'failed', fail_reason = 'deleted', last_error = ?, \
             updated_at = ? WHERE state = 'pending' AND rowid IN (SELECT value FROM json_each(?))",
        )
        .bind(error)
        .bind(now_ms)
        .bind(ids)
        .execute(self.writer()?)
        .await?;
        Ok(result.rows_affected())
    }

    async fn release(
        &self,
        lease: &Lease,
        delay: Duration,
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let query = sqlx::query(concat!(
            "UPDATE images SET state = 'pending', attempts = max(attempts - 1, 0), run_at = ?, \
             lease_owner = NULL, lease_until = NULL, last_error = ifnull(?, last_error)",
            fence!()
        ))
        .bind(now_ms.saturating_add(millis(delay)))
        .bind(note);
        let result = bind_lease(query, lease).execute(self.writer()?).await?;
        Ok(result.rows_affected() == 1)
    }

    async fn defer(
        &self,
        lease: &Lease,
        note: &str,
        policy: DeferPolicy,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        let query = sqlx::query(concat!(
            "UPDATE images SET state = 'pending', attempts = max(attempts - 1, 0), \
             run_at = ? + CAST(min(?, ? * (1 << min(deferrals, 30))) * ? AS INTEGER), \
             deferrals = deferrals + 1, lease_owner = NULL, lease_until = NULL, last_error = ?",
            fence!(),
            " RETURNING run_at"
        ))
        .bind(now_ms)
        .bind(millis(policy.cap))
        .bind(millis(policy.base))
        .bind(policy.jitter.clamp(0.0, 1.0))
        .bind(note);
        Ok(bind_lease(query, lease)
            .fetch_optional(self.writer()?)
            .await?
            .map(|row| row.try_get("run_at"))
            .transpose()?)
    }

    async fn retry_failed(
        &self,
        job_id: i64,
        include_deleted: bool,
        now_ms: i64,
    ) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE images SET state = 'pending', attempts = 0, deferrals = 0, run_at = ?1, \
             last_error = NULL, fail_reason = NULL, updated_at = ?1 \
             WHERE job_id = ?2 AND state = 'failed' AND (?3 OR fail_reason IS NOT 'deleted')",
        )
        .bind(now_ms)
        .bind(job_id)
        .bind(include_deleted)
        .execute(self.writer()?)
        .await?;
        Ok(result.rows_affected())
    }

    async fn reset_in_flight(&self, now_ms: i64) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE images SET state = 'pending', attempts = max(attempts - 1, 0), run_at = ?, \
             lease_owner = NULL, lease_until = NULL, updated_at = ? WHERE state = 'in_progress'",
        )
        .bind(now_ms)
        .bind(now_ms)
        .execute(self.writer()?)
        .await?;
        // Jobs' task leases too: their holder is gone with the crash.
        sqlx::query(sql::DROP_JOB_TASKS)
            .execute(self.writer()?)
            .await?;
        Ok(result.rows_affected())
    }

    async fn hand_back_leases_of(&self, owner: &str, now_ms: i64) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE images SET state = 'pending', attempts = max(attempts - 1, 0), run_at = ?1, \
             lease_owner = NULL, lease_until = NULL, updated_at = ?1 \
             WHERE state = 'in_progress' AND lease_owner = ?2",
        )
        .bind(now_ms)
        .bind(owner)
        .execute(self.writer()?)
        .await?;
        Ok(result.rows_affected())
    }
}

impl SqliteStore {
    /// A job's quality and format, cached: neither ever changes.
    async fn job_identity(&self, job_id: i64) -> StoreResult<(Quality, OutputFormat)> {
        if let Some(found) = self.lock_identity().get(&job_id) {
            return Ok(*found);
        }
        let row = sqlx::query("SELECT quality, format FROM jobs WHERE id = ?")
            .bind(job_id)
            .fetch_optional(self.reader()?)
            .await?
            .ok_or(StoreError::NoSuchJob(job_id))?;
        let identity =
            identity_from_fields(job_id, row.try_get("quality")?, row.try_get("format")?)?;
        self.lock_identity().insert(job_id, identity);
        Ok(identity)
    }

    fn lock_identity(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, (Quality, OutputFormat)>> {
        // The map only caches immutable facts; a panic elsewhere cannot leave it wrong.
        self.job_identity
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::AssertSqlSafe;

    /// A claim must stay O(limit): no arm may sort (`TEMP B-TREE`) or walk
    /// the images table, whatever the planner's statistics.
    #[tokio::test]
    async fn the_claim_plan_never_sorts_or_scans_images() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("plan.db"), StoreOptions::default())
            .await
            .unwrap();
        let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {CLAIM_SQL}")))
            .bind("w")
            .bind(1_i64)
            .bind(0_i64)
            .bind(8_i64)
            .fetch_all(store.writer().unwrap())
            .await
            .unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        for step in &plan {
            let sorts = step.contains("TEMP B-TREE");
            let scans_images = step.starts_with("SCAN images");
            assert!(
                !sorts && !scans_images,
                "claim plan step {step:?} in {plan:#?}"
            );
        }
        assert!(plan.iter().any(|s| s.contains("images_due")), "{plan:#?}");
        assert!(
            plan.iter().any(|s| s.contains("images_leased")),
            "{plan:#?}"
        );
    }
}
