//! Packaging a collection for the Internet Archive: each capture-date folder
//! of loose files becomes `<YYYY-MM-DD>.tar` (later additions
//! `<date>.1.tar`, `<date>.2.tar`, …; `unknown-date.tar`), then the item
//! files ([`metadata`], [`item`]) are written.
//!
//! A packing is a row that moves `planned` → `written` → `cleaned`, each
//! step durable before the next begins:
//! 1. *plan*: in one transaction, a packings row and every done, unpacked
//!    image under the date folder joined to it;
//! 2. *write*: the tar goes to a `.part` file, member by member in path order
//!    from the loose files (each checked against its SHA-256; one that does
//!    not match is moved to quarantine, never deleted), is fsynced,
//!    renamed and its folder fsynced; then the row becomes `written`;
//! 3. *clean*: the loose files and emptied folders go, then `cleaned`.
//!
//! Until step 2 commits, the loose files are the images; after it, the tar
//! is. A crash anywhere is finished by the next [`pack_collection`]: a
//! `planned` packing is written again (same input, same bytes), a `written`
//! one cleaned again. No half tar is ever left under its final name.

pub mod item;
pub mod metadata;
mod publish;
pub mod tarball;

use crate::archive::Archive;
use crate::archive::checksum::{HashingWriter, sha256_hex};
use crate::archive::{self, ArchiveError, member_name};
use crate::clock::now_ms;
use crate::store::{
    CollectionTask, PackedFile, Packing, PackingState, Store, StoreError, TarWritten,
};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::{info, warn};

/// Files read per query while writing or cleaning a packing.
const PAGE: u32 = 500;

/// `<date>.tar` then `<date>.1.tar` … : names tried before giving up.
const MAX_TARS_PER_DATE: u32 = 100_000;

/// Why packing stopped; a full disk pauses the job instead of failing it.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// ENOSPC or the free-space reserve: the job pauses until there is room.
    #[error("disk full while packing {path}: {source}")]
    DiskFull {
        /// What was being written.
        path: PathBuf,
        /// The error (or the reserve's reason).
        source: io::Error,
    },
    /// An archive file could not be read, written or removed.
    #[error(transparent)]
    Archive(ArchiveError),
    /// The database refused or did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive holds something packing will not touch (a stranger's file under a tar's name).
    #[error("{0}")]
    Layout(String),
    /// The packing task ended (shutdown, a lost lease, a panic).
    #[error("packing stopped: {0}")]
    Task(String),
}

impl From<ArchiveError> for PackError {
    fn from(error: ArchiveError) -> Self {
        match error {
            ArchiveError::DiskFull { path, source } => PackError::DiskFull { path, source },
            other => PackError::Archive(other),
        }
    }
}

impl From<tokio::task::JoinError> for PackError {
    fn from(error: tokio::task::JoinError) -> Self {
        PackError::Task(error.to_string())
    }
}

/// What one [`pack_collection`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackReport {
    /// Tars written, by name.
    pub tars: Vec<String>,
    /// Members written into them.
    pub members: u64,
    /// Bytes of those members.
    pub bytes: u64,
    /// Images left out of a tar (their loose file missing or not matching
    /// its checksum) and sent back to the queue.
    pub requeued: u64,
}

/// What one [`step`] did: moved one packing one state on, or found
/// nothing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackStep {
    /// A date's images were chosen for a new tar.
    Planned(Packing),
    /// The tar is durable.
    Written(Packing, TarWritten),
    /// The loose files it replaced are gone.
    Cleaned(Packing),
    /// None of its images' loose files could go in: no tar, the packing is
    /// dropped and the images are queued again.
    Emptied(Packing, TarWritten),
    /// Every done image of the collection is in a finished tar.
    Idle,
}

