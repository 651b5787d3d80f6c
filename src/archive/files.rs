//! [`Archive`]: the archive's files wherever they live, the local disk or
//! a bucket, chosen once from the settings. Everything that stores, adopts,
//! reads, lists or removes an archive file (the workers, packaging, item
//! files, `verify`) goes through it, and nothing outside this module asks
//! which of the two it is.
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

/// The archive: its root, the free space its local writes keep, and where
/// its files live. Cheap to clone (the bucket client is shared).
#[derive(Clone, Debug)]
pub struct Archive {
    root: PathBuf,
    reserve: u64,
    pub(super) place: Place,
}

/// Where the files live. Private to the archive: callers see one
/// [`Archive`] and never branch on this.
#[derive(Clone, Debug)]
pub(super) enum Place {
    Disk,
    Bucket(Arc<Bucket>),
}

pub(super) fn io_error(error: BucketError) -> io::Error {
    io::Error::other(error)
}

/// The error of a bucket call about `path`, for `map_err`.
pub(super) fn failed(path: &Path) -> impl Fn(BucketError) -> ArchiveError + '_ {
    move |e| ArchiveError::Io {
        path: path.to_path_buf(),
        source: io_error(e),
    }
}

impl Archive {
    /// The archive on the local disk under `root`, keeping `reserve` bytes
    /// free on its filesystem (see [`archive::ensure_room`]).
    pub fn disk(root: impl Into<PathBuf>, reserve: u64) -> Archive {
        Archive {
            root: root.into(),
            reserve,
            place: Place::Disk,
        }
    }

    /// The archive in `bucket`, rooted at its `s3://bucket/prefix`; files
    /// built locally first (tars, metadata) go to its spool, which keeps
    /// `reserve` bytes free.
    pub fn bucket(bucket: Arc<Bucket>, reserve: u64) -> Archive {
        Archive {
            root: bucket.root().to_path_buf(),
            reserve,
            place: Place::Bucket(bucket),
        }
    }

    /// The root every archive path begins with: the archive directory, or
    /// `s3://bucket/prefix`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The free bytes every local write keeps on its filesystem, so the
    /// database (on the same disk) always has room to record a pause.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// The local folder whose filesystem fills as this archive is written
    /// (the archive itself, or a bucket's spool), for the free-space checks.
    pub fn local_root(&self) -> &Path {
        match &self.place {
            Place::Disk => &self.root,
            Place::Bucket(bucket) => bucket.spool_dir(),
        }
    }

    /// Where `.part` files only this process writes may be left by a kill:
    /// a bucket's spool is this data dir's own; a local archive is too when
    /// this engine is the only one (`sole_engine`), but a folder shared by
    /// daemons on one PostgreSQL queue may hold their live `.part` files.
    pub fn own_partial_files(&self, sole_engine: bool) -> Option<&Path> {
        match &self.place {
            Place::Disk => sole_engine.then_some(self.root.as_path()),
            Place::Bucket(bucket) => Some(bucket.spool_dir()),
        }
    }

