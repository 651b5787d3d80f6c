//! The archive: where each image goes, and how it gets there durably, on
//! the local disk or in an S3-compatible bucket.
//!
//! [`Archive`] is the one handle the engine, packaging and `verify` use;
//! it is the disk or a bucket, chosen once from the settings, and nothing
//! outside it asks which. [`layout`] says where a file goes (the same paths
//! for both, rooted at `<data-dir>/archive` or `s3://bucket/prefix`);
//! [`bucket`] speaks S3; [`fence`] keeps removes and moves inside their
//! collection folder; [`checksum`] and [`webp`] make the bytes stored;
//! [`archive_org`] asks whether the Internet Archive already has a
//! collection.
//!
//! This file holds the local disk's durable writes. Invariant 1 lives
//! here: a file is written to `<final>.part`, fsynced, renamed, and its
//! directory fsynced, before anyone may call it done.

pub mod archive_org;
pub mod bucket;
pub mod checksum;
mod create_only;
mod dir_sync;
mod fence;
mod files;
mod images;
pub mod layout;
mod reading;
pub mod webp;

pub use create_only::{Publish, PublishGuard};
pub use fence::{
    QUARANTINE_DIR, candidates as quarantine_candidates, fence, move_aside, quarantine_path,
};
pub use files::Archive;
pub use images::{ImageFile, tagged_from};
pub use layout::{ArchivedFile, FileKind, collection_path, date_folder, image_path, member_name};
pub use reading::{Found, in_parallel};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Suffix of a file still being written. Never left behind by a finished job.
pub const PART_SUFFIX: &str = ".part";

/// Why an archive file could not be placed, read or removed; each kind decides what the caller does.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Invariant 10: an id that would not be a safe path component.
    #[error("{0}")]
    InvalidId(String),
    /// ENOSPC (or a quota): not the image's fault, so it costs no attempt.
    #[error("disk full while writing {path}: {source}")]
    DiskFull {
        /// What was being written.
        path: PathBuf,
        /// The error (or the reserve's reason).
        source: io::Error,
    },
    /// Any other I/O error: the image is retried (an attempt).
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// A stored path outside its collection folder, or climbing with `..`:
    /// nothing is removed or moved there.
    #[error(
        "refused to touch {path}: it is not a plain path inside its collection folder {folder}"
    )]
    Fenced {
        /// The stored path.
        path: PathBuf,
        /// The collection folder it should be in.
        folder: PathBuf,
    },
    /// The archive's bucket refused or did not answer (after the client's
    /// own retries): not the image's fault, so it costs no attempt.
    #[error("{0}")]
    Unavailable(#[from] bucket::BucketError),
}

impl ArchiveError {
    fn from_io(path: &Path, source: io::Error) -> ArchiveError {
        let full = source.kind() == io::ErrorKind::StorageFull
            || source.kind() == io::ErrorKind::QuotaExceeded
            || source.raw_os_error() == Some(28);
        if full {
            ArchiveError::DiskFull {
                path: path.to_path_buf(),
                source,
            }
        } else {
            ArchiveError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// `<final>.<pid>-<n>.part`: unique per write, so two writers of one image
/// (two jobs sharing a collection folder, or a reclaimed lease) never share
/// a temp file; the last rename wins with a whole file either way.
fn part_path(final_path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = final_path.as_os_str().to_owned();
    name.push(format!(".{}-{n}{PART_SUFFIX}", std::process::id()));
    PathBuf::from(name)
}

/// Writes `bytes` to `final_path` durably, with its mtime set to the capture
/// time: see [`write_atomically`].
pub fn write_durably(
    final_path: &Path,
    bytes: &[u8],
    mtime_ms: Option<i64>,
) -> Result<(), ArchiveError> {
    replace_file(final_path, mtime_ms, |file| {
        let mut file = file;
        file.write_all(bytes)
    })
}

/// Writes a whole file atomically: `<final>.part`, fsync, rename, fsync the
/// directory. On any error the `.part` file is removed, so a failure never
/// leaves a half-written file behind. Used for `metadata.jsonl`, whose writer
/// streams lines into `write`.
pub fn write_atomically(
    final_path: &Path,
    write: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    replace_file(final_path, None, |file| {
        let mut writer = io::BufWriter::new(file);
        write(&mut writer)?;
        writer.flush()
    })
}

/// Builds a whole file to become `final_path` later: written to a unique
/// `.part` beside it and fsynced, then left there for
/// [`link_create_only`]. Returns the part's path. On any error the part is
/// removed.
pub fn build_file(
    final_path: &Path,
    write: impl FnOnce(&mut io::BufWriter<&File>) -> io::Result<()>,
) -> Result<PathBuf, ArchiveError> {
    let dir = final_path
        .parent()
        .ok_or_else(|| ArchiveError::from_io(final_path, io::Error::other("path has no parent")))?;
    fs::create_dir_all(dir).map_err(|e| ArchiveError::from_io(dir, e))?;
    let part = part_path(final_path);
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)?;
        let mut writer = io::BufWriter::new(&file);
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(part),
        Err(e) => {
            let _ = fs::remove_file(&part);
            Err(ArchiveError::from_io(&part, e))
        }
    }
}

/// Gives the built file `part` the name `final_path` only if no file has
/// it yet: a hard link (atomic and create-only, where `rename` would
/// replace), then the part goes and the folder is synced. `false`: a file
/// already had the name, and `part` is left for the caller. Where the
/// filesystem has no hard links, a check then a rename (create-only but for
/// a writer racing in between).
pub fn link_create_only(part: &Path, final_path: &Path) -> Result<bool, ArchiveError> {
    let dir = final_path
        .parent()
        .ok_or_else(|| ArchiveError::from_io(final_path, io::Error::other("path has no parent")))?;
    match fs::hard_link(part, final_path) {
        Ok(()) => {
            fs::remove_file(part).map_err(|e| ArchiveError::from_io(part, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
            ) =>
        {
            if fs::symlink_metadata(final_path).is_ok() {
                return Ok(false);
            }
            fs::rename(part, final_path).map_err(|e| ArchiveError::from_io(final_path, e))?;
        }
        Err(e) => return Err(ArchiveError::from_io(final_path, e)),
    }
    sync_dir(dir)?;
    Ok(true)
}

fn replace_file(
    final_path: &Path,
    mtime_ms: Option<i64>,
    write: impl FnOnce(&File) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    let dir = final_path
        .parent()
        .ok_or_else(|| ArchiveError::from_io(final_path, io::Error::other("path has no parent")))?;
    let part = part_path(final_path);
    let result = (|| {
        let file = create_in(dir, &part)?;
        write(&file).map_err(|e| ArchiveError::from_io(&part, e))?;
        if let Some(mtime) = mtime_ms.and_then(system_time_from_ms) {
            file.set_modified(mtime)
                .map_err(|e| ArchiveError::from_io(&part, e))?;
        }
        file.sync_all()
            .map_err(|e| ArchiveError::from_io(&part, e))?;
        fs::rename(&part, final_path).map_err(|e| ArchiveError::from_io(final_path, e))?;
        // Shared with the other writers renaming into this folder meanwhile.
        dir_sync::sync_after_rename(dir, sync_dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

/// Creates (or truncates) `part` in `dir`, making `dir` only when the open
/// says it is missing: the folder usually exists, and asking first would
/// cost a `mkdir` and a `stat` per image.
fn create_in(dir: &Path, part: &Path) -> Result<File, ArchiveError> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(part)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| ArchiveError::from_io(dir, e))?;
            open()
        }
        other => other,
    }
    .map_err(|e| ArchiveError::from_io(part, e))
}

fn system_time_from_ms(ms: i64) -> Option<SystemTime> {
    if ms >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_millis(ms as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_millis(ms.unsigned_abs()))
    }
}

/// Removes `path` if it is there (gone already is fine), durably.
pub fn remove_if_present(path: &Path) -> Result<(), ArchiveError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ArchiveError::from_io(path, e)),
    }
}

