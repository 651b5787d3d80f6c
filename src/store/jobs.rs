//! Job rows: submit, read, and every state change the engine and API make.
//!
//! Each change is a single conditional `UPDATE ... WHERE state IN (..)` (or
//! one short IMMEDIATE transaction for a submission), so two racing requests,
//! or a request racing the engine, cannot both win: the loser sees `None` and
//! the API answers 409 instead of silently overwriting a state.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/jobs.rs` and
//! `postgres/jobs.rs`, behind [`super::interface`].

use super::{Counts, Job, JobState, PauseReason, StoreResult, millis, rfc3339_from_ms, to_u64};
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
    /// The job, whichever way the submission went (the API answers with it).
    pub fn job(&self) -> &Job {
        match self {
            Submitted::Created(job) | Submitted::Existing(job) | Submitted::Resynced(job) => job,
        }
    }
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
        let corrupt = super::corrupt_row("job", self.id);
        let quality = self.quality.parse::<Quality>().map_err(corrupt)?;
        let format = self.format.parse::<OutputFormat>().map_err(corrupt)?;
        let package = self.package.parse::<Packaging>().map_err(corrupt)?;
        let state = self.state.parse::<JobState>().map_err(corrupt)?;
        let pause_reason =
            super::parse_optional::<PauseReason>(self.pause_reason).map_err(corrupt)?;
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
            id: self.id,
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
            upload: None,
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
    let corrupt = super::corrupt_row("job", id);
    let value = serde_json::from_str(selection).map_err(|e| corrupt(e.to_string()))?;
    Ok(JobSpec {
        selection: Selection::from_canonical(&value).map_err(corrupt)?,
        quality: quality.parse().map_err(corrupt)?,
        format: format.parse().map_err(corrupt)?,
        package: package.parse().map_err(corrupt)?,
        // A re-sync restarts the listing only; the upload track is the job's
        // own row (`job_uploads`) and goes on from there.
        upload: None,
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
    let corrupt = super::corrupt_row("job", *id);
    let bbox = match (w, s, e, n) {
        (Some(w), Some(s), Some(e), Some(n)) => {
            Some(crate::model::Bbox::new(*w, *s, *e, *n).map_err(corrupt)?)
        }
        _ => None,
    };
    Ok(JobSpec::user(username, quality.parse().map_err(corrupt)?).with_bbox(bbox))
}
