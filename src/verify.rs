//! `verify`: proves an archive whole. Every done image is read back from
//! where its row says it is (its loose file, or its member in a tar) and
//! checked for presence, size, SHA-256 and that it decodes as its format.
//! Files archived before checksums existed get theirs computed and stored.
//!
//! With `repair`, every missing or corrupt image goes back to the queue (a
//! corrupt loose file is deleted first, so nothing adopts it) and its job is
//! reopened: the daemon, or the next `download`, fetches it again, and a tar
//! job packs it into the next `<date>.<n>.tar`. Safe beside a running daemon:
//! it only reads files and makes small writes through SQLite's locking.
//!
//! Decoding is the costly part: files are checked on one thread per core.

use crate::archive::{self, FileKind, member_name};
use crate::archive_files::ArchiveFiles;
use crate::bucket::Bucket;
use crate::checksum::sha256_hex;
use crate::clock::now_ms;
use crate::package::tarball;
use crate::store::{Store, StoredCopy};
use crate::units::group_digits;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Problems listed in full in a report; the counts cover all of them.
pub const LISTED_PROBLEMS: usize = 1000;
/// Loose rows read per query.
const PAGE: u32 = 512;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this job's images.
    pub job: Option<i64>,
    pub repair: bool,
    /// Files checked at once; 0 means one per core.
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Missing,
    Corrupt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub job_id: i64,
    pub image_id: String,
    /// The loose path, or `<tar path>:<member>`.
    pub location: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub checked: u64,
    pub ok: u64,
    pub missing: u64,
    pub corrupt: u64,
    /// Files that had no checksum yet and now have one.
    pub hashed: u64,
    /// Images sent back to the queue by `repair`.
    pub requeued: u64,
    /// The first [`LISTED_PROBLEMS`] problems.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.corrupt == 0
    }
}

/// What checking one row's file found.
enum Check {
    Ok,
    /// Fine, and this is its first checksum.
    Hashed {
        sha256: String,
        bytes: u64,
    },
    Missing(String),
    Corrupt(String),
}

/// Checks every done image (of `options.job`, or all), calling `progress`
/// with the number checked so far.
pub async fn verify(
    store: &Arc<Store>,
    bucket: Option<&Arc<Bucket>>,
    archive_dir: &Path,
    options: &VerifyOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<VerifyReport> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let mut run = Run {
        store,
        bucket,
        options,
        report: VerifyReport::default(),
        requeued_rows: Default::default(),
    };
    let files = ArchiveFiles::new(bucket);
    let mut after = 0;
    loop {
        let rows = store.loose_copies(options.job, after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.row_id;
        let checked = match bucket {
            Some(bucket) => check_in_bucket(bucket, rows, threads).await?,
            None => {
                tokio::task::spawn_blocking(move || {
                    let checks = in_parallel(&rows, threads, check_loose);
                    rows.into_iter().zip(checks).collect::<Vec<_>>()
                })
                .await?
            }
        };
        for (row, check) in checked {
            // Beside a running daemon a loose file goes when its date is
            // packed: a row that is no longer loose is checked in its tar
            // below, not reported (or re-queued) as missing.
            if matches!(check, Check::Missing(_))
                && !store.is_still_loose(row.row_id, &row.path).await?
            {
                continue;
            }
            let location = row.path.clone();
            run.record(row, check, location, true).await?;
        }
        progress(run.report.checked);
    }
    for packing in store.written_packings(options.job).await? {
        let rows = store.packing_rows(packing.id, options.job).await?;
        let folder = archive::collection_path(archive_dir, &packing.collection)?;
        let tar_path = folder.join(&packing.tar_name);
        // A tar in a bucket is read from a copy in the spool, one at a time.
        let local = files.local_copy(&tar_path).await?;
        let checked = tokio::task::spawn_blocking(move || {
            let (local_tar, temporary) = local.unwrap_or_else(|| (tar_path.clone(), false));
            let checked = check_tar(&local_tar, &tar_path, &folder, rows, threads);
            if temporary {
                let _ = std::fs::remove_file(&local_tar);
            }
            checked
        })
        .await?;
        for (row, check, location) in checked {
            run.record(row, check, location, false).await?;
        }
        progress(run.report.checked);
    }
    Ok(run.report)
}

struct Run<'a> {
    store: &'a Store,
    bucket: Option<&'a Arc<Bucket>>,
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
                self.store
                    .record_checksum(row.row_id, &sha256, bytes)
                    .await?;
                return Ok(());
            }
            Check::Missing(detail) => (ProblemKind::Missing, detail),
            Check::Corrupt(detail) => (ProblemKind::Corrupt, detail),
        };
        match kind {
            ProblemKind::Missing => self.report.missing += 1,
            ProblemKind::Corrupt => self.report.corrupt += 1,
        }
        if self.options.repair {
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
    /// queue (a corrupt loose file goes first, so nothing adopts it), unless
    /// that would strand them behind a cancelled job; says why in `detail`
    /// when it does nothing.
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
            match self.bucket {
                Some(bucket) => bucket.delete(Path::new(&row.path)).await?,
                None => match std::fs::remove_file(&row.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => anyhow::bail!("cannot remove the corrupt file {}: {e}", row.path),
                },
            }
        }
        let reason = format!(
            "verify found it {}: {detail}",
            match kind {
                ProblemKind::Missing => "missing",
                ProblemKind::Corrupt => "corrupt",
            }
        );
        self.report.requeued += self
            .store
            .requeue_images(&requeue, &reason, now_ms())
            .await?;
        self.requeued_rows.extend(requeue);
        Ok(())
    }
}

