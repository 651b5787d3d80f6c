//! The archive's files wherever they live, for the code that packages and
//! checks them (tars, item files, `verify`): the local disk, or a bucket.
//!
//! Paths keep one form either way (rooted at `<data-dir>/archive` or at
//! `s3://bucket/prefix`). On a bucket, a file built in pieces (a tar, a
//! gzipped metadata file) is written whole in the spool folder, fsynced,
//! then uploaded: the upload's completion is what makes it durable, as the
//! rename is on disk. Reading a tar back downloads it to the spool first.
//!
//! Blocking calls (`read`, `remove_stored`, `write_atomically`) are for the
//! blocking pool, where packaging runs; on a bucket they wait for the
//! request on the runtime they were given. Async ones are for tasks.

use crate::archive::bucket::{Bucket, BucketError};
use crate::archive::{self, ArchiveError};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
pub enum ArchiveFiles {
    Disk,
    Bucket(Arc<Bucket>),
}

fn io_error(error: BucketError) -> io::Error {
    io::Error::other(error)
}

impl ArchiveFiles {
    pub fn new(bucket: Option<&Arc<Bucket>>) -> ArchiveFiles {
        bucket.map_or(ArchiveFiles::Disk, |b| ArchiveFiles::Bucket(b.clone()))
    }

    pub fn is_bucket(&self) -> bool {
        matches!(self, ArchiveFiles::Bucket(_))
    }

