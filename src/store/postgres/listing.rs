//! Lists that page on PostgreSQL. Jobs are read from `job_rows` (the job
//! row plus its unfolded counter deltas); image ids compare in the column's
//! `C` collation, the byte order SQLite uses, so a page boundary means the
//! same on both.

use super::PgStore;
use crate::store::ImageState;
use crate::store::interface::*;

/// No hint: the planner picks the index (see
/// `migrations/postgres/0005_image_listings.sql`); the state is in the
/// statement's text, so even a generic plan can use the failed rows'
/// partial index.
fn no_hint(_: Option<ImageState>) -> &'static str {
    ""
}

impl Listings for PgStore {
    crate::store::shared::shared_listings!(no_hint);
}
