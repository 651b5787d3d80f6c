//! The [`crate::store::interface::Uploads`] half on SQLite: every body is
//! shared (`store/uploads.rs`, `store/ia_only.rs`), its statements reading
//! the same on both.

use super::SqliteStore;
use crate::store::interface::Uploads;

impl Uploads for SqliteStore {
    crate::store::uploads::shared_uploads!();
    crate::store::ia_only::shared_ia_only!();
}
