//! Rebasing stored paths on SQLite, in one transaction on the writer: the
//! bodies are `store/shared/rebase.rs`.

use super::SqliteStore;

crate::store::shared::rebase::shared_rebase!(SqliteStore);
