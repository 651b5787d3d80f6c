//! `ia.delete_after_confirm`: a tar confirmed on archive.org (the item's
//! metadata lists it with our MD5) is removed from the collection folder,
//! and its images are from then on held on the Internet Archive only.
//!
//! Never a tar that is not confirmed, and a kill at any instant loses
//! nothing: the store records the tar as held on IA only (a commit that
//! survives a power loss, refused unless the file is `confirmed`) BEFORE
//! the file goes; the removal is fenced to the collection folder, durable
//! (the folder is synced) and idempotent; only then is it marked done. A
//! record whose removal did not finish is finished by the next run
//! ([`tidy_collection`]). Once recorded, `verify` reports the tar's images
//! as held on the Internet Archive only and `--repair` leaves them alone
//! (see `store/ia_only.rs`).

use crate::archive::{self, Archive, ArchiveError};
use crate::clock::now_ms;
use crate::store::{Store, StoreError, UploadFile, UploadFileKind, UploadFileState};
use std::path::Path;

/// Why a confirmed tar is still on the local disk.
#[derive(Debug, thiserror::Error)]
pub enum CleanError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file could not be removed (it stays recorded: the next run tries again).
    #[error("cannot remove the confirmed tar {name}: {source}")]
    Remove {
        /// The tar's name in its collection folder.
        name: String,
        /// What the archive said.
        source: ArchiveError,
    },
}

/// Records the confirmed tar `file` as held on the Internet Archive only,
/// then removes it from the collection folder under `archive_dir`. Returns
/// whether it was removed: an item file, a tar not confirmed, or one whose
/// packing is not finished stays.
pub async fn hold_on_ia_only(
    store: &Store,
    archive_dir: &Path,
    file: &UploadFile,
) -> Result<bool, CleanError> {
    if file.kind != UploadFileKind::Tar || !store.record_tar_on_ia_only(file.id, now_ms()).await? {
        return Ok(false);
    }
    remove(store, archive_dir, file).await?;
    Ok(true)
}

/// Finishes what a kill left between the record and the removal: every tar
/// of `collection` recorded and not yet removed goes. With `delete`
/// (`ia.delete_after_confirm`), every confirmed tar still on the disk is
/// recorded and removed first. Returns how many tars were removed.
pub async fn tidy_collection(
    store: &Store,
    archive_dir: &Path,
    collection: &str,
    delete: bool,
) -> Result<u64, CleanError> {
    if delete {
        let folder = archive::collection_path(archive_dir, collection).map_err(|source| {
            CleanError::Remove {
                name: collection.to_string(),
                source,
            }
        })?;
        for file in store.upload_files(collection).await? {
            let confirmed_tar =
                file.kind == UploadFileKind::Tar && file.state == UploadFileState::Confirmed;
            if !confirmed_tar {
                continue;
            }
            // Gone from the disk: recorded already (nothing else removes a tar).
            let path = folder.join(&file.name);
            match tokio::fs::try_exists(&path).await {
                Ok(true) => {
                    store.record_tar_on_ia_only(file.id, now_ms()).await?;
                }
                Ok(false) => {}
                Err(source) => {
                    let source = ArchiveError::Io { path, source };
                    let name = file.name;
                    return Err(CleanError::Remove { name, source });
                }
            }
        }
    }
    let mut removed = 0;
    for file in store.tars_to_remove(collection).await? {
        remove(store, archive_dir, &file).await?;
        removed += 1;
    }
    Ok(removed)
}

/// Removes a recorded tar (fenced, durably; gone already is fine), then
/// marks the removal done.
async fn remove(store: &Store, archive_dir: &Path, file: &UploadFile) -> Result<(), CleanError> {
    let failed = |source| CleanError::Remove {
        name: file.name.clone(),
        source,
    };
    let folder = archive::collection_path(archive_dir, &file.collection).map_err(failed)?;
    // The disk's archive: uploads read their tars from it (never a bucket).
    let files = Archive::disk(archive_dir, 0);
    files
        .remove_stored_durably(&folder, &folder.join(&file.name))
        .await
        .map_err(failed)?;
    store.mark_tar_removed(file.id, now_ms()).await?;
    tracing::info!(file = %file.name, collection = %file.collection, "confirmed on archive.org; local tar removed");
    Ok(())
}

/// What the upload makes of a clean-up's end: a database error ends the run;
/// a tar that could not be removed is logged and stays recorded (the next
/// run tries again), the upload itself being confirmed.
pub fn store_errors_only<T>(result: Result<T, CleanError>) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(CleanError::Store(e)) => Err(e),
        Err(e) => {
            tracing::warn!("{e}");
            Ok(())
        }
    }
}
