//! PostgreSQL twin of `store::listing`. Jobs are read from `job_rows` (the
//! job row plus its unfolded counter deltas); image ids compare in the
//! column's `C` collation, the byte order SQLite uses, so a page boundary
//! means the same on both.

use super::PgStore;
use crate::store::jobs::{JobRow, job_columns};
use crate::store::listing::{
    ImageFilter, JobTotals, LISTED_COLUMNS, ListedImage, ListedRow, Page, TotalsRow, listing_filter,
};
use crate::store::{Job, StoreResult};

impl PgStore {
    /// See the SQLite twin.
    pub async fn jobs_page(&self, after: Option<i64>, limit: u32) -> StoreResult<Page<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM job_rows WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.pool())
        .await?;
        let jobs = rows
            .into_iter()
            .map(JobRow::into_job)
            .collect::<StoreResult<_>>()?;
        Ok(Page::from_overfetch(jobs, limit))
    }

    /// See the SQLite twin.
    pub async fn recent_jobs(&self, limit: u32) -> StoreResult<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM (SELECT * FROM job_rows \
             ORDER BY greatest(updated_at, coalesce(progress_at, 0)) DESC, id DESC LIMIT $1) r \
             ORDER BY id"
        ))
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(JobRow::into_job).collect()
    }

    /// See the SQLite twin.
    pub async fn job_totals(&self) -> StoreResult<JobTotals> {
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
        .fetch_one(self.pool())
        .await?;
        Ok(row.into())
    }

    /// See the SQLite twin. The partial indexes' states are in the SQL
    /// text, so even a generic plan can use them.
    pub async fn job_images(
        &self,
        job_id: i64,
        filter: &ImageFilter,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Page<ListedImage>> {
        let state = filter.effective_state()?;
        let sql = format!(
            "SELECT {LISTED_COLUMNS} FROM images i LEFT JOIN packings p ON p.id = i.packing_id \
             WHERE i.job_id = $1 {} ORDER BY i.image_id LIMIT $3",
            listing_filter(state, filter.reason, after.is_some(), "$2"),
        );
        let rows: Vec<ListedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(job_id)
            .bind(after)
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await?;
        let root = self.recorded_archive_root().await?;
        let images = rows
            .into_iter()
            .map(|row| row.into_listed(root.as_deref()))
            .collect::<StoreResult<_>>()?;
        Ok(Page::from_overfetch(images, limit))
    }

    /// See the SQLite twin.
    pub async fn recorded_archive_root(&self) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_facts WHERE key = 'archive_root'")
                .fetch_optional(self.pool())
                .await?,
        )
    }
}
