//! Collection packing leases and the upload ledger on PostgreSQL (on the database's clock): the bodies
//! are `store/shared/tasks.rs`.

use super::PgStore;
use crate::store::interface::CollectionTasks;

impl CollectionTasks for PgStore {
    crate::store::shared::tasks::shared_collection_tasks!();
}
