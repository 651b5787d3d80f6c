//! A job's enumeration as a list of parts (`job_parts`), each resumable on
//! its own: a listing (the job's `GET /images` query, or one tile of its
//! bbox) with its cursor, a sequence, or a batch of up to 50 image ids. The
//! enumerator works on the first part not done; every page it stores moves
//! that part on, in the same transaction as the page's images.

use super::{Store, StoreError, StoreResult, on_postgres};
use crate::model::Bbox;
use crate::selection::PartSpec;
use sqlx::Row;

/// One part of a job's enumeration, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub job_id: i64,
    /// Its place in the job's order.
    pub seq: i64,
    pub spec: PartSpec,
    /// The token-free `next` of a listing part started but not finished.
    pub cursor: Option<String>,
}

/// Appends `parts` to a job's list, numbered from `first_seq`, inside `tx`.
pub(super) async fn insert_parts(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    job_id: i64,
    first_seq: i64,
    parts: &[PartSpec],
) -> StoreResult<()> {
    for (offset, part) in parts.iter().enumerate() {
        let (bbox, item) = part_columns(part);
        sqlx::query(
            "INSERT INTO job_parts (job_id, seq, kind, west, south, east, north, item) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job_id)
        .bind(first_seq + offset as i64)
        .bind(part.kind())
        .bind(bbox.map(|b| b.west))
        .bind(bbox.map(|b| b.south))
        .bind(bbox.map(|b| b.east))
        .bind(bbox.map(|b| b.north))
        .bind(item)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A part's bbox and `item` columns.
pub(super) fn part_columns(part: &PartSpec) -> (Option<Bbox>, Option<String>) {
    match part {
        PartSpec::Listing { bbox } => (*bbox, None),
        PartSpec::Sequence(id) => (None, Some(id.clone())),
        PartSpec::Images(ids) => (None, Some(serde_json::Value::from(ids.clone()).to_string())),
    }
}

fn part_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Part> {
    part_from_fields(
        row.try_get("job_id")?,
        row.try_get("seq")?,
        row.try_get("kind")?,
        row.try_get("item")?,
        [
            row.try_get("west")?,
            row.try_get("south")?,
            row.try_get("east")?,
            row.try_get("north")?,
        ],
        row.try_get("cursor")?,
    )
}

/// A part from its stored columns, whichever database they came from.
pub(super) fn part_from_fields(
    job_id: i64,
    seq: i64,
    kind: String,
    item: Option<String>,
    corners: [Option<f64>; 4],
    cursor: Option<String>,
) -> StoreResult<Part> {
    let corrupt = |what: String| StoreError::Invalid(format!("job {job_id} part {seq}: {what}"));
    let spec = match kind.as_str() {
        "listing" => {
            let bbox = match corners {
                [Some(w), Some(s), Some(e), Some(n)] => {
                    Some(Bbox::new(w, s, e, n).map_err(corrupt)?)
                }
                _ => None,
            };
            PartSpec::Listing { bbox }
        }
        "sequence" => PartSpec::Sequence(item.ok_or_else(|| corrupt("no sequence id".into()))?),
        "images" => {
            let text = item.ok_or_else(|| corrupt("no image ids".into()))?;
            PartSpec::Images(serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?)
        }
        other => return Err(corrupt(format!("unknown kind {other:?}"))),
    };
    Ok(Part {
        job_id,
        seq,
        spec,
        cursor,
    })
}

impl Store {
    /// The job's first part not done: where its enumeration stands. `None`
    /// once every part is done.
    pub async fn current_part(&self, job_id: i64) -> StoreResult<Option<Part>> {
        Ok(self.open_parts(job_id, 1).await?.pop())
    }

    /// The job's first `limit` parts not done, in order.
    pub async fn open_parts(&self, job_id: i64, limit: u32) -> StoreResult<Vec<Part>> {
        on_postgres!(self.open_parts(job_id, limit));
        let rows = sqlx::query(
            "SELECT job_id, seq, kind, west, south, east, north, item, cursor FROM job_parts \
             INDEXED BY job_parts_open WHERE job_id = ? AND done = 0 ORDER BY seq LIMIT ?",
        )
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.reader()?)
        .await?;
        rows.iter().map(part_from_row).collect()
    }

    /// How many parts the job has, and how many are done.
    pub async fn part_progress(&self, job_id: i64) -> StoreResult<(u64, u64)> {
        on_postgres!(self.part_progress(job_id));
        let (total, done): (i64, i64) =
            sqlx::query_as("SELECT count(*), ifnull(sum(done), 0) FROM job_parts WHERE job_id = ?")
                .bind(job_id)
                .fetch_one(self.reader()?)
                .await?;
        Ok((super::to_u64(total), super::to_u64(done)))
    }
}
