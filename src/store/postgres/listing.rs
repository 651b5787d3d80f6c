//! Lists that page on PostgreSQL. Jobs are read from `job_rows` (the job
//! row plus its unfolded counter deltas); image ids compare in the column's
//! `C` collation, the byte order SQLite uses, so a page boundary means the
//! same on both.

use super::PgStore;
use crate::store::interface::*;
use crate::store::jobs::{JobRow, job_columns};
use crate::store::listing::{JobTotals, TotalsRow};
use crate::store::{ImageState, Job, StoreResult};

/// No hint: the planner picks the index (see
/// `migrations/postgres/0005_image_listings.sql`); the state is in the
/// statement's text, so even a generic plan can use the failed rows'
/// partial index.
fn no_hint(_: Option<ImageState>) -> &'static str {
    ""
}

impl Listings for PgStore {
    crate::store::shared::shared_listings!(no_hint, "job_rows");

    async fn recent_jobs(&self, limit: u32) -> StoreResult<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM (SELECT * FROM job_rows \
             ORDER BY greatest(updated_at, coalesce(progress_at, 0)) DESC, id DESC LIMIT $1) r \
             ORDER BY id"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    async fn job_totals(&self) -> StoreResult<JobTotals> {
        let row: TotalsRow = sqlx::query_as(
            "SELECT count(*) AS jobs, coalesce(sum(n_pending), 0)::BIGINT AS pending, \
             coalesce(sum(n_in_progress), 0)::BIGINT AS in_progress, \
             coalesce(sum(n_done), 0)::BIGINT AS done, coalesce(sum(n_failed), 0)::BIGINT AS failed, \
             coalesce(sum(n_deleted), 0)::BIGINT AS deleted, \
             coalesce(sum(bytes_done), 0)::BIGINT AS bytes_done, \
             coalesce(sum(CASE WHEN state IN ('queued', 'enumerating', 'downloading') \
                           THEN n_pending + n_in_progress ELSE 0 END), 0)::BIGINT AS remaining \
             FROM job_rows",
        )
        .fetch_one(self.reader()?)
        .await?;
        Ok(row.into())
    }
}
