//! Job rows: submit, read, and every state change the engine and API make.
//!
//! Each change is a single conditional `UPDATE ... WHERE state IN (..)` (or
//! one short IMMEDIATE transaction for a submission), so two racing requests,
//! or a request racing the engine, cannot both win: the loser sees `None` and
//! the API answers 409 instead of silently overwriting a state.

use super::parts::insert_parts;
use super::{
    Counts, Job, JobState, JobTask, PauseReason, Store, StoreError, StoreResult, on_postgres,
    rfc3339_from_ms, to_u64,
};
use crate::model::{OutputFormat, Packaging, Quality};
use crate::selection::{JobSpec, Resync, Selection, Source};
use std::time::Duration;

/// The columns [`JobRow`] reads, in one place for every job query (on
/// both databases).
macro_rules! job_columns {
    () => {
        "id, username, selection, quality, format, package, resync_every_ms, next_sync_at, \
         state, enumeration_complete, last_error, pause_reason, note, page_size, created_at, \
         updated_at, progress_at, stalled_at, n_pending, n_in_progress, n_done, n_failed, \
         n_deleted, n_kept_jpeg, bytes_done"
    };
}
pub(super) use job_columns;

/// The states in which the engine works on a job.
pub const ACTIVE: &[JobState] = &[
    JobState::Queued,
    JobState::Enumerating,
    JobState::Downloading,
];

/// What `POST /jobs` did with a job's identity.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// No job with that identity existed (or only cancelled ones): a new one.
    Created(Job),
    /// A queued, running or paused job already has it: left alone, but for
    /// a new re-sync interval.
    Existing(Job),
    /// The job with that identity had finished (done or failed): its
    /// enumeration starts again and only new images get added.
    Resynced(Job),
}

impl Submitted {
    pub fn job(&self) -> &Job {
        match self {
            Submitted::Created(job) | Submitted::Existing(job) | Submitted::Resynced(job) => job,
        }
    }
}

