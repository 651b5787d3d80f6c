//! The fence and the quarantine: nothing the database names is removed or
//! moved unless it lies inside its collection folder, and a file we doubt
//! is never deleted, only moved aside (SPEC Part 3, "Repair never
//! destroys"): Mapillary may have removed the image since, and the doubted
//! copy may be the only one left.

use super::{ArchiveError, sync_dir};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the folder beside the archive (`<data-dir>/quarantine`, or the
/// `quarantine/` prefix of a bucket) that doubted files are moved into.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Copies of one path a quarantine keeps (`x`, `x.1`, … `x.<n-1>`) before
/// refusing: each repair of one image may move a doubted copy aside.
const MAX_COPIES: u32 = 1000;

/// Checks that `path` (a stored path, rebased onto the archive root) lies
/// strictly inside the collection folder `folder` and that the part below
/// it holds only plain names (no `..`, no `.`). Every remove or rename of a
/// stored path passes here first; a refusal moves nothing.
pub fn fence(folder: &Path, path: &Path) -> Result<(), ArchiveError> {
    let refused = || ArchiveError::Fenced {
        path: path.to_path_buf(),
        folder: folder.to_path_buf(),
    };
    // On the text, not on `components()`, which folds `a/./b` into `a/b`.
    let (Some(path_text), Some(folder_text)) = (path.to_str(), folder.to_str()) else {
        return Err(refused());
    };
    let relative = path_text
        .strip_prefix(folder_text.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(refused)?;
    if relative
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(refused());
    }
    Ok(())
}

/// Where `path` goes in quarantine: its path relative to `archive_root`,
/// under `quarantine_root`. `path` must have passed [`fence`] (so it lies
/// under the root and holds no `..`).
pub fn quarantine_path(
    archive_root: &Path,
    quarantine_root: &Path,
    path: &Path,
) -> Result<PathBuf, ArchiveError> {
    let relative = path
        .strip_prefix(archive_root)
        .map_err(|_| ArchiveError::Fenced {
            path: path.to_path_buf(),
            folder: archive_root.to_path_buf(),
        })?;
    Ok(quarantine_root.join(relative))
}

/// `to`, then `to.1`, `to.2`, …: the names a quarantined copy may take.
pub fn candidates(to: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    (0..MAX_COPIES).map(move |n| match n {
        0 => to.to_path_buf(),
        n => {
            let mut name = to.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        }
    })
}

/// Moves the local file `from` to the first free name of [`candidates`]
/// of `to`, never replacing anything there, and syncs both folders.
/// Returns where it went. A directory is refused, not moved.
pub fn move_aside(from: &Path, to: &Path) -> Result<PathBuf, ArchiveError> {
    let io_error = |path: &Path, e: io::Error| ArchiveError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let meta = fs::symlink_metadata(from).map_err(|e| io_error(from, e))?;
    if !meta.is_file() {
        return Err(io_error(
            from,
            io::Error::other("not a regular file: left in place"),
        ));
    }
    let dir = to.parent().unwrap_or(to);
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    for candidate in candidates(to) {
        // A hard link is create-only; the original goes only once the
        // copy has its name.
        match fs::hard_link(from, &candidate) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) => {
                // Another filesystem, or no hard links: a copy, fsynced.
                if fs::symlink_metadata(&candidate).is_ok() {
                    continue;
                }
                copy_durably(from, &candidate)?;
            }
        }
        sync_dir(dir)?;
        fs::remove_file(from).map_err(|e| io_error(from, e))?;
        sync_dir(from.parent().unwrap_or(from))?;
        return Ok(candidate);
    }
    Err(io_error(
        to,
        io::Error::other(format!("{MAX_COPIES} copies already in quarantine")),
    ))
}

/// Copies `from` to `to` through `<to>.part`, fsynced before its rename.
fn copy_durably(from: &Path, to: &Path) -> Result<(), ArchiveError> {
    let mut part = to.as_os_str().to_owned();
    part.push(super::PART_SUFFIX);
    let part = PathBuf::from(part);
    let result = (|| {
        fs::copy(from, &part)?;
        fs::File::open(&part)?.sync_all()?;
        fs::rename(&part, to)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&part);
        return Err(ArchiveError::Io {
            path: to.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_keeps_stored_paths_inside_their_collection() {
        let folder = Path::new("/d/archive/mapillary-a-256");
        let inside = Path::new("/d/archive/mapillary-a-256/2024-01-02/s/1.jpg");
        assert!(fence(folder, inside).is_ok());
        for outside in [
            "/d/archive/mapillary-a-256/2024-01-02/../../mapillary-b-256/1.jpg",
            "/d/archive/mapillary-a-256/../../etc/passwd",
            "/d/archive/mapillary-a-256/./1.jpg",
            "/d/archive/mapillary-b-256/2024-01-02/1.jpg",
            "/d/archive/mapillary-a-256",
            "/d/archive/mapillary-a-2560/1.jpg",
            "relative/mapillary-a-256/1.jpg",
        ] {
            let err = fence(folder, Path::new(outside)).unwrap_err();
            assert!(matches!(err, ArchiveError::Fenced { .. }), "{outside}");
        }
    }

    #[test]
    fn moving_aside_never_replaces_a_quarantined_copy() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("q/a/1.jpg");
        for n in 0..3 {
            let from = dir.path().join("1.jpg");
            fs::write(&from, format!("copy {n}")).unwrap();
            let went = move_aside(&from, &to).unwrap();
            assert!(!from.exists());
            assert_eq!(fs::read_to_string(&went).unwrap(), format!("copy {n}"));
        }
        assert_eq!(fs::read_to_string(&to).unwrap(), "copy 0");
        assert_eq!(
            fs::read_to_string(dir.path().join("q/a/1.jpg.2")).unwrap(),
            "copy 2"
        );
        fs::create_dir(dir.path().join("d")).unwrap();
        assert!(move_aside(&dir.path().join("d"), &to).is_err());
        assert!(dir.path().join("d").is_dir());
    }
}
