//! Conditional job state changes for the HTTP API.
//!
//! Each change is a single `UPDATE ... WHERE state IN (..)` (or one short
//! IMMEDIATE transaction for a submission), so two racing requests, or a
//! request racing the engine, cannot both win: the loser sees `None` and the
//! API answers 409 instead of silently overwriting a state.

use super::{Job, JobState, Store, StoreError, StoreResult};
use crate::model::{Bbox, Quality};

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

/// The `bbox_key` column `create_job` writes: shortest round-trip decimals.
/// `tests/http_api.rs` checks that `find_job_by_key` finds jobs made here, so
/// the two spellings cannot drift apart unnoticed.
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

impl Store {
    /// Creates a job, or returns or re-syncs the newest non-cancelled job with
    /// the same (username, quality, bbox), in one IMMEDIATE transaction on the
    /// writer so concurrent submissions of one key never make two jobs.
    ///
    /// The key is matched exactly as `find_job_by_key` matches it.
    pub async fn submit_job(
        &self,
        username: &str,
        quality: Quality,
        bbox: Option<Bbox>,
        now_ms: i64,
    ) -> StoreResult<Submitted> {
        let corners = [
            bbox.map(|b| b.west),
            bbox.map(|b| b.south),
            bbox.map(|b| b.east),
            bbox.map(|b| b.north),
        ];
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
                    sqlx::query(
                        "UPDATE jobs SET enumeration_complete = 0, cursor = NULL, \
                         state = 'enumerating', last_error = NULL, updated_at = ? WHERE id = ?",
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
                     bbox_north, bbox_key, state, created_at, updated_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?) RETURNING id",
                )
                .bind(username)
                .bind(quality.as_str())
                .bind(corners[0])
                .bind(corners[1])
                .bind(corners[2])
                .bind(corners[3])
                .bind(&key)
                .bind(now_ms)
                .bind(now_ms)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                Submitted::Created(self.job_after_write(id).await?)
            }
        };
        Ok(outcome)
    }

    /// Moves job `id` to `to` if it is in one of `from`; `None` if it is not
    /// (or does not exist). Keeps `last_error`.
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

    /// Marks job `id` done only if, at this instant, enumeration is complete
    /// and nothing is pending or in flight: a retry or re-sync that re-queued
    /// images meanwhile keeps the job open. `None` if it did not apply.
    pub async fn finish_job_if_drained(&self, id: i64, now_ms: i64) -> StoreResult<Option<Job>> {
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = 'done', updated_at = ? \
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
    /// `last_error` (the user has acted on it). `None` if it did not apply.
    pub async fn reactivate_job(
        &self,
        id: i64,
        from: &[JobState],
        now_ms: i64,
    ) -> StoreResult<Option<Job>> {
        let changed: Option<i64> = sqlx::query_scalar(
            "UPDATE jobs SET state = CASE WHEN enumeration_complete = 1 \
             THEN 'downloading' ELSE 'enumerating' END, last_error = NULL, updated_at = ? \
             WHERE id = ? AND state IN (SELECT value FROM json_each(?)) RETURNING id",
        )
        .bind(now_ms)
        .bind(id)
        .bind(states_json(from))
        .fetch_optional(self.writer()?)
        .await?;
        self.job_if_changed(changed).await
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
