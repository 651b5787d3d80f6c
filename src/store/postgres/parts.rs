//! A job's enumeration parts on PostgreSQL: the bodies are `store/shared/parts.rs`.

use super::PgStore;
use crate::store::interface::Parts;

crate::store::shared::parts::shared_insert_parts!();

impl Parts for PgStore {
    crate::store::shared::parts::shared_parts!();
}
