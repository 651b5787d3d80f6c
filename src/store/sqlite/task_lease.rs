//! The task lease protocol (see `store/task_lease.rs`) on SQLite, once for
//! every kind of lease.

use sqlx::sqlite::{Sqlite, SqliteArguments};
use sqlx::{SqliteConnection, SqlitePool};

crate::store::task_lease::task_lease_protocol!(
    Sqlite,
    SqliteArguments,
    SqlitePool,
    SqliteConnection,
    SQLITE,
    i64
);
