//! The upload to the Internet Archive streams (issue 25, SPEC Part 3): a
//! packed collection sent over a simulated 20 MB/s link keeps the link busy
//! (target ≥ 90 % of it, end to end) and buffers at most 64 MiB in total.
//!
//! Run: `cargo bench --bench upload`. `BENCH_UPLOAD_TARS` tars (default 6)
//! of `BENCH_UPLOAD_TAR_MB` MB each (default 40) of random bytes (the upload
//! reads tars as opaque files: their MD5, size and bytes are all it uses),
//! in a data dir under `BENCH_DATA_DIR` (default the temp dir), removed
//! after. The kit's fake IA runs in this process with its bandwidth cap at
//! 20,000,000 bytes/s over all connections (a token bucket that banks at
//! most 20 ms of credit while idle, as socket buffers keep a wire busy while
//! the receiver writes and hashes: without it, the fake's own pauses were
//! counted against the uploader); the uploader runs in a child
//! process (this binary again, `BENCH_UPLOAD_CHILD=<data dir>`) so its
//! memory is measured apart from the fake's, through the functions the
//! `upload` command calls: `Settings::load_from`, `app::open_store`,
//! `upload::command::{uploader, jobs_to_upload, run_tracks}`.
//!
//! Figures, each beside its target:
//! 1. MB/s over the whole run (placing and hashing the tars, every request,
//!    sending, confirming), as a share of the link;
//! 2. the peak of live heap bytes above where it stood when the run began,
//!    from a counting global allocator in the child (Rust allocations only:
//!    SQLite's own cache is C `malloc` and not upload buffering);
//! 3. the child's peak RSS above its RSS when the run began: VmHWM, reset
//!    through `/proc/self/clear_refs` before the run (Linux; without that
//!    reset the figure is VmHWM − VmRSS at the start, an upper bound).
//!
//! Beside them, for a miss: the time the fake spent receiving bodies and
//! the rest (hashing, requests, the database), and the rate while a body
//! streamed.

mod common;

use anyhow::{Context, bail};
use common::report::Figures;
use mapillary_downloader::config::{FlagOverrides, Settings};
use mapillary_downloader::model::{ImageMeta, Packaging, Quality, UploadTarget};
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::store::Store;
use mapillary_downloader::upload::{command, run::UploadEnd};
use mld_testkit::fake_ia::{FakeIa, FakeIaOptions};
use rand::RngCore;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The simulated link, bytes per second.
const LINK: u64 = 20_000_000;
/// The share of the link the upload must keep busy.
const TARGET_SHARE: f64 = 0.90;
/// The most the upload may buffer, bytes.
const TARGET_BUFFER: u64 = 64 << 20;
/// Set in the child: its data dir.
const CHILD: &str = "BENCH_UPLOAD_CHILD";
const CHILD_URL: &str = "BENCH_UPLOAD_URL";
const CHILD_JOB: &str = "BENCH_UPLOAD_JOB";
/// The line the child's figures follow, on its stdout.
const RESULT: &str = "upload-bench-result ";
const COLLECTION: &str = "mapillary-alice-original";
const MIB: f64 = 1024.0 * 1024.0;

/// Live heap bytes, and their peak since the last [`reset_peak`].
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

/// The peak restarts from what is live now; returns that.
fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// What the child measured, as it prints it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Measured {
    end: String,
    secs: f64,
    heap_growth: u64,
    rss_growth: u64,
    hwm_was_reset: bool,
}

