//! Opening the SQLite database: one writer, a read pool, migrations and the schema check.

use super::SqliteStore;
use crate::store::{StoreError, StoreResult};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How hard a commit pushes to stable storage.
///
/// `Normal` (WAL + `synchronous=NORMAL`) survives a process crash (`kill -9`)
/// losing nothing committed; on power loss or an OS crash the last few commits
/// may roll back, but the database stays consistent. That direction is safe
/// here: a lost `done` mark means one image is downloaded again (its file was
/// already fsynced), never that a row claims a file that is not there.
/// `Full` fsyncs the WAL on every commit and closes that window at the cost of
/// one fsync per write (see `cargo bench --bench store`). The one commit the
/// safe direction does not cover, a tar marked `written` (its loose files are
/// deleted next), is made with `synchronous=FULL` whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    /// `synchronous=NORMAL`: a power loss may lose the last commits, never corrupt.
    Normal,
    /// `synchronous=FULL`: every commit survives a power loss (tests of it).
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// How a SQLite store opens (the daemon's defaults suit most).
pub struct StoreOptions {
    /// How hard commits are flushed.
    pub durability: Durability,
    /// Read-only connections in the read pool.
    pub readers: u32,
    /// How long a statement waits on a lock held by another process.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Normal,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

impl SqliteStore {
    /// Opens (creating file and parent directory if needed) and migrates the
    /// database, and brings jobs an older binary wrote up to date.
    pub(in crate::store) async fn open(path: &Path, options: StoreOptions) -> StoreResult<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                StoreError::Invalid(format!(
                    "cannot create the database directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        let synchronous = match options.durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        };
        let writer_options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        // One connection: SQLite has one writer anyway, and queueing in the
        // pool is cheaper and fairer than spinning on SQLITE_BUSY.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_options)
            .await?;
        MIGRATOR.run(&writer).await?;
        let reader = connect_readers(path, options).await?;
        let store = SqliteStore::from_pools(Some(writer), reader);
        store.backfill_selections().await?;
        Ok(store)
    }

    /// Opens an existing database for reading only, beside a live daemon:
    /// never creates, writes or migrates, and refuses a schema it does not know.
    pub(in crate::store) async fn open_read_only(path: &Path) -> StoreResult<Self> {
        if !tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Err(StoreError::Schema(format!(
                "no database at {}: run `serve` or `download` with this data dir first",
                path.display()
            )));
        }
        let reader = connect_readers(path, StoreOptions::default()).await?;
        check_schema(&reader, path).await?;
        Ok(SqliteStore::from_pools(None, reader))
    }
}

impl SqliteStore {
    /// The same store with `readers` read connections of its own, for the
    /// HTTP API (see `Store::for_api`). They stay open (a request never
    /// opens one) and are not pinged before each use: a SQLite connection
    /// does not go stale, and each ping is one more hop to its thread.
    pub(in crate::store) async fn with_own_readers(
        &self,
        readers: u32,
    ) -> StoreResult<SqliteStore> {
        let options = (*self.reader.connect_options()).clone();
        let readers = readers.max(1);
        let reader = SqlitePoolOptions::new()
            .max_connections(readers)
            .min_connections(readers)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            writer: self.writer.clone(),
            reader,
            job_identity: Default::default(),
            completions: self.completions.clone(),
        })
    }
}

async fn connect_readers(path: &Path, options: StoreOptions) -> StoreResult<SqlitePool> {
    // Readers serve index lookups (status, a worker's search for an
    // archived copy, metadata pages): a small page cache each keeps memory
    // flat with every worker reading; the OS page cache does the rest.
    let reader_options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(options.busy_timeout)
        .foreign_keys(true)
        .pragma("cache_size", "-512");
    Ok(SqlitePoolOptions::new()
        .max_connections(options.readers.max(1))
        .min_connections(0)
        .connect_with(reader_options)
        .await?)
}

/// Refuses a database this binary cannot read correctly: one never
/// initialised, one behind this binary's schema, or one from a newer binary.
async fn check_schema(reader: &SqlitePool, path: &Path) -> StoreResult<()> {
    let has_table: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(reader)
    .await?;
    if !has_table {
        return Err(StoreError::Schema(format!(
            "{} is not a mapillary-downloader database (no schema version)",
            path.display()
        )));
    }
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations")
        .fetch_all(reader)
        .await?;
    let mut applied = Vec::with_capacity(rows.len());
    for row in rows {
        let version: i64 = row.try_get("version")?;
        let success: bool = row.try_get("success")?;
        if !MIGRATOR.version_exists(version) {
            return Err(StoreError::Schema(format!(
                "{} has schema version {version}, newer than this binary knows: upgrade mapillary-downloader",
                path.display()
            )));
        }
        if success {
            applied.push(version);
        }
    }
    if let Some(missing) = MIGRATOR
        .iter()
        .map(|m| m.version)
        .find(|v| !applied.contains(v))
    {
        return Err(StoreError::Schema(format!(
            "{} lacks schema version {missing}: start the daemon once to upgrade it",
            path.display()
        )));
    }
    Ok(())
}
