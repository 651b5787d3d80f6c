//! Enumeration pages on SQLite: rows go in as multi-row `INSERT`s of a few fixed sizes
//! (kept in the statement cache), with where the part stands, in one transaction
//! (`store/shared/ingest.rs`).

use super::SqliteStore;
use super::dialect::Conn;
use crate::store::ingest::*;
use crate::store::interface::*;
use crate::store::*;
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::borrow::Cow;
use std::sync::OnceLock;

crate::store::shared::ingest::shared_ingest_helpers!(SqliteStore);

impl Ingest for SqliteStore {
    crate::store::shared::ingest::shared_store_page!();

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

/// The page's time: the caller's (the single writer already serialises
/// pages).
#[allow(clippy::unnecessary_wraps, clippy::unused_async)]
async fn lock_job_for_page(_tx: &mut Conn, _job_id: i64, at: i64) -> StoreResult<Option<i64>> {
    Ok(Some(at))
}

/// The page's image rows, and the collections they go to.
async fn insert_page_rows(tx: &mut Conn, page: &PreparedPage<'_>) -> StoreResult<u64> {
    let inserted = insert_rows(tx, page).await?;
    for collection in page_collections(page.rows) {
        sqlx::query(
            "INSERT INTO job_collections (job_id, collection) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(page.job_id)
        .bind(collection)
        .execute(&mut *tx)
        .await?;
    }
    Ok(inserted)
}

/// Inserts prepared rows in fixed-size multi-row statements.
async fn insert_rows(tx: &mut Conn, page: &PreparedPage<'_>) -> StoreResult<u64> {
    let PreparedPage { job_id, now, .. } = *page;
    let mut inserted = 0;
    let mut rest = page.rows;
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
                .bind(now)
                .bind(now)
                .bind(row.collection.as_ref());
        }
        inserted += query.execute(&mut *tx).await?.rows_affected();
        rest = tail;
    }
    Ok(inserted)
}

/// Records images the API says do not exist as failed for good.
async fn insert_missing(tx: &mut Conn, page: &PreparedPage<'_>) -> StoreResult<u64> {
    let mut inserted = 0;
    for image in page.missing {
        let meta = missing_meta(image);
        inserted += sqlx::query(
            "INSERT INTO images (job_id, image_id, meta, state, fail_reason, last_error, \
             run_at, updated_at) VALUES (?1, ?2, ?3, 'failed', ?4, ?5, ?6, ?6) \
             ON CONFLICT (job_id, image_id) DO NOTHING",
        )
        .bind(page.job_id)
        .bind(image.image_id)
        .bind(meta)
        .bind(image.reason.as_str())
        .bind(image.message)
        .bind(page.now)
        .execute(&mut *tx)
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
