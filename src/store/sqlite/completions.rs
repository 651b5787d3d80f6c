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
    let row = sqlx::query(crate::store::shared::queue::complete_image_sql!())
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
