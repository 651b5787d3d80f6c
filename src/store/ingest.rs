//! Writing enumeration pages: image rows plus the cursor, in one transaction.
//!
//! Rows go in as multi-row `INSERT ... VALUES (..),(..)` statements of a few
//! fixed sizes. Fixed sizes keep the statements in sqlx's prepared-statement
//! cache, and many rows per statement amortise the per-statement round trip to
//! the connection's worker thread, which is what limits a one-row-at-a-time
//! insert well below 100k rows/s.

use super::{Store, StoreError, StoreResult};
use crate::model::{Quality, Storable};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use std::borrow::Cow;
use std::sync::OnceLock;

/// Rows per INSERT statement, largest first; a page is cut greedily into
/// these. 128 rows bind 7 * 128 = 896 parameters, far below SQLite's limit.
const CHUNK_SIZES: [usize; 4] = [128, 32, 8, 1];

/// Seven anonymous parameters per row: job id, image id, metadata JSON, url,
/// captured_at, run_at, updated_at. Anonymous `?` rather than reused `?1`:
/// sqlx looks up every parameter's name, and for numbered parameters SQLite
/// answers with a linear scan, which made binding quadratic in the row count.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO images (job_id, image_id, meta, url, captured_at, run_at, updated_at) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
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
struct PreparedRow<'a> {
    image_id: &'a str,
    meta: Cow<'a, str>,
    url: Option<&'a str>,
    captured_at: Option<i64>,
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
    /// Stores one enumeration page and the cursor after it, atomically: after
    /// a crash either both are there or neither is, so a resume re-reads the
    /// page and the conflict clause drops the repeats.
    ///
    /// `next_cursor = None` marks enumeration complete and clears the cursor.
    /// Returns how many images were new (repeated ids are ignored).
    pub async fn insert_page(
        &self,
        job_id: i64,
        quality: Quality,
        images: &[impl Storable],
        next_cursor: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<u64> {
        let cursor = next_cursor
            .map(strip_token)
            .transpose()
            .map_err(StoreError::Invalid)?;
        let mut rows = images
            .iter()
            .map(|image| {
                let meta = image.meta();
                Ok(PreparedRow {
                    image_id: meta.id.as_str(),
                    meta: image
                        .stored_json()
                        .map_err(|e| StoreError::Invalid(format!("image {:?}: {e}", meta.id)))?,
                    url: meta.url_for(quality),
                    captured_at: meta.captured_at,
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

        let mut tx = self.writer()?.begin().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET cursor = ?1, enumeration_complete = ?2, updated_at = ?3, \
             progress_at = ?3 WHERE id = ?4",
        )
        .bind(cursor.as_deref())
        .bind(cursor.is_none())
        .bind(now_ms)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NoSuchJob(job_id));
        }

        let mut inserted = 0;
        let mut rest = rows.as_slice();
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
                    .bind(now_ms);
            }
            inserted += query.execute(&mut *tx).await?.rows_affected();
            rest = tail;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Stores refreshed CDN URLs (`None` clears one) in one transaction.
    /// Returns how many rows exist and were updated.
    pub async fn update_urls(&self, urls: &[(i64, Option<String>)]) -> StoreResult<u64> {
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
    fn chunk_statements_bind_seven_parameters_per_row() {
        let sql = insert_sql(2);
        assert!(sql.ends_with(
            "(?, ?, ?, ?, ?, ?, ?),(?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, image_id) DO NOTHING"
        ));
    }
}
