//! The work queue on PostgreSQL: the claim skips rows other daemons are claiming; the
//! outcomes, one fenced statement each, are `store/shared/queue.rs`.
//!
//! Every time comes from one reading of the database clock per statement
//! (`clock`), so a row's `updated_at`, `run_at` and `lease_until` agree.

use super::PgStore;
use crate::store::interface::*;
use crate::store::millis;
use crate::store::queue::identity_from_fields;
use crate::store::queue::{ClaimBatch, ClaimedRow, in_queue_order};
use crate::store::{ClaimedImage, StoreResult};
use sqlx::{FromRow, Row};

/// The SQLite claim's rules in one statement: expired leases of active jobs
/// first (oldest lease first), then due pending rows of the first active job
/// after `$5` that has any, wrapping around. `FOR UPDATE SKIP LOCKED`: daemons
/// claiming at once take different rows. `clock` is read once; the scalar
/// subqueries over it are init plans, so they bound the index scans.
/// Quality and format come from `jobs` in the same statement.
const CLAIM_SQL: &str = "\
WITH clock AS (SELECT coalesce($2::BIGINT, mld_now_ms()) AS now_ms),
claimed AS (
    UPDATE images
    SET state = 'in_progress', attempts = attempts + 1, lease_epoch = lease_epoch + 1,
        lease_owner = $1, lease_until = (SELECT now_ms FROM clock) + $3,
        updated_at = (SELECT now_ms FROM clock)
    WHERE rowid IN (
        SELECT rowid FROM (
            SELECT rowid FROM images
            WHERE state = 'in_progress' AND lease_until < (SELECT now_ms FROM clock)
              AND job_id IN (SELECT id FROM jobs WHERE state IN ('enumerating', 'downloading'))
            ORDER BY lease_until
            LIMIT $4
            FOR UPDATE OF images SKIP LOCKED) expired
        UNION ALL
        SELECT rowid FROM (
            SELECT rowid FROM images
            WHERE state = 'pending' AND run_at <= (SELECT now_ms FROM clock)
              AND job_id = coalesce(
                  (SELECT j.id FROM jobs j
                   WHERE j.id > $5 AND j.state IN ('enumerating', 'downloading')
                     AND EXISTS (SELECT 1 FROM images p
                                 WHERE p.job_id = j.id AND p.state = 'pending'
                                   AND p.run_at <= (SELECT now_ms FROM clock))
                   ORDER BY j.id
                   LIMIT 1),
                  (SELECT j.id FROM jobs j
                   WHERE j.state IN ('enumerating', 'downloading')
                     AND EXISTS (SELECT 1 FROM images p
                                 WHERE p.job_id = j.id AND p.state = 'pending'
                                   AND p.run_at <= (SELECT now_ms FROM clock))
                   ORDER BY j.id
                   LIMIT 1))
            ORDER BY run_at, rowid
            LIMIT $4
            FOR UPDATE OF images SKIP LOCKED) due
        LIMIT $4)
    RETURNING rowid, job_id, image_id, meta, url, attempts, lease_epoch, run_at, collection
)
SELECT c.rowid, c.job_id, c.image_id, c.meta, c.url, c.attempts, c.lease_epoch, c.run_at,
       c.collection, j.quality, j.format
FROM claimed c JOIN jobs j ON j.id = c.job_id";

impl Queue for PgStore {
    crate::store::shared::queue::shared_complete_image!();
    crate::store::shared::queue::shared_queue!();
}

impl PgStore {
    /// The claim: one statement that skips rows other daemons are
    /// claiming; times are the database's.
    async fn claim_batch(&self, batch: ClaimBatch<'_>) -> StoreResult<Vec<ClaimedImage>> {
        // One transaction with the packed-copy lookup: a server going away
        // between the two must not leave rows claimed by a caller who got an
        // error (they would wait out their whole lease).
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(CLAIM_SQL)
            .bind(&**batch.owner)
            .bind(self.at(batch.now_ms))
            .bind(millis(batch.lease))
            .bind(i64::from(batch.limit))
            .bind(batch.after_job)
            .fetch_all(&mut *tx)
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let claim = ClaimedRow::from_row(row)?;
            let identity = identity_from_fields(
                claim.job_id,
                row.try_get("quality")?,
                row.try_get("format")?,
            )?;
            claimed.push(claim.into_claimed(batch.owner, identity)?);
        }
        let mut claimed = in_queue_order(claimed);
        PgStore::attach_packed_copies_on(&mut tx, &mut claimed).await?;
        tx.commit().await?;
        Ok(claimed)
    }
}
