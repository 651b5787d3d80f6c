//! One task lease protocol for job tasks ([`JobTask`]) and collection tasks
//! ([`CollectionTask`]): a row holds (owner, until, epoch); a take succeeds
//! when nobody holds it or the holder's `until` passed, and bumps the epoch,
//! which nothing lowers; renew, release and check match (key, owner, epoch),
//! so a holder that lost the lease while stalled changes nothing.
//!
//! Each kind names its table and columns once ([`task_lease_kind!`]); the
//! statements are spelt out once, here, for both dialects, and each backend
//! runs them with one generic function per step (`sqlite/task_lease.rs`,
//! `postgres/task_lease.rs`).

use super::{CollectionTask, JobTask, StoreError};
use std::sync::Arc;

/// The key of a lease's row, bound as `$1`.
#[derive(Debug, Clone, Copy)]
pub(super) enum LeaseKey<'a> {
    Id(i64),
    Name(&'a str),
}

impl From<i64> for LeaseKey<'_> {
    fn from(id: i64) -> Self {
        LeaseKey::Id(id)
    }
}

impl<'a> From<&'a str> for LeaseKey<'a> {
    fn from(name: &'a str) -> Self {
        LeaseKey::Name(name)
    }
}

/// One dialect's statements for one kind of lease. Parameters: `$1` key,
/// `$2` owner, `$3` epoch (take: `$3` now, `$4` ttl; renew: `$4` now,
/// `$5` ttl).
pub(super) struct LeaseSql {
    /// Makes the lease's row exist (unheld), for kinds whose rows are made
    /// on demand.
    pub ensure: Option<&'static str>,
    /// Returns the new epoch when the take succeeded.
    pub take: &'static str,
    pub renew: &'static str,
    pub release: &'static str,
    /// Returns a row while the lease is held (and, on PostgreSQL, locks it,
    /// so a take-over waits for the checking transaction to commit).
    pub check: &'static str,
}

/// A held task lease of one kind.
pub(super) trait TaskLease: Sized {
    const SQLITE: LeaseSql;
    const POSTGRES: LeaseSql;
    /// What a take names the row by: a job's id, a collection's name.
    type Key<'k>: Copy + Into<LeaseKey<'k>>;
    fn key(&self) -> LeaseKey<'_>;
    /// The holder and the epoch it took the lease at.
    fn held(&self) -> (&str, i64);
    /// The lease as taken.
    fn taken(key: Self::Key<'_>, owner: &Arc<str>, epoch: i64) -> Self;
    /// The error a write fenced by a lost lease answers.
    fn lost(&self) -> StoreError;
}

/// The `WHERE` of a held lease: the row (`$1`), still the holder's (`$2`)
/// at the epoch it took (`$3`). Renew, release and check match all three.
macro_rules! held_by {
    ($k:literal, $o:literal, $e:literal) => {
        concat!(" WHERE ", $k, " = $1 AND ", $o, " = $2 AND ", $e, " = $3")
    };
}

/// The statements of a kind whose lease lives in `table`'s columns, in one
/// dialect: `now` is how a statement reads the caller's now bound at `$N`
/// (`clock` the FROM clause that defines it), `lock` what a check appends.
macro_rules! lease_sql {
    (
        table: $t:literal, key: $k:literal, owner: $o:literal, until: $u:literal,
        epoch: $e:literal, ensure: $ensure:expr,
        take_now: $now3:literal, take_clock: $clock3:literal, renew_now: $now4:literal,
        lock: $lock:literal $(,)?
    ) => {
        LeaseSql {
            ensure: $ensure,
            take: concat!(
                "UPDATE ",
                $t,
                " SET ",
                $o,
                " = $2, ",
                $u,
                " = ",
                $now3,
                " + $4, ",
                $e,
                " = ",
                $e,
                " + 1",
                $clock3,
                " WHERE ",
                $k,
                " = $1 AND (",
                $o,
                " IS NULL OR ",
                $u,
                " < ",
                $now3,
                ") RETURNING ",
                $e
            ),
            renew: concat!(
                "UPDATE ",
                $t,
                " SET ",
                $u,
                " = ",
                $now4,
                " + $5",
                held_by!($k, $o, $e)
            ),
            release: concat!(
                "UPDATE ",
                $t,
                " SET ",
                $o,
                " = NULL, ",
                $u,
                " = NULL",
                held_by!($k, $o, $e)
            ),
            check: concat!("SELECT 1 FROM ", $t, held_by!($k, $o, $e), $lock),
        }
    };
}

/// Both dialects' [`LeaseSql`] for a kind: SQLite binds the caller's now;
/// PostgreSQL falls back to the database's clock (`mld_now_ms()`) when the
/// store binds `NULL`.
macro_rules! task_lease_kind {
    (table: $t:literal, key: $k:literal, owner: $o:literal, until: $u:literal,
     epoch: $e:literal, ensure: $ensure:expr $(,)?) => {
        const SQLITE: LeaseSql = lease_sql!(
            table: $t, key: $k, owner: $o, until: $u, epoch: $e, ensure: $ensure,
            take_now: "$3", take_clock: "", renew_now: "$4", lock: "",
        );
        const POSTGRES: LeaseSql = lease_sql!(
            table: $t, key: $k, owner: $o, until: $u, epoch: $e, ensure: $ensure,
            take_now: "clock.now_ms",
            take_clock: " FROM (SELECT coalesce($3::BIGINT, mld_now_ms()) AS now_ms) clock",
            renew_now: "coalesce($4::BIGINT, mld_now_ms())",
            lock: " FOR NO KEY UPDATE",
        );
    };
}

impl TaskLease for JobTask {
    task_lease_kind!(
        table: "jobs", key: "id", owner: "task_owner", until: "task_until",
        epoch: "task_epoch", ensure: None,
    );

