//! PostgreSQL twin of `store::queue`.

#[allow(unused_imports)]
use super::PgStore;
