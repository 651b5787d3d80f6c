//! Job rows on SQLite: each state change is one conditional `UPDATE`, a
//! submission one `BEGIN IMMEDIATE` transaction on the writer, so two racing
//! callers cannot both win. The bodies are `store/shared/jobs.rs`.

use super::SqliteStore;
use crate::store::interface::Jobs;

crate::store::shared::jobs::shared_job_helpers!(SqliteStore);

impl Jobs for SqliteStore {
    crate::store::shared::jobs::shared_jobs!();
}
