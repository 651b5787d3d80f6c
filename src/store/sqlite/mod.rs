//! The job store on SQLite: one file under the data dir, one daemon at a
//! time (the lock file).
//!
//! One writer connection (WAL, busy timeout, foreign keys) serialises every
//! write; a separate pool of read-only connections serves queries that never
//! write, so they never queue behind a page insert. Every method is one
//! small named query or one short transaction, none held across a network
//! call. A completion is one statement; those that queue behind the writer
//! share one commit (`completions`).
//! Times are the `now_ms` each call passes. Per-job counts are columns of
//! the job row kept by triggers on `images` (`migrations/sqlite/`).

mod archives;
mod cluster;
mod collection_tasks;
mod completions;
mod connection;
mod dialect;
mod images;
mod ingest;
mod job_tasks;
mod jobs;
mod listing;
mod parts;
mod queue;
mod rebase;
mod stalls;
mod task_lease;
mod uploads;

pub use connection::{Durability, StoreOptions};

use super::interface::Health;
use super::{StoreError, StoreResult};
use crate::model::{OutputFormat, Quality};
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The SQLite half of [`super::Store`].
pub struct SqliteStore {
    /// The single writer connection; `None` for a read-only store.
    writer: Option<SqlitePool>,
    /// Read-only connections for queries that never write.
    reader: SqlitePool,
    /// `(quality, format)` per job id. Both are fixed at creation, so the
    /// claim path can skip a join on every call.
    job_identity: Mutex<HashMap<i64, (Quality, OutputFormat)>>,
    /// Images marked done wait here for the writer, to share one commit.
    completions: Arc<completions::CompletionGroups>,
}

impl SqliteStore {
    fn from_pools(writer: Option<SqlitePool>, reader: SqlitePool) -> SqliteStore {
        SqliteStore {
            writer,
            reader,
            job_identity: Mutex::new(HashMap::new()),
            completions: Arc::default(),
        }
    }

    fn writer(&self) -> StoreResult<&SqlitePool> {
        self.writer.as_ref().ok_or(StoreError::ReadOnly)
    }

    // A `Result` like `writer()`, so every statement reads the same.
    #[allow(clippy::unnecessary_wraps)]
    fn reader(&self) -> StoreResult<&SqlitePool> {
        Ok(&self.reader)
    }

    /// Closes every connection, letting the last one checkpoint the WAL.
    pub(super) async fn close(&self) {
        self.reader.close().await;
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }
}

impl Health for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query(super::sql::PING)
            .execute(self.reader()?)
            .await?;
        if let Some(writer) = &self.writer {
            sqlx::query(super::sql::PING).execute(writer).await?;
        }
        Ok(())
    }

    /// Nothing to fold: SQLite's triggers keep the counters on the job rows.
    async fn fold_counts(&self) -> StoreResult<u64> {
        Ok(0)
    }
}