fn main() -> anyhow::Result<()> {
    match std::env::var_os(CHILD) {
        Some(dir) => child(PathBuf::from(dir)),
        None => parent(),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The settings `upload --data-dir <dir>` would load, pointed at the fake.
fn settings(dir: &Path, url: &str) -> anyhow::Result<Settings> {
    let flags = FlagOverrides {
        data_dir: Some(dir.to_path_buf()),
        ..FlagOverrides::default()
    };
    let vars = HashMap::from([
        ("MLD__IA__ENDPOINT".to_string(), url.to_string()),
        ("MLD__ARCHIVE__IA_URL".to_string(), url.to_string()),
    ]);
    Ok(Settings::load_from(&flags, &vars)?)
}

fn parent() -> anyhow::Result<()> {
    let tars = env_u64("BENCH_UPLOAD_TARS", 6).clamp(1, 28);
    let tar_bytes = env_u64("BENCH_UPLOAD_TAR_MB", 40) * 1_000_000;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let base = std::env::var_os("BENCH_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::tempdir_in(&base)?;
        let fake = FakeIa::start(FakeIaOptions {
            bandwidth: Some(LINK),
            ..FakeIaOptions::default()
        })
        .await;
        let job = prepare(dir.path(), &fake.base_url(), tars, tar_bytes).await?;
        let total = tars * tar_bytes;
        println!(
            "Upload of {tars} tars of {} MB ({:.0} MB) to the fake IA over a {} MB/s link",
            tar_bytes / 1_000_000,
            total as f64 / 1e6,
            LINK / 1_000_000
        );
        let measured = run_child(dir.path(), &fake, job).await?;
        let wire = check_stored(&fake, dir.path(), tars)?;
        report(&measured, total, wire)
    })
}

/// A data dir with one tar job of alice's (`upload: ia`) and its packed
/// collection folder: `tars` date tars of random bytes and `.meta/` tags.
async fn prepare(dir: &Path, url: &str, tars: u64, tar_bytes: u64) -> anyhow::Result<i64> {
    let settings = settings(dir, url)?;
    let store = Store::open(&settings.database_path()).await?;
    let mut spec = JobSpec::user("alice", Quality::Original);
    spec.package = Packaging::Tar;
    spec.upload = Some(UploadTarget::Ia);
    let job = store.submit_job(&spec, 1_000).await?.job().id;
    store.enable_upload(job, 1_000).await?;
    let metas: Vec<ImageMeta> = (0..tars)
        .map(|day| ImageMeta {
            id: (100 + day).to_string(),
            captured_at: Some(1_704_110_400_000 + day as i64 * 86_400_000),
            sequence: Some("seq".into()),
            ..ImageMeta::default()
        })
        .collect();
    store.insert_page(job, &metas, None, 1_000).await?;
    store.close().await;
    let folder = settings.archive_dir().join(COLLECTION);
    let started = Instant::now();
    for day in 0..tars {
        write_random(&folder.join(tar_name(day)), tar_bytes)?;
    }
    for (tag, value) in [
        ("title", "Mapillary images by alice"),
        ("description", "Street-level imagery"),
        ("subject", "mapillary"),
        ("mapillary_downloader", "1.0"),
    ] {
        let path = folder.join(".meta").join(tag).join("0");
        std::fs::create_dir_all(path.parent().context("a tag folder")?)?;
        std::fs::write(path, value)?;
    }
    println!(
        "  {tars} tars written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(job)
}

fn tar_name(day: u64) -> String {
    format!("2024-01-{:02}.tar", day + 1)
}

fn write_random(path: &Path, bytes: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().context("a collection folder")?)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = rand::rng();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill_bytes(&mut chunk[..n]);
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Runs the uploader in a child process while the fake serves here.
async fn run_child(dir: &Path, fake: &FakeIa, job: i64) -> anyhow::Result<Measured> {
    // `output()` would capture stderr too: the child's progress lines
    // belong on the terminal.
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .env(CHILD, dir)
        .env(CHILD_URL, fake.base_url())
        .env(CHILD_JOB, job.to_string())
        .env("IA_ACCESS_KEY", fake.access())
        .env("IA_SECRET_KEY", fake.secret())
        .env_remove("IA_ACCESS_KEY_FILE")
        .env_remove("IA_SECRET_KEY_FILE")
        .env_remove("BENCH_REPORT")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let output = child.wait_with_output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("the uploader child failed ({}): {stdout}", output.status);
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT))
        .context("the child printed no result")?;
    Ok(serde_json::from_str(line)?)
}

