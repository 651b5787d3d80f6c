//! Method bodies that are the same on both backends, written once. Each
//! macro expands inside a backend's `impl <Area> for ...` to the area's
//! shared methods; they read through `self.reader()?`, write through
//! `self.writer()?` (the backend's pools: SQLite's read pool and single
//! writer, PostgreSQL's one pool) and run the statements of [`super::sql`].
//! The submodules share whole areas; their statements fill the dialect
//! holes from the backend's `dialect.rs` (`super::dialect`, resolved where
//! the macro expands).

pub(super) mod archives;
pub(super) mod ingest;
pub(super) mod jobs;
pub(super) mod parts;
pub(super) mod queue;
pub(super) mod rebase;
pub(super) mod tasks;

/// What a read-then-write transaction must hold before it reads, where the
/// backend needs it: on PostgreSQL several daemons run the same
/// transaction at once (`postgres/dialect.rs` says what each takes); on
/// SQLite the single writer already serialises them.
#[derive(Debug, Clone, Copy)]
pub(super) enum TxLock<'a> {
    /// A submission of the job identity (`job_key`).
    Submission(&'a str),
    /// The job row with this id, before a decision on its images.
    Job(i64),
    /// Packing planning for this collection.
    Collection(&'a str),
    /// The rebase of stored paths.
    Rebase,
    /// Not a lock: this transaction's commit must be durable.
    DurableCommit,
}

/// A dialect's fixed fragments, one line each (`name = "text";`): each
/// becomes a macro `name!()` expanding to its literal, so the shared
/// statements `concat!` it and stay `&'static str`. Each backend's
/// `dialect.rs` lists its own; the fragments that take a placeholder are
/// written out there.
macro_rules! fixed_fragments {
    ($($(#[$doc:meta])* $name:ident = $text:literal;)*) => {
        $(
            $(#[$doc])*
            macro_rules! $name {
                () => {
                    $text
                };
            }
            pub(super) use $name;
        )*
    };
}
pub(super) use fixed_fragments;

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

        async fn finished_since(&self, since_ms: i64) -> $crate::store::StoreResult<(u64, u64)> {
            let (count, bytes): (i64, i64) = sqlx::query_as(
                "SELECT count(*), CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM images \
                 WHERE state = 'done' AND updated_at > $1",
            )
            .bind(since_ms)
            .fetch_one(self.reader()?)
            .await?;
            Ok((count.max(0) as u64, bytes.max(0) as u64))
        }

        async fn collection_images(
            &self,
            collection: &str,
            after: Option<&$crate::store::CollectionPosition>,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::ArchivedImage>> {
            use $crate::store::images::ArchivedRow;
            // `(i64::MIN, '', 0)` is before every row: one statement for
            // the first page and the next.
            let (order, image_id, row_id) = after.map_or((i64::MIN, "", 0), |a| {
                (a.capture_order, a.image_id.as_str(), a.row_id)
            });
            let rows: Vec<ArchivedRow> = sqlx::query_as(concat!(
                "SELECT rowid, meta, path, bytes, sha256, capture_order, image_id FROM images",
                super::dialect::hint!("images_in_collection"),
                " WHERE collection = $1 AND state = 'done' \
                   AND (capture_order, image_id, rowid) > ($2, $3, $4) \
                 ORDER BY capture_order, image_id, rowid LIMIT $5"
            ))
            .bind(collection)
            .bind(order)
            .bind(image_id)
            .bind(row_id)
            .bind(i64::from(limit))
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(ArchivedRow::into_archived).collect()
        }

        /// Due by the store's clock, read once (on PostgreSQL an init plan,
        /// so it bounds the index scan).
        async fn upcoming_urls(
            &self,
            job_id: i64,
            now_ms: i64,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<(i64, String, Option<String>)>> {
            Ok(sqlx::query_as(concat!(
                "SELECT rowid, image_id, url FROM images",
                super::dialect::hint!("images_due"),
                " WHERE job_id = $1 AND state = 'pending' AND run_at <= ",
                super::dialect::now_once!("$2"),
                " ORDER BY run_at, rowid LIMIT $3"
            ))
            .bind(job_id)
            .bind(self.at(now_ms))
            .bind(i64::from(limit))
            .fetch_all(self.reader()?)
            .await?)
        }
    };
}
pub(super) use shared_images;

/// [`super::interface::Stalls`], written once; the marks' statements are
/// the backend's (PostgreSQL's `progress_at` is `job_rows`').
macro_rules! shared_stalls {
    () => {
        async fn stall_candidates(
            &self,
            before_ms: i64,
        ) -> $crate::store::StoreResult<Vec<$crate::store::StallCandidate>> {
            use $crate::store::stalls::{CandidateRow, candidate_from_row};
            let rows: Vec<CandidateRow> = sqlx::query_as(concat!(
                "SELECT id, n_pending + n_in_progress, enumeration_complete, progress_at, \
                 last_error FROM ",
                super::dialect::jobs_view!(),
                " WHERE state IN ('queued', 'enumerating', 'downloading') \
                   AND stalled_at IS NULL AND progress_at < $1 \
                   AND (n_pending + n_in_progress > 0 OR NOT enumeration_complete) ORDER BY id"
            ))
            .bind(before_ms)
            .fetch_all(self.reader()?)
            .await?;
            Ok(rows.into_iter().map(candidate_from_row).collect())
        }

        /// The newest error among the job's last 1000 pending rows (newest
        /// `run_at`, then newest row).
        async fn latest_image_error(
            &self,
            job_id: i64,
        ) -> $crate::store::StoreResult<Option<String>> {
            Ok(sqlx::query_scalar(concat!(
                "SELECT last_error FROM (SELECT last_error, run_at, rowid FROM images",
                super::dialect::hint!("images_due"),
                " WHERE job_id = $1 AND state = 'pending' \
                 ORDER BY run_at DESC, rowid DESC LIMIT 1000) w \
                 WHERE last_error IS NOT NULL ORDER BY run_at DESC, rowid DESC LIMIT 1"
            ))
            .bind(job_id)
            .fetch_optional(self.reader()?)
            .await?)
        }

        /// The statement is the backend's (`stalls.rs`); both bind the
        /// clock, the message, the job and the age `now_ms - before_ms`.
        async fn mark_stalled(
            &self,
            job_id: i64,
            before_ms: i64,
            message: &str,
            now_ms: i64,
        ) -> $crate::store::StoreResult<bool> {
            let marked = sqlx::query(super::stalls::MARK_STALLED)
                .bind(self.at(now_ms))
                .bind(message)
                .bind(job_id)
                .bind(now_ms.saturating_sub(before_ms))
                .execute(self.writer()?)
                .await?
                .rows_affected();
            Ok(marked == 1)
        }

        async fn clear_recovered_stalls(
            &self,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Vec<i64>> {
            Ok(sqlx::query_scalar(super::stalls::CLEAR_RECOVERED_STALLS)
                .bind(self.at(now_ms))
                .fetch_all(self.writer()?)
                .await?)
        }
    };
}
pub(super) use shared_stalls;

/// [`super::interface::Archives`], written once (the rest of it in
/// `shared/archives.rs`).
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

        $crate::store::shared::archives::shared_archive_reads!();
        $crate::store::shared::archives::shared_packing_moves!();
    };
}
pub(super) use shared_archives;

/// [`super::interface::Cluster`]'s shared methods.
macro_rules! shared_cluster {
    () => {
        async fn heartbeat(
            &self,
            daemon: &$crate::store::DaemonInfo,
            now_ms: i64,
        ) -> $crate::store::StoreResult<()> {
            // `WHERE true`: SQLite reads `ON CONFLICT` after a bare
            // `SELECT … FROM t` as a join constraint.
            sqlx::query(concat!(
                "INSERT INTO daemons (id, host, workers, started_at, heartbeat_at) \
                 SELECT $1, $2, $3, t.now_ms, t.now_ms FROM (SELECT ",
                super::dialect::now!("$4"),
                " AS now_ms) t WHERE true ON CONFLICT (id) DO UPDATE \
                 SET heartbeat_at = excluded.heartbeat_at, workers = excluded.workers"
            ))
            .bind(&daemon.id)
            .bind(&daemon.host)
            .bind(i64::from(daemon.workers))
            .bind(self.at(now_ms))
            .execute(self.writer()?)
            .await?;
            Ok(())
        }

        async fn live_daemons(
            &self,
            within: std::time::Duration,
            now_ms: i64,
        ) -> $crate::store::StoreResult<Vec<$crate::store::LiveDaemon>> {
            let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(concat!(
                "SELECT d.id, d.host, d.workers, d.started_at, t.now_ms - d.heartbeat_at \
                 FROM daemons d, (SELECT ",
                super::dialect::now!("$1"),
                " AS now_ms) t WHERE d.heartbeat_at >= t.now_ms - $2 ORDER BY d.id"
            ))
            .bind(self.at(now_ms))
            .bind($crate::store::millis(within))
            .fetch_all(self.reader()?)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, host, workers, started, age)| {
                    $crate::store::cluster::live_from_fields(id, host, workers, started, age)
                })
                .collect())
        }

        async fn forget_daemon(&self, id: &str) -> $crate::store::StoreResult<()> {
            self.delete_keyed($crate::store::sql::FORGET_DAEMON, id)
                .await
        }
    };
}
pub(super) use shared_cluster;

