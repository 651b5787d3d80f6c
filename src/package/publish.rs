//! A built tar takes its name, create-only, on disk or in a bucket.
//!
//! A tar must never replace another: a packer that lost its collection's
//! lease while it built (stalled on a disk, S3 or the database) could
//! otherwise put its tar over the one the new packer wrote, recorded and
//! then cleaned the loose files of. So the lease and the packing's state are
//! checked just before the name is taken, and the name is taken only if it
//! is free: a hard link on disk, `If-None-Match: *` on the multipart
//! completion in a bucket. A file already under the name with our bytes is
//! adopted (a crash after the tar took its name, before the packing was
//! recorded); any other file stops packing with a message saying what to do.
//!
//! In a bucket, the upload's id is recorded before its first part goes up:
//! the next packer of the collection aborts whatever a dead or stalled one
//! left ([`abort_left_uploads`]), so an orphaned upload neither lingers nor
//! completes late.

use super::PackError;
use crate::archive::{Archive, Publish, PublishGuard};
use crate::clock::now_ms;
use crate::store::{CollectionTask, Packing, PackingState, Store, StoreError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::runtime::Handle;
use tracing::{info, warn};

/// How the tar came to be under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Published {
    Created,
    /// Our very bytes were there already.
    Adopted,
}

/// A built tar and where it goes.
pub(super) struct BuiltTar<'a> {
    /// The collection's lease, checked before the name is taken.
    pub task: &'a CollectionTask,
    pub packing: &'a Packing,
    /// The local file holding the tar.
    pub built: &'a Path,
    /// Its archive path.
    pub target: &'a Path,
    pub sha256: &'a str,
    /// Raised once the task that wanted this tar is gone (shutdown, a lost
    /// lease): its lease may not have lapsed yet, but nobody will record
    /// the tar, so it must not take the name.
    pub abandoned: &'a AtomicBool,
}

/// Gives the built tar its name, create-only (see the module). Blocking:
/// runs on the blocking pool, its requests on `handle`. The built file is
/// gone afterwards, whatever happened.
pub(super) fn publish_tar(
    store: &Store,
    files: &Archive,
    handle: &Handle,
    tar: &BuiltTar<'_>,
) -> Result<Published, PackError> {
    let guard = Guard { store, tar };
    let published = handle
        .block_on(files.publish_create_only(tar.built, tar.target, tar.sha256, &guard))
        .and_then(|published| match published {
            Publish::Created => Ok(Published::Created),
            Publish::Taken { sha256 } => adopt_or_refuse(tar, sha256),
        });
    let _ = std::fs::remove_file(tar.built);
    if matches!(published, Ok(Published::Adopted)) {
        info!(tar = %tar.packing.tar_name, "the tar was already under its name with the same bytes (a crash before it was recorded): adopted");
    }
    published
}

/// The packer's side of a create-only publish: its lease and packing
/// checked, its upload recorded under the collection's lease.
struct Guard<'a> {
    store: &'a Store,
    tar: &'a BuiltTar<'a>,
}

impl PublishGuard for Guard<'_> {
    type Error = PackError;

    async fn still_ours(&self) -> Result<(), PackError> {
        still_ours(self.store, self.tar).await
    }

    async fn record_upload(&self, upload_id: &str, path: &str) -> Result<(), PackError> {
        let task = self.tar.task;
        Ok(self
            .store
            .record_upload(task, upload_id, path, now_ms())
            .await?)
    }

    async fn forget_upload(&self, upload_id: &str) {
        if let Err(e) = self.store.forget_upload(upload_id).await {
            warn!(tar = %self.tar.packing.tar_name, error = %e, "could not forget the tar's finished upload; the next packing round does");
        }
    }
}

/// Whether the tar may still take its name: the task that wants it waits
/// for it, its lease still holds the collection, and its packing still waits
/// for its tar. Else another packer took over (and may have written this tar
/// and removed its loose files), or nobody would record it.
async fn still_ours(store: &Store, tar: &BuiltTar<'_>) -> Result<(), PackError> {
    if tar.abandoned.load(Ordering::SeqCst) {
        return Err(PackError::Task(format!(
            "{} was abandoned (shutdown, or its finishing stopped): leaving its name alone",
            tar.packing.tar_name
        )));
    }
    store.check_collection_task(tar.task).await?;
    let planned = store
        .packing(tar.packing.id)
        .await?
        .is_some_and(|p| p.state == PackingState::Planned);
    if planned {
        Ok(())
    } else {
        Err(PackError::Store(StoreError::LostCollectionTask(
            tar.task.collection.to_string(),
        )))
    }
}

fn adopt_or_refuse(tar: &BuiltTar<'_>, theirs: Option<String>) -> Result<Published, PackError> {
    if theirs.as_deref() == Some(tar.sha256) {
        return Ok(Published::Adopted);
    }
    Err(PackError::Layout(format!(
        "{} is already there and is not the tar this packing wrote (its SHA-256 {}, this \
         tar's {}); move it out of the archive to let packing of {} go on",
        tar.target.display(),
        theirs.as_deref().unwrap_or("unknown"),
        tar.sha256,
        tar.packing.collection,
    )))
}

/// Aborts the multipart uploads earlier packers of `task`'s collection
/// began and did not see end (a crash, a lost lease), then forgets them.
pub(super) async fn abort_left_uploads(
    store: &Store,
    files: &Archive,
    task: &CollectionTask,
) -> Result<usize, PackError> {
    let uploads = store.recorded_uploads(&task.collection).await?;
    let mut aborted = 0;
    for upload in &uploads {
        // One that cannot be aborted (a policy without
        // s3:AbortMultipartUpload, a record from another archive URL) must
        // not hold the collection: it stays recorded, and is said.
        match files
            .abort_upload(Path::new(&upload.path), &upload.upload_id)
            .await
        {
            Ok(true) => {}
            // No uploads in this archive (the disk): nothing to abort.
            Ok(false) => continue,
            Err(e) => {
                warn!(collection = %task.collection, path = %upload.path, error = %e, "could not abort a tar upload an earlier packer left; tried again at the next packing (a bucket lifecycle rule also ends it)");
                continue;
            }
        }
        store.forget_upload(&upload.upload_id).await?;
        aborted += 1;
        info!(collection = %task.collection, path = %upload.path, "aborted a tar upload an earlier packer left unfinished");
    }
    Ok(aborted)
}