/// Runs `check` over `rows` on up to `threads` threads, results in order.
fn in_parallel<T: Sync, R: Send>(
    rows: &[T],
    threads: usize,
    check: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let chunk = rows.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&check).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Objects fetched at once from a bucket: bounds memory (a batch is at
/// most this many images) while requests overlap and every core decodes.
const BUCKET_BATCH: usize = 16;

/// [`check_loose`] for rows whose files are objects in `bucket`.
async fn check_in_bucket(
    bucket: &Bucket,
    rows: Vec<StoredCopy>,
    threads: usize,
) -> anyhow::Result<Vec<(StoredCopy, Check)>> {
    let mut checked = Vec::with_capacity(rows.len());
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let batch: Vec<StoredCopy> = rows.by_ref().take(BUCKET_BATCH).collect();
        // A bucket that does not answer (after the client's retries) proves
        // nothing either way: verify stops with the error, repairs nothing.
        let fetched = futures_util::future::try_join_all(
            batch.iter().map(|row| bucket.get(Path::new(&row.path))),
        )
        .await?;
        let checks = tokio::task::spawn_blocking(move || {
            let pairs: Vec<_> = batch.into_iter().zip(fetched).collect();
            let checks = in_parallel(&pairs, threads, |(row, fetched)| match fetched {
                Some(data) => check_bytes(data, &row.path, row),
                None => Check::Missing("no such object".into()),
            });
            pairs
                .into_iter()
                .map(|(row, _)| row)
                .zip(checks)
                .collect::<Vec<_>>()
        })
        .await?;
        checked.extend(checks);
    }
    Ok(checked)
}

fn check_loose(row: &StoredCopy) -> Check {
    match std::fs::read(&row.path) {
        Ok(data) => check_bytes(&data, &row.path, row),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Check::Missing("no such file".into()),
        Err(e) => Check::Corrupt(format!("cannot read it: {e}")),
    }
}

/// Size, then SHA-256, then a full decode.
fn check_bytes(data: &[u8], name: &str, row: &StoredCopy) -> Check {
    if let Some(expected) = row.bytes
        && expected != data.len() as u64
    {
        return Check::Corrupt(format!("{} bytes, expected {expected}", data.len()));
    }
    let sha256 = sha256_hex(data);
    if let Some(expected) = &row.sha256
        && *expected != sha256
    {
        return Check::Corrupt(format!("SHA-256 {sha256}, expected {expected}"));
    }
    let format = match FileKind::of(name) {
        Some(FileKind::Jpeg) => image::ImageFormat::Jpeg,
        Some(FileKind::Webp) => image::ImageFormat::WebP,
        None => return Check::Corrupt("neither a .jpg nor a .webp".into()),
    };
    if let Err(e) = decode_check(data, format) {
        return Check::Corrupt(format!("does not decode as {format:?}: {e}"));
    }
    match &row.sha256 {
        Some(_) => Check::Ok,
        None => Check::Hashed {
            sha256,
            bytes: data.len() as u64,
        },
    }
}

/// Pixels a full decode may allocate (RGBA bytes); above it only the header
/// is decoded.
const FULL_DECODE_MAX_BYTES: u64 = 512 << 20;

/// Decodes `data` in full, or only its header when the pixels would need
/// more than [`FULL_DECODE_MAX_BYTES`]: the image crate's default allocation
/// limit would otherwise call a large panorama (over ~18,900×9,450) corrupt,
/// and `--repair` would delete a good file. Its size and SHA-256 still stand
/// for its bytes.
fn decode_check(data: &[u8], format: image::ImageFormat) -> image::ImageResult<()> {
    let header = image::ImageReader::with_format(std::io::Cursor::new(data), format);
    let (width, height) = header.into_dimensions()?;
    if u64::from(width) * u64::from(height) * 4 > FULL_DECODE_MAX_BYTES {
        return Ok(());
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(data), format);
    reader.no_limits();
    reader.decode().map(drop)
}

/// Members read before checking them together: bounds memory (a batch is
/// at most this many images) while every core decodes.
const TAR_BATCH: usize = 32;

