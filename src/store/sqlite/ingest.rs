//! Enumeration pages on SQLite: rows go in as multi-row `INSERT`s of a few fixed sizes
//! (kept in the statement cache), with where the part stands, in one transaction.

use super::SqliteStore;
use super::parts::insert_parts;
use crate::model::Storable;
use crate::store::ingest::*;
use crate::store::interface::*;
use crate::store::sql;
use crate::store::*;
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::borrow::Cow;
use std::sync::OnceLock;

impl Ingest for SqliteStore {
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

        let mut tx = self.writer()?.begin().await?;
        if let Some(task) = task {
            super::task_lease::check(&mut tx, task).await?;
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

    async fn update_urls(&self, urls: &[(i64, Option<String>)]) -> StoreResult<u64> {
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

impl SqliteStore {
    /// Where a job's images go. Fixed at creation, so read once per page.
    async fn placement(&self, job_id: i64) -> StoreResult<Placement> {
        let row: Option<(String, String, String, String)> = sqlx::query_as(sql::PLACEMENT)
            .bind(job_id)
            .fetch_optional(self.reader()?)
            .await?;
        Placement::from_fields(job_id, row.ok_or(StoreError::NoSuchJob(job_id))?)
    }
}

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
