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
use crate::archive;
use crate::archive_files::ArchiveFiles;
use crate::bucket::{Bucket, Completed};
use crate::checksum::hash_reader;
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
    files: &ArchiveFiles,
    handle: &Handle,
    tar: &BuiltTar<'_>,
) -> Result<Published, PackError> {
    let published = match files {
        ArchiveFiles::Disk => publish_on_disk(store, handle, tar),
        ArchiveFiles::Bucket(bucket) => handle.block_on(publish_in_bucket(store, bucket, tar)),
    };
    let _ = std::fs::remove_file(tar.built);
    if matches!(published, Ok(Published::Adopted)) {
        info!(tar = %tar.packing.tar_name, "the tar was already under its name with the same bytes (a crash before it was recorded): adopted");
    }
    published
}

fn publish_on_disk(
    store: &Store,
    handle: &Handle,
    tar: &BuiltTar<'_>,
) -> Result<Published, PackError> {
    handle.block_on(still_ours(store, tar))?;
    if archive::link_create_only(tar.built, tar.target)? {
        return Ok(Published::Created);
    }
    let theirs = std::fs::File::open(tar.target)
        .and_then(hash_reader)
        .map(|(_, sha)| Some(sha))
        .map_err(|e| archive::ArchiveError::Io {
            path: tar.target.to_path_buf(),
            source: e,
        })?;
    adopt_or_refuse(tar, theirs)
}

async fn publish_in_bucket(
    store: &Store,
    bucket: &Bucket,
    tar: &BuiltTar<'_>,
) -> Result<Published, PackError> {
    let (packing, target) = (tar.packing, tar.target);
    still_ours(store, tar).await?;
    let bucket_error = |e| bucket_error(target, e);
    let upload_id = begin_recorded_upload(store, bucket, tar).await?;
    let completed = async {
        let parts = bucket
            .upload_parts(tar.built, target, &upload_id)
            .await
            .map_err(bucket_error)?;
        // The parts may have taken minutes: ask again just before the tar
        // can appear.
        still_ours(store, tar).await?;
        bucket
            .complete_create_only(target, &upload_id, &parts)
            .await
            .map_err(bucket_error)
    }
    .await;
    // Not completed (an error, or the key taken): its parts must go too.
    if !matches!(completed, Ok(Completed::Created))
        && let Err(e) = bucket.abort_upload(target, &upload_id).await
    {
        // It stays recorded: the next packer aborts it.
        warn!(tar = %packing.tar_name, error = %e, "could not abort the tar's upload; the next packing round does");
        completed?;
        return Err(bucket_error(e));
    }
    if let Err(e) = store.forget_upload(&upload_id).await {
        warn!(tar = %packing.tar_name, error = %e, "could not forget the tar's finished upload; the next packing round does");
    }
    match completed? {
        Completed::Created => Ok(Published::Created),
        Completed::KeyTaken => {
            let theirs = bucket
                .head(target)
                .await
                .map_err(bucket_error)?
                .and_then(|head| head.sha256);
            adopt_or_refuse(tar, theirs)
        }
    }
}

/// Begins the tar's multipart upload and records it under the lease, so
/// a packer that dies mid-upload leaves it for the next one to abort; an
/// upload that cannot be recorded is aborted at once.
async fn begin_recorded_upload(
    store: &Store,
    bucket: &Bucket,
    tar: &BuiltTar<'_>,
) -> Result<String, PackError> {
    let target = tar.target;
    let upload_id = bucket
        .begin_upload(target, tar.sha256)
        .await
        .map_err(|e| bucket_error(target, e))?;
    let path = target.to_string_lossy();
    if let Err(e) = store
        .record_upload(tar.task, &upload_id, &path, now_ms())
        .await
    {
        if let Err(abort) = bucket.abort_upload(target, &upload_id).await {
            warn!(tar = %tar.packing.tar_name, error = %abort, "an upload neither recorded nor aborted: a bucket lifecycle rule ends it");
        }
        return Err(e.into());
    }
    Ok(upload_id)
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
    files: &ArchiveFiles,
    task: &CollectionTask,
) -> Result<usize, PackError> {
    let uploads = store.recorded_uploads(&task.collection).await?;
    let ArchiveFiles::Bucket(bucket) = files else {
        return Ok(0);
    };
    let mut aborted = 0;
    for upload in &uploads {
        // One that cannot be aborted (a policy without
        // s3:AbortMultipartUpload, a record from another archive URL) must
        // not hold the collection: it stays recorded, and is said.
        if let Err(e) = bucket
            .abort_upload(Path::new(&upload.path), &upload.upload_id)
            .await
        {
            warn!(collection = %task.collection, path = %upload.path, error = %e, "could not abort a tar upload an earlier packer left; tried again at the next packing (a bucket lifecycle rule also ends it)");
            continue;
        }
        store.forget_upload(&upload.upload_id).await?;
        aborted += 1;
        info!(collection = %task.collection, path = %upload.path, "aborted a tar upload an earlier packer left unfinished");
    }
    Ok(aborted)
}

/// A bucket's error while publishing the tar at `target`, as packing
/// reports it (an I/O error at that path).
fn bucket_error(target: &Path, e: crate::bucket::BucketError) -> PackError {
    PackError::Archive(archive::ArchiveError::Io {
        path: target.to_path_buf(),
        source: std::io::Error::other(e),
    })
}
