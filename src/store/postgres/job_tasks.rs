//! Job task leases on PostgreSQL (on the database's clock): the bodies are `store/shared/tasks.rs`.

use super::PgStore;
use crate::store::interface::JobTasks;

impl JobTasks for PgStore {
    crate::store::shared::tasks::shared_job_tasks!();
}