/// Reads one tar front to back, checking each member a row expects; rows
/// whose member never came (a truncated or missing tar) are missing.
fn check_tar(
    tar_path: &Path,
    shown_as: &Path,
    folder: &Path,
    rows: Vec<StoredCopy>,
    threads: usize,
) -> Vec<(StoredCopy, Check, String)> {
    let tar_text = shown_as.display().to_string();
    let mut expected: HashMap<String, Vec<StoredCopy>> = HashMap::new();
    let mut results = Vec::with_capacity(rows.len());
    for row in rows {
        match member_name(folder, Path::new(&row.path)) {
            Some(member) => expected.entry(member).or_default().push(row),
            None => {
                let location = row.path.clone();
                let detail = format!("its path is outside {}", folder.display());
                results.push((row, Check::Missing(detail), location));
            }
        }
    }
    let mut batch: Vec<(String, Vec<u8>, Vec<StoredCopy>)> = Vec::new();
    let flush = |batch: &mut Vec<(String, Vec<u8>, Vec<StoredCopy>)>,
                 results: &mut Vec<(StoredCopy, Check, String)>| {
        let work: Vec<(String, Vec<u8>, StoredCopy)> = batch
            .drain(..)
            .flat_map(|(name, data, rows)| {
                rows.into_iter()
                    .map(move |row| (name.clone(), data.clone(), row))
            })
            .collect();
        let checks = in_parallel(&work, threads, |(name, data, row)| {
            check_bytes(data, name, row)
        });
        for ((name, _, row), check) in work.into_iter().zip(checks) {
            results.push((row, check, format!("{tar_text}:{name}")));
        }
    };
    let read = tarball::read_members(tar_path, |member| {
        if let Some(rows) = expected.remove(&member.name) {
            batch.push((member.name, member.data, rows));
            if batch.len() >= TAR_BATCH {
                flush(&mut batch, &mut results);
            }
        }
    });
    flush(&mut batch, &mut results);
    let why = match read {
        Ok(()) => "not in the tar".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "the tar is missing".to_string(),
        Err(e) => format!("the tar ends early or is damaged before it: {e}"),
    };
    let mut left: Vec<(String, Vec<StoredCopy>)> = expected.into_iter().collect();
    left.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, rows) in left {
        for row in rows {
            results.push((
                row,
                Check::Missing(why.clone()),
                format!("{tar_text}:{name}"),
            ));
        }
    }
    results
}

/// Problems of each kind a text report lists.
const SHOWN: usize = 10;

/// The report for a terminal: the counts, then the first few problems of
/// each kind, then what `repair` did or would do.
pub fn render(report: &VerifyReport, repair: bool) -> String {
    let mut out = format!(
        "verified {} images: {} ok, {} missing, {} corrupt",
        group_digits(report.checked),
        group_digits(report.ok),
        group_digits(report.missing),
        group_digits(report.corrupt)
    );
    if report.hashed > 0 {
        out.push_str(&format!(
            " ({} archived before checksums: SHA-256 computed and stored)",
            group_digits(report.hashed)
        ));
    }
    out.push('\n');
    for (kind, count, label) in [
        (ProblemKind::Missing, report.missing, "missing"),
        (ProblemKind::Corrupt, report.corrupt, "corrupt"),
    ] {
        if count == 0 {
            continue;
        }
        out.push_str(&format!("{label}:\n"));
        for problem in report
            .problems
            .iter()
            .filter(|p| p.kind == kind)
            .take(SHOWN)
        {
            out.push_str(&format!(
                "  {} (image {}, job {}): {}\n",
                problem.location, problem.image_id, problem.job_id, problem.detail
            ));
        }
        if count > SHOWN as u64 {
            out.push_str(&format!(
                "  ... and {} more\n",
                group_digits(count - SHOWN as u64)
            ));
        }
    }
    if !report.is_clean() {
        if repair {
            out.push_str(&format!(
                "repair: {} images queued again and their jobs reopened; a running daemon fetches \
                 them now, or run `mapillary-downloader download` with the same arguments\n",
                group_digits(report.requeued)
            ));
        } else {
            out.push_str("run again with --repair to queue them for download again\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mld_testkit::jpeg::claiming as jpeg_claiming;

    #[test]
    fn a_panorama_too_large_to_decode_in_memory_is_not_called_corrupt() {
        let jpeg = image::ImageFormat::Jpeg;
        assert!(decode_check(&jpeg_claiming(16, 16), jpeg).is_ok());
        // 30,000 × 20,000 gray needs 600 MB of pixels: the image crate's default
        // limit (512 MiB) refuses it, which verify once reported as damage.
        let huge = jpeg_claiming(30_000, 20_000);
        assert!(image::load_from_memory_with_format(&huge, jpeg).is_err());
        assert!(decode_check(&huge, jpeg).is_ok());
        // A header that does not parse is still damage.
        assert!(decode_check(&huge[..huge.len().min(20)], jpeg).is_err());
        assert!(decode_check(b"not an image", jpeg).is_err());
    }
}
