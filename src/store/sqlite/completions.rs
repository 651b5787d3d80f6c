//! Completions written in groups: every image marked done that arrives while
//! the writer is busy joins the next group, one statement (and one commit) for all of them.
//!
//! Why: each commit appends every page it dirtied to the WAL (the row, the
//! index entries it moves between, the job row its counter trigger updates),
//! so one commit per image wrote the same job and index pages again and again
//! and hurried the WAL to its checkpoints. A group writes them once. Nothing
//! waits for a group to fill: an image that arrives at an idle writer is
//! written at once, alone, and only images that would have queued behind the
//! writer anyway share a commit.
//!
//! Durability is unchanged: a caller hands in its completion only once its
//! file is durable, and hears back only once the group is committed. The
//! group runs in a task of its own, so a caller that gives up waiting cannot
//! cut a transaction short. A statement failing inside a group rolls the
//! group back and each completion is then written alone, with its own result.

use crate::archive::ArchivedFile;
use crate::store::{Lease, StoreError, StoreResult};
use sqlx::{Row, SqlitePool};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The most completions one statement takes; the rest wait for the next.
const MAX_GROUP: usize = 256;

/// What a completion's statement returned: `None` when the fence refused it
/// (the lease was lost), else the row's packing id.
pub(super) type Marked = Option<Option<i64>>;

/// A completion waiting for its group.
struct Pending {
    lease: Lease,
    bytes: i64,
    path: String,
    sha256: Option<String>,
    kept_jpeg: bool,
    packing_id: Option<i64>,
    now_ms: i64,
    reply: oneshot::Sender<StoreResult<Marked>>,
}

/// The completions waiting for the writer, and whether a task is writing.
#[derive(Default)]
pub(super) struct CompletionGroups {
    pending: Mutex<Vec<Pending>>,
    draining: AtomicBool,
}

