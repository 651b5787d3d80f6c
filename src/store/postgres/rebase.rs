//! Rebasing stored paths on PostgreSQL, on the archive root every daemon
//! shares, one daemon at a time: the bodies are `store/shared/rebase.rs`.

use super::PgStore;

crate::store::shared::rebase::shared_rebase!(PgStore);
