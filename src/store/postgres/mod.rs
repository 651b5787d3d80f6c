//! The job store on PostgreSQL, for several daemons sharing one queue:
//! [`PgStore`] implements every trait of [`super::interface`], one file per
//! area as in `sqlite/`; each method keeps the interface's meaning, and
//! `tests/store.rs` runs one suite on both.
//!
//! What differs, and why:
//! - **The clock is the database's.** A method's `now_ms` is bound as
//!   `coalesce($n::BIGINT, mld_now_ms())` and [`PgStore::at`] binds `NULL` on
//!   [`PgClock::Database`] (every daemon), so leases, `run_at` and
//!   `updated_at` never depend on a daemon's clock. Tests that step time by
//!   hand open the store on [`PgClock::Caller`].
//! - **Claims skip locked rows** (`FOR UPDATE SKIP LOCKED`): daemons claiming
//!   at once take different rows instead of queueing behind each other.
//! - **Counters are deltas** (see `migrations/postgres/0001_init.sql`): no
//!   statement on `images` locks the job row; readers read `job_rows`, and
//!   [`PgStore::fold_counts`] moves deltas onto the job rows.
//! - **Transactions are short and never span a network call**, as on SQLite;
//!   the pool re-connects by itself after the server restarts.

mod archives;
mod cluster;
mod collection_tasks;
mod dialect;
mod images;
mod ingest;
mod job_tasks;
mod jobs;
mod listing;
mod parts;
mod queue;
mod rebase;
mod rescue;
mod stalls;
mod task_lease;
mod uploads;

use super::interface::Health;
use super::{StoreError, StoreResult};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// A pool on `url`, which may hold a password: errors never repeat it.
///
/// TLS follows the URL as libpq's does: `sslmode=disable|prefer|require|
/// verify-ca|verify-full` (sqlx's default, `prefer`, when absent) and
/// `sslrootcert=<file>` for a private CA, over rustls. A TLS failure says
/// which mode asked for it and what to check.
async fn connect(url: &str) -> StoreResult<PgPool> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::Invalid(format!("storage.database_url is not a PostgreSQL URL: {e}"))
    })?;
    let mode = match options.get_ssl_mode() {
        sqlx::postgres::PgSslMode::Disable => "disable",
        sqlx::postgres::PgSslMode::Allow => "allow",
        sqlx::postgres::PgSslMode::Prefer => "prefer",
        sqlx::postgres::PgSslMode::Require => "require",
        sqlx::postgres::PgSslMode::VerifyCa => "verify-ca",
        sqlx::postgres::PgSslMode::VerifyFull => "verify-full",
    };
    PgPoolOptions::new()
        .max_connections(16)
        .min_connections(1)
        // A server restarting: callers wait this long, then get an error
        // they retry, rather than waiting without a bound.
        .acquire_timeout(Duration::from_secs(15))
        .connect_with(options)
        .await
        .map_err(|error| {
            let tls_failure = |cause: String| {
                StoreError::Invalid(format!(
                    "TLS to PostgreSQL failed (sslmode={mode}): {cause}. With verify-ca or \
                     verify-full, sslrootcert must name the CA that signed the server's \
                     certificate, and with verify-full the URL's host must be one it names"
                ))
            };
            match error {
                sqlx::Error::Tls(cause) => tls_failure(cause.to_string()),
                // rustls reports a refused certificate as invalid data on the
                // socket.
                sqlx::Error::Io(io)
                    if mode != "disable" && io.kind() == std::io::ErrorKind::InvalidData =>
                {
                    tls_failure(io.to_string())
                }
                other => other.into(),
            }
        })
}

/// Whose clock stamps leases and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgClock {
    /// The database server's (`mld_now_ms()`): what a daemon always uses.
    #[default]
    Database,
    /// The `now_ms` each call passes: for tests that move time by hand.
    Caller,
}

/// The PostgreSQL half of [`super::Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    clock: PgClock,
}

impl PgStore {
    pub async fn open(url: &str, clock: PgClock) -> StoreResult<PgStore> {
        let pool = connect(url).await?;
        // sqlx holds an advisory lock while migrating: daemons starting
        // together migrate once.
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool, clock })
    }

    /// Opens a database whose schema is this binary's, without creating or
    /// migrating anything: for readers beside live daemons (`status`), which
    /// must not change the schema under daemons of another version.
    pub async fn open_existing(url: &str) -> StoreResult<PgStore> {
        let pool = connect(url).await?;
        let applied: Vec<i64> = match sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        {
            Ok(applied) => applied,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                return Err(StoreError::Schema(
                    "the PostgreSQL database has no queue yet: start `serve` (or run `download`) \
                     on it first"
                        .into(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
            return Err(StoreError::Schema(format!(
                "the PostgreSQL queue's schema is newer than this binary (migration {unknown}): \
                 use the daemons' version"
            )));
        }
        if let Some(missing) = known.iter().find(|v| !applied.contains(v)) {
            return Err(StoreError::Schema(format!(
                "the PostgreSQL queue's schema is older than this binary (migration {missing} \
                 not applied): start a daemon of this version first, it migrates"
            )));
        }
        Ok(PgStore {
            pool,
            clock: PgClock::Database,
        })
    }

    /// The value to bind for a caller's `now_ms`: `None` on the database's
    /// clock, where the SQL's `coalesce($n::BIGINT, mld_now_ms())` takes over.
    fn at(&self, now_ms: i64) -> Option<i64> {
        match self.clock {
            PgClock::Database => None,
            PgClock::Caller => Some(now_ms),
        }
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    // `reader()` and `writer()` are SQLite's names for its two pools, so
    // the bodies of `store/shared.rs` read the same on both backends.
    #[allow(clippy::unnecessary_wraps)]
    fn reader(&self) -> StoreResult<&PgPool> {
        Ok(&self.pool)
    }

    #[allow(clippy::unnecessary_wraps)]
    fn writer(&self) -> StoreResult<&PgPool> {
        Ok(&self.pool)
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }
}

impl Health for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query(super::sql::PING).execute(&self.pool).await?;
        Ok(())
    }

    async fn fold_counts(&self) -> StoreResult<u64> {
        let folded: i64 = sqlx::query_scalar("SELECT mld_fold_counts()")
            .fetch_one(&self.pool)
            .await?;
        Ok(super::to_u64(folded))
    }
}
