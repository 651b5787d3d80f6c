//! Folder fsyncs shared by the writers of one folder.
//!
//! After a rename, the folder must be fsynced before the file may be called
//! durable (invariant 1). An fsync of a folder that *begins* after a rename
//! returned makes that rename durable too, whoever calls it. So when several
//! writers rename into one folder at once (the workers fill a sequence
//! folder together), one fsync that starts after all their renames covers
//! them all, and each waits for such an fsync instead of making its own.
//! A writer alone in its folder fsyncs at once, as before. A failed fsync
//! covers nobody: each writer it would have covered then tries its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};

/// One folder's renames and fsyncs, counted while anyone waits on it.
#[derive(Default)]
struct Folder {
    /// Renames announced so far; a writer's ticket is the count after its own.
    renamed: u64,
    /// Every rename with a ticket up to this one is durable.
    synced: u64,
    /// An fsync of the folder is under way.
    syncing: bool,
    /// Writers waiting here; the entry goes when the last one leaves.
    waiting: usize,
}

struct Folders {
    folders: Mutex<HashMap<PathBuf, Folder>>,
    /// Signalled whenever an fsync ends.
    synced: Condvar,
}

static FOLDERS: LazyLock<Folders> = LazyLock::new(|| Folders {
    folders: Mutex::new(HashMap::new()),
    synced: Condvar::new(),
});

fn lock() -> MutexGuard<'static, HashMap<PathBuf, Folder>> {
    // Every change under the lock is a few counter updates: a panic
    // elsewhere cannot leave them half-made.
    FOLDERS
        .folders
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Returns once `dir` was fsynced after the caller's rename in it (which
/// must have returned): by `sync` here, or by another writer's fsync that
/// began later. Blocking: call it from a blocking thread.
pub(super) fn sync_after_rename<E>(
    dir: &Path,
    sync: impl Fn(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let mut folders = lock();
    let ticket = {
        let folder = folders.entry(dir.to_path_buf()).or_default();
        folder.renamed += 1;
        folder.waiting += 1;
        folder.renamed
    };
    loop {
        let folder = folders
            .get_mut(dir)
            .expect("a folder stays while anyone waits");
        if folder.synced >= ticket {
            leave(&mut folders, dir);
            return Ok(());
        }
        if folder.syncing {
            folders = FOLDERS
                .synced
                .wait(folders)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        }
        folder.syncing = true;
        let covers = folder.renamed;
        drop(folders);
        let result = sync(dir);
        folders = lock();
        let folder = folders
            .get_mut(dir)
            .expect("a folder stays while anyone waits");
        folder.syncing = false;
        if result.is_ok() {
            folder.synced = folder.synced.max(covers);
        }
        FOLDERS.synced.notify_all();
        if let Err(e) = result {
            leave(&mut folders, dir);
            return Err(e);
        }
    }
}

/// One writer less on `dir`; the entry goes with the last.
fn leave(folders: &mut HashMap<PathBuf, Folder>, dir: &Path) {
    if let Some(folder) = folders.get_mut(dir) {
        folder.waiting -= 1;
        if folder.waiting == 0 && !folder.syncing {
            folders.remove(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn a_writer_alone_fsyncs_itself_and_a_failure_is_its_own() {
        let dir = Path::new("/alone/in/its/folder");
        let calls = AtomicUsize::new(0);
        let ok: Result<(), ()> = sync_after_rename(dir, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        assert!(ok.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let failed = sync_after_rename(dir, |_| Err("EIO"));
        assert_eq!(failed, Err("EIO"));
        assert!(
            lock().get(dir).is_none(),
            "the entry goes with its last writer"
        );
    }

    /// Writers that rename while an fsync runs share the next one: fewer
    /// fsyncs than writers, and every one of them began after the rename of
    /// each writer it released.
    #[test]
    fn writers_of_one_folder_share_fsyncs_that_began_after_their_renames() {
        let dir = Path::new("/shared/folder");
        let renames = Arc::new(AtomicUsize::new(0));
        let syncs = Arc::new(Mutex::new(Vec::<usize>::new()));
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (renames, syncs) = (renames.clone(), syncs.clone());
                std::thread::spawn(move || {
                    let mine = renames.fetch_add(1, Ordering::SeqCst) + 1;
                    let result: Result<(), ()> = sync_after_rename(dir, |_| {
                        // Renames seen when this fsync began: all it covers.
                        syncs.lock().unwrap().push(renames.load(Ordering::SeqCst));
                        std::thread::sleep(Duration::from_millis(20));
                        Ok(())
                    });
                    assert!(result.is_ok());
                    // Some fsync that began after this rename has ended.
                    let syncs = syncs.lock().unwrap();
                    assert!(
                        syncs.iter().any(|&seen| seen >= mine),
                        "writer {mine} was released uncovered"
                    );
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let count = syncs.lock().unwrap().len();
        assert!(count < 16, "{count} fsyncs for 16 writers: none shared");
        assert!(lock().get(dir).is_none());
    }
}
