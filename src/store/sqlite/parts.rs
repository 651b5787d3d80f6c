//! A job's enumeration parts on SQLite: the bodies are `store/shared/parts.rs`.

use super::SqliteStore;
use crate::store::interface::Parts;

crate::store::shared::parts::shared_insert_parts!();

impl Parts for SqliteStore {
    crate::store::shared::parts::shared_parts!();
}
