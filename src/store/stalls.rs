//! No-progress detection: jobs that have work but have not moved forward for
//! too long are marked stalled, with `last_error` saying why, and unmarked by
//! their next progress. Everything is read from the database (`progress_at`
//! is stamped by the counter triggers), so any process sees the same answer.
//!
//! This file holds what both backends share for the area: its types,
//! row mapping and helpers. The statements are in `sqlite/stalls.rs` and
//! `postgres/stalls.rs`, behind [`super::interface`].

use super::to_u64;

/// A job that has work but has not progressed since the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallCandidate {
    /// The job that made no progress.
    pub job_id: i64,
    /// Images pending or in flight.
    pub waiting: u64,
    /// Whether enumeration is complete (then only downloads can stall).
    pub enumeration_complete: bool,
    /// Unix ms of the last progress.
    pub progress_at: i64,
    /// The job's own last error (e.g. of its listing), if any.
    pub last_error: Option<String>,
}

/// A candidate's columns: id, images waiting, `enumeration_complete`,
/// `progress_at`, `last_error`.
pub(super) type CandidateRow = (i64, i64, bool, i64, Option<String>);

/// A candidate from its columns, whichever database they came from.
pub(super) fn candidate_from_row(
    (job_id, waiting, enumeration_complete, progress_at, last_error): CandidateRow,
) -> StallCandidate {
    StallCandidate {
        job_id,
        waiting: to_u64(waiting),
        enumeration_complete,
        progress_at,
        last_error,
    }
}
