//! PostgreSQL twin of `store::rebase`.

#[allow(unused_imports)]
use super::PgStore;
