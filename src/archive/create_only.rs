//! A built file takes its archive name only if no file has it: a hard link
//! on disk, a multipart upload completed with `If-None-Match: *` in a
//! bucket. The caller (packaging) supplies a [`PublishGuard`]: whether it
//! may still take the name (asked before, and in a bucket again just
//! before the completion), and where a bucket upload's id is recorded
//! before its first part goes up, so the next packer can abort what a dead
//! one left.

use super::bucket::{Bucket, Completed};
use super::checksum::hash_reader;
use super::files::{Archive, Place, failed};
use super::{ArchiveError, link_create_only};
use std::future::Future;
use std::path::Path;
use tracing::warn;

/// What a create-only publish asks of its caller between its steps.
pub trait PublishGuard {
    /// The caller's error, which an [`ArchiveError`] becomes.
    type Error: From<ArchiveError>;
    /// `Ok` while the file may still take its name (its packer holds the
    /// collection, its packing still waits for it).
    fn still_ours(&self) -> impl Future<Output = Result<(), Self::Error>>;
    /// Records a bucket upload begun for the file, before any part goes up.
    fn record_upload(
        &self,
        upload_id: &str,
        path: &str,
    ) -> impl Future<Output = Result<(), Self::Error>>;
    /// Forgets a recorded upload that ended (completed or aborted); a
    /// failure is the guard's to report.
    fn forget_upload(&self, upload_id: &str) -> impl Future<Output = ()>;
}

/// How a create-only publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// The file took its name.
    Created,
    /// Another file already had the name; its SHA-256 as far as known, so
    /// the caller can adopt its own bytes or refuse a stranger's.
    Taken {
        /// The file under the name: its SHA-256, if it can be told.
        sha256: Option<String>,
    },
}

impl Archive {
    /// Gives the local file `built` (with SHA-256 `sha256`) the name
    /// `target`, create-only, asking `guard` first (see the module). To be
    /// waited on from the blocking pool: the disk's link and hash block.
    pub async fn publish_create_only<G: PublishGuard>(
        &self,
        built: &Path,
        target: &Path,
        sha256: &str,
        guard: &G,
    ) -> Result<Publish, G::Error> {
        match &self.place {
            Place::Disk => publish_on_disk(built, target, guard).await,
            Place::Bucket(bucket) => publish_in_bucket(bucket, built, target, sha256, guard).await,
        }
    }

    /// Aborts the multipart upload `upload_id` to `path` that an earlier
    /// packer began. `false`: this archive has no uploads (the disk), so
    /// the record is left as it is.
    pub async fn abort_upload(&self, path: &Path, upload_id: &str) -> Result<bool, ArchiveError> {
        match &self.place {
            Place::Disk => Ok(false),
            Place::Bucket(bucket) => {
                bucket
                    .abort_upload(path, upload_id)
                    .await
                    .map_err(failed(path))?;
                Ok(true)
            }
        }
    }
}

async fn publish_on_disk<G: PublishGuard>(
    built: &Path,
    target: &Path,
    guard: &G,
) -> Result<Publish, G::Error> {
    guard.still_ours().await?;
    if link_create_only(built, target)? {
        return Ok(Publish::Created);
    }
    let theirs = std::fs::File::open(target)
        .and_then(hash_reader)
        .map(|(_, sha)| Some(sha))
        .map_err(|e| ArchiveError::Io {
            path: target.to_path_buf(),
            source: e,
        })?;
    Ok(Publish::Taken { sha256: theirs })
}

async fn publish_in_bucket<G: PublishGuard>(
    bucket: &Bucket,
    built: &Path,
    target: &Path,
    sha256: &str,
    guard: &G,
) -> Result<Publish, G::Error> {
    guard.still_ours().await?;
    let upload_id = bucket
        .begin_upload(target, sha256)
        .await
        .map_err(failed(target))?;
    let path = target.to_string_lossy();
    if let Err(e) = guard.record_upload(&upload_id, &path).await {
        if let Err(abort) = bucket.abort_upload(target, &upload_id).await {
            warn!(tar = %target.display(), error = %abort, "an upload neither recorded nor aborted: a bucket lifecycle rule ends it");
        }
        return Err(e);
    }
    let completed: Result<Completed, G::Error> = async {
        let parts = bucket
            .upload_parts(built, target, &upload_id)
            .await
            .map_err(failed(target))?;
        // The parts may have taken minutes: ask again just before the tar
        // can appear.
        guard.still_ours().await?;
        Ok(bucket
            .complete_create_only(target, &upload_id, &parts)
            .await
            .map_err(failed(target))?)
    }
    .await;
    // Not completed (an error, or the key taken): its parts must go too.
    if !matches!(completed, Ok(Completed::Created))
        && let Err(e) = bucket.abort_upload(target, &upload_id).await
    {
        // It stays recorded: the next packer aborts it.
        warn!(tar = %target.display(), error = %e, "could not abort the tar's upload; the next packing round does");
        completed?;
        return Err(failed(target)(e).into());
    }
    guard.forget_upload(&upload_id).await;
    match completed? {
        Completed::Created => Ok(Publish::Created),
        Completed::KeyTaken => {
            let theirs = bucket
                .head(target)
                .await
                .map_err(failed(target))?
                .and_then(|head| head.sha256);
            Ok(Publish::Taken { sha256: theirs })
        }
    }
}