    /// Where files are built before they become archive files: the
    /// archive's own folder on disk, the spool for a bucket. The free-space
    /// reserve is checked there.
    pub fn building_dir(&self, path: &Path) -> Result<PathBuf, ArchiveError> {
        match &self.place {
            Place::Disk => Ok(path.parent().unwrap_or(path).to_path_buf()),
            Place::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(failed(path))?;
                Ok(spooled.parent().unwrap_or(&spooled).to_path_buf())
            }
        }
    }

    /// The file's bytes, or `None` if there is none. Blocking.
    pub fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match &self.place {
            Place::Disk => match std::fs::read(path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
            Place::Bucket(bucket) => tokio::runtime::Handle::current()
                .block_on(bucket.get(path))
                .map(|b| b.map(|b| b.to_vec()))
                .map_err(io_error),
        }
    }

    /// [`Archive::read`] from a task.
    pub async fn read_async(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match &self.place {
            Place::Disk => {
                // On the blocking pool: a read of a stuck disk must not hold
                // a runtime thread.
                match tokio::fs::read(path).await {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Place::Bucket(bucket) => bucket
                .get(path)
                .await
                .map(|b| b.map(|b| b.to_vec()))
                .map_err(io_error),
        }
    }

    /// Whether a file is at `path` (a HEAD in a bucket), from a task.
    pub async fn exists(&self, path: &Path) -> io::Result<bool> {
        match &self.place {
            Place::Disk => tokio::fs::try_exists(path).await,
            Place::Bucket(bucket) => Ok(bucket.head(path).await.map_err(io_error)?.is_some()),
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
        match &self.place {
            Place::Disk => match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(failed(e)),
            },
            Place::Bucket(bucket) => tokio::runtime::Handle::current()
                .block_on(bucket.delete(path))
                .map_err(|e| failed(io_error(e))),
        }
    }

    /// Ends a round of [`Archive::remove_stored`] under `folder/sub`: on
    /// disk, the folders left empty go (deepest first; one still holding
    /// files stays) and the collection folder is synced, so the removals
    /// are durable; a bucket has no folders to leave behind. Blocking.
    pub fn tidy_after_removals(&self, folder: &Path, sub: &str) -> Result<(), ArchiveError> {
        match &self.place {
            Place::Disk => {
                remove_empty_dirs(&folder.join(sub));
                archive::sync_dir(folder)
            }
            Place::Bucket(_) => Ok(()),
        }
    }

    /// Moves the doubted file `path` (of the collection folder `folder`,
    /// under `archive_root`) into quarantine instead of deleting it: on
    /// disk `<data-dir>/quarantine/<path relative to the archive root>`, in
    /// a bucket the same under the `quarantine/` prefix; a copy already
    /// there is kept (this one becomes `<name>.1`, …). Fenced like
    /// [`Archive::remove_stored`]; logged. Returns where it went.
    pub async fn quarantine(
        &self,
        archive_root: &Path,
        folder: &Path,
        path: &Path,
    ) -> Result<PathBuf, ArchiveError> {
        archive::fence(folder, path)?;
        let went = match &self.place {
            Place::Disk => {
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
            Place::Bucket(bucket) => {
                let to = archive::quarantine_path(archive_root, &bucket.quarantine_root(), path)?;
                bucket.move_aside(path, &to).await.map_err(failed(path))?
            }
        };
        tracing::warn!(file = %path.display(), quarantined = %went.display(), "moved a doubted file into quarantine");
        Ok(went)
    }

    /// [`Archive::quarantine`] from the blocking pool.
    pub fn quarantine_blocking(
        &self,
        archive_root: &Path,
        folder: &Path,
        path: &Path,
    ) -> Result<PathBuf, ArchiveError> {
        tokio::runtime::Handle::current().block_on(self.quarantine(archive_root, folder, path))
    }

    /// Removes a file this program placed itself (not a path read from the
    /// database: those go through [`Archive::remove_stored`]), from a
    /// task, durably on disk.
    pub async fn remove_async(&self, path: &Path) -> Result<(), ArchiveError> {
        match &self.place {
            Place::Disk => {
                let owned = path.to_path_buf();
                tokio::task::spawn_blocking(move || archive::remove_if_present(&owned))
                    .await
                    .map_err(|e| ArchiveError::Io {
                        path: path.to_path_buf(),
                        source: io::Error::other(e),
                    })?
            }
            Place::Bucket(bucket) => bucket.delete(path).await.map_err(failed(path)),
        }
    }

    /// Removes the stored file `path` of the collection folder `folder` for
    /// good, from a task: fenced as [`Archive::remove_stored`], gone already
    /// is fine, and on disk the folder is synced even then (an earlier
    /// removal may not have been), so the removal survives a power loss.
    pub async fn remove_stored_durably(
        &self,
        folder: &Path,
        path: &Path,
    ) -> Result<(), ArchiveError> {
        archive::fence(folder, path)?;
        match &self.place {
            Place::Disk => {
                let (folder, file) = (folder.to_path_buf(), path.to_path_buf());
                tokio::task::spawn_blocking(move || match std::fs::remove_file(&file) {
                    Ok(()) => archive::sync_dir(&folder),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => archive::sync_dir(&folder),
                    Err(e) => Err(ArchiveError::from_io(&file, e)),
                })
                .await
                .map_err(|e| ArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::other(e),
                })?
            }
            Place::Bucket(bucket) => bucket.delete(path).await.map_err(|e| ArchiveError::Io {
                path: path.to_path_buf(),
                source: io_error(e),
            }),
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
        match &self.place {
            Place::Disk => archive::write_atomically(path, write),
            Place::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(failed(path))?;
                archive::write_atomically(&spooled, write)?;
                let uploaded =
                    tokio::runtime::Handle::current().block_on(bucket.upload_file(&spooled, path));
                let _ = std::fs::remove_file(&spooled);
                uploaded.map_err(failed(path))
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
        match &self.place {
            Place::Disk => archive::build_file(path, write),
            Place::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(failed(path))?;
                archive::build_file(&spooled, write)
            }
        }
    }

    /// A local copy of the file to read with file APIs (a tar), and whether
    /// it is a temporary one to remove after use. `None` if there is none.
    pub async fn local_copy(&self, path: &Path) -> io::Result<Option<(PathBuf, bool)>> {
        match &self.place {
            Place::Disk => Ok(tokio::fs::try_exists(path)
                .await?
                .then(|| (path.to_path_buf(), false))),
            Place::Bucket(bucket) => {
                let spooled = bucket.spool_path(path).map_err(io_error)?;
                let found = bucket.download(path, &spooled).await.map_err(io_error)?;
                Ok(found.then_some((spooled, true)))
            }
        }
    }
}

/// Removes `dir` and its subfolders, deepest first, where empty. A folder
/// still holding files (images archived after the plan) stays.
fn remove_empty_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::bucket::{ArchiveUrl, AwsEnvironment};
    use std::collections::HashMap;

    fn bucket_archive(spool: &Path) -> Archive {
        let url = ArchiveUrl::parse("s3://my-archive/photos").unwrap();
        let vars = HashMap::from([
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL".to_string(),
                "http://127.0.0.1:9".to_string(),
            ),
            ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ]);
        let env = AwsEnvironment::from_vars(&vars);
        let bucket = Bucket::open(&url, &env, spool.to_path_buf()).unwrap();
        Archive::bucket(Arc::new(bucket), 7)
    }

    /// The start-up sweep and the free-space checks ask the archive where
    /// its local files are: a shared local archive is never swept, a
    /// bucket's spool always is, and a bucket's disk is its spool.
    #[test]
    fn each_archive_says_which_local_folder_is_its_own() {
        let disk = Archive::disk("/data/archive", 5);
        assert_eq!(disk.root(), Path::new("/data/archive"));
        assert_eq!(disk.local_root(), Path::new("/data/archive"));
        assert_eq!(disk.reserve(), 5);
        assert_eq!(
            disk.own_partial_files(true),
            Some(Path::new("/data/archive"))
        );
        assert_eq!(
            disk.own_partial_files(false),
            None,
            "daemons sharing a local archive may be writing their .part files"
        );

        let spool = Path::new("/data/spool");
        let bucket = bucket_archive(spool);
        assert_eq!(bucket.root(), Path::new("s3://my-archive/photos"));
        assert_eq!(bucket.local_root(), spool);
        assert_eq!(bucket.reserve(), 7);
        assert_eq!(bucket.own_partial_files(false), Some(spool));
        assert_eq!(bucket.own_partial_files(true), Some(spool));
    }
}
