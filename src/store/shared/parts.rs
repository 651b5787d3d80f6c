//! [`crate::store::interface::Parts`] written once for both backends, and
//! `insert_parts`, which a submission, a re-sync and a stored page run
//! inside their own transaction.

/// The `Parts` methods, expanded inside a backend's `impl Parts for …`.
macro_rules! shared_parts {
    () => {
        async fn open_parts(
            &self,
            job_id: i64,
            limit: u32,
        ) -> $crate::store::StoreResult<Vec<$crate::store::Part>> {
            use $crate::store::parts::PartRow;
            let rows: Vec<PartRow> = sqlx::query_as(concat!(
                "SELECT job_id, seq, kind, west, south, east, north, item, cursor FROM job_parts ",
                super::dialect::open_parts_of!("$1"),
                " ORDER BY seq LIMIT $2"
            ))
            .bind(job_id)
            .bind(i64::from(limit))
            .fetch_all(self.reader()?)
            .await?;
            rows.into_iter().map(PartRow::into_part).collect()
        }

        async fn part_progress(&self, job_id: i64) -> $crate::store::StoreResult<(u64, u64)> {
            let (total, done): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE done) FROM job_parts WHERE job_id = $1",
            )
            .bind(job_id)
            .fetch_one(self.reader()?)
            .await?;
            Ok(($crate::store::to_u64(total), $crate::store::to_u64(done)))
        }
    };
}
pub(in crate::store) use shared_parts;

/// `insert_parts` on the backend's connection, expanded at the top of
/// each backend's `parts.rs`.
macro_rules! shared_insert_parts {
    () => {
        /// Appends `parts` to a job's list, numbered from `first_seq`, inside
        /// the caller's transaction.
        pub(super) async fn insert_parts(
            tx: &mut super::dialect::Conn,
            job_id: i64,
            first_seq: i64,
            parts: &[$crate::selection::PartSpec],
        ) -> $crate::store::StoreResult<()> {
            for (offset, part) in parts.iter().enumerate() {
                let (bbox, item) = $crate::store::parts::part_columns(part);
                sqlx::query($crate::store::sql::INSERT_PART)
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
    };
}
pub(in crate::store) use shared_insert_parts;
