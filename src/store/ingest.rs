//! Writing enumeration pages: image rows plus where the job's current part
//! stands, in one transaction.
//!
//! Rows go in as multi-row `INSERT ... VALUES (..),(..)` statements of a few
//! fixed sizes. Fixed sizes keep the statements in sqlx's prepared-statement
//! cache, and many rows per statement amortise the per-statement round trip to
//! the connection's worker thread, which is what limits a one-row-at-a-time
//! insert well below 100k rows/s.

use super::parts::insert_parts;
use super::{FailReason, JobTask, Store, StoreError, StoreResult, on_postgres};
use crate::model::{ImageMeta, OutputFormat, Quality, Storable, collection_name};
use crate::selection::PartSpec;
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::borrow::Cow;
use std::sync::OnceLock;

/// Rows per INSERT statement, largest first; a page is cut greedily into
/// these. 128 rows bind 8 * 128 = 1024 parameters, far below SQLite's limit.
const CHUNK_SIZES: [usize; 4] = [128, 32, 8, 1];

/// Eight anonymous parameters per row: job id, image id, metadata JSON, url,
/// captured_at, run_at, updated_at, collection. Anonymous `?` rather than
/// reused `?1`: sqlx looks up every parameter's name, and for numbered
/// parameters SQLite answers with a linear scan, which made binding
/// quadratic in the row count.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO images (job_id, image_id, meta, url, captured_at, run_at, updated_at, \
         collection) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(" ON CONFLICT (job_id, image_id) DO NOTHING");
    sql
}

fn chunk_sql(rows: usize) -> impl SqlSafeStr {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let all = SQL.get_or_init(|| CHUNK_SIZES.iter().map(|&n| insert_sql(n)).collect());
    let index = CHUNK_SIZES
        .iter()
        .position(|&n| n == rows)
        .unwrap_or(CHUNK_SIZES.len() - 1);
    // Built only from our own constants above; no input reaches the text.
    AssertSqlSafe(Cow::Borrowed(all[index].as_str()))
}

/// One image, serialised before the transaction starts so the writer is held
/// only for SQL.
pub(super) struct PreparedRow<'a> {
    pub(super) image_id: &'a str,
    pub(super) meta: Cow<'a, str>,
    pub(super) url: Option<&'a str>,
    pub(super) captured_at: Option<i64>,
    pub(super) collection: Cow<'a, str>,
}

/// What becomes of the job's current part once a page of it is stored.
#[derive(Debug, Clone, Copy)]
pub enum PartStep<'a> {
    /// More pages follow from this `next` link (stored token-free).
    Next(&'a str),
    /// The part is finished.
    Done,
    /// The part is finished and these take its place at the end of the
    /// list: a sequence's image batches, or a capped tile's quarters.
    Replace(&'a [PartSpec]),
}

/// An image the API says does not exist, recorded failed for good so the
/// job shows it: an image-id job naming an unknown id, say.
#[derive(Debug, Clone, Copy)]
pub struct MissingImage<'a> {
    pub image_id: &'a str,
    pub reason: FailReason,
    pub message: &'a str,
}

/// How a job places its images: one collection for a username job, the
/// creator's for the rest.
pub(super) struct Placement {
    username: Option<String>,
    quality: Quality,
    format: OutputFormat,
}

impl Placement {
    /// From the job's stored `source_kind`, `username`, `quality` and `format`.
    pub(super) fn from_fields(
        job_id: i64,
        (kind, username, quality, format): (String, String, String, String),
    ) -> StoreResult<Placement> {
        let corrupt = |e: String| StoreError::Invalid(format!("job {job_id}: {e}"));
        Ok(Placement {
            username: (kind == "username").then_some(username),
            quality: quality.parse().map_err(corrupt)?,
            format: format.parse().map_err(corrupt)?,
        })
    }

    fn collection<'a>(&'a self, meta: &'a ImageMeta) -> String {
        let user = self.username.as_deref().or_else(|| meta.creator_username());
        collection_name(user, self.quality, self.format)
    }
}

/// Removes any `access_token` query parameter from an enumeration `next` URL
/// (invariant 2: the token never reaches the database), with the client's own
/// [`crate::mapillary::strip_token`]. As a second line of defence, a cursor
/// that still mentions a token anywhere is refused rather than stored.
pub fn strip_token(cursor: &str) -> Result<String, String> {
    let stripped = crate::mapillary::strip_token(cursor);
    if stripped.to_ascii_lowercase().contains("access_token") {
        return Err("refusing to store a cursor that may carry the access token".into());
    }
    Ok(stripped)
}

