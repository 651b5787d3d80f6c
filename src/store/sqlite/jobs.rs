//! Job rows on SQLite: each state change is one conditional `UPDATE`, a submission one
//! `BEGIN IMMEDIATE` transaction on the writer, so two racing callers cannot both win.

use super::SqliteStore;
use super::parts::insert_parts;
use crate::selection::JobSpec;
use crate::store::interface::*;
use crate::store::jobs::*;
use crate::store::sql;
use crate::store::*;

impl Jobs for SqliteStore {
    crate::store::shared::shared_jobs!();

    async fn submit_job(&self, spec: &JobSpec, now_ms: i64) -> StoreResult<Submitted> {
        let key = spec.key();
        let mut tx = self.writer()?.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, state FROM jobs WHERE job_key = ? AND state <> 'cancelled' \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;
        // `Some` when the submission sets an existing job's interval; and
        // the interval a new job starts with.
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
                    restart_enumeration(&mut tx, id, spec, now_ms).await?;
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
                     VALUES (?1, ?2, '', ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?9, ?9) RETURNING id",
                )
                .bind(username_column(spec))
                .bind(spec.quality.as_str())
                .bind(spec.selection.source.kind())
                .bind(&selection)
                .bind(&key)
                .bind(spec.format.as_str())
                .bind(spec.package.as_str())
                .bind(new_job_resync_ms)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                insert_parts(&mut tx, id, 0, &spec.initial_parts()).await?;
                tx.commit().await?;
                Submitted::Created(self.job_after_write(id).await?)
            }
        };
        Ok(outcome)
    }

    async fn start_due_resyncs(&self, now_ms: i64) -> StoreResult<Vec<i64>> {
        let due: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT id, selection, quality, format, package FROM jobs \
             WHERE state = 'done' AND next_sync_at <= ? ORDER BY id",
        )
        .bind(now_ms)
        .fetch_all(self.reader()?)
        .await?;
        let mut started = Vec::new();
        for (id, selection, quality, format, package) in due {
            let spec = resync_spec(id, &selection, &quality, &format, &package)?;
            let mut tx = self.writer()?.begin_with("BEGIN IMMEDIATE").await?;
            let still_due: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM jobs WHERE id = ? AND state = 'done' AND next_sync_at <= ?",
            )
            .bind(id)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if still_due.is_some() {
                restart_enumeration(&mut tx, id, &spec, now_ms).await?;
                tx.commit().await?;
                started.push(id);
            }
        }
        Ok(started)
    }

    async fn find_job(&self, id: i64) -> StoreResult<Option<Job>> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.reader()?)
        .await?;
        row.map(JobRow::into_job).transpose()
    }

    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state IN (SELECT value FROM json_each(?)) ORDER BY id"
        ))
        .bind(states_json(states))
        .fetch_all(self.reader()?)
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn set_job_error(
        &self,
        id: i64,
        last_error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<()> {
        let result = sqlx::query("UPDATE jobs SET last_error = ?, updated_at = ? WHERE id = ?")
            .bind(last_error)
            .bind(now_ms)
            .bind(id)
            .execute(self.writer()?)
            .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NoSuchJob(id));
        }
        Ok(())
    }

    async fn set_job_note(&self, id: i64, note: Option<&str>, now_ms: i64) -> StoreResult<()> {
        sqlx::query("UPDATE jobs SET note = ?, updated_at = ? WHERE id = ?")
            .bind(note)
            .bind(now_ms)
            .bind(id)
            .execute(self.writer()?)
            .await?;
        Ok(())
    }

    async fn skip_queued_job(&self, id: i64, note: &str, now_ms: i64) -> StoreResult<Option<Job>> {
        let mut tx = self.writer()?.begin().await?;
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'done', enumeration_complete = 1, note = ?1, \
             next_sync_at = NULL, progress_at = ?2, updated_at = ?2 \
             WHERE id = ?3 AND state = 'queued' RETURNING id",
        )
        .bind(note)
        .bind(now_ms)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if changed.is_some() {
            sqlx::query("UPDATE job_parts SET done = 1 WHERE job_id = ?")
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
            "UPDATE jobs SET state = ?, updated_at = ? \
             WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
        )
        .bind(to.as_str())
        .bind(now_ms)
        .bind(id)
        .bind(states_json(from))
        .fetch_optional(self.writer()?)
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
            "UPDATE jobs SET state = 'paused', pause_reason = ?, \
             last_error = ifnull(?, CASE WHEN stalled_at IS NULL THEN last_error END), \
             stalled_at = NULL, updated_at = ? \
             WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
        )
        .bind(reason.as_str())
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .bind(states_json(from))
        .fetch_optional(self.writer()?)
        .await?;
        self.job_if_changed(changed).await
    }

    async fn finish_job_clearing(
        &self,
        id: i64,
        now_ms: i64,
        clear_error: bool,
        task: Option<&JobTask>,
    ) -> StoreResult<Option<Job>> {
        let mut tx = self.writer()?.begin().await?;
        if let Some(task) = task {
            super::task_lease::check(&mut tx, task).await?;
        }
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'done', stalled_at = NULL, updated_at = ?1, \
             last_error = CASE WHEN ?3 OR stalled_at IS NOT NULL THEN NULL ELSE last_error END, \
             next_sync_at = CASE WHEN resync_every_ms IS NULL THEN NULL ELSE ?1 + resync_every_ms END \
             WHERE id = ?2 AND state IN ('enumerating', 'downloading') AND enumeration_complete = 1 \
               AND n_pending = 0 AND n_in_progress = 0 RETURNING id",
        )
        .bind(now_ms)
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
            "UPDATE jobs SET state = CASE WHEN enumeration_complete = 1 \
             THEN 'downloading' ELSE 'enumerating' END, last_error = NULL, pause_reason = NULL, \
             stalled_at = NULL, progress_at = ?1, updated_at = ?1 \
             WHERE id = ?2 AND state IN (SELECT value FROM json_each(?3)) RETURNING id",
        )
        .bind(now_ms)
        .bind(id)
        .bind(states_json(from))
        .fetch_optional(self.writer()?)
        .await?;
        self.job_if_changed(changed).await
    }
}