/// fsync a directory so a rename in it survives power loss.
pub fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ArchiveError::from_io(dir, e))
}

/// Bytes available to us on the filesystem holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to
    // writable memory of the right type; statvfs fills it on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between libc targets; the casts are no-ops on some.
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Refuses a write that would leave less than `reserve` bytes free, as if
/// the disk were full: the database must keep room to record the pause.
/// A `reserve` of 0 checks nothing: a full disk is then found by the write
/// itself (ENOSPC), which takes the same path.
pub fn ensure_room(dir: &Path, needed: u64, reserve: u64) -> Result<(), ArchiveError> {
    if reserve == 0 {
        return Ok(());
    }
    // The folder itself usually exists: ask it first, its ancestors only
    // when it does not (no `stat` per image).
    let mut probe = dir;
    let free = loop {
        match free_bytes(probe) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match probe.parent() {
                Some(parent) => probe = parent,
                None => return Err(ArchiveError::from_io(dir, e)),
            },
            other => break other.map_err(|e| ArchiveError::from_io(probe, e))?,
        }
    };
    if free < needed.saturating_add(reserve) {
        return Err(ArchiveError::DiskFull {
            path: dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::StorageFull,
                format!("{free} bytes free, keeping {reserve} in reserve"),
            ),
        });
    }
    Ok(())
}

/// Deletes every `*.part` file under `root`: what a kill -9 left behind. Safe
/// only when no worker is writing under `root` (at startup, or for a job with
/// nothing in flight). Returns how many it removed.
pub fn remove_part_files(root: &Path) -> io::Result<u64> {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name().to_string_lossy().ends_with(PART_SUFFIX) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_leaves_no_part_and_sets_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x/y/1.jpg");
        write_durably(&target, b"\xff\xd8\xffhello", Some(1_600_000_000_123)).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"\xff\xd8\xffhello");
        let mtime = fs::metadata(&target).unwrap().modified().unwrap();
        assert_eq!(
            mtime.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_600_000_000_123
        );
        assert_eq!(remove_part_files(dir.path()).unwrap(), 0);
        fs::write(dir.path().join("x/y/2.jpg.part"), b"junk").unwrap();
        assert_eq!(remove_part_files(dir.path()).unwrap(), 1);
    }

    #[test]
    fn a_failing_writer_leaves_no_part_file_and_no_final_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a/b/metadata.jsonl");
        let err = write_atomically(&target, |out| {
            out.write_all(&[b'x'; 100_000])?;
            Err(io::Error::other("the source failed half-way"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("half-way"), "{err}");
        assert!(!target.exists());
        let left: Vec<_> = fs::read_dir(target.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // An ENOSPC from the writer is classed as disk full.
        let err = write_atomically(&target, |_| Err(io::Error::from_raw_os_error(28))).unwrap_err();
        assert!(matches!(err, ArchiveError::DiskFull { .. }), "{err:?}");
        assert_eq!(fs::read_dir(target.parent().unwrap()).unwrap().count(), 0);
    }

    #[test]
    fn the_free_space_reserve_refuses_writes_as_disk_full() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_room(dir.path(), 1, 1).is_ok());
        assert!(
            ensure_room(dir.path(), u64::MAX, 0).is_ok(),
            "0 checks nothing"
        );
        let err = ensure_room(&dir.path().join("not/yet/made"), 1, u64::MAX / 2).unwrap_err();
        assert!(matches!(err, ArchiveError::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