    type Key<'k> = i64;

    fn key(&self) -> LeaseKey<'_> {
        LeaseKey::Id(self.job_id)
    }

    fn held(&self) -> (&str, i64) {
        (&self.owner, self.epoch)
    }

    fn taken(job_id: i64, owner: &Arc<str>, epoch: i64) -> Self {
        JobTask {
            job_id,
            owner: owner.clone(),
            epoch,
        }
    }

    fn lost(&self) -> StoreError {
        StoreError::LostJobTask(self.job_id)
    }
}

impl TaskLease for CollectionTask {
    task_lease_kind!(
        table: "collection_tasks", key: "collection", owner: "owner", until: "until_ms",
        epoch: "epoch",
        // A collection's lease row is made at its first take.
        ensure: Some(
            "INSERT INTO collection_tasks (collection, owner, until_ms, epoch) \
             VALUES ($1, NULL, NULL, 0) ON CONFLICT (collection) DO NOTHING"
        ),
    );

    type Key<'k> = &'k str;

    fn key(&self) -> LeaseKey<'_> {
        LeaseKey::Name(&self.collection)
    }

    fn held(&self) -> (&str, i64) {
        (&self.owner, self.epoch)
    }

    fn taken(collection: &str, owner: &Arc<str>, epoch: i64) -> Self {
        CollectionTask {
            collection: collection.into(),
            owner: owner.clone(),
            epoch,
        }
    }

    fn lost(&self) -> StoreError {
        StoreError::LostCollectionTask(self.collection.to_string())
    }
}

/// The protocol's steps (take, renew, release, check) for one backend,
/// written once: `task_lease_protocol!(Sqlite, SqliteArguments, SqlitePool,
/// SqliteConnection, SQLITE, i64)` in `sqlite/`, the PostgreSQL types with
/// `POSTGRES` and `Option<i64>` (a `NULL` now: the database's clock) there.
macro_rules! task_lease_protocol {
    ($db:ty, $args:ty, $pool:ty, $conn:ty, $sql:ident, $now:ty) => {
        use std::sync::Arc;
        use std::time::Duration;
        use $crate::store::task_lease::{LeaseKey, TaskLease};
        use $crate::store::{StoreResult, millis};

        type LeaseQuery<'q> = sqlx::query::Query<'q, $db, $args>;

        fn bind_key<'q>(query: LeaseQuery<'q>, key: LeaseKey<'q>) -> LeaseQuery<'q> {
            match key {
                LeaseKey::Id(id) => query.bind(id),
                LeaseKey::Name(name) => query.bind(name),
            }
        }

        /// Binds `$1..$3`: the lease's key, owner and epoch.
        fn bind_held<'q, K: TaskLease>(query: LeaseQuery<'q>, task: &'q K) -> LeaseQuery<'q> {
            let (owner, epoch) = task.held();
            bind_key(query, task.key()).bind(owner).bind(epoch)
        }

        /// Takes the lease on `key` for `owner` until `now_ms + ttl`, if free or expired.
        pub(in crate::store) async fn take<K: TaskLease>(
            writer: &$pool,
            key: K::Key<'_>,
            owner: &Arc<str>,
            ttl: Duration,
            now_ms: $now,
        ) -> StoreResult<Option<K>> {
            if let Some(ensure) = K::$sql.ensure {
                bind_key(sqlx::query(ensure), key.into())
                    .execute(writer)
                    .await?;
            }
            let query = bind_key(sqlx::query(K::$sql.take), key.into())
                .bind(&**owner)
                .bind(now_ms)
                .bind(millis(ttl));
            let epoch: Option<i64> = query
                .fetch_optional(writer)
                .await?
                .map(|row| sqlx::Row::try_get(&row, 0))
                .transpose()?;
            Ok(epoch.map(|epoch| K::taken(key, owner, epoch)))
        }

        /// Extends a held lease to `now_ms + ttl`; `false` if it was lost.
        pub(in crate::store) async fn renew<K: TaskLease>(
            writer: &$pool,
            task: &K,
            ttl: Duration,
            now_ms: $now,
        ) -> StoreResult<bool> {
            let changed = bind_held(sqlx::query(K::$sql.renew), task)
                .bind(now_ms)
                .bind(millis(ttl))
                .execute(writer)
                .await?
                .rows_affected();
            Ok(changed == 1)
        }

        /// Gives a held lease up; a lost one is left alone.
        pub(in crate::store) async fn release<K: TaskLease>(
            writer: &$pool,
            task: &K,
        ) -> StoreResult<()> {
            bind_held(sqlx::query(K::$sql.release), task)
                .execute(writer)
                .await?;
            Ok(())
        }

        /// `Ok` while `task` holds its lease, else the kind's lost-lease error: a
        /// write's check inside its own transaction.
        pub(in crate::store) async fn check<K: TaskLease>(
            conn: &mut $conn,
            task: &K,
        ) -> StoreResult<()> {
            let held = bind_held(sqlx::query(K::$sql.check), task)
                .fetch_optional(&mut *conn)
                .await?;
            match held {
                Some(_) => Ok(()),
                None => Err(task.lost()),
            }
        }
    };
}
pub(super) use task_lease_protocol;
