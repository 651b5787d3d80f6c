//! The [`crate::store::interface::Stalls`] half on PostgreSQL. `progress_at` and the counts are
//! read from `job_rows` (the job row's are not current).

use super::PgStore;
use crate::store::interface::*;

/// Marks a job stalled: binds the clock (`$1`, see [`PgStore::at`]), the
/// message, the job and the age the caller's `before_ms` stands for
/// (`now_ms - before_ms`), taken before the database's now, as
/// `stalled_at` is the database's now. A completion committing while this
/// runs is not seen: the job may be marked just after progressing, and is
/// unmarked by its next progress, as a job marked an instant earlier would be.
pub(super) const MARK_STALLED: &str = "UPDATE jobs j SET stalled_at = t.now_ms, last_error = $2, updated_at = t.now_ms \
     FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t, job_rows r \
     WHERE j.id = $3 AND r.id = j.id AND j.stalled_at IS NULL \
       AND r.progress_at < t.now_ms - $4 \
       AND j.state IN ('queued', 'enumerating', 'downloading')";

/// Unmarks stalled jobs that progressed: `progress_at` from `job_rows`,
/// ids in order.
pub(super) const CLEAR_RECOVERED_STALLS: &str = "WITH cleared AS ( \
       UPDATE jobs j SET stalled_at = NULL, last_error = NULL, updated_at = t.now_ms \
       FROM (SELECT coalesce($1::BIGINT, mld_now_ms()) AS now_ms) t, job_rows r \
       WHERE r.id = j.id AND j.stalled_at IS NOT NULL AND r.progress_at > j.stalled_at \
       RETURNING j.id) \
     SELECT id FROM cleared ORDER BY id";

impl Stalls for PgStore {
    crate::store::shared::shared_stalls!();
}