    /// Where files are built before they become archive files: the
    /// archive's own folder on disk, the spool for a bucket. The free-space
    /// reserve is checked there.
    pub fn building_dir(&self, path: &Path) -> Result<PathBuf, ArchiveError> {
        match self {
            ArchiveFiles::Disk => Ok(path.parent().unwrap_or(path).to_path_buf()),
            ArchiveFiles::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(|e| ArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io_error(e),
                })?;
                Ok(spooled.parent().unwrap_or(&spooled).to_path_buf())
            }
        }
    }

    /// The file's bytes, or `None` if there is none. Blocking.
    pub fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self {
            ArchiveFiles::Disk => match std::fs::read(path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            ArchiveFiles::Bucket(bucket) => tokio::runtime::Handle::current()
                .block_on(bucket.get(path))
                .map(|b| b.map(|b| b.to_vec()))
                .map_err(io_error),
        }
    }

    /// [`ArchiveFiles::read`] from a task.
    pub async fn read_async(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match self {
            ArchiveFiles::Disk => {
                // On the blocking pool: a read of a stuck disk must not hold
                // a runtime thread.
                match tokio::fs::read(path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
            ArchiveFiles::Bucket(bucket) => bucket
                .get(path)
                .await
                .map(|b| b.map(|b| b.to_vec()))
                .map_err(io_error),
        }
    }

    pub async fn exists(&self, path: &Path) -> io::Result<bool> {
        match self {
            ArchiveFiles::Disk => tokio::fs::try_exists(path).await,
            ArchiveFiles::Bucket(bucket) => {
                Ok(bucket.head(path).await.map_err(io_error)?.is_some())
            }
        }
    }

    /// Removes the stored file `path` of the collection folder `folder`;
    /// gone already is fine. The path passes [`archive::fence`] first: one
    /// outside its folder is refused and nothing goes. On disk the
    /// directory is not synced: callers that need it durable sync it once.
    /// Blocking.
    pub fn remove_stored(&self, folder: &Path, path: &Path) -> Result<(), ArchiveError> {
        archive::fence(folder, path)?;
        let failed = |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        };
        match self {
            ArchiveFiles::Disk => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(failed(e)),
            },
            ArchiveFiles::Bucket(bucket) => tokio::runtime::Handle::current()
                .block_on(bucket.delete(path))
                .map_err(|e| failed(io_error(e))),
        }
    }

    /// Moves the doubted file `path` (of the collection folder `folder`,
    /// under `archive_root`) into quarantine instead of deleting it: on
    /// disk `<data-dir>/quarantine/<path relative to the archive root>`, in
    /// a bucket the same under the `quarantine/` prefix; a copy already
    /// there is kept (this one becomes `<name>.1`, …). Fenced like
    /// [`ArchiveFiles::remove_stored`]; logged. Returns where it went.
    pub async fn quarantine(
        &self,
        archive_root: &Path,
        folder: &Path,
        path: &Path,
    ) -> Result<PathBuf, ArchiveError> {
        archive::fence(folder, path)?;
        let went = match self {
            ArchiveFiles::Disk => {
                let root = archive_root.parent().unwrap_or(archive_root);
                let to = archive::quarantine_path(
                    archive_root,
                    &root.join(archive::QUARANTINE_DIR),
                    path,
                )?;
                let from = path.to_path_buf();
                tokio::task::spawn_blocking(move || archive::move_aside(&from, &to))
                    .await
                    .map_err(|e| ArchiveError::Io {
                        path: path.to_path_buf(),
                        source: io::Error::other(e),
                    })??
            }
            ArchiveFiles::Bucket(bucket) => {
                let to = archive::quarantine_path(archive_root, &bucket.quarantine_root(), path)?;
                bucket
                    .move_aside(path, &to)
                    .await
                    .map_err(|e| ArchiveError::Io {
                        path: path.to_path_buf(),
                        source: io_error(e),
                    })?
            }
        };
        tracing::warn!(file = %path.display(), quarantined = %went.display(), "moved a doubted file into quarantine");
        Ok(went)
    }

    /// [`ArchiveFiles::quarantine`] from the blocking pool.
    pub fn quarantine_blocking(
        &self,
        archive_root: &Path,
        folder: &Path,
        path: &Path,
    ) -> Result<PathBuf, ArchiveError> {
        tokio::runtime::Handle::current().block_on(self.quarantine(archive_root, folder, path))
    }

    /// Removes a file this program placed itself (not a path read from the
    /// database: those go through [`ArchiveFiles::remove_stored`]), from a
    /// task, durably on disk.
    pub async fn remove_async(&self, path: &Path) -> Result<(), ArchiveError> {
        match self {
            ArchiveFiles::Disk => {
                let owned = path.to_path_buf();
                tokio::task::spawn_blocking(move || archive::remove_if_present(&owned))
                    .await
                    .map_err(|e| ArchiveError::Io {
                        path: path.to_path_buf(),
                        source: io::Error::other(e),
                    })?
            }
            ArchiveFiles::Bucket(bucket) => {
                bucket.delete(path).await.map_err(|e| ArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io_error(e),
                })
            }
        }
    }

    /// Writes a whole file atomically (see [`archive::write_atomically`]);
    /// on a bucket built in the spool, then uploaded, then the spooled copy
    /// removed. Blocking.
    pub fn write_atomically(
        &self,
        path: &Path,
        write: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
    ) -> Result<(), ArchiveError> {
        match self {
            ArchiveFiles::Disk => archive::write_atomically(path, write),
            ArchiveFiles::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(|e| ArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io_error(e),
                })?;
                archive::write_atomically(&spooled, write)?;
                let uploaded =
                    tokio::runtime::Handle::current().block_on(bucket.upload_file(&spooled, path));
                let _ = std::fs::remove_file(&spooled);
                uploaded.map_err(|e| ArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io_error(e),
                })
            }
        }
    }

    /// Builds the file that is to become `path` and leaves it, fsynced, in
    /// a local `.part` file (beside `path` on disk, in the spool for a
    /// bucket) for the caller to publish create-only. Returns that file.
    /// Blocking.
    pub fn build(
        &self,
        path: &Path,
        write: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
    ) -> Result<PathBuf, ArchiveError> {
        match self {
            ArchiveFiles::Disk => archive::build_file(path, write),
            ArchiveFiles::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(|e| ArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io_error(e),
                })?;
                archive::build_file(&spooled, write)
            }
        }
    }

    /// A local copy of the file to read with file APIs (a tar), and whether
    /// it is a temporary one to remove after use. `None` if there is none.
    pub async fn local_copy(&self, path: &Path) -> io::Result<Option<(PathBuf, bool)>> {
        match self {
            ArchiveFiles::Disk => Ok(tokio::fs::try_exists(path)
                .await?
                .then(|| (path.to_path_buf(), false))),
            ArchiveFiles::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(io_error)?;
                let found = bucket.download(path, &spooled).await.map_err(io_error)?;
                Ok(found.then_some((spooled, true)))
            }
        }
    }
}
