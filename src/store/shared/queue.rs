//! [`crate::store::interface::Queue`]'s outcomes written once for both
//! backends: every one a single fenced statement (no transaction per
//! completion). The claim stays each backend's own: SQLite pins its partial
//! indexes, PostgreSQL skips rows other daemons are claiming.
//!
//! A statement that writes the time twice reads it once (`FROM (SELECT now
//! AS now_ms) clock`), so a row's `run_at` and `updated_at` agree on
//! PostgreSQL's volatile clock.

/// The fence every outcome carries: only the current lease holder, on the
/// claim it made (the row's epoch, which every claim bumps and nothing
/// resets), may change an in-flight row. `rowid`, owner and epoch at the
/// three placeholders given, bound by [`bind_lease!`].
macro_rules! fence {
    ($row:literal, $owner:literal, $epoch:literal) => {
        concat!(
            " WHERE images.rowid = ",
            $row,
            " AND state = 'in_progress' AND lease_owner = ",
            $owner,
            " AND lease_epoch = ",
            $epoch
        )
    };
}
pub(in crate::store) use fence;

/// Binds a lease's row id, owner and epoch, in [`fence!`]'s order.
macro_rules! bind_lease {
    ($query:expr, $lease:expr) => {
        $query
            .bind($lease.row_id)
            .bind(&*$lease.owner)
            .bind($lease.epoch)
    };
}
pub(in crate::store) use bind_lease;

/// The tail of a subquery for the done copy of this row's image at path
/// `$2` that a written (or cleaned) tar holds: `SELECT c.<column>` + this.
macro_rules! packed_copy {
    () => {
        concat!(
            " FROM images c",
            super::dialect::hint!("images_copies"),
            " JOIN packings p ON p.id = c.packing_id \
             WHERE c.collection = images.collection AND c.image_id = images.image_id \
               AND c.state = 'done' AND c.path = $2 AND p.state <> 'planned' LIMIT 1"
        )
    };
}
pub(in crate::store) use packed_copy;

/// One attempt fewer, never below zero: a hand-back costs no attempt.
macro_rules! attempt_back {
    () => {
        "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
    };
}
pub(in crate::store) use attempt_back;

/// The completion statement: the packed copy at path `$2`, if any, gives the
/// packing, the checksum and the size (each subquery one index seek); fenced
/// by the lease at `$7`-`$9`; `$6` is the time. Written alone by
/// [`shared_complete_image!`]; SQLite writes its completions in groups
/// instead, with the same `SET` over a JSON array
/// (`store/sqlite/completions.rs`, `GROUP_SQL`).
macro_rules! complete_image_sql {
    () => {
        concat!(
            "UPDATE images SET state = 'done', path = $2, kept_jpeg = $4, \
             packing_id = coalesce(CAST($5 AS BIGINT), (SELECT c.packing_id",
            $crate::store::shared::queue::packed_copy!(),
            ")), sha256 = CASE WHEN CAST($5 AS BIGINT) IS NULL \
             THEN coalesce((SELECT c.sha256",
            $crate::store::shared::queue::packed_copy!(),
            "), $3) ELSE $3 END, bytes = CASE WHEN CAST($5 AS BIGINT) IS NULL \
             THEN coalesce((SELECT c.bytes",
            $crate::store::shared::queue::packed_copy!(),
            "), $1) ELSE $1 END, \
             lease_owner = NULL, lease_until = NULL, last_error = NULL, fail_reason = NULL, \
             deferrals = 0, updated_at = ",
            super::dialect::now!("$6"),
            $crate::store::shared::queue::fence!("$7", "$8", "$9"),
            " RETURNING packing_id"
        )
    };
}
pub(in crate::store) use complete_image_sql;

/// What a completion's `RETURNING packing_id` (or its absence: the fence
/// refused it) means for the worker.
pub(in crate::store) fn completion(
    packing: Option<Option<i64>>,
    file: &crate::archive::ArchivedFile,
) -> crate::store::Completion {
    use crate::store::Completion;
    match packing {
        None => Completion::LeaseLost,
        Some(Some(_)) if file.packing_id.is_none() => Completion::JoinedTar,
        Some(_) => Completion::Done,
    }
}

/// `complete_image` as one statement on the caller's connection: the
/// PostgreSQL backend's (SQLite groups its completions instead).
macro_rules! shared_complete_image {
    () => {
        async fn complete_image(
            &self,
            lease: &$crate::store::Lease,
            file: &$crate::archive::ArchivedFile,
            now_ms: i64,
        ) -> $crate::store::StoreResult<$crate::store::Completion> {
            use $crate::store::shared::queue::{bind_lease, complete_image_sql, completion};
            let path = file.path.to_string_lossy();
            let query = sqlx::query_scalar(complete_image_sql!())
                .bind(i64::try_from(file.bytes).unwrap_or(i64::MAX))
                .bind(path.as_ref())
                .bind(file.sha256.as_deref())
                .bind(file.kept_jpeg)
                .bind(file.packing_id)
                .bind(self.at(now_ms));
            let packing: Option<Option<i64>> = bind_lease!(query, lease)
                .fetch_optional(self.writer()?)
                .await?;
            Ok(completion(packing, file))
        }
    };
}
pub(in crate::store) use shared_complete_image;

