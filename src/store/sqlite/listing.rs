//! Lists that page on SQLite, all on the read pool. Image pages pin their
//! index with `INDEXED BY`: without statistics the planner might otherwise
//! seek a job's pending rows in `images_due` and sort them all.

use super::SqliteStore;
use crate::store::ImageState;
use crate::store::interface::*;

/// The index a page of images in `state` walks (see
/// `migrations/sqlite/0011_image_listings.sql`): pending and done rows are
/// dense, so the UNIQUE (job_id, image_id) index with the state as a filter
/// reads about `limit` entries a page; in-flight rows are few (one per
/// worker), read through `images_leased` and sorted; failed rows are sparse
/// and have their own partial index. Without a state the UNIQUE index
/// serves as is.
fn index_hint(state: Option<ImageState>) -> &'static str {
    match state {
        None => "",
        Some(ImageState::Pending | ImageState::Done) => " INDEXED BY sqlite_autoindex_images_1",
        Some(ImageState::InProgress) => " INDEXED BY images_leased",
        Some(ImageState::Failed) => " INDEXED BY images_listed_failed",
    }
}

impl Listings for SqliteStore {
    crate::store::shared::shared_listings!(index_hint);
}