/// Every tar is in the item with its local size and MD5 (the fake checked
/// each body against its `Content-MD5`). Returns the time the fake spent
/// receiving them.
fn check_stored(fake: &FakeIa, dir: &Path, tars: u64) -> anyhow::Result<Duration> {
    let folder = dir.join("archive").join(COLLECTION);
    let mut wire = Duration::ZERO;
    for day in 0..tars {
        let name = tar_name(day);
        let stored = fake
            .stored(COLLECTION, &name)
            .with_context(|| format!("{name} is not in the item"))?;
        let local = std::fs::metadata(folder.join(&name))?.len();
        if stored.size != local || fake.puts_stored(COLLECTION, &name) != 1 {
            bail!("{name}: {} bytes stored of {local}", stored.size);
        }
        wire += stored.receive_time;
    }
    Ok(wire)
}

fn report(m: &Measured, total: u64, wire: Duration) -> anyhow::Result<()> {
    let mut figures = Figures::new("upload");
    let rate = total as f64 / m.secs;
    let share = rate / LINK as f64;
    figures.check(
        "upload ended",
        "Confirmed",
        &m.end,
        m.end == format!("{:?}", UploadEnd::Confirmed),
    );
    figures.check(
        "MB/s over the whole upload, share of the link",
        &format!(
            "≥ {:.0} % of {} MB/s",
            TARGET_SHARE * 100.0,
            LINK / 1_000_000
        ),
        &format!("{:.2} MB/s ({:.1} %)", rate / 1e6, share * 100.0),
        share >= TARGET_SHARE,
    );
    figures.check(
        "peak heap growth during the upload (allocator)",
        "≤ 64 MiB",
        &format!("{:.1} MiB", m.heap_growth as f64 / MIB),
        m.heap_growth <= TARGET_BUFFER,
    );
    let how = if m.hwm_was_reset {
        "VmHWM reset"
    } else {
        "VmHWM − start RSS"
    };
    figures.check(
        &format!("peak RSS growth during the upload ({how})"),
        "≤ 64 MiB",
        &format!("{:.1} MiB", m.rss_growth as f64 / MIB),
        m.rss_growth <= TARGET_BUFFER,
    );
    let rest = (m.secs - wire.as_secs_f64()).max(0.0);
    figures.info(
        "time receiving bodies / the rest",
        &format!("{:.2} s / {rest:.2} s", wire.as_secs_f64()),
    );
    figures.info(
        "MB/s while a body streamed",
        &format!("{:.2} MB/s", total as f64 / wire.as_secs_f64() / 1e6),
    );
    figures.finish()
}

/// The child: the `upload` command's path for one job, measured.
fn child(dir: PathBuf) -> anyhow::Result<()> {
    let url = std::env::var(CHILD_URL)?;
    let job: i64 = std::env::var(CHILD_JOB)?.parse()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let measured = runtime.block_on(async {
        let settings = settings(&dir, &url)?;
        let store = Arc::new(mapillary_downloader::app::open_store(&settings).await?);
        let uploader = command::uploader(&settings, store.clone())?;
        let jobs = command::jobs_to_upload(&store, Some(job)).await?;
        let rss_before = proc_status_kib("VmRSS:")? * 1024;
        let hwm_was_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let heap_before = reset_peak();
        let started = Instant::now();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let end = command::run_tracks(&uploader, &jobs, &shutdown).await?;
        let secs = started.elapsed().as_secs_f64();
        let heap_peak = PEAK.load(Ordering::Relaxed);
        let hwm = proc_status_kib("VmHWM:")? * 1024;
        store.close().await;
        anyhow::Ok(Measured {
            end: format!("{end:?}"),
            secs,
            heap_growth: heap_peak.saturating_sub(heap_before) as u64,
            rss_growth: hwm.saturating_sub(rss_before),
            hwm_was_reset,
        })
    })?;
    println!("{RESULT}{}", serde_json::to_string(&measured)?);
    Ok(())
}

/// A `kB` field of `/proc/self/status`, in KiB.
fn proc_status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}
