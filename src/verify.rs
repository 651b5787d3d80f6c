//! `verify`: proves an archive whole. Every done image is read back from
//! where its row says it is (its loose file, or its member in a tar) and
//! checked for presence, size, SHA-256 and that it decodes as its format.
//!
//! Without `repair` it only reads: the database is opened read-only and its
//! stored paths are mapped onto this run's archive root in memory
//! ([`paths::PathMap`]), never rewritten, so it is safe beside a daemon
//! (even one in a container that sees the archive under another path).
//!
//! With `repair`, every missing or corrupt image goes back to the queue and
//! its job is reopened: the daemon, or the next `download`, fetches it
//! again, and a tar job packs it into the next `<date>.<n>.tar`. Repair
//! never destroys (SPEC Part 3): a corrupt loose file is moved into
//! quarantine first (so nothing adopts it, and the copy survives), through
//! the fence that refuses a stored path outside its collection. Files that
//! had no checksum get theirs stored. Unreadable files, directories where a
//! file should be, files that match their SHA-256 but do not decode, and
//! fenced paths are reported and left as they are.
//!
//! Images whose tar was removed once archive.org confirmed it
//! (`ia.delete_after_confirm`) are held on the Internet Archive only: they
//! are counted as such, never read, never missing, never re-queued.
//!
//! Decoding is the costly part: files are checked on one thread per core.

mod check;
mod paths;
mod render;

pub use paths::PathMap;
pub use render::render;

use crate::archive;
use crate::archive::Archive;
use crate::clock::now_ms;
use crate::store::{Store, StoredCopy};
use check::{Check, TarToCheck};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Problems listed in full in a report; the counts cover all of them.
pub const LISTED_PROBLEMS: usize = 1000;
/// Loose rows read per query.
const PAGE: u32 = 512;

/// What a `verify` run covers and whether it may repair.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this job's images.
    pub job: Option<i64>,
    /// Quarantine corrupt files and re-queue missing and corrupt images (else read-only).
    pub repair: bool,
    /// Files checked at once; 0 means one per core.
    pub threads: usize,
}

/// Each way a copy can fail; only `Missing` and `Corrupt` are repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not there at all (no file, no object, no tar member).
    Missing,
    /// Proven damaged: wrong size or SHA-256, or (with no SHA-256 recorded)
    /// it does not decode.
    Corrupt,
    /// An I/O error other than "not found": proves nothing, left in place.
    Unreadable,
    /// A directory (or other non-file) where the file should be.
    NotAFile,
    /// Matches its SHA-256 but does not decode: the bytes we archived.
    Undecodable,
    /// Its stored path is not a plain path inside its collection folder.
    Outside,
}

/// One image whose copy failed a check, as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Which way it failed (decides the repair).
    pub kind: ProblemKind,
    /// The job whose row it is.
    pub job_id: i64,
    /// The image.
    pub image_id: String,
    /// The loose path, or `<tar path>:<member>`.
    pub location: String,
    /// What was found, and what repair did about it.
    pub detail: String,
}

/// What a `verify` run found: counts by kind and the problems themselves (`--json` prints it as is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Images checked.
    pub checked: u64,
    /// Images whose copy passed every check.
    pub ok: u64,
    /// Count of [`ProblemKind::Missing`].
    pub missing: u64,
    /// Count of [`ProblemKind::Corrupt`].
    pub corrupt: u64,
    /// Count of [`ProblemKind::Unreadable`].
    pub unreadable: u64,
    /// Count of [`ProblemKind::NotAFile`].
    pub not_a_file: u64,
    /// Count of [`ProblemKind::Undecodable`].
    pub undecodable: u64,
    /// Count of [`ProblemKind::Outside`].
    pub outside: u64,
    /// Files that had no checksum yet (stored with `repair` only).
    pub hashed: u64,
    /// Images sent back to the queue by `repair`.
    pub requeued: u64,
    /// Damaged loose files `repair` moved into quarantine.
    pub quarantined: u64,
    /// Images held on the Internet Archive only: their tar was removed
    /// once archive.org confirmed it (`ia.delete_after_confirm`). Not read
    /// here, never missing, never re-queued; not counted in `checked`.
    pub held_on_ia_only: u64,
    /// The first [`LISTED_PROBLEMS`] problems.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// No problem of any kind: the exit code is 0.
    pub fn is_clean(&self) -> bool {
        self.missing
            + self.corrupt
            + self.unreadable
            + self.not_a_file
            + self.undecodable
            + self.outside
            == 0
    }

    /// How many problems of `kind` were found.
    pub fn count(&self, kind: ProblemKind) -> u64 {
        match kind {
            ProblemKind::Missing => self.missing,
            ProblemKind::Corrupt => self.corrupt,
            ProblemKind::Unreadable => self.unreadable,
            ProblemKind::NotAFile => self.not_a_file,
            ProblemKind::Undecodable => self.undecodable,
            ProblemKind::Outside => self.outside,
        }
    }

    fn count_mut(&mut self, kind: ProblemKind) -> &mut u64 {
        match kind {
            ProblemKind::Missing => &mut self.missing,
            ProblemKind::Corrupt => &mut self.corrupt,
            ProblemKind::Unreadable => &mut self.unreadable,
            ProblemKind::NotAFile => &mut self.not_a_file,
            ProblemKind::Undecodable => &mut self.undecodable,
            ProblemKind::Outside => &mut self.outside,
        }
    }
}

