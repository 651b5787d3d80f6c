//! The [`crate::store::interface::Uploads`] half on PostgreSQL: every body is
//! shared (`store/uploads.rs`), its statements reading the same on both.

use super::PgStore;
use crate::store::interface::Uploads;

impl Uploads for PgStore {
    crate::store::uploads::shared_uploads!();
}
