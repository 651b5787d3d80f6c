//! Lists that page on SQLite, all on the read pool. Image pages pin their
//! index with `INDEXED BY`: without statistics the planner might otherwise
//! seek a job's pending rows in `images_due` and sort them all.

use super::SqliteStore;
use crate::store::interface::*;
use crate::store::jobs::{JobRow, job_columns};
use crate::store::listing::{JobTotals, TotalsRow};
use crate::store::{ImageState, Job, StoreResult};

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
    crate::store::shared::shared_listings!(index_hint, "jobs");

    async fn recent_jobs(&self, limit: u32) -> StoreResult<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM (SELECT * FROM jobs ORDER BY max(updated_at, ifnull(progress_at, 0)) DESC, \
             id DESC LIMIT ?) ORDER BY id"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn job_totals(&self) -> StoreResult<JobTotals> {
        let row: TotalsRow = sqlx::query_as(
            "SELECT count(*) AS jobs, ifnull(sum(n_pending), 0) AS pending, \
             ifnull(sum(n_in_progress), 0) AS in_progress, ifnull(sum(n_done), 0) AS done, \
             ifnull(sum(n_failed), 0) AS failed, ifnull(sum(n_deleted), 0) AS deleted, \
             ifnull(sum(bytes_done), 0) AS bytes_done, \
             ifnull(sum(CASE WHEN state IN ('queued', 'enumerating', 'downloading') \
                        THEN n_pending + n_in_progress ELSE 0 END), 0) AS remaining \
             FROM jobs",
        )
        .fetch_one(self.reader()?)
        .await?;
        Ok(row.into())
    }
}
