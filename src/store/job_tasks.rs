//! Leases on a job's task: its enumeration, or its finishing (metadata,
//! packing). One process works on a job at a time; on a shared PostgreSQL
//! queue that is one daemon in the cluster. A lease expires unless renewed,
//! so a dead daemon's job is taken over; every page write checks the lease's
//! epoch in its own transaction, so a daemon that lost the lease without
//! knowing it (stalled on the network) cannot move the job's cursor.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/job_tasks.rs` and
//! `postgres/job_tasks.rs`, behind [`super::interface`].

use std::sync::Arc;

/// The right to work on one job's task, as taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTask {
    /// The job leased.
    pub job_id: i64,
    /// Who holds the lease: every enumeration write checks it.
    pub owner: Arc<str>,
    /// The job's task count at this take; only grows.
    pub epoch: i64,
}
