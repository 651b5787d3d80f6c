//! Job rows: create, find, list and the state changes the engine and API make.

use super::{Counts, Job, JobState, Store, StoreError, StoreResult, rfc3339_from_ms, to_u64};
use crate::model::{Bbox, Quality};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// The columns [`job_from_row`] reads, in one place for every job query.
macro_rules! job_columns {
    () => {
        "id, username, quality, bbox_west, bbox_south, bbox_east, bbox_north, state, \
         enumeration_complete, cursor, last_error, created_at, updated_at, \
         n_pending, n_in_progress, n_done, n_failed, bytes_done"
    };
}

/// The dedupe key of a bbox: exact shortest round-trip decimals, so two posts
/// of the same numbers match and any other numbers do not.
fn bbox_key(bbox: Option<Bbox>) -> String {
    match bbox {
        None => String::new(),
        Some(b) => format!("{},{},{},{}", b.west, b.south, b.east, b.north),
    }
}

fn job_from_row(row: &SqliteRow) -> StoreResult<Job> {
    let id: i64 = row.try_get("id")?;
    let corrupt = |what: String| StoreError::Invalid(format!("job {id}: {what}"));
    let quality: String = row.try_get("quality")?;
    let quality = quality.parse::<Quality>().map_err(corrupt)?;
    let state: String = row.try_get("state")?;
    let state = state.parse::<JobState>().map_err(corrupt)?;
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
        },
        bytes_done: to_u64(row.try_get("bytes_done")?),
        created_at: rfc3339_from_ms(row.try_get("created_at")?),
        updated_at: rfc3339_from_ms(row.try_get("updated_at")?),
        last_error: row.try_get("last_error")?,
        cursor: row.try_get("cursor")?,
    })
}

impl Store {
    /// Creates a job in state `queued`. Dedupe is the caller's call
    /// ([`Store::find_job_by_key`]): a cancelled job may be posted again.
    pub async fn create_job(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
        now_ms: i64,
    ) -> StoreResult<Job> {
        let row = sqlx::query(concat!(
            "INSERT INTO jobs (username, quality, bbox_west, bbox_south, bbox_east, bbox_north, \
             bbox_key, state, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?) RETURNING ",
            job_columns!()
        ))
        .bind(username)
        .bind(quality.as_str())
        .bind(bbox.map(|b| b.west))
        .bind(bbox.map(|b| b.south))
        .bind(bbox.map(|b| b.east))
        .bind(bbox.map(|b| b.north))
        .bind(bbox_key(bbox))
        .bind(now_ms)
        .bind(now_ms)
        .fetch_one(self.writer()?)
        .await?;
        job_from_row(&row)
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

    /// The newest job with this (username, quality, bbox) that is not cancelled.
    pub async fn find_job_by_key(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
    ) -> StoreResult<Option<Job>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE username = ? AND quality = ? AND bbox_key = ? \
             AND state <> 'cancelled' ORDER BY id DESC LIMIT 1"
        ))
        .bind(username)
        .bind(quality.as_str())
        .bind(bbox_key(bbox))
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Every job, oldest first. O(jobs): counts are stored on the job row.
    pub async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(concat!("SELECT ", job_columns!(), " FROM jobs ORDER BY id"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs in any of `states`, oldest first.
    pub async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>> {
        let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state IN (SELECT value FROM json_each(?)) ORDER BY id"
        ))
        .bind(serde_json::Value::from(wanted).to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Sets the state and `last_error` (`None` clears it).
    pub async fn set_job_state(
        &self,
        id: i64,
        state: JobState,
        last_error: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<()> {
        let result =
            sqlx::query("UPDATE jobs SET state = ?, last_error = ?, updated_at = ? WHERE id = ?")
                .bind(state.as_str())
                .bind(last_error)
                .bind(now_ms)
                .bind(id)
                .execute(self.writer()?)
                .await?;
        require_job(id, result.rows_affected())
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
        require_job(id, result.rows_affected())
    }

    /// Starts a re-sync of a finished job: enumeration runs again from the
    /// first page, and the insert's `ON CONFLICT DO NOTHING` keeps only images
    /// that are new since.
    pub async fn restart_enumeration(&self, id: i64, now_ms: i64) -> StoreResult<()> {
        let result = sqlx::query(
            "UPDATE jobs SET enumeration_complete = 0, cursor = NULL, state = 'enumerating', \
             last_error = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(now_ms)
        .bind(id)
        .execute(self.writer()?)
        .await?;
        require_job(id, result.rows_affected())
    }

    /// The token-free `next` URL to resume enumeration from; `None` when
    /// enumeration has not started or is complete.
    pub async fn job_cursor(&self, id: i64) -> StoreResult<Option<String>> {
        let cursor: Option<Option<String>> =
            sqlx::query_scalar("SELECT cursor FROM jobs WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        cursor.ok_or(StoreError::NoSuchJob(id))
    }
}

fn require_job(id: i64, rows_affected: u64) -> StoreResult<()> {
    if rows_affected == 0 {
        Err(StoreError::NoSuchJob(id))
    } else {
        Ok(())
    }
}