/// States as the JSON array `json_each` reads, so one prepared statement
/// serves every set of states.
fn states_json(states: &[JobState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    serde_json::Value::from(names).to_string()
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A job's stored columns ([`job_columns!`]) as plain values, read the same
/// way from either database.
#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    id: i64,
    username: String,
    selection: Option<String>,
    quality: String,
    format: String,
    package: String,
    resync_every_ms: Option<i64>,
    next_sync_at: Option<i64>,
    state: String,
    enumeration_complete: bool,
    last_error: Option<String>,
    pause_reason: Option<String>,
    note: Option<String>,
    page_size: Option<i64>,
    created_at: i64,
    updated_at: i64,
    progress_at: Option<i64>,
    stalled_at: Option<i64>,
    n_pending: i64,
    n_in_progress: i64,
    n_done: i64,
    n_failed: i64,
    n_deleted: i64,
    n_kept_jpeg: i64,
    bytes_done: i64,
}

impl JobRow {
    /// The job these columns describe.
    pub(super) fn into_job(self) -> StoreResult<Job> {
        let id = self.id;
        let corrupt = |what: String| StoreError::Invalid(format!("job {id}: {what}"));
        let quality = self.quality.parse::<Quality>().map_err(corrupt)?;
        let format = self.format.parse::<OutputFormat>().map_err(corrupt)?;
        let package = self.package.parse::<Packaging>().map_err(corrupt)?;
        let state = self.state.parse::<JobState>().map_err(corrupt)?;
        let pause_reason = self
            .pause_reason
            .map(|r| r.parse::<PauseReason>())
            .transpose()
            .map_err(corrupt)?;
        let selection = match self.selection {
            Some(text) => {
                let value = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
                Selection::from_canonical(&value).map_err(corrupt)?
            }
            // Written by an older binary and not yet backfilled: a username job.
            None => Selection::user(&self.username),
        };
        let pending = to_u64(self.n_pending);
        let in_progress = to_u64(self.n_in_progress);
        let done = to_u64(self.n_done);
        let failed = to_u64(self.n_failed);
        Ok(Job {
            id,
            selection,
            quality,
            format,
            package,
            resync_every: self
                .resync_every_ms
                .map(|ms| Duration::from_millis(to_u64(ms))),
            next_sync_at: self.next_sync_at.map(rfc3339_from_ms),
            state,
            enumeration_complete: self.enumeration_complete,
            counts: Counts {
                discovered: pending + in_progress + done + failed,
                pending,
                in_progress,
                done,
                failed,
                deleted: to_u64(self.n_deleted),
                kept_jpeg: to_u64(self.n_kept_jpeg),
            },
            bytes_done: to_u64(self.bytes_done),
            created_at: rfc3339_from_ms(self.created_at),
            updated_at: rfc3339_from_ms(self.updated_at),
            last_error: self.last_error,
            pause_reason,
            progress_at: self.progress_at.map(rfc3339_from_ms),
            stalled_since: self.stalled_at.map(rfc3339_from_ms),
            note: self.note,
            page_size: self.page_size.and_then(|n| u32::try_from(n).ok()),
        })
    }
}

/// How a submission treats re-sync intervals: `Some` when it sets an
/// existing job's interval; and the interval a new job starts with.
pub(super) fn resync_millis(spec: &JobSpec) -> (Option<Option<i64>>, Option<i64>) {
    match spec.resync {
        Resync::KeepOr(interval) => (None, interval.map(millis)),
        Resync::Set(interval) => (Some(interval.map(millis)), interval.map(millis)),
    }
}

/// A new job's `username` column: the posted name, or empty.
pub(super) fn username_column(spec: &JobSpec) -> &str {
    match &spec.selection.source {
        Source::Username(name) => name.as_str(),
        _ => "",
    }
}

/// The spec a due re-sync restarts a job with, from its stored columns.
pub(super) fn resync_spec(
    id: i64,
    selection: &str,
    quality: &str,
    format: &str,
    package: &str,
) -> StoreResult<JobSpec> {
    let corrupt = |e: String| StoreError::Invalid(format!("job {id}: {e}"));
    let value = serde_json::from_str(selection).map_err(|e| corrupt(e.to_string()))?;
    Ok(JobSpec {
        selection: Selection::from_canonical(&value).map_err(corrupt)?,
        quality: quality.parse().map_err(corrupt)?,
        format: format.parse().map_err(corrupt)?,
        package: package.parse().map_err(corrupt)?,
        resync: Resync::KeepOr(None),
    })
}

/// A job written by an older binary, as [`Store::backfill_selections`] reads it.
pub(super) type LegacyJob = (
    i64,
    String,
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);

/// The spec of a job written by an older binary: a username job, its bbox
/// as a filter.
pub(super) fn legacy_spec(job: &LegacyJob) -> StoreResult<JobSpec> {
    let (id, username, quality, w, s, e, n) = job;
    let corrupt = |e: String| StoreError::Invalid(format!("job {id}: {e}"));
    let bbox = match (w, s, e, n) {
        (Some(w), Some(s), Some(e), Some(n)) => {
            Some(crate::model::Bbox::new(*w, *s, *e, *n).map_err(corrupt)?)
        }
        _ => None,
    };
    Ok(JobSpec::user(username, quality.parse().map_err(corrupt)?).with_bbox(bbox))
}

impl Store {
    /// Creates a job, or returns or re-syncs the newest non-cancelled job
    /// with the same identity ([`JobSpec::key`]), in one IMMEDIATE
    /// transaction on the writer so concurrent submissions of one selection
    /// never make two jobs. A cancelled job does not count: it may be posted
    /// again. A new re-sync interval is applied to an existing job.
    pub async fn submit_job(&self, spec: &JobSpec, now_ms: i64) -> StoreResult<Submitted> {
        on_postgres!(self.submit_job(spec, now_ms));
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
                    sqlx::query("UPDATE jobs SET resync_every_ms = ? WHERE id = ?")
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

    /// Re-syncs every done job whose `next_sync_at` has come: its enumeration
    /// starts again from its first parts; only new images get added.
    /// Returns the ids.
    pub async fn start_due_resyncs(&self, now_ms: i64) -> StoreResult<Vec<i64>> {
        on_postgres!(self.start_due_resyncs(now_ms));
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

    pub async fn find_job(&self, id: i64) -> StoreResult<Option<Job>> {
        on_postgres!(self.find_job(id));
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

    /// Every job, oldest first. O(jobs): counts are stored on the job row.
    pub async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        on_postgres!(self.list_jobs());
        self.jobs_in_states(JobState::ALL).await
    }

    /// Jobs in any of `states`, oldest first.
    pub async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        on_postgres!(self.jobs_in_states(states));
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

    /// Sets or clears `last_error` without touching the state.
    pub async fn set_job_error(
        &self,
        id: i64,
        last_error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<()> {
        on_postgres!(self.set_job_error(id, last_error, now_ms));
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

    /// Sets or clears the job's note (something to know that is not an error).
    pub async fn set_job_note(&self, id: i64, note: Option<&str>, now_ms: i64) -> StoreResult<()> {
        on_postgres!(self.set_job_note(id, note, now_ms));
        sqlx::query("UPDATE jobs SET note = ?, updated_at = ? WHERE id = ?")
            .bind(note)
            .bind(now_ms)
            .bind(id)
            .execute(self.writer()?)
            .await?;
        Ok(())
    }

    /// Ends a job that has not started (`queued`) as done without listing
    /// anything, with `note` saying why (its collection is already on the
    /// Internet Archive). `None` if it was no longer queued.
    pub async fn skip_queued_job(
        &self,
        id: i64,
        note: &str,
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        on_postgres!(self.skip_queued_job(id, note, now_ms));
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

    /// Lowers the job's listing page size for the rest of the job.
    pub async fn set_page_size(&self, id: i64, page_size: u32) -> StoreResult<()> {
        on_postgres!(self.set_page_size(id, page_size));
        sqlx::query("UPDATE jobs SET page_size = ? WHERE id = ?")
            .bind(i64::from(page_size))
            .bind(id)
            .execute(self.writer()?)
            .await?;
        Ok(())
    }

    /// Moves job `id` to `to` if it is in one of `from`; `None` if it is not
    /// (or does not exist). Keeps `last_error`. Not for pausing: a pause
    /// needs its reason ([`Store::pause_job`]).
    pub async fn transition_job(
        &self,
        id: i64,
        from: &[JobState],
        to: JobState,
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        on_postgres!(self.transition_job(id, from, to, now_ms));
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

    /// Pauses job `id` if it is in one of `from`, recording why (`reason`)
    /// and, when given, the message users read (`last_error`; `None` keeps
    /// the current one). `None` if it did not apply.
    pub async fn pause_job(
        &self,
        id: i64,
        from: &[JobState],
        reason: PauseReason,
        message: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        on_postgres!(self.pause_job(id, from, reason, message, now_ms));
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

    /// Marks job `id` done only if, at this instant, enumeration is complete
    /// and nothing is pending or in flight: a retry or re-sync that re-queued
    /// images meanwhile keeps the job open. A job with a re-sync interval
    /// gets its next due time. A stall message goes with the stall mark: the
    /// job can drain before the no-progress pass sees its progress. `None` if
    /// it did not apply.
    pub async fn finish_job_if_drained(&self, id: i64, now_ms: i64) -> StoreResult<Option<Job>> {
        on_postgres!(self.finish_job_if_drained(id, now_ms));
        self.finish_job_clearing(id, now_ms, false, None).await
    }

    /// [`Store::finish_job_if_drained`]; with `clear_error`, the job's
    /// `last_error` (a finishing failure that is now over) goes in the same
    /// write, so no reader sees the job done with a stale error. With
    /// `task`, refused ([`StoreError::LostJobTask`]) unless it still holds
    /// the job: a finisher that lost its lease must not end the job.
    pub async fn finish_job_clearing(
        &self,
        id: i64,
        now_ms: i64,
        clear_error: bool,
        task: Option<&JobTask>,
    ) -> StoreResult<Option<Job>> {
        on_postgres!(self.finish_job_clearing(id, now_ms, clear_error, task));
        let mut tx = self.writer()?.begin().await?;
        if let Some(task) = task {
            super::job_tasks::check_sqlite(&mut tx, task).await?;
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

    /// Puts job `id` back to work if it is in one of `from`: `enumerating`
    /// while its listing is unfinished, else `downloading`; clears
    /// `last_error` and the pause reason (the user has acted on them) and
    /// restarts the no-progress clock. `None` if it did not apply.
    pub async fn reactivate_job(
        &self,
        id: i64,
        from: &[JobState],
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        on_postgres!(self.reactivate_job(id, from, now_ms));
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

    /// Ids of the jobs paused for `reason`, oldest first.
    pub async fn jobs_paused_for(&self, reason: PauseReason) -> StoreResult<Vec<i64>> {
        on_postgres!(self.jobs_paused_for(reason));
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE state = 'paused' AND pause_reason = ? ORDER BY id",
        )
        .bind(reason.as_str())
        .fetch_all(self.reader()?)
        .await?)
    }

    /// Gives jobs written by an older binary their canonical selection and
    /// identity (a username job, its bbox as a filter). Runs at open.
    pub(super) async fn backfill_selections(&self) -> StoreResult<()> {
        on_postgres!(self.backfill_selections());
        let legacy: Vec<LegacyJob> = sqlx::query_as(
            "SELECT id, username, quality, bbox_west, bbox_south, bbox_east, bbox_north \
             FROM jobs WHERE selection IS NULL OR job_key IS NULL",
        )
        .fetch_all(self.writer()?)
        .await?;
        for job in legacy {
            let spec = legacy_spec(&job)?;
            sqlx::query("UPDATE jobs SET selection = ?, job_key = ? WHERE id = ?")
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

/// Starts a job's enumeration again from its first parts, inside `tx`: a
/// re-sync. Images already known stay; only new ones get added.
async fn restart_enumeration(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    spec: &JobSpec,
    now_ms: i64,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM job_parts WHERE job_id = ?")
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