/// [`super::interface::Listings`]'s methods: recent jobs, totals, a page
/// of jobs by id (from the backend's jobs view: `jobs` on SQLite, the
/// `job_rows` view with its counter deltas folded in on PostgreSQL) and a
/// page of a job's images.
/// `$hint` maps the state filtered on to the text that follows the
/// table (SQLite's `INDEXED BY`, to pin the index; nothing on PostgreSQL,
/// whose planner sees the state in the statement's text).
macro_rules! shared_listings {
    ($hint:path) => {
        async fn recent_jobs(
            &self,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::Job>> {
            use $crate::store::jobs::{JobRow, job_columns};
            let rows: Vec<JobRow> = sqlx::query_as(concat!(
                "SELECT ",
                job_columns!(),
                " FROM (SELECT * FROM ",
                super::dialect::jobs_view!(),
                " ORDER BY CASE WHEN updated_at > coalesce(progress_at, 0) THEN updated_at \
                 ELSE coalesce(progress_at, 0) END DESC, id DESC LIMIT $1) r ORDER BY id"
            ))
            .bind(i64::from(limit))
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(JobRow::into_job).collect()
        }

        async fn job_totals(&self) -> $crate::store::StoreResult<$crate::store::JobTotals> {
            let row: $crate::store::listing::TotalsRow = sqlx::query_as(concat!(
                "SELECT count(*) AS jobs, CAST(coalesce(sum(n_pending), 0) AS BIGINT) AS pending, \
                 CAST(coalesce(sum(n_in_progress), 0) AS BIGINT) AS in_progress, \
                 CAST(coalesce(sum(n_done), 0) AS BIGINT) AS done, \
                 CAST(coalesce(sum(n_failed), 0) AS BIGINT) AS failed, \
                 CAST(coalesce(sum(n_deleted), 0) AS BIGINT) AS deleted, \
                 CAST(coalesce(sum(bytes_done), 0) AS BIGINT) AS bytes_done, \
                 CAST(coalesce(sum(CASE WHEN state IN ('queued', 'enumerating', 'downloading') \
                      THEN n_pending + n_in_progress ELSE 0 END), 0) AS BIGINT) AS remaining \
                 FROM ",
                super::dialect::jobs_view!()
            ))
            .fetch_one(self.reader()?)
            .await?;
            Ok(row.into())
        }

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
                super::dialect::jobs_view!(),
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
