//! PostgreSQL twin of `store::stalls`.

#[allow(unused_imports)]
use super::PgStore;
