//! The [`crate::store::interface::Parts`] half on PostgreSQL.

use super::PgStore;
use crate::selection::PartSpec;
use crate::store::interface::*;
use crate::store::sql;
use crate::store::{Part, StoreResult, parts::part_from_fields};
use sqlx::Row;

/// Appends `parts` to a job's list, numbered from `first_seq`, inside `tx`.
pub(super) async fn insert_parts(
    tx: &mut sqlx::PgConnection,
    job_id: i64,
    first_seq: i64,
    parts: &[PartSpec],
) -> StoreResult<()> {
    for (offset, part) in parts.iter().enumerate() {
        let (bbox, item) = crate::store::parts::part_columns(part);
        sqlx::query(sql::INSERT_PART)
            .bind(job_id)
            .bind(first_seq + offset as i64)
            .bind(part.kind())
            .bind(bbox.map(|b| b.west))
            .bind(bbox.map(|b| b.south))
            .bind(bbox.map(|b| b.east))
            .bind(bbox.map(|b| b.north))
            .bind(item)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

fn part_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<Part> {
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

impl Parts for PgStore {
    async fn open_parts(&self, job_id: i64, limit: u32) -> StoreResult<Vec<Part>> {
        let rows = sqlx::query(
            "SELECT job_id, seq, kind, west, south, east, north, item, cursor FROM job_parts \
             WHERE job_id = $1 AND NOT done ORDER BY seq LIMIT $2",
        )
        .bind(job_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(part_from_row).collect()
    }

    async fn part_progress(&self, job_id: i64) -> StoreResult<(u64, u64)> {
        let (total, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE done) FROM job_parts WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_one(self.pool())
        .await?;
        Ok((crate::store::to_u64(total), crate::store::to_u64(done)))
    }
}
