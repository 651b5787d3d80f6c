//! Rebasing stored paths on PostgreSQL, on the archive root every daemon
//! shares, one daemon at a time: the bodies are `store/shared/rebase.rs`.

use super::PgStore;
use crate::store::interface::Rebase;

crate::store::shared::rebase::shared_rebase_paths!();

impl Rebase for PgStore {
    crate::store::shared::rebase::shared_rebase!();
}
