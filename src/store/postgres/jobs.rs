//! Job rows on PostgreSQL: read from `job_rows` (the job row plus its
//! unfolded counter deltas), written to `jobs`. Several daemons share the
//! table, so every read-then-write is made race-free (an advisory lock on a
//! submission's identity, `FOR UPDATE` on the rows it decides on; see
//! `dialect.rs`). The bodies are `store/shared/jobs.rs`.

use super::PgStore;
use crate::store::interface::Jobs;

crate::store::shared::jobs::shared_job_helpers!(PgStore);

impl Jobs for PgStore {
    crate::store::shared::jobs::shared_jobs!();
}