impl SqliteStore {
    /// Gives jobs written by an older binary their canonical selection and
    /// identity (a username job, its bbox as a filter). Runs at open.
    pub(super) async fn backfill_selections(&self) -> StoreResult<()> {
        let legacy: Vec<LegacyJob> = sqlx::query_as(sql::LEGACY_JOBS)
            .fetch_all(self.writer()?)
            .await?;
        for job in legacy {
            let spec = legacy_spec(&job)?;
            sqlx::query(sql::SET_SELECTION)
                .bind(spec.selection.canonical().to_string())
                .bind(spec.key())
                .bind(job.0)
                .execute(self.writer()?)
                .await?;
        }
        Ok(())
    }

    /// Reads a job just written. A WAL reader sees every committed write, so
    /// the row is there unless something deleted it in between.
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

/// States as the JSON array `json_each` reads, so one prepared statement
/// serves every set of states.
fn states_json(states: &[JobState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    serde_json::Value::from(names).to_string()
}

/// Starts a job's enumeration again from its first parts, inside `tx`: a
/// re-sync. Images already known stay; only new ones get added.
async fn restart_enumeration(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    spec: &JobSpec,
    now_ms: i64,
) -> StoreResult<()> {
    sqlx::query(sql::DELETE_PARTS)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    insert_parts(tx, id, 0, &spec.initial_parts()).await?;
    sqlx::query(
        "UPDATE jobs SET enumeration_complete = 0, cursor = NULL, state = 'enumerating', \
         last_error = NULL, stalled_at = NULL, next_sync_at = NULL, note = NULL, \
         progress_at = ?1, updated_at = ?1 WHERE id = ?2",
    )
    .bind(now_ms)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
