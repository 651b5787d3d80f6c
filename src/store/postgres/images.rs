//! PostgreSQL twin of `store::images`.

#[allow(unused_imports)]
use super::PgStore;
