//! The [`crate::store::interface::Jobs`] half on PostgreSQL.
//!
//! Jobs are read from `job_rows` (the job row plus its unfolded counter
//! deltas) and written to `jobs`. Several daemons share the table, so every
//! read-then-write below is made race-free; each place says how.

use super::PgStore;
use super::parts::insert_parts;
use crate::selection::JobSpec;
use crate::store::interface::*;
use crate::store::jobs::{
    JobRow, LegacyJob, job_columns, legacy_spec, resync_millis, resync_spec, username_column,
};
use crate::store::sql;
use crate::store::{Job, JobState, JobTask, PauseReason, StoreError, StoreResult, Submitted};
use sqlx::PgConnection;

/// The advisory-lock namespace (`pg_advisory_xact_lock(key1, key2)`'s first
/// key) that serialises submissions of one job identity.
const SUBMIT_LOCK: i32 = 0x6d6c_6401;

/// States as a PostgreSQL `TEXT[]` for `state = ANY($n)`.
fn state_names(states: &[JobState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

impl Jobs for PgStore {
    crate::store::shared::shared_jobs!();

    /// PostgreSQL: SQLite's `BEGIN IMMEDIATE` makes find-then-insert
    /// atomic; here several daemons may submit one selection at once, so the
    /// transaction first takes an advisory lock on the job's identity
    /// (`hashtext(job_key)`): a second submitter waits until the first
    /// commits, and its next statement (a new READ COMMITTED snapshot) sees
    /// the job the first one made. The existing row is also locked
    /// (`FOR UPDATE`) so no state change races the re-sync decision.
    async fn submit_job(&self, spec: &JobSpec, now_ms: i64) -> StoreResult<Submitted> {
        let key = spec.key();
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(SUBMIT_LOCK)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, state FROM jobs WHERE job_key = $1 AND state <> 'cancelled' \
             ORDER BY id DESC LIMIT 1 FOR UPDATE",
        )
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        let (resync_ms, new_job_resync_ms) = resync_millis(spec);
        let outcome = match existing {
            Some((id, state)) => {
                let state = state.parse::<JobState>().map_err(StoreError::Invalid)?;
                if let Some(interval) = resync_ms {
                    sqlx::query(sql::SET_RESYNC_EVERY)
                        .bind(interval)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                if matches!(state, JobState::Done | JobState::Failed) {
                    restart_enumeration(&mut tx, id, spec, self.at(now_ms)).await?;
                    tx.commit().await?;
                    Submitted::Resynced(self.job_after_write(id).await?)
                } else {
                    tx.commit().await?;
                    Submitted::Existing(self.job_after_write(id).await?)
                }
            }
            None => {
                let selection = spec.selection.canonical().to_string();
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO jobs (username, quality, bbox_key, source_kind, selection, job_key, \
                     format, package, resync_every_ms, state, created_at, updated_at, progress_at) \
                     SELECT $1, $2, '', $3, $4, $5, $6, $7, $8, 'queued', t.now_ms, t.now_ms, t.now_ms \
                     FROM (SELECT coalesce($9::BIGINT, mld_now_ms()) AS now_ms) t RETURNING id",
                )
                .bind(username_column(spec))
                .bind(spec.quality.as_str())
                .bind(spec.selection.source.kind())
                .bind(&selection)
                .bind(&key)
                .bind(spec.format.as_str())
                .bind(spec.package.as_str())
                .bind(new_job_resync_ms)
                .bind(self.at(now_ms))
                .fetch_one(&mut *tx)
                .await?;
                insert_parts(&mut tx, id, 0, &spec.initial_parts()).await?;
                tx.commit().await?;
                Submitted::Created(self.job_after_write(id).await?)
            }
        };
        Ok(outcome)
    }

    /// PostgreSQL: The re-check locks the job row (`FOR UPDATE`):
    /// of two daemons re-syncing one job, the second waits and then finds it
    /// no longer done.
    async fn start_due_resyncs(&self, now_ms: i64) -> StoreResult<Vec<i64>> {
        let at = self.at(now_ms);
        let due: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, selection, quality, format, package FROM jobs \
             WHERE state = 'done' AND next_sync_at <= coalesce($1::BIGINT, mld_now_ms()) \
             ORDER BY id",
        )
        .bind(at)
        .fetch_all(self.pool())
        .await?;
        let mut started = Vec::new();
        for (id, selection, quality, format, package) in due {
            let spec = resync_spec(id, &selection, &quality, &format, &package)?;
            let mut tx = self.pool().begin().await?;
            let still_due: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE id = $1 AND state = 'done' \
                 AND next_sync_at <= coalesce($2::BIGINT, mld_now_ms()) FOR UPDATE",
            )
            .bind(id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            if still_due.is_some() {
                restart_enumeration(&mut tx, id, &spec, at).await?;
                tx.commit().await?;
                started.push(id);
            }
        }
        Ok(started)
    }

    /// PostgreSQL: counts come from `job_rows`.
    async fn find_job(&self, id: i64) -> StoreResult<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job_rows WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.map(JobRow::into_job).transpose()
    }

    /// PostgreSQL: counts come from `job_rows`.
    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job_rows WHERE state = ANY($1) ORDER BY id"
        ))
        .bind(state_names(states))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn set_job_error(
        &self,
        id: i64,
        last_error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<()> {
        let result = sqlx::query(
            "UPDATE jobs SET last_error = $1, updated_at = coalesce($2::BIGINT, mld_now_ms()) \
             WHERE id = $3",
        )
        .bind(last_error)
        .bind(self.at(now_ms))
        .bind(id)
        .execute(self.pool())
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NoSuchJob(id));
        }
        Ok(())
    }

    async fn set_job_note(&self, id: i64, note: Option<&str>, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET note = $1, updated_at = coalesce($2::BIGINT, mld_now_ms()) \
             WHERE id = $3",
        )
        .bind(note)
        .bind(self.at(now_ms))
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// PostgreSQL: The conditional UPDATE decides (PostgreSQL
    /// re-checks `state` after waiting on a concurrent writer).
    async fn skip_queued_job(&self, id: i64, note: &str, now_ms: i64) -> StoreResult<Option<Job>> {
        let mut tx = self.pool().begin().await?;
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'done', enumeration_complete = true, note = $1, \
             next_sync_at = NULL, progress_at = t.now_ms, updated_at = t.now_ms \
             FROM (SELECT coalesce($2::BIGINT, mld_now_ms()) AS now_ms) t \
             WHERE id = $3 AND state = 'queued' RETURNING id",
        )
        .bind(note)
        .bind(self.at(now_ms))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if changed.is_some() {
            sqlx::query("UPDATE job_parts SET done = true WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.job_if_changed(changed).await
    }

    async fn transition_job(
        &self,
        id: i64,
        from: &[JobState],
        to: JobState,
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = $1, updated_at = coalesce($2::BIGINT, mld_now_ms()) \
             WHERE id = $3 AND state = ANY($4) RETURNING id",
        )
        .bind(to.as_str())
        .bind(self.at(now_ms))
        .bind(id)
        .bind(state_names(from))
        .fetch_optional(self.pool())
        .await?;
        self.job_if_changed(changed).await
    }

    async fn pause_job(
        &self,
        id: i64,
        from: &[JobState],
        reason: PauseReason,
        message: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'paused', pause_reason = $1, \
             last_error = coalesce($2, CASE WHEN stalled_at IS NULL THEN last_error END), \
             stalled_at = NULL, updated_at = coalesce($3::BIGINT, mld_now_ms()) \
             WHERE id = $4 AND state = ANY($5) RETURNING id",
        )
        .bind(reason.as_str())
        .bind(message)
        .bind(self.at(now_ms))
        .bind(id)
        .bind(state_names(from))
        .fetch_optional(self.pool())
        .await?;
        self.job_if_changed(changed).await
    }

    /// PostgreSQL: "Nothing pending or in flight" is tested on the
    /// `images` rows themselves (the counters may lag). The job row is
    /// locked first, so the UPDATE's snapshot, taken after the lock, sees
    /// every write of whoever held it (a re-sync or retry that re-queued
    /// images); in one statement, a re-check after waiting on the row would
    /// see the new job row but still the old images.
    async fn finish_job_clearing(
        &self,
        id: i64,
        now_ms: i64,
        clear_error: bool,
        task: Option<&JobTask>,
    ) -> StoreResult<Option<Job>> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Some(task) = task {
            super::task_lease::check(&mut tx, task).await?;
        }
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'done', stalled_at = NULL, updated_at = t.now_ms, \
             last_error = CASE WHEN $3 OR stalled_at IS NOT NULL THEN NULL ELSE last_error END, \
             next_sync_at = CASE WHEN resync_every_ms IS NULL THEN NULL \
                                 ELSE t.now_ms + resync_every_ms END \
             FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t \
             WHERE id = $2 AND state IN ('enumerating', 'downloading') AND enumeration_complete \
               AND NOT EXISTS (SELECT 1 FROM images i WHERE i.job_id = $2 AND i.state = 'pending') \
               AND NOT EXISTS (SELECT 1 FROM images i \
                               WHERE i.job_id = $2 AND i.state = 'in_progress') \
             RETURNING id",
        )
        .bind(self.at(now_ms))
        .bind(id)
        .bind(clear_error)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        self.job_if_changed(changed).await
    }

    async fn reactivate_job(
        &self,
        id: i64,
        from: &[JobState],
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = CASE WHEN enumeration_complete \
             THEN 'downloading' ELSE 'enumerating' END, last_error = NULL, pause_reason = NULL, \
             stalled_at = NULL, progress_at = t.now_ms, updated_at = t.now_ms \
             FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t \
             WHERE id = $2 AND state = ANY($3) RETURNING id",
        )
        .bind(self.at(now_ms))
        .bind(id)
        .bind(state_names(from))
        .fetch_optional(self.pool())
        .await?;
        self.job_if_changed(changed).await
    }
}