/// Packs every date folder of `task`'s collection that holds done images
/// no tar holds yet, after finishing any packing a crash interrupted and
/// aborting the uploads an earlier packer left: [`step`] until it is idle.
/// `task` is the collection's lease, which every packing write checks.
/// Local writes keep the archive's free-space reserve (as image writes do).
pub async fn pack_collection(
    store: &Arc<Store>,
    files: &Archive,
    task: &CollectionTask,
) -> Result<PackReport, PackError> {
    let mut report = PackReport::default();
    publish::abort_left_uploads(store, files, task).await?;
    loop {
        match step(store, files, task).await? {
            PackStep::Idle => return Ok(report),
            PackStep::Planned(_) | PackStep::Cleaned(_) => {}
            PackStep::Written(packing, written) => {
                report.tars.push(packing.tar_name);
                report.members += written.members;
                report.bytes += written.bytes;
                report.requeued += dropped_rows(&written);
            }
            PackStep::Emptied(_, written) => report.requeued += dropped_rows(&written),
        }
    }
}

/// Rows a tar left out and sent back to the queue.
fn dropped_rows(written: &TarWritten) -> u64 {
    written
        .dropped
        .iter()
        .map(|(rows, _)| rows.len() as u64)
        .sum()
}

/// Moves the packing work of `task`'s collection one state on: the oldest
/// unfinished packing first (what a crash interrupted), else plans the
/// next date.
pub async fn step(
    store: &Arc<Store>,
    files: &Archive,
    task: &CollectionTask,
) -> Result<PackStep, PackError> {
    let collection: &str = &task.collection;
    let folder = archive::collection_path(files.root(), collection)?;
    let reserve = files.reserve();
    if let Some(packing) = store
        .unfinished_packings(collection)
        .await?
        .into_iter()
        .next()
    {
        return match packing.state {
            PackingState::Planned => write(store, files, task, &folder, packing, reserve).await,
            _ => clean(store, files, task, &folder, packing).await,
        };
    }
    let prefix = format!("{}/", folder.to_string_lossy());
    let Some(path) = store.first_unpacked_path(collection).await? else {
        return Ok(PackStep::Idle);
    };
    let date = date_of(&prefix, &path)?;
    let tar_name = next_tar_name(store, files, collection, &date, &folder).await?;
    let date_folder = format!("{prefix}{date}");
    match store
        .plan_packing(task, &date, &date_folder, &tar_name, now_ms())
        .await?
    {
        Some(packing) => Ok(PackStep::Planned(packing)),
        None => Err(PackError::Layout(format!(
            "planning {tar_name} found no image under {date_folder}"
        ))),
    }
}

/// The date folder an image's loose path lies in.
fn date_of(prefix: &str, path: &str) -> Result<String, PackError> {
    let date = path
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('/'))
        .map(|(date, _)| date)
        .ok_or_else(|| {
            PackError::Layout(format!(
                "{path} is not inside the collection folder {prefix} (was the data dir moved?)"
            ))
        })?;
    let is_date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok() && date.len() == 10;
    if !is_date && date != "unknown-date" {
        return Err(PackError::Layout(format!("{path} is not in a date folder")));
    }
    Ok(date.to_string())
}

/// `<date>.tar`, or the first `<date>.<n>.tar` that neither a packing nor a
/// file in the folder already uses.
async fn next_tar_name(
    store: &Store,
    files: &Archive,
    collection: &str,
    date: &str,
    folder: &Path,
) -> Result<String, PackError> {
    let used = store.tar_names(collection).await?;
    for n in 0..MAX_TARS_PER_DATE {
        let name = match n {
            0 => format!("{date}.tar"),
            n => format!("{date}.{n}.tar"),
        };
        let taken = used.contains(&name)
            || files
                .exists(&folder.join(&name))
                .await
                .map_err(|e| ArchiveError::Io {
                    path: folder.join(&name),
                    source: e,
                })?;
        if !taken {
            return Ok(name);
        }
    }
    Err(PackError::Layout(format!("no free tar name for {date}")))
}

