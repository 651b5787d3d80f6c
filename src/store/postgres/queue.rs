//! The [`crate::store::interface::Queue`] half on PostgreSQL.
//!
//! Every time comes from one reading of the database clock per statement
//! (`clock`), so a row's `updated_at`, `run_at` and `lease_until` agree.

use super::PgStore;
use crate::archive::ArchivedFile;
use crate::store::interface::*;
use crate::store::millis;
use crate::store::queue::{ClaimedRow, in_queue_order};
use crate::store::queue::{DeferPolicy, RetryPolicy, identity_from_fields};
use crate::store::sql;
use crate::store::{ClaimedImage, Completion, FailOutcome, FailReason, Lease, StoreResult};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::{FromRow, Row};
use std::sync::Arc;
use std::time::Duration;

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

/// The fence (as on SQLite): binds `rowid`, owner and epoch as `$n`,
/// `$n+1`, `$n+2` after the statement's `$1..$n-1`.
macro_rules! fence {
    ($n:literal, $n1:literal, $n2:literal) => {
        concat!(
            " WHERE rowid = $",
            $n,
            " AND state = 'in_progress' AND lease_owner = $",
            $n1,
            " AND lease_epoch = $",
            $n2
        )
    };
}

/// The tail of a subquery for the done copy of this row's image at path
/// `$2` that a written (or cleaned) tar holds: `SELECT c.<column>` + this.
macro_rules! packed_copy {
    () => {
        " FROM images c JOIN packings p ON p.id = c.packing_id \
         WHERE c.collection = images.collection AND c.image_id = images.image_id \
           AND c.state = 'done' AND c.path = $2 AND p.state <> 'planned' LIMIT 1"
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Binds a [`Lease`] to the three parameters of [`fence!`].
fn bind_lease<'q>(query: PgQuery<'q>, lease: &'q Lease) -> PgQuery<'q> {
    query
        .bind(lease.row_id)
        .bind(&*lease.owner)
        .bind(lease.epoch)
}

impl Queue for PgStore {
    /// PostgreSQL: One statement that skips rows other daemons are
    /// claiming; times are the database's.
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
        // One transaction with the packed-copy lookup: a server going away
        // between the two must not leave rows claimed by a caller who got an
        // error (they would wait out their whole lease).
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(CLAIM_SQL)
            .bind(&**owner)
            .bind(self.at(now_ms))
            .bind(millis(lease))
            .bind(i64::from(limit))
            .bind(after_job)
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
            claimed.push(claim.into_claimed(owner, identity)?);
        }
        let mut claimed = in_queue_order(claimed);
        PgStore::attach_packed_copies_on(&mut tx, &mut claimed).await?;
        tx.commit().await?;
        Ok(claimed)
    }
    async fn complete_image(
        &self,
        lease: &Lease,
        file: &ArchivedFile,
        now_ms: i64,
    ) -> StoreResult<Completion> {
        let path = file.path.to_string_lossy();
        let query = sqlx::query(concat!(
            "UPDATE images SET state = 'done', path = $2, kept_jpeg = $4, \
             packing_id = coalesce($5::BIGINT, (SELECT c.packing_id",
            packed_copy!(),
            ")), \
             sha256 = CASE WHEN $5::BIGINT IS NULL THEN coalesce((SELECT c.sha256",
            packed_copy!(),
            "), $3) ELSE $3 END, \
             bytes = CASE WHEN $5::BIGINT IS NULL THEN coalesce((SELECT c.bytes",
            packed_copy!(),
            "), $1) ELSE $1 END, \
             lease_owner = NULL, lease_until = NULL, last_error = NULL, fail_reason = NULL, \
             deferrals = 0, updated_at = coalesce($6::BIGINT, mld_now_ms())",
            fence!(7, 8, 9),
            " RETURNING packing_id"
        ))
        .bind(i64::try_from(file.bytes).unwrap_or(i64::MAX))
        .bind(path.as_ref())
        .bind(file.sha256.as_deref())
        .bind(file.kept_jpeg)
        .bind(file.packing_id)
        .bind(self.at(now_ms));
        let packing: Option<Option<i64>> = bind_lease(query, lease)
            .fetch_optional(self.pool())
            .await?
            .map(|row| row.try_get("packing_id"))
            .transpose()?;
        Ok(match packing {
            None => Completion::LeaseLost,
            Some(Some(_)) if file.packing_id.is_none() => Completion::JoinedTar,
            Some(_) => Completion::Done,
        })
    }

    /// PostgreSQL: The retry is due `policy.retry_at_ms - now_ms`
    /// after the database's now; `run_at` is what the database stored.
    async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        policy: RetryPolicy,
        now_ms: i64,
    ) -> StoreResult<FailOutcome> {
        let query = sqlx::query(concat!(
            "UPDATE images SET \
             state = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END, \
             fail_reason = CASE WHEN attempts >= $1 THEN 'error' ELSE NULL END, \
             run_at = CASE WHEN attempts >= $1 THEN run_at ELSE clock.now_ms + $2 END, \
             last_error = $3, lease_owner = NULL, lease_until = NULL, updated_at = clock.now_ms \
             FROM (SELECT coalesce($4::BIGINT, mld_now_ms()) AS now_ms) clock",
            fence!(5, 6, 7),
            " RETURNING state, run_at"
        ))
        .bind(i64::from(policy.max_attempts))
        .bind(policy.retry_at_ms.saturating_sub(now_ms))
        .bind(error)
        .bind(self.at(now_ms));
        let row = bind_lease(query, lease).fetch_optional(self.pool()).await?;
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
            "UPDATE images SET state = 'failed', fail_reason = $1, last_error = $2, \
             attempts = CASE WHEN $1 = 'deleted' THEN greatest(attempts - 1, 0) ELSE attempts END, \
             lease_owner = NULL, lease_until = NULL, updated_at = coalesce($3::BIGINT, mld_now_ms())",
            fence!(4, 5, 6)
        ))
        .bind(reason.as_str())
        .bind(error)
        .bind(self.at(now_ms));
        let result = bind_lease(query, lease).execute(self.pool()).await?;
        Ok(result.rows_affected() == 1)
    }

    /// PostgreSQL: `state = 'pending'` is re-checked on each row
    /// after any concurrent claim commits, so a row just claimed is left alone.
    async fn mark_pending_deleted(
        &self,
        row_ids: &[i64],
        error: &str,
        now_ms: i64,
    ) -> StoreResult<u64> {
        if row_ids.is_empty() {
            return Ok(0);
        }
        let result = sqlx::query(
            "UPDATE images SET state = 'failed', fail_reason = 'deleted', last_error = $1, \
             updated_at = clock.now_ms \
             FROM (SELECT coalesce($2::BIGINT, mld_now_ms()) AS now_ms) clock \
             WHERE state = 'pending' AND rowid = ANY($3)",
        )
        .bind(error)
        .bind(self.at(now_ms))
        .bind(row_ids)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }

    /// PostgreSQL: due `delay` after the store's clock's now (the
    /// database's, on [`super::PgClock::Database`]).
    async fn release(
        &self,
        lease: &Lease,
        delay: Duration,
        note: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let query = sqlx::query(concat!(
            "UPDATE images SET state = 'pending', attempts = greatest(attempts - 1, 0), \
             run_at = coalesce($1::BIGINT, mld_now_ms()) + $6, lease_owner = NULL, \
             lease_until = NULL, last_error = coalesce($2, last_error)",
            fence!(3, 4, 5)
        ))
        .bind(self.at(now_ms))
        .bind(note);
        let result = bind_lease(query, lease)
            .bind(crate::store::millis(delay))
            .execute(self.pool())
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// PostgreSQL: the same delay (truncated like SQLite's `CAST`),
    /// after the database's now.
    async fn defer(
        &self,
        lease: &Lease,
        note: &str,
        policy: DeferPolicy,
        now_ms: i64,
    ) -> StoreResult<Option<i64>> {
        let query = sqlx::query(concat!(
            "UPDATE images SET state = 'pending', attempts = greatest(attempts - 1, 0), \
             run_at = coalesce($1::BIGINT, mld_now_ms()) + trunc(\
                 least($2::BIGINT, $3::BIGINT * (1::BIGINT << least(deferrals, 30)::INT)) \
                 * $4::DOUBLE PRECISION)::BIGINT, \
             deferrals = deferrals + 1, lease_owner = NULL, lease_until = NULL, last_error = $5",
            fence!(6, 7, 8),
            " RETURNING run_at"
        ))
        .bind(self.at(now_ms))
        .bind(millis(policy.cap))
        .bind(millis(policy.base))
        .bind(policy.jitter.clamp(0.0, 1.0))
        .bind(note);
        Ok(bind_lease(query, lease)
            .fetch_optional(self.pool())
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
            "UPDATE images SET state = 'pending', attempts = 0, deferrals = 0, \
             run_at = clock.now_ms, last_error = NULL, fail_reason = NULL, \
             updated_at = clock.now_ms \
             FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) clock \
             WHERE job_id = $2 AND state = 'failed' \
               AND ($3 OR fail_reason IS DISTINCT FROM 'deleted')",
        )
        .bind(self.at(now_ms))
        .bind(job_id)
        .bind(include_deleted)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }

    /// PostgreSQL: Beware: like it, this hands back EVERY in-flight
    /// row, including leases other daemons sharing the database hold.
    async fn reset_in_flight(&self, now_ms: i64) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE images SET state = 'pending', attempts = greatest(attempts - 1, 0), \
             run_at = clock.now_ms, lease_owner = NULL, lease_until = NULL, \
             updated_at = clock.now_ms \
             FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) clock \
             WHERE state = 'in_progress'",
        )
        .bind(self.at(now_ms))
        .execute(self.pool())
        .await?;
        sqlx::query(sql::DROP_JOB_TASKS)
            .execute(self.pool())
            .await?;
        Ok(result.rows_affected())
    }
    async fn hand_back_leases_of(&self, owner: &str, now_ms: i64) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE images SET state = 'pending', attempts = greatest(attempts - 1, 0), \
             run_at = clock.now_ms, lease_owner = NULL, lease_until = NULL, \
             updated_at = clock.now_ms \
             FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) clock \
             WHERE state = 'in_progress' AND lease_owner = $2",
        )
        .bind(self.at(now_ms))
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }
}