impl PgStore {
    /// PostgreSQL: A PostgreSQL store never had rows without a
    /// selection; daemons running it at once write the same values.
    pub async fn backfill_selections(&self) -> StoreResult<()> {
        let legacy: Vec<LegacyJob> = sqlx::query_as(sql::LEGACY_JOBS)
            .fetch_all(self.pool())
            .await?;
        for job in legacy {
            let spec = legacy_spec(&job)?;
            sqlx::query(sql::SET_SELECTION)
                .bind(spec.selection.canonical().to_string())
                .bind(spec.key())
                .bind(job.0)
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    /// Reads a job just written (and committed).
    async fn job_after_write(&self, id: i64) -> StoreResult<Job> {
        self.find_job(id).await?.ok_or(StoreError::NoSuchJob(id))
    }

    /// The job a conditional `UPDATE … RETURNING id` changed, if it applied.
    async fn job_if_changed(&self, changed: Option<i64>) -> StoreResult<Option<Job>> {
        match changed {
            Some(id) => Ok(Some(self.job_after_write(id).await?)),
            None => Ok(None),
        }
    }
}

/// Starts a job's enumeration again from its first parts, on `tx` (whose
/// transaction holds the job row): a re-sync. `at` is [`PgStore::at`]'s.
async fn restart_enumeration(
    tx: &mut PgConnection,
    id: i64,
    spec: &JobSpec,
    at: Option<i64>,
) -> StoreResult<()> {
    sqlx::query(sql::DELETE_PARTS)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    insert_parts(tx, id, 0, &spec.initial_parts()).await?;
    sqlx::query(
        "UPDATE jobs SET enumeration_complete = false, cursor = NULL, state = 'enumerating', \
         last_error = NULL, stalled_at = NULL, next_sync_at = NULL, note = NULL, \
         progress_at = t.now_ms, updated_at = t.now_ms \
         FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t WHERE id = $2",
    )
    .bind(at)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