impl CompletionGroups {
    /// Marks the leased row done with `file`, in the next group written
    /// on `writer`.
    pub(super) async fn complete(
        self: &Arc<Self>,
        writer: &SqlitePool,
        lease: &Lease,
        file: &ArchivedFile,
        now_ms: i64,
    ) -> StoreResult<Marked> {
        let (reply, answer) = oneshot::channel();
        self.lock().push(Pending {
            lease: lease.clone(),
            bytes: i64::try_from(file.bytes).unwrap_or(i64::MAX),
            path: file.path.to_string_lossy().into_owned(),
            sha256: file.sha256.clone(),
            kept_jpeg: file.kept_jpeg,
            packing_id: file.packing_id,
            now_ms,
            reply,
        });
        if !self.draining.swap(true, Ordering::AcqRel) {
            tokio::spawn(drain(self.clone(), writer.clone()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Invalid(
                "the task writing completions stopped before this one was written".into(),
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        // A panic elsewhere cannot leave the list half-changed: pushes and
        // takes are single moves.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next group, or `None` (and no longer draining) when none waits.
    fn next_group(&self) -> Option<Vec<Pending>> {
        loop {
            let mut pending = self.lock();
            if !pending.is_empty() {
                let at = pending.len().min(MAX_GROUP);
                let rest = pending.split_off(at);
                return Some(std::mem::replace(&mut *pending, rest));
            }
            drop(pending);
            self.draining.store(false, Ordering::Release);
            // A completion pushed after the check above but before the store
            // saw `draining` still set and spawned nothing: take it over.
            if self.lock().is_empty() || self.draining.swap(true, Ordering::AcqRel) {
                return None;
            }
        }
    }
}

/// Writes groups until none waits.
async fn drain(groups: Arc<CompletionGroups>, writer: SqlitePool) {
    while let Some(group) = groups.next_group() {
        write_group(&writer, group).await;
    }
}

/// One group in one statement ([`GROUP_SQL`]); when that fails, each of its
/// completions alone in the same statement, so one bad row cannot fail the
/// others and each gets its own result.
async fn write_group(writer: &SqlitePool, group: Vec<Pending>) {
    if group.len() > 1 {
        match in_one_statement(writer, &group).await {
            Ok(marked) => {
                for (pending, marked) in group.into_iter().zip(marked) {
                    let _ = pending.reply.send(Ok(marked));
                }
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, completions = group.len(), "a completion group failed; writing each alone");
            }
        }
    }
    for pending in group {
        let marked = in_one_statement(writer, std::slice::from_ref(&pending))
            .await
            .map(|mut marked| marked.pop().flatten());
        let _ = pending.reply.send(marked);
    }
}

/// The packed copy of the row's image at the group row's path: the tail of
/// `SELECT c.<column>`, as `complete_image_sql!`'s `packed_copy!` with the
/// path taken from the group's row `g` instead of a parameter.
macro_rules! group_copy {
    () => {
        " FROM images c INDEXED BY images_copies JOIN packings p ON p.id = c.packing_id \
         WHERE c.collection = images.collection AND c.image_id = images.image_id \
           AND c.state = 'done' AND c.path = g.path AND p.state <> 'planned' LIMIT 1"
    };
}

/// `complete_image_sql!` for a whole group in ONE statement: the group's
/// completions come as a JSON array of rows (see [`group_json`]), each
/// fenced by its own lease. A statement (and its commit) per group rather
/// than per completion: each statement is a round trip to the connection's
/// thread, and a transaction of N completions cost N + 2 of them. The rows
/// it marked come back as `(rowid, packing_id)`; a row missing lost its
/// lease.
const GROUP_SQL: &str = concat!(
    "UPDATE images SET state = 'done', path = g.path, kept_jpeg = g.kept_jpeg, \
     packing_id = coalesce(g.packing_id, (SELECT c.packing_id",
    group_copy!(),
    ")), sha256 = CASE WHEN g.packing_id IS NULL THEN coalesce((SELECT c.sha256",
    group_copy!(),
    "), g.sha256) ELSE g.sha256 END, bytes = CASE WHEN g.packing_id IS NULL \
     THEN coalesce((SELECT c.bytes",
    group_copy!(),
    "), g.bytes) ELSE g.bytes END, \
     lease_owner = NULL, lease_until = NULL, last_error = NULL, fail_reason = NULL, \
     deferrals = 0, updated_at = g.now_ms \
     FROM (SELECT value ->> 0 AS row_id, value ->> 1 AS owner, value ->> 2 AS epoch, \
           value ->> 3 AS bytes, value ->> 4 AS path, value ->> 5 AS sha256, \
           value ->> 6 AS kept_jpeg, value ->> 7 AS packing_id, value ->> 8 AS now_ms \
           FROM json_each(?1)) g \
     WHERE images.rowid = g.row_id AND images.state = 'in_progress' \
       AND images.lease_owner = g.owner AND images.lease_epoch = g.epoch \
     RETURNING rowid, packing_id"
);

/// The group as [`GROUP_SQL`] reads it: one array per completion, in the
/// order of its `g` columns.
fn group_json(group: &[Pending]) -> String {
    let rows: Vec<_> = group
        .iter()
        .map(|p| {
            (
                p.lease.row_id,
                &*p.lease.owner,
                p.lease.epoch,
                p.bytes,
                p.path.as_str(),
                p.sha256.as_deref(),
                i64::from(p.kept_jpeg),
                p.packing_id,
                p.now_ms,
            )
        })
        .collect();
    serde_json::to_string(&rows).unwrap_or_default()
}

async fn in_one_statement(writer: &SqlitePool, group: &[Pending]) -> StoreResult<Vec<Marked>> {
    let rows = sqlx::query(GROUP_SQL)
        .bind(group_json(group))
        .fetch_all(writer)
        .await?;
    let mut packings = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let row_id: i64 = row.try_get("rowid")?;
        packings.insert(row_id, row.try_get::<Option<i64>, _>("packing_id")?);
    }
    Ok(group
        .iter()
        .map(|p| packings.get(&p.lease.row_id).copied())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ImageMeta, Quality};
    use crate::selection::JobSpec;
    use crate::store::{ImageState, JobState, Store};
    use std::time::Duration;

    fn pending(lease: &Lease, bytes: i64, path: &str, sha256: &str) -> Pending {
        Pending {
            lease: lease.clone(),
            bytes,
            path: path.to_string(),
            sha256: Some(sha256.to_string()),
            kept_jpeg: false,
            packing_id: None,
            now_ms: 5_000,
            reply: oneshot::channel().0,
        }
    }

    /// One statement marks the whole group: each row done with its own
    /// file, each fenced by its own lease (a stale epoch is refused and
    /// reported as such), and the job's counters moved by exactly the rows
    /// marked.
    #[tokio::test]
    async fn one_statement_marks_a_group_each_row_fenced_by_its_own_lease() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mapillary.db");
        let store = Store::open(&path).await.unwrap();
        let job = store
            .submit_job(&JobSpec::user("alice", Quality::Original), 1_000)
            .await
            .unwrap()
            .job()
            .id;
        store
            .transition_job(job, JobState::ALL, JobState::Downloading, 1_000)
            .await
            .unwrap();
        let metas: Vec<ImageMeta> = (1..=4)
            .map(|i| ImageMeta {
                id: i.to_string(),
                captured_at: Some(1_600_000_000_000),
                ..ImageMeta::default()
            })
            .collect();
        store.insert_page(job, &metas, None, 1_000).await.unwrap();
        let owner: Arc<str> = Arc::from("w");
        let claimed = store
            .claim(&owner, 4, Duration::from_secs(60), 2_000, 0)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 4);
        let mut group: Vec<Pending> = claimed
            .iter()
            .map(|c| {
                let path = format!("/a/{}.jpg", c.image_id);
                pending(
                    &c.lease,
                    100 + c.row_id(),
                    &path,
                    &format!("sha-{}", c.image_id),
                )
            })
            .collect();
        // The last one's lease was lost: another claim bumped the epoch.
        group[3].lease.epoch -= 1;

        let writer = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&path))
            .await
            .unwrap();
        // One seek per group row: never a scan of images.
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {GROUP_SQL}"
        )))
        .bind("[]")
        .fetch_all(&writer)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect();
        assert!(
            !plan.iter().any(|s| s.starts_with("SCAN images")),
            "{plan:#?}"
        );
        let marked = in_one_statement(&writer, &group).await.unwrap();
        assert_eq!(marked, vec![Some(None), Some(None), Some(None), None]);

        for (c, p) in claimed.iter().zip(&group).take(3) {
            let row = store.image_by_id(job, &c.image_id).await.unwrap().unwrap();
            assert_eq!(row.state, ImageState::Done, "{}", c.image_id);
            assert_eq!(row.bytes, Some(p.bytes));
            assert_eq!(row.path.as_deref(), Some(p.path.as_str()));
            assert_eq!(row.lease_owner, None);
        }
        let lost = &claimed[3];
        let row = store
            .image_by_id(job, &lost.image_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.state,
            ImageState::InProgress,
            "a stale lease marks nothing"
        );
        let counts = store.find_job(job).await.unwrap().unwrap();
        let bytes: i64 = group[..3].iter().map(|p| p.bytes).sum();
        assert_eq!((counts.counts.done, counts.bytes_done as i64), (3, bytes));
    }
}