/// The archive to check and how its stored paths map onto its root.
pub struct Target<'a> {
    /// The archive, on the disk or in a bucket.
    pub archive: &'a Archive,
    /// Stored paths onto [`Archive::root`], in memory.
    pub paths: &'a PathMap,
}

/// Checks every done image (of `options.job`, or all), calling `progress`
/// with the number gone through so far (checked, or held on the Internet
/// Archive only).
pub async fn verify(
    store: &Arc<Store>,
    target: &Target<'_>,
    options: &VerifyOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<VerifyReport> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let mut run = Run {
        store,
        files: target.archive,
        options,
        report: VerifyReport::default(),
        requeued_rows: Default::default(),
    };
    let mut after = 0;
    loop {
        let rows = store.loose_copies(options.job, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.row_id;
        for (row, stored, check) in check_loose_page(target, rows, threads).await? {
            // Beside a running daemon a loose file goes when its date is
            // packed: a row that is no longer loose is checked in its tar
            // below, not reported (or re-queued) as missing.
            if matches!(check, Check::Problem(ProblemKind::Missing, _))
                && !store.is_still_loose(row.row_id, &stored).await?
            {
                continue;
            }
            let location = row.path.clone();
            run.record(row, check, location, true).await?;
        }
        progress(run.report.checked);
    }
    check_packings(&mut run, target, threads, progress).await?;
    Ok(run.report)
}

/// Checks every written tar's members, a tar at a time; a tar held on the
/// Internet Archive only is not read: its images are counted as such.
async fn check_packings(
    run: &mut Run<'_>,
    target: &Target<'_>,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<()> {
    let (store, job) = (run.store, run.options.job);
    let on_ia_only: std::collections::HashMap<i64, u64> = store
        .tars_on_ia_only(job)
        .await?
        .into_iter()
        .map(|tar| (tar.packing_id, tar.images))
        .collect();
    for packing in store.written_packings(job).await? {
        if let Some(images) = on_ia_only.get(&packing.id) {
            run.report.held_on_ia_only += images;
            progress(run.report.checked + run.report.held_on_ia_only);
            continue;
        }
        let rows = store.packing_rows(packing.id, job).await?;
        let rows = rows.into_iter().map(|row| mapped(target.paths, row).0);
        let rows: Vec<StoredCopy> = rows.collect();
        let folder = archive::collection_path(target.archive.root(), &packing.collection)?;
        let tar_path = folder.join(&packing.tar_name);
        // A tar in a bucket is read from a copy in the spool, one at a time.
        let local = run.files.local_copy(&tar_path).await?;
        let checked = tokio::task::spawn_blocking(move || {
            let (local, temporary) = local.unwrap_or_else(|| (tar_path.clone(), false));
            let tar = TarToCheck {
                local: &local,
                shown_as: &tar_path,
                folder: &folder,
            };
            let checked = check::check_tar(&tar, rows, threads);
            if temporary {
                let _ = std::fs::remove_file(&local);
            }
            checked
        })
        .await?;
        for (row, check, location) in checked {
            run.record(row, check, location, false).await?;
        }
        progress(run.report.checked + run.report.held_on_ia_only);
    }
    Ok(())
}

/// `row` with its path mapped onto this run's root, and the stored path.
fn mapped(paths: &PathMap, mut row: StoredCopy) -> (StoredCopy, String) {
    let local = paths.local(&row.path);
    let stored = std::mem::replace(&mut row.path, local);
    (row, stored)
}

/// Checks one page of loose rows: each path is mapped, fenced (a path
/// outside its collection is not even read), then read and checked.
/// Returns each row (path mapped), its stored path, and the check.
async fn check_loose_page(
    target: &Target<'_>,
    rows: Vec<StoredCopy>,
    threads: usize,
) -> anyhow::Result<Vec<(StoredCopy, String, Check)>> {
    let mut fenced = Vec::new();
    let mut to_read = Vec::new();
    let mut stored_paths = Vec::new();
    for row in rows {
        let (row, stored) = mapped(target.paths, row);
        let inside = archive::collection_path(target.archive.root(), &row.collection)
            .and_then(|folder| archive::fence(&folder, Path::new(&row.path)));
        match inside {
            Ok(()) => {
                stored_paths.push(stored);
                to_read.push(row);
            }
            Err(e) => {
                let check = Check::Problem(ProblemKind::Outside, e.to_string());
                fenced.push((row, stored, check));
            }
        }
    }
    let checked = target
        .archive
        .check_each(
            to_read,
            threads,
            |row| Path::new(&row.path),
            check::check_found,
        )
        .await?;
    let read = checked
        .into_iter()
        .zip(stored_paths)
        .map(|((row, check), stored)| (row, stored, check));
    fenced.extend(read);
    Ok(fenced)
}

struct Run<'a> {
    store: &'a Store,
    files: &'a Archive,
    options: &'a VerifyOptions,
    report: VerifyReport,
    /// Rows re-queued with a damaged copy they shared with another row.
    requeued_rows: std::collections::HashSet<i64>,
}

