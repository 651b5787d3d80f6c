//! The work queue on SQLite: the claim is one `UPDATE ... RETURNING` on the writer; the
//! outcomes, one fenced statement each, are `store/shared/queue.rs`, and completions share a
//! commit when they queue behind the writer (`completions`).

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::queue::*;
use crate::store::*;
use sqlx::{FromRow, Row};

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

impl Queue for SqliteStore {
    async fn complete_image(
        &self,
        lease: &Lease,
        file: &crate::archive::ArchivedFile,
        now_ms: i64,
    ) -> StoreResult<Completion> {
        // Written in a group with the completions that queue meanwhile
        // (see `completions`): one commit for all of them.
        let packing = self
            .completions
            .complete(self.writer()?, lease, file, now_ms)
            .await?;
        Ok(crate::store::shared::queue::completion(packing, file))
    }

    crate::store::shared::queue::shared_queue!();
}

impl SqliteStore {
    /// The claim: one `UPDATE … RETURNING` on the writer ([`CLAIM_SQL`]).
    async fn claim_batch(&self, batch: ClaimBatch<'_>) -> StoreResult<Vec<ClaimedImage>> {
        let rows = sqlx::query(CLAIM_SQL)
            .bind(&**batch.owner)
            .bind(batch.now_ms.saturating_add(millis(batch.lease)))
            .bind(batch.now_ms)
            .bind(i64::from(batch.limit))
            .bind(batch.after_job)
            .fetch_all(self.writer()?)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let row = ClaimedRow::from_row(row)?;
            let identity = self.job_identity(row.job_id).await?;
            claimed.push(row.into_claimed(batch.owner, identity)?);
        }
        let mut claimed = in_queue_order(claimed);
        self.attach_packed_copies(&mut claimed).await?;
        Ok(claimed)
    }

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
