//! Job rows: submit, read, and every state change the engine and API make.
//!
//! Each change is a single conditional `UPDATE ... WHERE state IN (..)` (or
//! one short IMMEDIATE transaction for a submission), so two racing requests,
//! or a request racing the engine, cannot both win: the loser sees `None` and
//! the API answers 409 instead of silently overwriting a state.

use super::{
    Counts, Job, JobState, PauseReason, Store, StoreError, StoreResult, rfc3339_from_ms, to_u64,
};
use crate::model::{Bbox, Quality};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// The columns [`job_from_row`] reads, in one place for every job query.
macro_rules! job_columns {
    () => {
        "id, username, quality, bbox_west, bbox_south, bbox_east, bbox_north, state, \
         enumeration_complete, cursor, last_error, pause_reason, created_at, updated_at, \
         progress_at, stalled_at, n_pending, n_in_progress, n_done, n_failed, n_deleted, bytes_done"
    };
}

/// The states in which the engine works on a job.
pub const ACTIVE: &[JobState] = &[
    JobState::Queued,
    JobState::Enumerating,
    JobState::Downloading,
];

/// What `POST /jobs` did with a (username, quality, bbox).
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// No job with that key existed (or only cancelled ones): a new one.
    Created(Job),
    /// A queued, running or paused job already has that key: left alone.
    Existing(Job),
    /// The job with that key had finished (done or failed): its enumeration
    /// starts again from the first page and only new images get added.
    Resynced(Job),
}

impl Submitted {
    pub fn job(&self) -> &Job {
        match self {
            Submitted::Created(job) | Submitted::Existing(job) | Submitted::Resynced(job) => job,
        }
    }
}

/// The dedupe key of a bbox: exact shortest round-trip decimals, so two posts
/// of the same numbers match and any other numbers do not.
fn bbox_key(bbox: Option<Bbox>) -> String {
    match bbox {
        None => String::new(),
        Some(b) => format!("{},{},{},{}", b.west, b.south, b.east, b.north),
    }
}

/// States as the JSON array `json_each` reads, so one prepared statement
/// serves every set of states.
fn states_json(states: &[JobState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    serde_json::Value::from(names).to_string()
}

fn job_from_row(row: &SqliteRow) -> StoreResult<Job> {
    let id: i64 = row.try_get("id")?;
    let corrupt = |what: String| StoreError::Invalid(format!("job {id}: {what}"));
    let quality: String = row.try_get("quality")?;
    let quality = quality.parse::<Quality>().map_err(corrupt)?;
    let state: String = row.try_get("state")?;
    let state = state.parse::<JobState>().map_err(corrupt)?;
    let pause_reason: Option<String> = row.try_get("pause_reason")?;
    let pause_reason = pause_reason
        .map(|r| r.parse::<PauseReason>())
        .transpose()
        .map_err(corrupt)?;
    let corners: [Option<f64>; 4] = [
        row.try_get("bbox_west")?,
        row.try_get("bbox_south")?,
        row.try_get("bbox_east")?,
        row.try_get("bbox_north")?,
    ];
    let bbox = match corners {
        [Some(w), Some(s), Some(e), Some(n)] => Some(Bbox::new(w, s, e, n).map_err(corrupt)?),
        [None, None, None, None] => None,
        _ => return Err(corrupt("bbox is partly missing".into())),
    };
    let pending = to_u64(row.try_get("n_pending")?);
    let in_progress = to_u64(row.try_get("n_in_progress")?);
    let done = to_u64(row.try_get("n_done")?);
    let failed = to_u64(row.try_get("n_failed")?);
    let optional_time = |column: &str| -> StoreResult<Option<String>> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(rfc3339_from_ms))
    };
    Ok(Job {
        id,
        username: row.try_get("username")?,
        quality,
        bbox,
        state,
        enumeration_complete: row.try_get("enumeration_complete")?,
        counts: Counts {
            discovered: pending + in_progress + done + failed,
            pending,
            in_progress,
            done,
            failed,
            deleted: to_u64(row.try_get("n_deleted")?),
        },
        bytes_done: to_u64(row.try_get("bytes_done")?),
        created_at: rfc3339_from_ms(row.try_get("created_at")?),
        updated_at: rfc3339_from_ms(row.try_get("updated_at")?),
        last_error: row.try_get("last_error")?,
        pause_reason,
        progress_at: optional_time("progress_at")?,
        stalled_since: optional_time("stalled_at")?,
        cursor: row.try_get("cursor")?,
    })
}