impl Run<'_> {
    async fn record(
        &mut self,
        row: StoredCopy,
        check: Check,
        location: String,
        loose: bool,
    ) -> anyhow::Result<()> {
        self.report.checked += 1;
        if self.requeued_rows.contains(&row.row_id) {
            // Its copy was found damaged under another row, and repaired.
            return Ok(());
        }
        let (kind, mut detail) = match check {
            Check::Ok => {
                self.report.ok += 1;
                return Ok(());
            }
            Check::Hashed { sha256, bytes } => {
                self.report.ok += 1;
                self.report.hashed += 1;
                // Without `repair` the database is read-only.
                if self.options.repair {
                    self.store
                        .record_checksum(row.row_id, &sha256, bytes)
                        .await?;
                }
                return Ok(());
            }
            Check::Problem(kind, detail) => (kind, detail),
        };
        *self.report.count_mut(kind) += 1;
        if self.options.repair && matches!(kind, ProblemKind::Missing | ProblemKind::Corrupt) {
            self.repair(&row, kind, &mut detail, loose).await?;
        }
        if self.report.problems.len() < LISTED_PROBLEMS {
            self.report.problems.push(Problem {
                kind,
                job_id: row.job_id,
                image_id: row.image_id,
                location,
                detail,
            });
        }
        Ok(())
    }

    /// Sends `row` and every done row sharing its damaged copy back to the
    /// queue (a corrupt loose file goes to quarantine first, so nothing
    /// adopts it and nothing is lost), unless that would strand them behind
    /// a cancelled job; says why in `detail` when it does nothing.
    async fn repair(
        &mut self,
        row: &StoredCopy,
        kind: ProblemKind,
        detail: &mut String,
        loose: bool,
    ) -> anyhow::Result<()> {
        let sharers = self.store.copy_sharers(row.row_id).await?;
        if sharers.is_empty() {
            detail.push_str("; no longer done: left as it is");
            return Ok(());
        }
        let requeue: Vec<i64> = sharers
            .iter()
            .filter(|(_, cancelled)| !cancelled)
            .map(|(row_id, _)| *row_id)
            .collect();
        if requeue.is_empty() {
            // Re-queued, it would wait forever behind its cancelled job, and
            // the next verify (done rows only) would pass without it.
            detail.push_str(&format!(
                "; not repaired: job {} is cancelled (its files are kept as they are)",
                row.job_id
            ));
            return Ok(());
        }
        if loose && kind == ProblemKind::Corrupt {
            match self.quarantine(row).await {
                Ok(went) => {
                    self.report.quarantined += 1;
                    detail.push_str(&format!("; moved to {}", went.display()));
                }
                Err(e) => {
                    // Queued again, its download would replace the file.
                    detail.push_str(&format!("; not repaired: {e}"));
                    return Ok(());
                }
            }
        }
        let reason = format!(
            "verify found it {}: {detail}",
            match kind {
                ProblemKind::Missing => "missing",
                _ => "corrupt",
            }
        );
        self.report.requeued += self
            .store
            .requeue_images(&requeue, &reason, now_ms())
            .await?;
        self.requeued_rows.extend(requeue);
        Ok(())
    }

    /// Moves a corrupt loose file into quarantine (fenced).
    async fn quarantine(&self, row: &StoredCopy) -> Result<PathBuf, archive::ArchiveError> {
        let root = self.files.root();
        let folder = archive::collection_path(root, &row.collection)?;
        self.files
            .quarantine(root, &folder, Path::new(&row.path))
            .await
    }
}
