//! A job's enumeration as a list of parts (`job_parts`), each resumable on
//! its own: a listing (the job's `GET /images` query, or one tile of its
//! bbox) with its cursor, a sequence, or a batch of up to 50 image ids. The
//! enumerator works on the first part not done; every page it stores moves
//! that part on, in the same transaction as the page's images.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/parts.rs` and
//! `postgres/parts.rs`, behind [`super::interface`].

use super::{StoreError, StoreResult};
use crate::model::Bbox;
use crate::selection::PartSpec;

/// One part of a job's enumeration, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// The job the part belongs to.
    pub job_id: i64,
    /// Its place in the job's order.
    pub seq: i64,
    /// What the part enumerates.
    pub spec: PartSpec,
    /// The token-free `next` of a listing part started but not finished.
    pub cursor: Option<String>,
}

/// A part's bbox and `item` columns.
pub(super) fn part_columns(part: &PartSpec) -> (Option<Bbox>, Option<String>) {
    match part {
        PartSpec::Listing { bbox } => (*bbox, None),
        PartSpec::Sequence(id) => (None, Some(id.clone())),
        PartSpec::Images(ids) => (None, Some(serde_json::Value::from(ids.clone()).to_string())),
    }
}

/// A `job_parts` row as plain values, read the same way from either
/// database.
#[derive(sqlx::FromRow)]
pub(super) struct PartRow {
    job_id: i64,
    seq: i64,
    kind: String,
    west: Option<f64>,
    south: Option<f64>,
    east: Option<f64>,
    north: Option<f64>,
    item: Option<String>,
    cursor: Option<String>,
}

impl PartRow {
    /// The part, or why its columns do not make one.
    pub(super) fn into_part(self) -> StoreResult<Part> {
        let corners = [self.west, self.south, self.east, self.north];
        part_from_fields(
            self.job_id,
            self.seq,
            self.kind,
            self.item,
            corners,
            self.cursor,
        )
    }
}

/// A part from its stored columns, whichever database they came from.
fn part_from_fields(
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
