//! Enumeration pages on PostgreSQL: a page goes in as one `INSERT ... SELECT
//! FROM unnest(...)` (one array per column) instead of SQLite's fixed-size
//! multi-row statements: one round trip and one prepared statement whatever
//! the page's size. The transaction is `store/shared/ingest.rs`.

use super::PgStore;
use super::dialect::Conn;
use crate::store::StoreResult;
use crate::store::ingest::{PreparedPage, missing_meta, page_collections};
use crate::store::interface::*;
use std::collections::{BTreeMap, HashSet};

crate::store::shared::ingest::shared_ingest_helpers!(PgStore);

impl Ingest for PgStore {
    crate::store::shared::ingest::shared_store_page!();

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

/// Locks the job row: pages of one job (from several daemons) then go one
/// at a time, so the next part's `seq` and `enumeration_complete` see every
/// other page's parts. The database's clock is read once, here, for the
/// whole page; `None` when the job is gone.
async fn lock_job_for_page(
    tx: &mut Conn,
    job_id: i64,
    at: Option<i64>,
) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce($2::BIGINT, mld_now_ms()) FROM jobs WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(job_id)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await?)
}

/// The page's image rows in one statement, in the page's order, and the
/// collections they go to in another.
async fn insert_page_rows(tx: &mut Conn, page: &PreparedPage<'_>) -> StoreResult<u64> {
    let PreparedPage {
        job_id, rows, now, ..
    } = *page;
    if rows.is_empty() {
        return Ok(0);
    }
    let inserted = sqlx::query(
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
    .bind(page_collections(rows))
    .execute(&mut *tx)
    .await?;
    Ok(inserted)
}

/// Records images the API says do not exist as failed for good, in one
/// statement.
async fn insert_missing(tx: &mut Conn, page: &PreparedPage<'_>) -> StoreResult<u64> {
    let PreparedPage {
        job_id,
        missing,
        now,
        ..
    } = *page;
    if missing.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
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
    .rows_affected())
}
