//! Opening a [`Store`] on either backend, and closing it: the one place
//! that chooses between SQLite and PostgreSQL.

use super::postgres::{PgClock, PgStore};
use super::sqlite::{SqliteStore, StoreOptions};
use super::{Backend, Store, StoreKind, StoreResult};
use std::path::Path;

impl Store {
    /// Opens (creating file and parent directory if needed) and migrates the
    /// SQLite database with the default options.
    pub async fn open(path: &Path) -> StoreResult<Store> {
        Store::open_with(path, StoreOptions::default()).await
    }

    /// [`Store::open`] with `options`.
    pub async fn open_with(path: &Path, options: StoreOptions) -> StoreResult<Store> {
        let db = SqliteStore::open(path, options).await?;
        Ok(Store::from_backend(Backend::Sqlite(db)))
    }

    /// Opens an existing SQLite database for reading only, beside a live
    /// daemon: never creates, writes or migrates, and refuses a schema it
    /// does not know.
    pub async fn open_read_only(path: &Path) -> StoreResult<Store> {
        let db = SqliteStore::open_read_only(path).await?;
        Ok(Store::from_backend(Backend::Sqlite(db)))
    }

    /// Opens (creating its schema if needed) the shared PostgreSQL store at
    /// `url` (`postgres://…`). The daemon always uses the database's clock.
    pub async fn open_postgres(url: &str, clock: PgClock) -> StoreResult<Store> {
        let db = PgStore::open(url, clock).await?;
        db.backfill_selections().await?;
        Ok(Store::from_backend(Backend::Postgres(db)))
    }

    /// Opens the shared PostgreSQL store at `url` for a reader beside live
    /// daemons: never creates or migrates, and refuses a schema that is not
    /// this binary's.
    pub async fn open_postgres_existing(url: &str) -> StoreResult<Store> {
        let db = PgStore::open_existing(url).await?;
        Ok(Store::from_backend(Backend::Postgres(db)))
    }

    fn from_backend(backend: Backend) -> Store {
        Store { backend }
    }

    /// This store as the HTTP API uses it: on SQLite its reads go to
    /// `readers` connections of their own (writes to the same single
    /// writer), so a request never waits for a read connection the engine
    /// holds, nor for the engine's runtime to hand one back; on PostgreSQL
    /// it is the same pool. Never [`Store::close`] it: the writer is shared.
    pub async fn for_api(&self, readers: u32) -> StoreResult<Store> {
        let backend = match &self.backend {
            Backend::Sqlite(db) => Backend::Sqlite(db.with_own_readers(readers).await?),
            Backend::Postgres(db) => Backend::Postgres(db.clone()),
        };
        Ok(Store::from_backend(backend))
    }

    /// Closes every connection (on SQLite, letting the last one checkpoint
    /// the WAL).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(db) => db.close().await,
            Backend::Postgres(db) => db.close().await,
        }
    }

    /// Which kind of database this store is on.
    pub fn kind(&self) -> StoreKind {
        match &self.backend {
            Backend::Sqlite(_) => StoreKind::Sqlite,
            Backend::Postgres(_) => StoreKind::Postgres,
        }
    }

    /// Whether API calls must also take a slot of a budget shared with
    /// other daemons ([`Store::take_api_slot`]).
    pub fn shares_api_budget(&self) -> bool {
        self.kind() == StoreKind::Postgres
    }
}
