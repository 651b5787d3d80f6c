//! SQLite's side of the statements written once in `store/shared/`: the
//! holes where the two dialects differ, filled for SQLite. Each macro
//! expands to a string literal, so the shared statements stay `&'static
//! str` (`concat!`), prepared once and cached by sqlx like any other.

use super::SqliteStore;
use crate::store::shared::TxLock;
use crate::store::{JobState, StoreError, StoreResult};

/// What a store's `at(now_ms)` binds for the clock: the caller's time, always.
pub(super) type At = i64;

/// The connection a transaction derefs to, for helpers shared by both
/// backends that run inside one.
pub(super) type Conn = sqlx::SqliteConnection;

/// A caller's `now_ms` bound at placeholder `$n`: SQLite's time is the
/// caller's.
macro_rules! now {
    ($n:literal) => {
        $n
    };
}
pub(super) use now;

/// [`now!`] where a statement compares many rows with it: the caller's
/// time as is.
macro_rules! now_once {
    ($n:literal) => {
        $n
    };
}
pub(super) use now_once;

/// The column is one of the values bound at `$n` as one JSON array: the
/// states of [`states`] or the row ids of [`ids`].
macro_rules! in_list {
    ($n:literal) => {
        concat!("IN (SELECT value FROM json_each(", $n, "))")
    };
}
pub(super) use in_list;

crate::store::shared::fixed_fragments! {
    /// Where job rows are read: the table, whose counters triggers keep.
    jobs_view = "jobs";
    /// Row locks: none, the single writer serialises every write.
    for_update = "";
    /// Nothing pending or in flight, by the job row's trigger-kept counters
    /// (exact on SQLite: the triggers run inside the writing statement).
    drained = "n_pending = 0 AND n_in_progress = 0";
    /// Byte order for paths: SQLite's default `BINARY` collation already is.
    bytewise = "";
    /// A packed file's row ids, aggregated (see [`row_ids`]).
    row_ids_agg = "group_concat(rowid)";
}

/// The `WHERE` of a job's open parts, the job's id at `$n` (pinned: the partial index `job_parts_open`, `done = 0`).
macro_rules! open_parts_of {
    ($n:literal) => {
        concat!(
            "INDEXED BY job_parts_open WHERE job_id = ",
            $n,
            " AND done = 0"
        )
    };
}
pub(super) use open_parts_of;

/// Pins the index a statement was written for (`INDEXED BY`): SQLite's
/// planner would otherwise sometimes pick a worse one at 1M rows.
macro_rules! hint {
    ($index:literal) => {
        concat!(" INDEXED BY ", $index)
    };
}
pub(super) use hint;

/// How [`row_ids_agg!`] reads: `1,2,3`.
pub(super) type RowIds = String;

/// The ids of [`row_ids_agg!`].
pub(super) fn row_ids(ids: RowIds, packing_id: i64) -> StoreResult<Vec<i64>> {
    ids.split(',')
        .map(|id| id.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Invalid(format!("packing {packing_id}: {e}")))
}

/// Row ids as the JSON array `json_each` reads (`[1,2,3]`).
pub(super) fn ids(ids: &[i64]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

/// A deferral's delay: `base` doubled per deferral, capped, times the
/// jitter factor, truncated to whole milliseconds.
macro_rules! deferral {
    ($cap:literal, $base:literal, $jitter:literal) => {
        concat!(
            "CAST(min(",
            $cap,
            ", ",
            $base,
            " * (1 << min(deferrals, 30))) * ",
            $jitter,
            " AS INTEGER)"
        )
    };
}
pub(super) use deferral;

/// Nothing to take for any [`TxLock`]: `BEGIN IMMEDIATE` or the writer
/// connection (one) already serialises writers, and `mark_packing_written`
/// raises `synchronous` around its whole commit.
#[allow(clippy::unnecessary_wraps, clippy::unused_async)]
pub(super) async fn lock(_tx: &mut Conn, _what: TxLock<'_>) -> StoreResult<()> {
    Ok(())
}

/// What [`raise_durability`] found, to put back.
pub(super) type Synchronous = i64;

/// Raises `synchronous` to FULL on the writer for one commit: under the
/// default `synchronous=NORMAL` a power loss could roll the commit back,
/// the packing would be `planned` again with its files gone, and the
/// rewrite would replace the full tar with an empty one. FULL fsyncs the
/// WAL at the commit (and with it every earlier one). Returns the setting
/// it replaced.
pub(super) async fn raise_durability(conn: &mut Conn) -> StoreResult<Synchronous> {
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await?;
    Ok(synchronous)
}

/// Puts back the setting [`raise_durability`] replaced.
pub(super) async fn restore_durability(conn: &mut Conn, before: Synchronous) -> StoreResult<()> {
    let restore = match before {
        0 => "PRAGMA synchronous = OFF",
        2 => "PRAGMA synchronous = FULL",
        3 => "PRAGMA synchronous = EXTRA",
        _ => "PRAGMA synchronous = NORMAL",
    };
    sqlx::query(restore).execute(&mut *conn).await?;
    Ok(())
}

/// States as the JSON array `json_each` reads, so one prepared statement
/// serves every set of states.
pub(super) fn states(states: &[JobState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    serde_json::Value::from(names).to_string()
}

impl SqliteStore {
    /// The value bound for a caller's `now_ms`: itself (see
    /// `PgStore::at`, where the database's clock may take over).
    pub(super) fn at(&self, now_ms: i64) -> i64 {
        now_ms
    }

    /// A write transaction that takes the write lock at once, so a
    /// read-then-write inside it cannot race another writer.
    pub(super) async fn begin_write(
        &self,
    ) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer()?.begin_with("BEGIN IMMEDIATE").await?)
    }
}