/// Step 2 for a `planned` packing: its tar, then `written`.
async fn write(
    store: &Arc<Store>,
    files: &Archive,
    task: &CollectionTask,
    folder: &Path,
    mut packing: Packing,
    reserve: u64,
) -> Result<PackStep, PackError> {
    let needed = store.packing_size(packing.id).await? + (packing.members + 20) * 1024;
    let tar = folder.join(&packing.tar_name);
    // Where the tar is built: beside its loose files, or in the spool.
    let room_in = files.building_dir(&tar)?;
    tokio::task::spawn_blocking(move || archive::ensure_room(&room_in, needed, reserve)).await??;
    let written = build_tar(store, files, task, folder, &packing).await?;
    if written.members == 0 {
        // Every file it planned was gone or damaged: no empty tar in the
        // item. A file under the name (an earlier try's, published before a
        // crash) is left alone: removing it could, after a stall, remove the
        // tar another packer wrote and recorded meanwhile; the next plan
        // skips the name, and `verify` reports the file.
        if files.exists(&tar).await.unwrap_or(false) {
            warn!(tar = %tar.display(), "an earlier try's tar is under the name of a packing dropped empty; left alone (move it away if it is not recorded)");
        }
        store
            .abandon_empty_packing(task, &packing, &written, now_ms())
            .await?;
        warn!(tar = %packing.tar_name, "every image planned for the tar had lost its loose file; queued them again, no tar");
        return Ok(PackStep::Emptied(packing, written));
    }
    store
        .mark_packing_written(task, &packing, &written, now_ms())
        .await?;
    let dropped = dropped_rows(&written);
    if dropped > 0 {
        warn!(tar = %packing.tar_name, images = dropped, "left images out of the tar and queued them again");
    }
    info!(
        collection = %packing.collection,
        tar = %packing.tar_name,
        members = written.members,
        bytes = written.bytes,
        "tar written"
    );
    packing.state = PackingState::Written;
    Ok(PackStep::Written(packing, written))
}

/// Runs [`write_tar`] on a blocking thread; a drop of this future (a
/// shutdown, a lost lease) tells the build not to publish.
async fn build_tar(
    store: &Arc<Store>,
    files: &Archive,
    task: &CollectionTask,
    folder: &Path,
    packing: &Packing,
) -> Result<TarWritten, PackError> {
    let (store_in, files_in, task_in, folder_in, packing_in) = (
        store.clone(),
        files.clone(),
        task.clone(),
        folder.to_path_buf(),
        packing.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    // Set when this future ends or is dropped (shutdown, a lost lease): the
    // blocking build may run on, but must not publish a tar then.
    let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
    let abandoned_in = abandoned.0.clone();
    let written = tokio::task::spawn_blocking(move || {
        write_tar(&TarBuild {
            store: &store_in,
            files: &files_in,
            handle: &handle,
            task: &task_in,
            folder: &folder_in,
            packing: &packing_in,
            abandoned: &abandoned_in,
        })
    })
    .await??;
    drop(abandoned);
    Ok(written)
}

/// Step 3 for a `written` packing: its loose files go, then `cleaned`.
async fn clean(
    store: &Arc<Store>,
    files: &Archive,
    task: &CollectionTask,
    folder: &Path,
    mut packing: Packing,
) -> Result<PackStep, PackError> {
    // Removing loose files is for the lease's holder only.
    store.check_collection_task(task).await?;
    let (store_in, files_in, folder_in, packing_in) = (
        store.clone(),
        files.clone(),
        folder.to_path_buf(),
        packing.clone(),
    );
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        remove_loose_files(&store_in, &files_in, &handle, &folder_in, &packing_in)
    })
    .await??;
    store.mark_packing_cleaned(task, &packing).await?;
    packing.state = PackingState::Cleaned;
    Ok(PackStep::Cleaned(packing))
}

/// What building one packing's tar needs, on the blocking thread.
struct TarBuild<'a> {
    store: &'a Store,
    files: &'a Archive,
    /// The runtime, for the store's pages of members.
    handle: &'a tokio::runtime::Handle,
    task: &'a CollectionTask,
    /// The collection's folder: members are named relative to it.
    folder: &'a Path,
    packing: &'a Packing,
    /// Set when the waiting task is gone: the tar must not be published.
    abandoned: &'a AtomicBool,
}

