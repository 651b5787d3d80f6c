//! [`crate::store::interface::Ingest::store_page`] written once for both
//! backends: one transaction per page, the page's rows and where its part
//! stands together. How the rows go in is each backend's own
//! (`lock_job_for_page`, `insert_page_rows`, `insert_missing` in its
//! `ingest.rs`): SQLite's
//! multi-row statements of a few fixed sizes, PostgreSQL's `unnest`.

/// `store_page`, expanded inside a backend's `impl Ingest for …`.
macro_rules! shared_store_page {
    () => {
        async fn store_page(
            &self,
            page: $crate::store::PageWrite<'_, impl $crate::model::Storable>,
        ) -> $crate::store::StoreResult<u64> {
            use $crate::store::ingest::{PreparedPage, prepare_rows, step_cursor};
            let $crate::store::PageWrite {
                job_id,
                part,
                images,
                missing,
                step,
                task,
                now_ms,
            } = page;
            let cursor = step_cursor(step)?;
            let placement = self.placement(job_id).await?;
            let rows = prepare_rows(images, &placement)?;
            let mut tx = self.writer()?.begin().await?;
            let now = lock_job_for_page(&mut tx, job_id, self.at(now_ms)).await?;
            // The lease first: a stale holder hears it lost the job, not
            // that the part it was on is gone.
            if let Some(task) = task {
                super::task_lease::check(&mut tx, task).await?;
            }
            let open: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT seq FROM job_parts WHERE job_id = $1 AND seq = $2 AND NOT done",
                super::dialect::for_update!()
            ))
            .bind(job_id)
            .bind(part)
            .fetch_optional(&mut *tx)
            .await?;
            let (Some(now), Some(_)) = (now, open) else {
                return Err($crate::store::StoreError::Invalid(format!(
                    "job {job_id} has no open part {part} to store a page into"
                )));
            };
            let prepared = PreparedPage {
                job_id,
                rows: &rows,
                missing,
                now,
            };
            let mut inserted = insert_page_rows(&mut tx, &prepared).await?;
            inserted += insert_missing(&mut tx, &prepared).await?;
            move_part(&mut tx, job_id, part, cursor.as_deref(), step, now).await?;
            tx.commit().await?;
            Ok(inserted)
        }
    };
}
pub(in crate::store) use shared_store_page;

/// The helpers `store_page` shares, expanded once at the top of each
/// backend's `ingest.rs`: `$store` is the backend's store type.
macro_rules! shared_ingest_helpers {
    ($store:ty) => {
        /// Where the part stands after the page (its cursor, done or not,
        /// replaced by children appended after the job's last part), and
        /// whether any part is left open: the job's `enumeration_complete`.
        async fn move_part(
            tx: &mut super::dialect::Conn,
            job_id: i64,
            part: i64,
            cursor: Option<&str>,
            step: $crate::store::PartStep<'_>,
            now: i64,
        ) -> $crate::store::StoreResult<()> {
            use $crate::store::{PartStep, sql};
            sqlx::query(sql::MOVE_PART)
                .bind(cursor)
                .bind(!matches!(step, PartStep::Next(_)))
                .bind(job_id)
                .bind(part)
                .execute(&mut *tx)
                .await?;
            if let PartStep::Replace(children) = step {
                let last: i64 = sqlx::query_scalar(sql::LAST_PART)
                    .bind(job_id)
                    .fetch_one(&mut *tx)
                    .await?;
                super::parts::insert_parts(tx, job_id, last + 1, children).await?;
            }
            /// Job `$1` is listed in full once no part is left open; `$2` the page's time.
            const SET_ENUMERATION_COMPLETE: &str = concat!(
                "UPDATE jobs SET enumeration_complete = NOT EXISTS (SELECT 1 FROM job_parts ",
                super::dialect::open_parts_of!("$1"),
                "), updated_at = $2, progress_at = $2 WHERE id = $1"
            );
            sqlx::query(SET_ENUMERATION_COMPLETE)
                .bind(job_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            Ok(())
        }

        impl $store {
            /// Where a job's images go. Fixed at creation, so read once per page.
            async fn placement(
                &self,
                job_id: i64,
            ) -> $crate::store::StoreResult<$crate::store::ingest::Placement> {
                let row: Option<(String, String, String, String)> =
                    sqlx::query_as($crate::store::sql::PLACEMENT)
                        .bind(job_id)
                        .fetch_optional(self.reader()?)
                        .await?;
                let row = row.ok_or($crate::store::StoreError::NoSuchJob(job_id))?;
                $crate::store::ingest::Placement::from_fields(job_id, row)
            }
        }
    };
}
pub(in crate::store) use shared_ingest_helpers;
