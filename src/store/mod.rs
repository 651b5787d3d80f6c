//! The SQLite job store: the only module that speaks SQL.
//!
//! One writer connection (WAL, busy timeout, foreign keys) serialises every
//! write; a separate pool of read-only connections serves status queries so
//! they never queue behind a page insert. Every function is one small named
//! query or one short transaction, and none is ever held across a network call.
//!
//! Times are Unix milliseconds (`i64`) passed in by the caller, so tests and
//! the engine control the clock.
//!
//! Layout: [`connection`] opens the pools and checks the schema, [`jobs`] holds
//! the job rows, [`ingest`] writes enumeration pages, [`queue`] is the work
//! queue (claim, complete, fail, release) and [`images`] reads image rows back.
//!
//! Per-job counts are columns on the job row kept by SQLite triggers on
//! `images` (see `migrations/0001_init.sql`), so `/status` reads O(jobs) rows
//! however many images exist, and no statement can make them drift.

mod connection;
mod images;
mod ingest;
mod jobs;
mod queue;
pub mod transitions;

pub use connection::{Durability, StoreOptions};
pub use ingest::strip_token;

use crate::model::{Bbox, ImageMeta, Quality};
use serde::Serialize;
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

/// Errors at the store boundary. Every one is fatal for the operation; the
/// caller decides whether the process goes on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no job with id {0}")]
    NoSuchJob(i64),
    #[error("the store was opened read-only; this operation writes")]
    ReadOnly,
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Invalid(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A job's lifecycle state, stored as the SPEC's lowercase string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Enumerating,
    Downloading,
    Paused,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Enumerating,
        JobState::Downloading,
        JobState::Paused,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Enumerating => "enumerating",
            JobState::Downloading => "downloading",
            JobState::Paused => "paused",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// An image row's state, stored as a lowercase string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    Pending,
    InProgress,
    Done,
    Failed,
}

impl ImageState {
    pub const ALL: [ImageState; 4] = [
        ImageState::Pending,
        ImageState::InProgress,
        ImageState::Done,
        ImageState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Pending => "pending",
            ImageState::InProgress => "in_progress",
            ImageState::Done => "done",
            ImageState::Failed => "failed",
        }
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown image state {s:?}"))
    }
}

/// Per-job image counts, kept as counters so `/status` is O(jobs), not O(images).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub discovered: u64,
    pub pending: u64,
    pub in_progress: u64,
    pub done: u64,
    pub failed: u64,
}

/// A job row as the API shows it (never holds a secret: the cursor is token-free).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub username: String,
    pub quality: Quality,
    pub bbox: Option<Bbox>,
    pub state: JobState,
    pub enumeration_complete: bool,
    pub counts: Counts,
    pub bytes_done: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
    /// Token-free `next` URL of the enumeration, `None` before the first page
    /// and after the last.
    #[serde(skip)]
    pub cursor: Option<String>,
}

/// What a worker gets from a claim.
#[derive(Debug, Clone)]
pub struct ClaimedImage {
    pub row_id: i64,
    pub job_id: i64,
    pub image_id: String,
    pub quality: Quality,
    pub username: String,
    pub meta: ImageMeta,
    /// Last known CDN URL for the job's quality, if any.
    pub url: Option<String>,
    /// The attempt number this claim holds (1-based); fences completion.
    pub attempt: i64,
}

/// What [`Store::fail`] did with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to pending, due again at `run_at` (Unix ms).
    Retrying { run_at: i64 },
    /// Attempts are used up: the row is `failed` with its last error.
    FailedForGood,
    /// The caller no longer holds the lease (expired and reclaimed, or reset):
    /// nothing changed.
    LeaseLost,
}

/// One archived image, for writing `metadata.jsonl` page by page.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedImage {
    /// Pass the last one's `row_id` as `after` to fetch the next page.
    pub row_id: i64,
    /// The stored metadata (no URLs).
    pub meta: ImageMeta,
    pub path: String,
}

/// A failed image and why it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedImage {
    pub row_id: i64,
    pub image_id: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// Everything stored about one image row; for tests and debugging.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub row_id: i64,
    pub job_id: i64,
    pub image_id: String,
    pub meta: ImageMeta,
    pub url: Option<String>,
    pub state: ImageState,
    pub attempts: i64,
    pub run_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub bytes: Option<i64>,
    pub path: Option<String>,
    pub last_error: Option<String>,
    pub captured_at: Option<i64>,
}

/// The job store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    /// The single writer connection; `None` for a read-only store.
    writer: Option<SqlitePool>,
    /// Read-only connections for queries that never write.
    reader: SqlitePool,
    /// `(quality, username)` per job id. Both are fixed at creation, so the
    /// claim path can skip a join on every call.
    job_identity: Mutex<HashMap<i64, (Quality, String)>>,
}

impl Store {
    fn writer(&self) -> StoreResult<&SqlitePool> {
        self.writer.as_ref().ok_or(StoreError::ReadOnly)
    }
}

/// Renders stored Unix milliseconds as SPEC's RFC 3339 UTC string.
fn rfc3339_from_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses a stored metadata JSON column; a row we wrote ourselves that no
/// longer parses means the database was edited or corrupted.
fn parse_meta(row_id: i64, json: &str) -> StoreResult<ImageMeta> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::Invalid(format!("image row {row_id} has unreadable metadata: {e}"))
    })
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
