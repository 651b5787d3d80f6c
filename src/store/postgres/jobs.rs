//! PostgreSQL twin of `store::jobs`.

#[allow(unused_imports)]
use super::PgStore;
