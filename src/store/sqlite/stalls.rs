//! No-progress marks on SQLite.

use super::SqliteStore;
use crate::store::interface::*;

/// Marks a job stalled: binds the caller's now, the message, the job and
/// the age `now_ms - before_ms` (the same binds as PostgreSQL's).
pub(super) const MARK_STALLED: &str = "UPDATE jobs SET stalled_at = $1, last_error = $2, updated_at = $1 \
     WHERE id = $3 AND stalled_at IS NULL AND progress_at < $1 - $4 \
       AND state IN ('queued', 'enumerating', 'downloading')";

/// Unmarks stalled jobs that progressed.
pub(super) const CLEAR_RECOVERED_STALLS: &str = "UPDATE jobs SET stalled_at = NULL, last_error = NULL, updated_at = $1 \
     WHERE stalled_at IS NOT NULL AND progress_at > stalled_at RETURNING id";

impl Stalls for SqliteStore {
    crate::store::shared::shared_stalls!();
}