impl Store {
    /// Creates a job, or returns or re-syncs the newest non-cancelled job with
    /// the same (username, quality, bbox), in one IMMEDIATE transaction on the
    /// writer so concurrent submissions of one key never make two jobs.
    /// A cancelled job does not count: it may be posted again.
    pub async fn submit_job(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
        now_ms: i64,
    ) -> StoreResult<Submitted> {
        let key = bbox_key(bbox);
        let mut tx = self.writer()?.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<(i64, String)> = sqlx::query_as(
            "SELECT id, state FROM jobs WHERE username = ? AND quality = ? \
             AND bbox_key = ? AND state <> 'cancelled' ORDER BY id DESC LIMIT 1",
        )
        .bind(username)
        .bind(quality.as_str())
        .bind(&key)
        .fetch_optional(&mut *tx)
        .await?;

        let outcome = match existing {
            Some((id, state)) => {
                let state = state.parse::<JobState>().map_err(StoreError::Invalid)?;
                if matches!(state, JobState::Done | JobState::Failed) {
                    // Enumeration runs again from the first page; the insert's
                    // `ON CONFLICT DO NOTHING` keeps only images new since.
                    sqlx::query(
                        "UPDATE jobs SET enumeration_complete = 0, cursor = NULL, \
                         state = 'enumerating', last_error = NULL, stalled_at = NULL, \
                         progress_at = ?1, updated_at = ?1 WHERE id = ?2",
                    )
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Submitted::Resynced(self.job_after_write(id).await?)
                } else {
                    tx.rollback().await?;
                    Submitted::Existing(self.job_after_write(id).await?)
                }
            }
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO jobs (username, quality, bbox_west, bbox_south, bbox_east, \
                     bbox_north, bbox_key, state, created_at, updated_at, progress_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8, ?8) RETURNING id",
                )
                .bind(username)
                .bind(quality.as_str())
                .bind(bbox.map(|b| b.west))
                .bind(bbox.map(|b| b.south))
                .bind(bbox.map(|b| b.east))
                .bind(bbox.map(|b| b.north))
                .bind(&key)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Submitted::Created(self.job_after_write(id).await?)
            }
        };
        Ok(outcome)
    }

    pub async fn find_job(&self, id: i64) -> StoreResult<Option<Job>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Every job, oldest first. O(jobs): counts are stored on the job row.
    pub async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        self.jobs_in_states(JobState::ALL).await
    }

    /// Jobs in any of `states`, oldest first.
    pub async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state IN (SELECT value FROM json_each(?)) ORDER BY id"
        ))
        .bind(states_json(states))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Sets or clears `last_error` without touching the state.
    pub async fn set_job_error(
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
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'paused', pause_reason = ?, \
             last_error = ifnull(?, last_error), stalled_at = NULL, updated_at = ? \
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
    /// images meanwhile keeps the job open. `None` if it did not apply.
    pub async fn finish_job_if_drained(&self, id: i64, now_ms: i64) -> StoreResult<Option<Job>> {
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'done', stalled_at = NULL, updated_at = ? \
             WHERE id = ? AND state IN ('enumerating', 'downloading') AND enumeration_complete = 1 \
               AND n_pending = 0 AND n_in_progress = 0 RETURNING id",
        )
        .bind(now_ms)
        .bind(id)
        .fetch_optional(self.writer()?)
        .await?;
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
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE state = 'paused' AND pause_reason = ? ORDER BY id",
        )
        .bind(reason.as_str())
        .fetch_all(&self.reader)
        .await?)
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
