//! Completions written in groups: every image marked done that arrives while
//! the writer is busy joins the next group, one transaction for all of them.
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

/// The most completions one transaction takes; the rest wait for the next.
const MAX_GROUP: usize = 256;

/// The tail of a subquery for the done copy of this row's image at path
/// `?2` that a written (or cleaned) tar holds: `SELECT c.<column>` + this.
macro_rules! packed_copy {
    () => {
        " FROM images c INDEXED BY images_copies JOIN packings p ON p.id = c.packing_id \
         WHERE c.collection = images.collection AND c.image_id = images.image_id \
           AND c.state = 'done' AND c.path = ?2 AND p.state <> 'planned' LIMIT 1"
    };
}

/// One statement (no transaction of its own): the packed copy at this path,
/// if any, gives the packing, the checksum and the size; each subquery is one
/// seek of `images_copies`. Fenced by the lease (`?7`-`?9`).
const COMPLETE_SQL: &str = concat!(
    "UPDATE images SET state = 'done', path = ?2, kept_jpeg = ?4, \
     packing_id = coalesce(?5, (SELECT c.packing_id",
    packed_copy!(),
    ")), \
     sha256 = CASE WHEN ?5 IS NULL THEN coalesce((SELECT c.sha256",
    packed_copy!(),
    "), ?3) ELSE ?3 END, \
     bytes = CASE WHEN ?5 IS NULL THEN coalesce((SELECT c.bytes",
    packed_copy!(),
    "), ?1) ELSE ?1 END, \
     lease_owner = NULL, lease_until = NULL, last_error = NULL, fail_reason = NULL, \
     deferrals = 0, updated_at = ?6",
    " WHERE rowid = ?7 AND state = 'in_progress' AND lease_owner = ?8 AND lease_epoch = ?9 \
     RETURNING packing_id"
);

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

/// One group: one transaction when it holds more than one completion; alone
/// (each its own result) when it holds one or the transaction failed.
async fn write_group(writer: &SqlitePool, group: Vec<Pending>) {
    if group.len() > 1 {
        match in_one_transaction(writer, &group).await {
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
        let marked = mark_done(writer, &pending).await;
        let _ = pending.reply.send(marked);
    }
}

async fn in_one_transaction(writer: &SqlitePool, group: &[Pending]) -> StoreResult<Vec<Marked>> {
    let mut tx = writer.begin().await?;
    let mut marked = Vec::with_capacity(group.len());
    for pending in group {
        marked.push(mark_done(&mut *tx, pending).await?);
    }
    tx.commit().await?;
    Ok(marked)
}

async fn mark_done<'c>(
    executor: impl sqlx::SqliteExecutor<'c>,
    p: &Pending,
) -> StoreResult<Marked> {
    let row = sqlx::query(COMPLETE_SQL)
        .bind(p.bytes)
        .bind(&p.path)
        .bind(p.sha256.as_deref())
        .bind(p.kept_jpeg)
        .bind(p.packing_id)
        .bind(p.now_ms)
        .bind(p.lease.row_id)
        .bind(&*p.lease.owner)
        .bind(p.lease.epoch)
        .fetch_optional(executor)
        .await?;
    Ok(row
        .map(|row| row.try_get::<Option<i64>, _>("packing_id"))
        .transpose()?)
}
