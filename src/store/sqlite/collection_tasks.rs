//! Collection packing leases and the upload ledger on SQLite: the bodies
//! are `store/shared/tasks.rs`.

use super::SqliteStore;
use crate::store::interface::CollectionTasks;

impl CollectionTasks for SqliteStore {
    crate::store::shared::tasks::shared_collection_tasks!();
}
