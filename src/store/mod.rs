//! The SQLite job store: the only module that speaks SQL.
//!
//! One writer connection (WAL, busy timeout, foreign keys) serialises every
//! write; a separate read pool serves status queries so they never queue behind
//! a page insert. Every function is one small named query or one short
//! transaction, and none is ever held across a network call.
//!
//! INTERFACE CONTRACT (filled in by the store work; the engine codes against it):
//! see the signatures below. Times are Unix milliseconds (`i64`).

use crate::model::{Bbox, ImageMeta, Quality};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// Errors at the store boundary. Every one is fatal for the operation; the
/// caller decides whether the process goes on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A job's lifecycle state, stored as the SPEC's lowercase string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

pub struct Store {/* writer + reader pools */}

impl Store {
    pub async fn open(_path: &Path) -> StoreResult<Store> {
        todo!()
    }
    pub async fn open_read_only(_path: &Path) -> StoreResult<Store> {
        todo!()
    }
    pub async fn create_job(
        &self,
        _username: &str,
        _quality: Quality,
        _bbox: Option<Bbox>,
        _now_ms: i64,
    ) -> StoreResult<Job> {
        todo!()
    }
    pub async fn find_job(&self, _id: i64) -> StoreResult<Option<Job>> {
        todo!()
    }
    pub async fn find_job_by_key(
        &self,
        _username: &str,
        _quality: Quality,
        _bbox: Option<Bbox>,
    ) -> StoreResult<Option<Job>> {
        todo!()
    }
    pub async fn list_jobs(&self) -> StoreResult<Vec<Job>> {
        todo!()
    }
    pub async fn set_job_state(
        &self,
        _id: i64,
        _state: JobState,
        _last_error: Option<&str>,
        _now_ms: i64,
    ) -> StoreResult<()> {
        todo!()
    }
    pub async fn insert_page(
        &self,
        _job_id: i64,
        _quality: Quality,
        _images: &[ImageMeta],
        _next_cursor: Option<&str>,
        _now_ms: i64,
    ) -> StoreResult<u64> {
        todo!()
    }
    pub async fn claim(
        &self,
        _owner: &str,
        _limit: u32,
        _lease: Duration,
        _now_ms: i64,
    ) -> StoreResult<Vec<ClaimedImage>> {
        todo!()
    }
}