/// Step 2: the tar of `packing`, built from its loose files, then given
/// its name create-only (see [`publish`]).
fn write_tar(job: &TarBuild<'_>) -> Result<TarWritten, PackError> {
    let target = job.folder.join(&job.packing.tar_name);
    let mut written = TarWritten::default();
    let built = job.files.build(&target, |out| {
        let mut builder = tar::Builder::new(HashingWriter::new(out));
        let mut after: Option<String> = None;
        loop {
            let page = job
                .handle
                .block_on(
                    job.store
                        .packed_files(job.packing.id, after.as_deref(), PAGE),
                )
                .map_err(io::Error::other)?;
            if page.is_empty() {
                break;
            }
            for file in page {
                after = Some(file.path.clone());
                append_member(job, &mut builder, file, &mut written)?;
            }
        }
        let (_, bytes, sha256) = builder.into_inner()?.finish();
        written.bytes = bytes;
        written.sha256 = sha256;
        Ok(())
    })?;
    if written.members == 0 {
        // No tar to publish; the caller drops the packing.
        let _ = std::fs::remove_file(&built);
        return Ok(written);
    }
    publish::publish_tar(
        job.store,
        job.files,
        job.handle,
        &publish::BuiltTar {
            task: job.task,
            packing: job.packing,
            built: &built,
            target: &target,
            sha256: &written.sha256,
            abandoned: job.abandoned,
        },
    )?;
    Ok(written)
}

/// One packed file into the tar; into `written.dropped` instead when its
/// loose file is gone, or does not match its SHA-256 (then quarantined: a
/// corrupt loose file must not be adopted by the download that replaces
/// it, nor be destroyed, as it may be the only copy left).
fn append_member<W: io::Write>(
    job: &TarBuild<'_>,
    builder: &mut tar::Builder<W>,
    file: PackedFile,
    written: &mut TarWritten,
) -> io::Result<()> {
    let folder = job.folder;
    let name = member_name(folder, Path::new(&file.path)).ok_or_else(|| {
        io::Error::other(format!("{} is outside {}", file.path, folder.display()))
    })?;
    let Some(data) = job.files.read(Path::new(&file.path))? else {
        let why = "its file was gone when its date was packed";
        written.dropped.push((file.row_ids, why.into()));
        return Ok(());
    };
    let sha256 = sha256_hex(&data);
    match &file.sha256 {
        Some(expected) if *expected != sha256 => {
            let archive_root = folder.parent().unwrap_or(folder);
            job.files
                .quarantine_blocking(archive_root, folder, Path::new(&file.path))
                .map_err(io::Error::other)?;
            let why = "its file did not match its SHA-256 when its date was packed";
            written.dropped.push((file.row_ids, why.into()));
            return Ok(());
        }
        Some(_) => {}
        None => written.hashed.push((file.row_ids, sha256)),
    }
    let mtime = tarball::member_mtime(file.captured_at);
    tarball::append(builder, &name, mtime, &data)?;
    written.members += 1;
    Ok(())
}

/// Raises its flag when dropped: tells a blocking build that the task
/// waiting for it is gone.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Step 3: the loose files a durable tar replaced, then every folder of
/// the date left empty. Files already gone are fine (a crash mid-way).
fn remove_loose_files(
    store: &Store,
    files: &Archive,
    handle: &tokio::runtime::Handle,
    folder: &Path,
    packing: &Packing,
) -> Result<(), PackError> {
    let mut after: Option<String> = None;
    loop {
        let page = handle.block_on(store.packed_files(packing.id, after.as_deref(), PAGE))?;
        if page.is_empty() {
            break;
        }
        for file in page {
            files.remove_stored(folder, Path::new(&file.path))?;
            after = Some(file.path);
        }
    }
    files.tidy_after_removals(folder, &packing.date)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_come_from_the_folder_under_the_collection() {
        let prefix = "/a/mapillary-x-2048/";
        assert_eq!(
            date_of(prefix, "/a/mapillary-x-2048/2024-01-02/s/1.jpg").unwrap(),
            "2024-01-02"
        );
        assert_eq!(
            date_of(prefix, "/a/mapillary-x-2048/unknown-date/1.jpg").unwrap(),
            "unknown-date"
        );
        assert!(date_of(prefix, "/b/mapillary-x-2048/2024-01-02/1.jpg").is_err());
        assert!(date_of(prefix, "/a/mapillary-x-2048/2024-13-02/1.jpg").is_err());
        assert!(date_of(prefix, "/a/mapillary-x-2048/1.jpg").is_err());
    }
}
