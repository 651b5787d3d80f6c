//! Rebasing stored paths on SQLite, in one transaction on the writer: the
//! bodies are `store/shared/rebase.rs`.

use super::SqliteStore;
use crate::store::interface::Rebase;

crate::store::shared::rebase::shared_rebase_paths!();

impl Rebase for SqliteStore {
    crate::store::shared::rebase::shared_rebase!();
}
