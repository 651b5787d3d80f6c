//! Method bodies that are the same on both backends, written once. Each
//! macro expands inside a backend's `impl <Area> for ...` to the area's
//! shared methods; they read through `self.reader()?`, write through
//! `self.writer()?` (the backend's pools: SQLite's read pool and single
//! writer, PostgreSQL's one pool) and run the statements of [`super::sql`].
//! The submodules share whole areas; their statements fill the dialect
//! holes from the backend's `dialect.rs` (`super::dialect`, resolved where
//! the macro expands).

pub(super) mod archives;
pub(super) mod jobs;
pub(super) mod parts;
pub(super) mod queue;

/// [`super::interface::Images`]'s shared methods.
macro_rules! shared_images {
    () => {
        async fn finished_images(
            &self,
            job_id: i64,
            after_row_id: Option<i64>,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::ArchivedImage>> {
            use $crate::store::{images::ArchivedRow, sql};
            let rows: Vec<ArchivedRow> = match after_row_id {
                None => {
                    sqlx::query_as(sql::FINISHED_IMAGES_FIRST)
                        .bind(job_id)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader()?)
                        .await?
                }
                Some(after) => {
                    sqlx::query_as(sql::FINISHED_IMAGES_AFTER)
                        .bind(job_id)
                        .bind(after)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader()?)
                        .await?
                }
            };
            rows.into_iter().map(ArchivedRow::into_archived).collect()
        }

        async fn job_collections(&self, job_id: i64) -> $crate::store::StoreResult<Vec<String>> {
            Ok(sqlx::query_scalar($crate::store::sql::JOB_COLLECTIONS)
                .bind(job_id)
                .fetch_all(self.reader()?)
                .await?)
        }

        async fn failed_images(
            &self,
            job_id: i64,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::FailedImage>> {
            use $crate::store::{images::FailedRow, sql};
            let rows: Vec<FailedRow> = sqlx::query_as(sql::FAILED_IMAGES)
                .bind(job_id)
                .bind(i64::from(limit))
                .fetch_all(self.reader()?)
                .await?;
            rows.into_iter().map(FailedRow::into_failed).collect()
        }

        async fn image_by_id(
            &self,
            job_id: i64,
            image_id: &str,
        ) -> $crate::store::StoreResult<Option<$crate::store::ImageRecord>> {
            use $crate::store::{images::ImageRow, sql};
            let row: Option<ImageRow> = sqlx::query_as(sql::IMAGE_BY_ID)
                .bind(job_id)
                .bind(image_id)
                .fetch_optional(self.reader()?)
                .await?;
            row.map(ImageRow::into_record).transpose()
        }
    };
}
pub(super) use shared_images;

