//! The task lease protocol (see `store/task_lease.rs`) on PostgreSQL, once
//! for every kind of lease: times are the database's when the store binds
//! no now ([`super::PgStore::at`]).

use sqlx::postgres::{PgArguments, Postgres};
use sqlx::{PgConnection, PgPool};

crate::store::task_lease::task_lease_protocol!(
    Postgres,
    PgArguments,
    PgPool,
    PgConnection,
    POSTGRES,
    Option<i64>
);