impl Store {
    /// Stores one page of the job's part `part` (its `seq`) and what becomes
    /// of that part, atomically: after a crash either both are there or
    /// neither is, so a resume re-reads the page and the conflict clause
    /// drops the repeats. `missing` images are recorded failed for good. A
    /// page for a part already done (or gone, after a re-sync reset the
    /// parts) is refused and changes nothing. When no part is left open,
    /// enumeration is complete. Returns how many images were new (repeated
    /// ids are ignored).
    // One page is one transaction: each argument is one of its inputs.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_page(
        &self,
        job_id: i64,
        part: i64,
        images: &[impl Storable],
        missing: &[MissingImage<'_>],
        step: PartStep<'_>,
        task: Option<&JobTask>,
        now_ms: i64,
    ) -> StoreResult<u64> {
        on_postgres!(self.store_page(job_id, part, images, missing, step, task, now_ms));
        let cursor = step_cursor(step)?;
        let placement = self.placement(job_id).await?;
        let rows = prepare_rows(images, &placement)?;

        let mut tx = self.writer()?.begin().await?;
        if let Some(task) = task {
            super::job_tasks::check_sqlite(&mut tx, task).await?;
        }
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM job_parts WHERE job_id = ? AND seq = ? AND done = 0",
        )
        .bind(job_id)
        .bind(part)
        .fetch_optional(&mut *tx)
        .await?;
        if open.is_none() {
            return Err(StoreError::Invalid(format!(
                "job {job_id} has no open part {part} to store a page into"
            )));
        }
        let mut inserted = insert_rows(&mut tx, job_id, &rows, now_ms).await?;
        for collection in page_collections(&rows) {
            sqlx::query(
                "INSERT INTO job_collections (job_id, collection) VALUES (?, ?) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(job_id)
            .bind(collection)
            .execute(&mut *tx)
            .await?;
        }
        inserted += insert_missing(&mut tx, job_id, missing, now_ms).await?;
        sqlx::query("UPDATE job_parts SET cursor = ?, done = ? WHERE job_id = ? AND seq = ?")
            .bind(cursor.as_deref())
            .bind(!matches!(step, PartStep::Next(_)))
            .bind(job_id)
            .bind(part)
            .execute(&mut *tx)
            .await?;
        if let PartStep::Replace(children) = step {
            let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM job_parts WHERE job_id = ?")
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await?;
            insert_parts(&mut tx, job_id, last + 1, children).await?;
        }
        sqlx::query(
            "UPDATE jobs SET enumeration_complete = NOT EXISTS \
             (SELECT 1 FROM job_parts WHERE job_id = ?1 AND done = 0), \
             updated_at = ?2, progress_at = ?2 WHERE id = ?1",
        )
        .bind(job_id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// [`Store::store_page`] for a plain listing page of the job's current
    /// part (its first part not done): `next_cursor` is the part's next page,
    /// `None` finishes it.
    pub async fn insert_page(
        &self,
        job_id: i64,
        images: &[impl Storable],
        next_cursor: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<u64> {
        on_postgres!(self.insert_page(job_id, images, next_cursor, now_ms));
        let Some(part) = self.current_part(job_id).await? else {
            self.find_job(job_id)
                .await?
                .ok_or(StoreError::NoSuchJob(job_id))?;
            return Err(StoreError::Invalid(format!(
                "job {job_id} has no part left to store a page into"
            )));
        };
        let step = next_cursor.map_or(PartStep::Done, PartStep::Next);
        self.store_page(job_id, part.seq, images, &[], step, None, now_ms)
            .await
    }

    /// Where a job's images go. Fixed at creation, so read once per page.
    async fn placement(&self, job_id: i64) -> StoreResult<Placement> {
        let row: Option<(String, String, String, String)> =
            sqlx::query_as("SELECT source_kind, username, quality, format FROM jobs WHERE id = ?")
                .bind(job_id)
                .fetch_optional(self.reader()?)
                .await?;
        Placement::from_fields(job_id, row.ok_or(StoreError::NoSuchJob(job_id))?)
    }

    /// Stores refreshed CDN URLs (`None` clears one) in one transaction.
    /// Returns how many rows exist and were updated.
    pub async fn update_urls(&self, urls: &[(i64, Option<String>)]) -> StoreResult<u64> {
        on_postgres!(self.update_urls(urls));
        let mut tx = self.writer()?.begin().await?;
        let mut updated = 0;
        for (row_id, url) in urls {
            updated += sqlx::query("UPDATE images SET url = ? WHERE rowid = ?")
                .bind(url.as_deref())
                .bind(row_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }
}

/// The cursor a page's step stores on its part: token-free.
pub(super) fn step_cursor(step: PartStep<'_>) -> StoreResult<Option<String>> {
    Ok(match step {
        PartStep::Next(next) => Some(strip_token(next).map_err(StoreError::Invalid)?),
        PartStep::Done | PartStep::Replace(_) => None,
    })
}

/// A page's rows, serialised and placed, in insertion order.
pub(super) fn prepare_rows<'a>(
    images: &'a [impl Storable],
    placement: &Placement,
) -> StoreResult<Vec<PreparedRow<'a>>> {
    let mut rows = images
        .iter()
        .map(|image| {
            let meta = image.meta();
            Ok(PreparedRow {
                image_id: meta.id.as_str(),
                meta: image
                    .stored_json()
                    .map_err(|e| StoreError::Invalid(format!("image {:?}: {e}", meta.id)))?,
                url: meta.url_for(placement.quality),
                captured_at: meta.captured_at,
                collection: Cow::Owned(placement.collection(meta)),
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    // Numeric order (digit ids of one length sort as numbers): inserting
    // into the (job_id, image_id) index in key order keeps each B-tree
    // descent near the previous one, ~15% less CPU when a page's ids are
    // scattered. Claim order within a page follows; the API promises none.
    rows.sort_unstable_by(|a, b| {
        (a.image_id.len(), a.image_id).cmp(&(b.image_id.len(), b.image_id))
    });
    Ok(rows)
}

/// The collections a page's rows go to, sorted, once each.
pub(super) fn page_collections<'a>(rows: &'a [PreparedRow<'_>]) -> Vec<&'a str> {
    let mut collections: Vec<&str> = rows.iter().map(|r| r.collection.as_ref()).collect();
    collections.sort_unstable();
    collections.dedup();
    collections
}

/// The stored metadata of an image the API says does not exist.
pub(super) fn missing_meta(image: &MissingImage<'_>) -> String {
    serde_json::json!({ "id": image.image_id }).to_string()
}

/// Inserts prepared rows in fixed-size multi-row statements.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job_id: i64,
    rows: &[PreparedRow<'_>],
    now_ms: i64,
) -> StoreResult<u64> {
    let mut inserted = 0;
    let mut rest = rows;
    while !rest.is_empty() {
        let size = CHUNK_SIZES
            .into_iter()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        let mut query = sqlx::query(chunk_sql(size));
        for row in chunk {
            query = query
                .bind(job_id)
                .bind(row.image_id)
                .bind(row.meta.as_ref())
                .bind(row.url)
                .bind(row.captured_at)
                .bind(now_ms)
                .bind(now_ms)
                .bind(row.collection.as_ref());
        }
        inserted += query.execute(&mut **tx).await?.rows_affected();
        rest = tail;
    }
    Ok(inserted)
}

/// Records images the API says do not exist as failed for good.
async fn insert_missing(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job_id: i64,
    missing: &[MissingImage<'_>],
    now_ms: i64,
) -> StoreResult<u64> {
    let mut inserted = 0;
    for image in missing {
        let meta = missing_meta(image);
        inserted += sqlx::query(
            "INSERT INTO images (job_id, image_id, meta, state, fail_reason, last_error, \
             run_at, updated_at) VALUES (?1, ?2, ?3, 'failed', ?4, ?5, ?6, ?6) \
             ON CONFLICT (job_id, image_id) DO NOTHING",
        )
        .bind(job_id)
        .bind(image.image_id)
        .bind(meta)
        .bind(image.reason.as_str())
        .bind(image.message)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_token_and_keeps_the_rest_verbatim() {
        let next = "https://graph.mapillary.com/images?creator_username=a&fields=id%2Ccaptured_at&access_token=MLY%7C1%7Cabc&after=QVFI";
        let clean = strip_token(next).unwrap();
        assert_eq!(
            clean,
            "https://graph.mapillary.com/images?creator_username=a&fields=id%2Ccaptured_at&after=QVFI"
        );
        let only = strip_token("https://h/images?access_token=x").unwrap();
        assert_eq!(only, "https://h/images");
        let encoded_key = strip_token("https://h/images?access%5Ftoken=x&a=1").unwrap();
        assert_eq!(encoded_key, "https://h/images?a=1");
    }

    #[test]
    fn refuses_an_unparseable_cursor_that_mentions_a_token() {
        assert!(strip_token("not a url access_token=x").is_err());
        assert_eq!(strip_token("opaque-cursor").unwrap(), "opaque-cursor");
    }

    #[test]
    fn chunk_statements_bind_eight_parameters_per_row() {
        let sql = insert_sql(2);
        assert!(sql.ends_with(
            "(?, ?, ?, ?, ?, ?, ?, ?),(?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, image_id) DO NOTHING"
        ));
    }
}