/// [`super::interface::Archives`]'s shared methods.
macro_rules! shared_archives {
    () => {
        async fn tar_names(&self, collection: &str) -> $crate::store::StoreResult<Vec<String>> {
            Ok(sqlx::query_scalar($crate::store::sql::TAR_NAMES)
                .bind(collection)
                .fetch_all(self.reader()?)
                .await?)
        }

        async fn unfinished_packings(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::Packing>> {
            use $crate::store::{archives::PackingRow, sql};
            let rows: Vec<PackingRow> = sqlx::query_as(sql::UNFINISHED_PACKINGS)
                .bind(collection)
                .fetch_all(self.reader()?)
                .await?;
            rows.into_iter().map(PackingRow::into_packing).collect()
        }

        async fn packing(
            &self,
            id: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::Packing>> {
            use $crate::store::{archives::PackingRow, sql};
            let row: Option<PackingRow> = sqlx::query_as(sql::PACKING)
                .bind(id)
                .fetch_optional(self.reader()?)
                .await?;
            row.map(PackingRow::into_packing).transpose()
        }

        async fn packings(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::Packing>> {
            use $crate::store::{archives::PackingRow, sql};
            let rows: Vec<PackingRow> = sqlx::query_as(sql::PACKINGS)
                .bind(collection)
                .fetch_all(self.reader()?)
                .await?;
            rows.into_iter().map(PackingRow::into_packing).collect()
        }

        async fn is_packed_collection(&self, collection: &str) -> $crate::store::StoreResult<bool> {
            Ok(sqlx::query_scalar($crate::store::sql::IS_PACKED_COLLECTION)
                .bind(collection)
                .fetch_one(self.reader()?)
                .await?)
        }
    };
}
pub(super) use shared_archives;

/// [`super::interface::CollectionTasks`]'s shared methods.
macro_rules! shared_collection_tasks {
    () => {
        // On the writer: a packer reads back what it just recorded.
        async fn recorded_uploads(
            &self,
            collection: &str,
        ) -> $crate::store::StoreResult<Vec<$crate::store::RecordedUpload>> {
            Ok(sqlx::query_as($crate::store::sql::RECORDED_UPLOADS)
                .bind(collection)
                .fetch_all(self.writer()?)
                .await?)
        }

        async fn forget_upload(&self, upload_id: &str) -> $crate::store::StoreResult<()> {
            sqlx::query($crate::store::sql::FORGET_UPLOAD)
                .bind(upload_id)
                .execute(self.writer()?)
                .await?;
            Ok(())
        }
    };
}
pub(super) use shared_collection_tasks;

/// [`super::interface::Cluster`]'s shared methods.
macro_rules! shared_cluster {
    () => {
        async fn forget_daemon(&self, id: &str) -> $crate::store::StoreResult<()> {
            sqlx::query($crate::store::sql::FORGET_DAEMON)
                .bind(id)
                .execute(self.writer()?)
                .await?;
            Ok(())
        }
    };
}
pub(super) use shared_cluster;

/// [`super::interface::Rebase`]'s shared methods.
macro_rules! shared_rebase {
    () => {
        async fn recorded_archive_root(&self) -> $crate::store::StoreResult<Option<String>> {
            Ok(sqlx::query_scalar($crate::store::sql::ARCHIVE_ROOT)
                .fetch_optional(self.reader()?)
                .await?)
        }
    };
}
pub(super) use shared_rebase;

/// [`super::interface::Listings`]'s shared methods: a page of jobs by id
/// (from `$jobs_table`: `jobs` on SQLite, the `job_rows` view with its
/// counter deltas folded in on PostgreSQL) and a page of a job's images.
/// `$hint` maps the state filtered on to the text that follows the
/// table (SQLite's `INDEXED BY`, to pin the index; nothing on PostgreSQL,
/// whose planner sees the state in the statement's text).
macro_rules! shared_listings {
    ($hint:path, $jobs_table:literal) => {
        async fn jobs_page(
            &self,
            after: Option<i64>,
            limit: u32,
        ) -> $crate::store::StoreResult<$crate::store::Page<$crate::store::Job>> {
            use $crate::store::jobs::{JobRow, job_columns};
            let rows: Vec<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM ",
                $jobs_table,
                " WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after.unwrap_or(0))
            .bind(i64::from(limit) + 1)
            .fetch_all(self.reader()?)
            .await?;
            let jobs = rows
                .into_iter()
                .map(JobRow::into_job)
                .collect::<$crate::store::StoreResult<_>>()?;
            Ok($crate::store::Page::from_overfetch(jobs, limit))
        }

        async fn job_images(
            &self,
            job_id: i64,
            filter: &$crate::store::ImageFilter,
            after: Option<&str>,
            limit: u32,
        ) -> $crate::store::StoreResult<$crate::store::Page<$crate::store::ListedImage>> {
            use $crate::store::{listing, sql};
            let state = filter.effective_state()?;
            let statement =
                listing::images_page_sql($hint(state), state, filter.reason, after.is_some());
            let rows: Vec<listing::ListedRow> = sqlx::query_as(sqlx::AssertSqlSafe(statement))
                .bind(job_id)
                .bind(after)
                .bind(i64::from(limit) + 1)
                .fetch_all(self.reader()?)
                .await?;
            let root: Option<String> = sqlx::query_scalar(sql::ARCHIVE_ROOT)
                .fetch_optional(self.reader()?)
                .await?;
            listing::images_page(rows, root.as_deref(), limit)
        }
    };
}
pub(super) use shared_listings;
