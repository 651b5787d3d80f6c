//! PostgreSQL twin of `store::ingest`.

#[allow(unused_imports)]
use super::PgStore;
