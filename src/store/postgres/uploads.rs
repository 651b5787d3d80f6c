//! The [`crate::store::interface::Uploads`] half on PostgreSQL: every body is
//! shared (`store/uploads.rs`, `store/ia_only.rs`), its statements reading
//! the same on both.

use super::PgStore;
use crate::store::interface::Uploads;

impl Uploads for PgStore {
    crate::store::uploads::shared_uploads!();
    crate::store::ia_only::shared_ia_only!();
}
