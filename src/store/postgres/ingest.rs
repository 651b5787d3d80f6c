//! The [`crate::store::interface::Ingest`] half on PostgreSQL.
//!
//! A page goes in as one `INSERT ... SELECT FROM unnest(...)` (one array per
//! column) instead of SQLite's fixed-size multi-row statements: one round
//! trip and one prepared statement whatever the page's size.

use super::PgStore;
use super::parts::insert_parts;
use crate::model::Storable;
use crate::store::JobTask;
use crate::store::ingest::{
    MissingImage, PartStep, Placement, missing_meta, page_collections, prepare_rows, step_cursor,
};
use crate::store::interface::*;
use crate::store::sql;
use crate::store::{StoreError, StoreResult};
use std::collections::{BTreeMap, HashSet};

impl Ingest for PgStore {
    /// PostgreSQL: The transaction first locks the job row: pages
    /// of one job (from several daemons) then go one at a time, so the next
    /// part's `seq` and `enumeration_complete` see every other page's parts.
    /// The database's clock is read once, there, for the whole page.
    // One page is one transaction: each argument is one of its inputs.
    #[allow(clippy::too_many_arguments)]
    async fn store_page(
        &self,
        job_id: i64,
        part: i64,
        images: &[impl Storable],
        missing: &[MissingImage<'_>],
        step: PartStep<'_>,
        task: Option<&JobTask>,
        now_ms: i64,
    ) -> StoreResult<u64> {
        let cursor = step_cursor(step)?;
        let placement = self.placement(job_id).await?;
        let rows = prepare_rows(images, &placement)?;

        let mut tx = self.pool().begin().await?;
        let now: Option<i64> = sqlx::query_scalar(
            "SELECT coalesce($2::BIGINT, mld_now_ms()) FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
        )
        .bind(job_id)
        .bind(self.at(now_ms))
        .fetch_optional(&mut *tx)
        .await?;
        // The lease first, as on SQLite: a stale holder hears it lost the
        // job, not that the part it was on is gone.
        if let Some(task) = task {
            super::task_lease::check(&mut tx, task).await?;
        }
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM job_parts WHERE job_id = $1 AND seq = $2 AND NOT done FOR UPDATE",
        )
        .bind(job_id)
        .bind(part)
        .fetch_optional(&mut *tx)
        .await?;
        let (Some(now), Some(_)) = (now, open) else {
            return Err(StoreError::Invalid(format!(
                "job {job_id} has no open part {part} to store a page into"
            )));
        };
        let mut inserted = 0;
        if !rows.is_empty() {
            inserted += sqlx::query(
                "INSERT INTO images (job_id, image_id, meta, url, captured_at, run_at, updated_at, \
                 collection) \
                 SELECT $1, r.image_id, r.meta, r.url, r.captured_at, $2, $2, r.collection \
                 FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::TEXT[]) \
                      WITH ORDINALITY AS r(image_id, meta, url, captured_at, collection, n) \
                 ORDER BY r.n \
                 ON CONFLICT (job_id, image_id) DO NOTHING",
            )
            .bind(job_id)
            .bind(now)
            .bind(rows.iter().map(|r| r.image_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.meta.as_ref()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.url).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.captured_at).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|r| r.collection.as_ref())
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "INSERT INTO job_collections (job_id, collection) \
                 SELECT $1, unnest($2::TEXT[]) ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(page_collections(&rows))
            .execute(&mut *tx)
            .await?;
        }
        if !missing.is_empty() {
            inserted += sqlx::query(
                "INSERT INTO images (job_id, image_id, meta, state, fail_reason, last_error, \
                 run_at, updated_at) \
                 SELECT $1, m.image_id, m.meta, 'failed', m.reason, m.message, $2, $2 \
                 FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[]) \
                      WITH ORDINALITY AS m(image_id, meta, reason, message, n) \
                 ORDER BY m.n \
                 ON CONFLICT (job_id, image_id) DO NOTHING",
            )
            .bind(job_id)
            .bind(now)
            .bind(missing.iter().map(|m| m.image_id).collect::<Vec<_>>())
            .bind(missing.iter().map(missing_meta).collect::<Vec<_>>())
            .bind(
                missing
                    .iter()
                    .map(|m| m.reason.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(missing.iter().map(|m| m.message).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query(sql::MOVE_PART)
            .bind(cursor.as_deref())
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
            insert_parts(&mut tx, job_id, last + 1, children).await?;
        }
        sqlx::query(
            "UPDATE jobs SET enumeration_complete = NOT EXISTS \
             (SELECT 1 FROM job_parts WHERE job_id = $1 AND NOT done), \
             updated_at = $2, progress_at = $2 WHERE id = $1",
        )
        .bind(job_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// PostgreSQL: in one statement: rows are locked in row id
    /// order first, so daemons refreshing overlapping rows cannot deadlock.
    /// A row id given twice keeps its last URL and counts twice, as there.
    async fn update_urls(&self, urls: &[(i64, Option<String>)]) -> StoreResult<u64> {
        if urls.is_empty() {
            return Ok(0);
        }
        let latest: BTreeMap<i64, Option<&str>> = urls
            .iter()
            .map(|(row_id, url)| (*row_id, url.as_deref()))
            .collect();
        let updated: Vec<i64> = sqlx::query_scalar(
            "WITH locked AS (SELECT rowid FROM images WHERE rowid = ANY($1) ORDER BY rowid \
                             FOR UPDATE) \
             UPDATE images SET url = u.url \
             FROM locked l JOIN unnest($1::BIGINT[], $2::TEXT[]) AS u(rowid, url) \
                  ON u.rowid = l.rowid \
             WHERE images.rowid = l.rowid \
             RETURNING images.rowid",
        )
        .bind(latest.keys().copied().collect::<Vec<i64>>())
        .bind(latest.values().copied().collect::<Vec<Option<&str>>>())
        .fetch_all(self.pool())
        .await?;
        let updated: HashSet<i64> = updated.into_iter().collect();
        Ok(urls
            .iter()
            .filter(|(row_id, _)| updated.contains(row_id))
            .count() as u64)
    }
}

impl PgStore {
    /// Where a job's images go. Fixed at creation, so read once per page.
    async fn placement(&self, job_id: i64) -> StoreResult<Placement> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(sql::PLACEMENT)
            .bind(job_id)
            .fetch_optional(self.pool())
            .await?;
        Placement::from_fields(job_id, row.ok_or(StoreError::NoSuchJob(job_id))?)
    }
}
