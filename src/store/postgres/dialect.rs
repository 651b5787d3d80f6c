//! PostgreSQL's side of the statements written once in `store/shared/`:
//! the holes where the two dialects differ, filled for PostgreSQL. Each
//! macro expands to a string literal, so the shared statements stay
//! `&'static str` (`concat!`), prepared once and cached by sqlx.

use super::PgStore;
use crate::store::shared::TxLock;
use crate::store::{JobState, StoreResult};

/// What a store's `at(now_ms)` binds for the clock: `None` on the database's clock.
pub(super) type At = Option<i64>;

/// The connection a transaction derefs to, for helpers shared by both
/// backends that run inside one.
pub(super) type Conn = sqlx::PgConnection;

/// The advisory-lock namespace (`pg_advisory_xact_lock(key1, key2)`'s first
/// key) that serialises submissions of one job identity.
const SUBMIT_LOCK: i32 = 0x6d6c_6401;

/// The advisory-lock key that serialises rebases.
const REBASE_LOCK: i32 = 0x6d6c_6402;

/// A caller's `now_ms` bound at placeholder `$n`, or the database's clock
/// when [`PgStore::at`] binds `NULL`. `mld_now_ms()` is volatile: a
/// statement that needs one time twice reads it once in a subquery.
macro_rules! now {
    ($n:literal) => {
        concat!("coalesce(", $n, "::BIGINT, mld_now_ms())")
    };
}
pub(super) use now;

/// [`now!`] where a statement compares many rows with it: a scalar
/// subquery, read once (an init plan, so it can bound an index scan).
macro_rules! now_once {
    ($n:literal) => {
        concat!("(SELECT coalesce(", $n, "::BIGINT, mld_now_ms()))")
    };
}
pub(super) use now_once;

/// The column is one of the values bound at `$n` as one array: the
/// `TEXT[]` of [`states`] or the `BIGINT[]` of [`ids`] (sqlx declares the
/// parameter's type, so no cast is needed).
macro_rules! in_list {
    ($n:literal) => {
        concat!("= ANY(", $n, ")")
    };
}
pub(super) use in_list;

crate::store::shared::fixed_fragments! {
    /// Where job rows are read: `job_rows`, the row plus its unfolded counter
    /// deltas (no statement on `images` locks the job row).
    jobs_view = "job_rows";
    /// Row locks: several daemons share the table, so a read that decides a
    /// write locks what it read.
    for_update = " FOR UPDATE";
    /// Nothing pending or in flight, tested on the `images` rows themselves:
    /// the counters are deltas that may lag.
    drained = "NOT EXISTS (SELECT 1 FROM images i WHERE i.job_id = $2 AND i.state = 'pending') \
     AND NOT EXISTS (SELECT 1 FROM images i WHERE i.job_id = $2 AND i.state = 'in_progress')";
    /// Byte order for paths (as SQLite's `BINARY`), whatever the database's
    /// collation: tar order, `after` paging and the date-folder range depend
    /// on it.
    bytewise = " COLLATE \"C\"";
    /// A packed file's row ids, aggregated in order (see [`row_ids`]).
    row_ids_agg = "array_agg(rowid ORDER BY rowid)";
}

/// The `WHERE` of a job's open parts, the job's id at `$n` (`job_parts_open`'s predicate, `NOT done`).
macro_rules! open_parts_of {
    ($n:literal) => {
        concat!("WHERE job_id = ", $n, " AND NOT done")
    };
}
pub(super) use open_parts_of;

/// Index hints: none, PostgreSQL's planner needs none.
macro_rules! hint {
    ($index:literal) => {
        ""
    };
}
pub(super) use hint;

/// How [`row_ids_agg!`] reads: an array.
pub(super) type RowIds = Vec<i64>;

/// The ids of [`row_ids_agg!`].
#[allow(clippy::unnecessary_wraps)]
pub(super) fn row_ids(ids: RowIds, _packing_id: i64) -> StoreResult<Vec<i64>> {
    Ok(ids)
}

/// Row ids as a `BIGINT[]`.
pub(super) fn ids(ids: &[i64]) -> Vec<i64> {
    ids.to_vec()
}

/// A deferral's delay: `base` doubled per deferral, capped, times the
/// jitter factor, truncated to whole milliseconds.
macro_rules! deferral {
    ($cap:literal, $base:literal, $jitter:literal) => {
        concat!(
            "trunc(least(",
            $cap,
            "::BIGINT, ",
            $base,
            "::BIGINT * (1::BIGINT << least(deferrals, 30)::INT)) * ",
            $jitter,
            "::DOUBLE PRECISION)::BIGINT"
        )
    };
}
pub(super) use deferral;

/// Takes what a [`TxLock`] asks for, until the transaction ends.
///
/// - `Submission`: an advisory lock on the job's identity
///   (`hashtext(job_key)`): a second submitter of one selection waits until
///   the first commits, and its next statement (a new READ COMMITTED
///   snapshot) sees the job the first one made.
/// - `Job`: the job row (`FOR UPDATE`), so the next statement's snapshot,
///   taken after the lock, sees every write of whoever held it (a re-sync or
///   retry that re-queued images); in one statement, a re-check after
///   waiting on the row would see the new job row but still the old images.
/// - `Collection`: one planner per collection: a second daemon then sees the
///   images joined (`packing_id` set) and the tar name taken, so it can
///   neither plan the same images again nor fail on the name.
/// - `Rebase`: one daemon rebases and records the root; the others, reading
///   `store_facts` after it commits, find nothing to do.
/// - `DurableCommit`: a durable commit even where `synchronous_commit` was
///   set `off` (`local` and stronger settings are left alone; `is_local`:
///   for this transaction only).
pub(super) async fn lock(tx: &mut Conn, what: TxLock<'_>) -> StoreResult<()> {
    let query = match what {
        TxLock::Submission(key) => sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(SUBMIT_LOCK)
            .bind(key),
        TxLock::Job(id) => sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE").bind(id),
        TxLock::Collection(name) => {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(name)
        }
        TxLock::Rebase => sqlx::query("SELECT pg_advisory_xact_lock($1, 0)").bind(REBASE_LOCK),
        TxLock::DurableCommit => sqlx::query(
            "SELECT set_config('synchronous_commit', 'local', true) \
             WHERE current_setting('synchronous_commit') = 'off'",
        ),
    };
    query.execute(&mut *tx).await?;
    Ok(())
}

/// Nothing to put back: see [`raise_durability`].
pub(super) type Synchronous = ();

/// Nothing before the commit: under the server's default
/// `synchronous_commit = on` a commit is flushed to the WAL before it
/// returns, and the commit's transaction raises the setting for itself if
/// someone turned it `off` ([`TxLock::DurableCommit`]).
#[allow(clippy::unnecessary_wraps, clippy::unused_async)]
pub(super) async fn raise_durability(_conn: &mut Conn) -> StoreResult<Synchronous> {
    Ok(())
}

/// Nothing to put back.
#[allow(clippy::unnecessary_wraps, clippy::unused_async)]
pub(super) async fn restore_durability(_conn: &mut Conn, _before: Synchronous) -> StoreResult<()> {
    Ok(())
}

/// States as a PostgreSQL `TEXT[]` for `state = ANY($n)`.
pub(super) fn states(states: &[JobState]) -> Vec<&'static str> {
    states.iter().map(|s| s.as_str()).collect()
}

impl PgStore {
    /// A write transaction; the statements inside lock what they decide on.
    pub(super) async fn begin_write(
        &self,
    ) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool().begin().await?)
    }
}
