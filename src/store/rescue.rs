//! Rescuing a dead daemon's work by its heartbeat (PostgreSQL).
//!
//! A daemon that dies (kill -9, a lost machine) leaves its image leases,
//! its job tasks and its collection tasks behind. Waiting for each lease
//! to expire stalls the cluster for a whole `workers.lease_secs`; the
//! daemons table knows far sooner, since a live daemon beats every few
//! seconds. So a daemon whose heartbeat is older than
//! `cluster.dead_after_secs` (by the database's clock) is dead, and any live
//! daemon hands its work back at once.
//!
//! The fence: each rescue is one transaction that starts by deleting the
//! dead daemon's row *if it is still stale*. A second rescuer's delete
//! waits for the first and then finds no row; a heartbeat that lands first
//! makes the row fresh again, so the daemon is not rescued. Every write a
//! rescued daemon may still try (it was only paused) is refused by the
//! leases' own fences: its image rows no longer carry its name, and its
//! tasks' owners are cleared (the next taker bumps their epochs).
//!
//! On SQLite one engine holds the data dir's lock file and its start-up
//! reset hands back whatever a crash left: nothing to rescue.

use std::time::Duration;

/// What one rescue handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// The dead daemon's id (its lease owner id).
    pub daemon: String,
    /// How long it had been silent, by the database's clock.
    pub silent_for: Duration,
    /// Its image leases, back in the queue (pending, at their place).
    pub images: u64,
    /// Job tasks (listings, finishings) it held, freed.
    pub job_tasks: u64,
    /// Collection tasks (packings) it held, freed.
    pub collection_tasks: u64,
}