/// The `Queue` methods but the completion, expanded inside a backend's
/// `impl Queue for …`; the claim itself is the backend's `claim_batch`.
macro_rules! shared_queue {
    () => {
        async fn claim(
            &self,
            owner: &std::sync::Arc<str>,
            limit: u32,
            lease: std::time::Duration,
            now_ms: i64,
            after_job: i64,
        ) -> $crate::store::StoreResult<Vec<$crate::store::ClaimedImage>> {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let batch = $crate::store::queue::ClaimBatch {
                owner,
                limit,
                lease,
                now_ms,
                after_job,
            };
            self.claim_batch(batch).await
        }

        /// The retry is due `policy.retry_at_ms - now_ms` after the store's
        /// now (the database's on PostgreSQL); `run_at` is what was stored.
        async fn fail(
            &self,
            lease: &$crate::store::Lease,
            error: &str,
            policy: $crate::store::RetryPolicy,
            now_ms: i64,
        ) -> $crate::store::StoreResult<$crate::store::FailOutcome> {
            use $crate::store::FailOutcome;
            use $crate::store::shared::queue::{bind_lease, fence};
            let query = sqlx::query_as(concat!(
                "UPDATE images SET \
                 state = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'pending' END, \
                 fail_reason = CASE WHEN attempts >= $1 THEN 'error' ELSE NULL END, \
                 run_at = CASE WHEN attempts >= $1 THEN run_at ELSE clock.now_ms + $2 END, \
                 last_error = $3, lease_owner = NULL, lease_until = NULL, \
                 updated_at = clock.now_ms FROM (SELECT ",
                super::dialect::now!("$4"),
                " AS now_ms) clock",
                fence!("$5", "$6", "$7"),
                " RETURNING state, run_at"
            ))
            .bind(i64::from(policy.max_attempts))
            .bind(policy.retry_at_ms.saturating_sub(now_ms))
            .bind(error)
            .bind(self.at(now_ms));
            let row: Option<(String, i64)> = bind_lease!(query, lease)
                .fetch_optional(self.writer()?)
                .await?;
            Ok(match row {
                None => FailOutcome::LeaseLost,
                Some((state, _)) if state == "failed" => FailOutcome::FailedForGood,
                Some((_, run_at)) => FailOutcome::Retrying { run_at },
            })
        }

        async fn fail_for_good(
            &self,
            lease: &$crate::store::Lease,
            reason: $crate::store::FailReason,
            error: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            use $crate::store::shared::queue::{attempt_back, bind_lease, fence};
            let query = sqlx::query(concat!(
                "UPDATE images SET state = 'failed', fail_reason = $1, last_error = $2, \
                 attempts = CASE WHEN $1 = 'deleted' THEN ",
                attempt_back!(),
                " ELSE attempts END, lease_owner = NULL, lease_until = NULL, updated_at = ",
                super::dialect::now!("$3"),
                fence!("$4", "$5", "$6")
            ))
            .bind(reason.as_str())
            .bind(error)
            .bind(self.at(now_ms));
            let result = bind_lease!(query, lease).execute(self.writer()?).await?;
            Ok(result.rows_affected() == 1)
        }

        /// `state = 'pending'` is re-checked on each row (on PostgreSQL after
        /// any concurrent claim commits), so a row just claimed is left alone.
        async fn mark_pending_deleted(
            &self,
            row_ids: &[i64],
            error: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<u64> {
            if row_ids.is_empty() {
                return Ok(0);
            }
            let result = sqlx::query(concat!(
                "UPDATE images SET state = 'failed', fail_reason = 'deleted', last_error = $1, \
                 updated_at = ",
                super::dialect::now!("$2"),
                " WHERE state = 'pending' AND rowid ",
                super::dialect::in_list!("$3")
            ))
            .bind(error)
            .bind(self.at(now_ms))
            .bind(super::dialect::ids(row_ids))
            .execute(self.writer()?)
            .await?;
            Ok(result.rows_affected())
        }

        $crate::store::shared::queue::shared_queue_hand_backs!();
    };
}
pub(in crate::store) use shared_queue;

/// Rows handed back to `pending`: a release, a deferral, a retry of failed
/// rows, and the leases of a restart or of a stopping daemon.
macro_rules! shared_queue_hand_backs {
    () => {
        /// Due `delay` after the store's now (the database's on PostgreSQL).
        async fn release(
            &self,
            lease: &$crate::store::Lease,
            delay: std::time::Duration,
            note: Option<&str>,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            use $crate::store::shared::queue::{attempt_back, bind_lease, fence};
            let query = sqlx::query(concat!(
                "UPDATE images SET state = 'pending', attempts = ",
                attempt_back!(),
                ", run_at = ",
                super::dialect::now!("$1"),
                " + $6, lease_owner = NULL, lease_until = NULL, \
                 last_error = coalesce($2, last_error)",
                fence!("$3", "$4", "$5")
            ))
            .bind(self.at(now_ms))
            .bind(note);
            let result = bind_lease!(query, lease)
                .bind($crate::store::millis(delay))
                .execute(self.writer()?)
                .await?;
            Ok(result.rows_affected() == 1)
        }

        async fn defer(
            &self,
            lease: &$crate::store::Lease,
            note: &str,
            policy: $crate::store::DeferPolicy,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Option<i64>> {
            use $crate::store::millis;
            use $crate::store::shared::queue::{attempt_back, bind_lease, fence};
            let query = sqlx::query_scalar(concat!(
                "UPDATE images SET state = 'pending', attempts = ",
                attempt_back!(),
                ", run_at = ",
                super::dialect::now!("$1"),
                " + ",
                super::dialect::deferral!("$2", "$3", "$4"),
                ", deferrals = deferrals + 1, lease_owner = NULL, lease_until = NULL, \
                 last_error = $5",
                fence!("$6", "$7", "$8"),
                " RETURNING run_at"
            ))
            .bind(self.at(now_ms))
            .bind(millis(policy.cap))
            .bind(millis(policy.base))
            .bind(policy.jitter.clamp(0.0, 1.0))
            .bind(note);
            Ok(bind_lease!(query, lease)
                .fetch_optional(self.writer()?)
                .await?)
        }

        async fn retry_failed(
            &self,
            job_id: i64,
            include_deleted: bool,
            now_ms: i64,
        ) -> $crate::store::StoreResult<u64> {
            let result = sqlx::query(concat!(
                "UPDATE images SET state = 'pending', attempts = 0, deferrals = 0, \
                 run_at = clock.now_ms, last_error = NULL, fail_reason = NULL, \
                 updated_at = clock.now_ms FROM (SELECT ",
                super::dialect::now!("$1"),
                " AS now_ms) clock WHERE job_id = $2 AND state = 'failed' \
                   AND ($3 OR fail_reason IS DISTINCT FROM 'deleted')"
            ))
            .bind(self.at(now_ms))
            .bind(job_id)
            .bind(include_deleted)
            .execute(self.writer()?)
            .await?;
            Ok(result.rows_affected())
        }

        /// Hands back EVERY in-flight row (on PostgreSQL including leases
        /// other daemons hold) and every job's task lease: for a restart of
        /// a queue this process has alone.
        async fn reset_in_flight(&self, now_ms: i64) -> $crate::store::StoreResult<u64> {
            use $crate::store::shared::queue::hand_back_in_flight;
            let result = sqlx::query(hand_back_in_flight!(""))
                .bind(self.at(now_ms))
                .execute(self.writer()?)
                .await?;
            sqlx::query($crate::store::sql::DROP_JOB_TASKS)
                .execute(self.writer()?)
                .await?;
            Ok(result.rows_affected())
        }

        async fn hand_back_leases_of(
            &self,
            owner: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<u64> {
            use $crate::store::shared::queue::hand_back_in_flight;
            let result = sqlx::query(hand_back_in_flight!(" AND lease_owner = $2"))
                .bind(self.at(now_ms))
                .bind(owner)
                .execute(self.writer()?)
                .await?;
            Ok(result.rows_affected())
        }
    };
}
pub(in crate::store) use shared_queue_hand_backs;

/// The `UPDATE` that hands in-flight rows back to `pending` (the attempt
/// given back, due at once by the store's now, `$1`), narrowed by `$rest`
/// (`""`: every in-flight row). One literal, so the statement stays
/// `&'static str`; `now!` is the expanding backend's.
macro_rules! hand_back_in_flight {
    ($rest:literal) => {
        concat!(
            "UPDATE images SET state = 'pending', attempts = ",
            $crate::store::shared::queue::attempt_back!(),
            ", run_at = clock.now_ms, lease_owner = NULL, lease_until = NULL, \
             updated_at = clock.now_ms FROM (SELECT ",
            super::dialect::now!("$1"),
            " AS now_ms) clock WHERE state = 'in_progress'",
            $rest
        )
    };
}
pub(in crate::store) use hand_back_in_flight;
