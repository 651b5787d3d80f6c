//! Finishing a job: once enumeration is complete and no image is pending or
//! in flight, package every collection the job wrote to, and only then mark
//! the job done, in one conditional UPDATE that re-checks the counters. A
//! crash in between simply repeats the whole step on restart (packing
//! resumes where it stopped, see [`crate::package`]).
//!
//! Per collection: a `tar` job writes the thumbnail, packs the date folders,
//! then writes `metadata.jsonl.gz` and `.meta/`; a collection packed before
//! keeps those item files whatever job finishes on it; any other collection
//! gets `metadata.jsonl`. Every file is written atomically.

use super::EngineContext;
use crate::archive;
use crate::clock::now_ms;
use crate::model::Packaging;
use crate::package::{self, PackError, item, metadata};
use crate::store::{CollectionTask, Job, JobState, JobTask, PauseReason, Store};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// How often a finisher asks again for a collection another holds.
const COLLECTION_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Marks `job_id` done if its queue has drained. Returns whether it did.
/// `task` is the job's task lease: the final write checks it.
pub async fn finish_job(ctx: &EngineContext, job_id: i64, task: &JobTask) -> anyhow::Result<bool> {
    let Some(job) = ctx.store.find_job(job_id).await? else {
        return Ok(false);
    };
    let drained =
        job.enumeration_complete && job.counts.pending == 0 && job.counts.in_progress == 0;
    if !drained || !matches!(job.state, JobState::Enumerating | JobState::Downloading) {
        return Ok(false);
    }
    for collection in ctx.store.job_collections(job_id).await? {
        if !package_collection(ctx, &job, &collection).await? {
            return Ok(false);
        }
    }
    // `.part` files are removed by every failed write and swept at startup;
    // sweeping here could hit another job's write in the shared folder.
    let failed_before = ctx
        .finish_failures
        .lock()
        .is_ok_and(|set| set.contains(&job_id));
    let finished = ctx
        .store
        .finish_job_clearing(job_id, now_ms(), failed_before, Some(task))
        .await?;
    if finished.is_some() {
        info!(
            job = job_id,
            selection = %job.selection,
            done = job.counts.done,
            failed = job.counts.failed,
            bytes = job.bytes_done,
            "job finished"
        );
    }
    Ok(finished.is_some())
}

/// Writes one collection's files, holding the collection's lease: one
/// packer/finaliser per collection at a time in the whole cluster. `false`
/// when the job cannot finish now: another holds the collection (another
/// daemon, or another job's finishing here), or packing paused the job
/// (full disk) or sent images back to the queue.
async fn package_collection(
    ctx: &EngineContext,
    job: &Job,
    collection: &str,
) -> anyhow::Result<bool> {
    let ttl = super::job_task_ttl(ctx);
    // Another holder is packing or writing it: wait here (a lease's life at
    // most) rather than end the task and be started again at once.
    let asked_since = tokio::time::Instant::now();
    let task = loop {
        if let Some(task) = ctx
            .store
            .take_collection_task(collection, &ctx.owner, ttl, now_ms())
            .await?
        {
            break task;
        }
        if asked_since.elapsed() >= ttl {
            debug!(
                job = job.id,
                collection,
                "the collection is still being packed or finished by another; trying again later"
            );
            return Ok(false);
        }
        tokio::time::sleep(COLLECTION_RETRY).await;
    };
    // Released however this ends, even dropped mid-way (shutdown): a
    // blocking write still running then finds the lease gone.
    let lease = ReleaseOnDrop {
        store: ctx.store.clone(),
        task,
    };
    let task = &lease.task;
    let renew = || ctx.store.renew_collection_task(task, ttl, now_ms());
    tokio::select! {
        packaged = package_held_collection(ctx, job, task) => packaged,
        () = super::hold_lease(ttl, renew) => Err(anyhow::anyhow!(
            "lost the lease on collection {collection}'s packing (another daemon took it over); \
             finishing again later"
        )),
    }
}

/// A held collection lease, given up when dropped.
struct ReleaseOnDrop {
    store: Arc<Store>,
    task: CollectionTask,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let (store, task) = (self.store.clone(), self.task.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease expires
        };
        runtime.spawn(async move {
            if let Err(e) = store.release_collection_task(&task).await {
                debug!(collection = %task.collection, error = %e, "could not release the collection's lease; it expires");
            }
        });
    }
}

async fn package_held_collection(
    ctx: &EngineContext,
    job: &Job,
    task: &CollectionTask,
) -> anyhow::Result<bool> {
    let collection: &str = &task.collection;
    let folder = archive::collection_path(ctx.archive.root(), collection)?;
    let store = &ctx.store;
    let files = &ctx.archive;
    if job.package == Packaging::Tar {
        // One packer per process at a time: tars are long sequential writes.
        let _one_packer = ctx.packer.lock().await;
        // From loose files, before they go into tars (as the Python tool
        // does). Cosmetic: a thumbnail that cannot be made never holds a job.
        if let Err(e) = item::write_thumbnail(store, files, &folder, collection).await {
            warn!(job = job.id, collection, error = %e, "could not make the item thumbnail");
        }
        match package::pack_collection(store, files, task).await {
            Ok(report) => {
                if !report.tars.is_empty() {
                    info!(job = job.id, collection, tars = ?report.tars, members = report.members, bytes = report.bytes, "collection packed");
                }
                if report.requeued > 0 {
                    return Ok(false);
                }
            }
            Err(PackError::DiskFull { path, source }) => {
                let message = format!(
                    "disk full: cannot pack {} ({source}); packing resumes by itself once space is free",
                    path.display()
                );
                super::enumerate::pause(ctx, job.id, PauseReason::DiskFull, &message).await?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let packed = job.package == Packaging::Tar || store.is_packed_collection(collection).await?;
    // Item files are rewritten whole from the rows, by the lease's holder
    // only (`metadata::write` checks again just before its file replaces
    // the old one).
    store.check_collection_task(task).await?;
    metadata::write(store, files, &folder, task, packed).await?;
    if packed {
        item::write_meta_tags(store, files, &folder, collection, true).await?;
    }
    Ok(true)
}
