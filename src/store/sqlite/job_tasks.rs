//! Job task leases on SQLite: the bodies are `store/shared/tasks.rs`.

use super::SqliteStore;
use crate::store::interface::JobTasks;

impl JobTasks for SqliteStore {
    crate::store::shared::tasks::shared_job_tasks!();
}
