//! Several daemons on one PostgreSQL queue (issue 15): does a second and a
//! third daemon make a job finish sooner, and what does a claim cost once
//! PostgreSQL holds a million image rows?
//!
//! Run: `cargo bench --bench cluster` (PostgreSQL's server binaries must be
//! installed: `bash scripts/test` does it; `MLD_PG_BIN` names another).
//!
//! 1. One job of `CLUSTER_BENCH_IMAGES` images (3,000) through 1, 2 and 3
//!    `serve` daemons (`CLUSTER_BENCH_DAEMONS`, "1,2,3"): child processes of
//!    the real binary, 32 workers each, one throwaway PostgreSQL database
//!    (`MLD__STORAGE__DATABASE_URL`) per run, the fake CDN at 50 ms per
//!    image. Images/s from the `POST /jobs` until `GET /jobs/{id}` (asked of
//!    each daemon in turn) says `done`, and the ratio to one daemon. The
//!    archive is on the local disk: each daemon has its own data dir (its
//!    lock, its spool) in one temp dir, whose `archive` is a symlink to one
//!    shared `archive/` (`MLD__STORAGE__SHARED_FILESYSTEM=true`), as NFS
//!    mounted on several machines would be. The API limiter is raised to
//!    `CALLS_PER_MINUTE` so that it is not what is measured. One daemon on
//!    SQLite runs first as a reference (`CLUSTER_BENCH_SQLITE=0` skips it).
//! 2. Claim latency with `PG_BENCH_ROWS` (1,000,000) pending rows of one job
//!    in PostgreSQL, stored through `Store::insert_page` in pages of 2,000:
//!    one claimer alone, then 16 concurrent claimers doing claim(8) and a
//!    complete per image until `PG_BENCH_CLAIMS` (4,000) claims are made;
//!    claim p50/p99 and images per second. The counters are folded every
//!    5 s meanwhile, as the daemon's supervisor does.
//!
//! `CLUSTER_BENCH_SCENARIOS` picks "daemons", "claims" or both (default);
//! `BENCH_DATA_DIR` says where the data dirs go (the system temp dir).
//! Everything (fake, daemons, PostgreSQL, this process) shares this machine's
//! cores: the report prints how busy they were, which bounds the scaling.

mod common;

use anyhow::{Context, bail, ensure};
use common::{IdOrder, PAGE, page};
use mapillary_downloader::archive::ArchivedFile;
use mapillary_downloader::model::{ListedImage, Quality};
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::store::{JobState, PgClock, Store};
use mld_testkit::api_client::ApiClient;
use mld_testkit::env;
use mld_testkit::fake::{FakeConfig, FakeMapillary};
use mld_testkit::latency::percentile;
use mld_testkit::postgres::PgCluster;
use mld_testkit::process::{DaemonProcess, KeepLog, MachineCpu, load_average, own_cpu_time};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
/// Daemon log lines kept for the error message when something goes wrong.
const LOG_TAIL_LINES: usize = 200;
/// Workers per daemon.
const WORKERS: u32 = 32;
/// The fake CDN's latency per image.
const CDN_LATENCY: Duration = Duration::from_millis(50);
/// `mapillary.calls_per_minute` for every daemon: 100 times the default, so
/// the API limiter never holds a call back (a job of a few thousand images
/// makes a handful of listing calls and no URL refresh).
const CALLS_PER_MINUTE: &str = "600000";
/// How long a job may take before the run is called failed.
const JOB_TIMEOUT: Duration = Duration::from_secs(1800);
/// Claimers of the claim scenario, and images per claim.
const CLAIMERS: usize = 16;
const CLAIM_LIMIT: u32 = 8;
const LEASE: Duration = Duration::from_secs(600);
/// The daemon's supervisor folds the counter deltas this often.
const FOLD_INTERVAL: Duration = Duration::from_secs(5);

/// Targets. More daemons must never make a job slower than one daemon does
/// (within 5 %: two runs of one setting differ by that much on a busy machine);
/// a claim must come back before a 32-worker daemon's queue (2 × 32 claimed
/// images, 100 ms of work at 50 ms each) runs dry.
const SCALING_TARGET: f64 = 0.95;
const CLAIM_P99_TARGET: Duration = Duration::from_millis(100);

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Every size, from the environment with these defaults.
#[derive(Debug, Clone)]
struct BenchConfig {
    images: u64,
    daemon_counts: Vec<usize>,
    sqlite_reference: bool,
    rows: usize,
    claims: usize,
    data_root: PathBuf,
    run_daemons: bool,
    run_claims: bool,
}

impl BenchConfig {
    fn from_env() -> anyhow::Result<BenchConfig> {
        let daemon_counts = std::env::var("CLUSTER_BENCH_DAEMONS")
            .unwrap_or_else(|_| "1,2,3".into())
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("CLUSTER_BENCH_DAEMONS: {n:?} is not a count"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let scenarios = std::env::var("CLUSTER_BENCH_SCENARIOS").unwrap_or_else(|_| "all".into());
        let wants = |name: &str| scenarios == "all" || scenarios.split(',').any(|s| s == name);
        let config = BenchConfig {
            images: env_u64("CLUSTER_BENCH_IMAGES", 3_000)?,
            daemon_counts,
            sqlite_reference: env_u64("CLUSTER_BENCH_SQLITE", 1)? != 0,
            rows: usize::try_from(env_u64("PG_BENCH_ROWS", 1_000_000)?)?,
            claims: usize::try_from(env_u64("PG_BENCH_CLAIMS", 4_000)?)?,
            data_root: std::env::var_os("BENCH_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            run_daemons: wants("daemons"),
            run_claims: wants("claims"),
        };
        ensure!(config.images > 0, "CLUSTER_BENCH_IMAGES must be > 0");
        ensure!(config.claims > 0, "PG_BENCH_CLAIMS must be > 0");
        ensure!(
            config.rows >= PAGE,
            "PG_BENCH_ROWS must be at least one page ({PAGE})"
        );
        Ok(config)
    }
}

/// Where the job queue of a daemon run lives.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Queue {
    Sqlite,
    Postgres,
}

/// One run of the job through `daemons` daemons.
struct DaemonRun {
    queue: Queue,
    daemons: usize,
    images: u64,
    /// From the POST to `enumeration_complete`, and to `done`.
    enumerated_after: Duration,
    elapsed: Duration,
    /// Images each daemon archived (from the paths stored in the database).
    per_daemon: Vec<u64>,
    /// CPU seconds of each daemon, of this process (fake + client) and the
    /// machine's busy and iowait shares, over the run.
    daemon_cpu: Vec<f64>,
    bench_cpu: f64,
    /// CPU seconds of the PostgreSQL server (postmaster and backends).
    postgres_cpu: Option<f64>,
    machine_busy: f64,
    machine_iowait: f64,
    downloaded_twice: usize,
    /// The 1-minute load average when the run started.
    load_at_start: String,
}

impl DaemonRun {
    fn images_per_sec(&self) -> f64 {
        self.images as f64 / self.elapsed.as_secs_f64()
    }

    /// What `daemons × 32` workers would do if each download took exactly
    /// the CDN's latency and nothing else cost time.
    fn ideal_per_sec(&self) -> f64 {
        self.daemons as f64 * f64::from(WORKERS) / CDN_LATENCY.as_secs_f64()
    }

    fn daemon_cpu_ms_per_image(&self) -> f64 {
        self.daemon_cpu.iter().sum::<f64>() * 1e3 / self.images as f64
    }
}

fn temp_dir(cfg: &BenchConfig, name: &str) -> anyhow::Result<tempfile::TempDir> {
    std::fs::create_dir_all(&cfg.data_root)?;
    tempfile::Builder::new()
        .prefix(&format!("mld-bench-{name}-"))
        .tempdir_in(&cfg.data_root)
        .with_context(|| format!("temp dir in {}", cfg.data_root.display()))
}

/// The database name at the end of a PostgreSQL URL.
fn database_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// `GET /jobs/{id}`, as an error rather than a panic.
async fn job_json(api: &ApiClient, id: i64) -> anyhow::Result<Value> {
    let path = format!("/jobs/{id}");
    let (status, body) = api.try_request_json(Method::GET, &path, None).await?;
    ensure!(status.is_success(), "GET {path} answered {status}: {body}");
    Ok(body)
}

/// Polls the job on each daemon in turn until it is done; returns when its
/// enumeration was first seen complete and when it was seen done.
async fn wait_until_done(
    daemons: &[DaemonProcess],
    id: i64,
    started: Instant,
) -> anyhow::Result<(Duration, Duration, Value)> {
    let apis: Vec<ApiClient> = daemons.iter().map(DaemonProcess::api).collect();
    let mut enumerated_after = None;
    for turn in 0.. {
        let job = job_json(&apis[turn % apis.len()], id).await?;
        if enumerated_after.is_none() && job["enumeration_complete"] == true {
            enumerated_after = Some(started.elapsed());
        }
        if job["state"] == "done" {
            let elapsed = started.elapsed();
            return Ok((enumerated_after.unwrap_or(elapsed), elapsed, job));
        }
        if started.elapsed() > JOB_TIMEOUT {
            bail!(
                "job {id} not done within {JOB_TIMEOUT:?}: {job}; first daemon's log:\n{}",
                daemons[0].log_tail(LOG_TAIL_LINES)
            );
        }
        if ["failed", "paused", "cancelled"]
            .iter()
            .any(|s| job["state"] == *s)
        {
            bail!(
                "job {id} ended {}: {job}; first daemon's log:\n{}",
                job["state"],
                daemons[0].log_tail(LOG_TAIL_LINES)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the loop only ends by returning")
}

/// Images per daemon, from the data dir each stored path begins with
/// (`…/daemon-<k>/archive/…`: each daemon's view of the shared archive).
fn images_per_daemon(pg: &PgCluster, url: &str, daemons: usize) -> anyhow::Result<Vec<u64>> {
    let rows = pg
        .psql(
            database_name(url),
            "SELECT substring(path from '/daemon-([0-9]+)/archive/') AS daemon, count(*) \
             FROM images WHERE state = 'done' GROUP BY 1 ORDER BY 1",
        )
        .map_err(|e| anyhow::anyhow!("counting images per daemon: {e}"))?;
    let mut per_daemon = vec![0; daemons];
    for line in rows.lines().filter(|l| !l.trim().is_empty()) {
        let (daemon, count) = line
            .split_once('|')
            .with_context(|| format!("unexpected psql line {line:?}"))?;
        let daemon: usize = daemon
            .parse()
            .with_context(|| format!("a done image outside every daemon's archive: {line:?}"))?;
        *per_daemon
            .get_mut(daemon)
            .with_context(|| format!("no daemon {daemon}"))? = count.parse()?;
    }
    Ok(per_daemon)
}

/// Every regular file under `dir`, recursively.
fn count_files(dir: &Path, suffix: &str) -> anyhow::Result<u64> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            count += count_files(&entry.path(), suffix)?;
        } else if kind.is_file() && entry.file_name().to_string_lossy().ends_with(suffix) {
            count += 1;
        }
    }
    Ok(count)
}

/// Fields of `/proc/<pid>/stat` after the command name (field 3 onwards).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    // The state (field 3) is a letter: keep a placeholder so indexes stay n - 3.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU time of this bench's PostgreSQL server: the postmaster listening on
/// `port` (with what it reaped of exited backends) and its live children.
/// `None` if it cannot be found.
fn postgres_cpu(port: u16) -> Option<Duration> {
    let port = port.to_string();
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let postmaster = pids.iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"postgres"))
                && args
                    .windows(2)
                    .any(|w| w[0] == b"-p" && w[1] == port.as_bytes())
        })
    })?;
    let parent: u64 = postmaster.parse().ok()?;
    // utime, stime, cutime, cstime are fields 14..=17; the parent pid field 4.
    let own = stat_fields(postmaster)?;
    let mut ticks = own.get(11..15)?.iter().sum::<u64>();
    for pid in &pids {
        if let Some(fields) = stat_fields(pid)
            && fields.get(1) == Some(&parent)
        {
            ticks += fields.get(11..13)?.iter().sum::<u64>();
        }
    }
    // SAFETY: sysconf has no preconditions.
    let per_sec = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(Duration::from_millis(ticks * 1000 / per_sec))
}

async fn daemon_run(
    cfg: &BenchConfig,
    pg: Option<&PgCluster>,
    daemons: usize,
) -> anyhow::Result<DaemonRun> {
    let queue = if pg.is_some() {
        Queue::Postgres
    } else {
        Queue::Sqlite
    };
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: CDN_LATENCY,
        log_capacity: 1_000,
        ..FakeConfig::default()
    })
    .await;
    let username = format!("cluster{daemons}");
    fake.add_user(&username, cfg.images, 150 + daemons as u64);
    let shared = temp_dir(cfg, &username)?;
    let archive = shared.path().join("archive");
    std::fs::create_dir_all(&archive)?;

    let mut daemon_env = env::daemon_env(fake.api_url().as_str(), &fake.token());
    env::set(
        &mut daemon_env,
        "MLD__MAPILLARY__CALLS_PER_MINUTE",
        CALLS_PER_MINUTE,
    );
    let url = pg.map(PgCluster::fresh_database);
    if let Some(url) = &url {
        env::set(&mut daemon_env, "MLD__STORAGE__DATABASE_URL", url);
        env::set(&mut daemon_env, "MLD__STORAGE__SHARED_FILESYSTEM", "true");
    }
    let mut processes = Vec::with_capacity(daemons);
    for k in 0..daemons {
        let data_dir = shared.path().join(format!("daemon-{k}"));
        std::fs::create_dir_all(&data_dir)?;
        std::os::unix::fs::symlink(&archive, data_dir.join("archive"))?;
        let daemon = DaemonProcess::spawn_keeping(
            BINARY,
            &data_dir,
            WORKERS,
            &daemon_env,
            KeepLog::Tail(LOG_TAIL_LINES),
        )?;
        processes.push(daemon);
    }

    let cpu_before: Vec<Duration> = processes
        .iter()
        .map(DaemonProcess::cpu_time)
        .collect::<anyhow::Result<_>>()?;
    let bench_before = own_cpu_time()?;
    let port = pg.map(PgCluster::port);
    let postgres_before = port.and_then(postgres_cpu);
    let machine_before = MachineCpu::read()?;
    let load_at_start = load_average();
    let started = Instant::now();
    let (status, posted) = processes[0]
        .api()
        .try_request_json(Method::POST, "/jobs", Some(json!({"username": username})))
        .await?;
    ensure!(
        status.is_success(),
        "POST /jobs answered {status}: {posted}"
    );
    let id = posted["id"]
        .as_i64()
        .with_context(|| format!("POST /jobs returned no id: {posted}"))?;
    let (enumerated_after, elapsed, job) = wait_until_done(&processes, id, started).await?;
    let machine_after = MachineCpu::read()?;
    let postgres_cpu = match (postgres_before, port.and_then(postgres_cpu)) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64()),
        _ => None,
    };
    let bench_cpu = (own_cpu_time()? - bench_before).as_secs_f64();
    let daemon_cpu: Vec<f64> = processes
        .iter()
        .zip(&cpu_before)
        .map(|(d, before)| Ok((d.cpu_time()? - *before).as_secs_f64()))
        .collect::<anyhow::Result<_>>()?;

    ensure!(
        job["counts"]["done"] == cfg.images && job["counts"]["failed"] == 0,
        "the job ended with {}, not {} done",
        job["counts"],
        cfg.images
    );
    let hits = fake.cdn_hits_by_image();
    ensure!(
        hits.len() as u64 == cfg.images,
        "the CDN saw {} images, not {}",
        hits.len(),
        cfg.images
    );
    let downloaded_twice = hits.values().map(|n| n.saturating_sub(1)).sum();
    let files = count_files(&archive, ".jpg")?;
    ensure!(
        files == cfg.images,
        "the shared archive holds {files} JPEGs, not {}",
        cfg.images
    );
    let per_daemon = match (pg, &url) {
        (Some(pg), Some(url)) => images_per_daemon(pg, url, daemons)?,
        _ => vec![cfg.images],
    };
    for daemon in &mut processes {
        let status = daemon.terminate(Duration::from_secs(60))?;
        ensure!(
            status.success(),
            "a daemon exited with {status} after SIGTERM"
        );
    }
    let (machine_busy, machine_iowait) = machine_before.share_until(&machine_after);
    Ok(DaemonRun {
        queue,
        daemons,
        images: cfg.images,
        enumerated_after,
        elapsed,
        per_daemon,
        daemon_cpu,
        bench_cpu,
        postgres_cpu,
        machine_busy,
        machine_iowait,
        downloaded_twice,
        load_at_start,
    })
}

fn print_daemon_run(r: &DaemonRun, one: Option<&DaemonRun>) {
    let ratio = one.map_or(String::new(), |one| {
        format!(
            " = {:.2} x one daemon",
            r.images_per_sec() / one.images_per_sec()
        )
    });
    let queue = match r.queue {
        Queue::Sqlite => "SQLite    ",
        Queue::Postgres => "PostgreSQL",
    };
    println!(
        "  {} daemon{} on {queue}: {:>7.1} images/s{ratio}  ({} images in {:.2} s, enumerated after {:.2} s; ideal {:.0}/s = {:.0} %)",
        r.daemons,
        if r.daemons == 1 { " " } else { "s" },
        r.images_per_sec(),
        r.images,
        r.elapsed.as_secs_f64(),
        r.enumerated_after.as_secs_f64(),
        r.ideal_per_sec(),
        r.images_per_sec() / r.ideal_per_sec() * 100.0
    );
    let shares: Vec<String> = r.per_daemon.iter().map(u64::to_string).collect();
    let cpus: Vec<String> = r.daemon_cpu.iter().map(|c| format!("{c:.1}")).collect();
    let postgres = r.postgres_cpu.map_or(String::new(), |cpu| {
        format!(
            "; PostgreSQL CPU {cpu:.1} s = {:.2} ms/image",
            cpu * 1e3 / r.images as f64
        )
    });
    println!(
        "      images per daemon [{}]; daemon CPU s [{}] = {:.2} ms/image{postgres}",
        shares.join(", "),
        cpus.join(", "),
        r.daemon_cpu_ms_per_image(),
    );
    println!(
        "      fake+bench CPU {:.1} s; machine busy {:.0} %, iowait {:.0} %, load average {} at start; downloaded twice: {}",
        r.bench_cpu,
        r.machine_busy * 100.0,
        r.machine_iowait * 100.0,
        r.load_at_start,
        r.downloaded_twice
    );
}

/// What the claim scenario measured.
struct ClaimRun {
    rows: usize,
    ingest: Duration,
    table_size: String,
    analyzed: String,
    alone: Vec<Duration>,
    claims: Vec<Duration>,
    completes: Vec<Duration>,
    images: usize,
    elapsed: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency_line(what: &str, sorted: &[Duration]) -> String {
    format!(
        "{what:<34} n={:<6} p50={:>7.3} ms  p99={:>7.3} ms  max={:>7.3} ms",
        sorted.len(),
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

/// Claims of `CLAIM_LIMIT` and a complete per image, by `claimers` tasks
/// until `total` claims are made; returns the claim and complete latencies
/// (sorted) and how many images were completed.
async fn claim_and_complete(
    store: &Arc<Store>,
    claimers: usize,
    total: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, usize)> {
    let made = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(claimers);
    for c in 0..claimers {
        let (store, made) = (store.clone(), made.clone());
        tasks.push(tokio::spawn(async move {
            let owner: Arc<str> = format!("bench-claimer-{c}").into();
            let file = ArchivedFile::loose("archive/x.jpg", 123_456, None);
            let (mut claims, mut completes) = (Vec::new(), Vec::new());
            let mut images = 0;
            while made.fetch_add(1, Ordering::Relaxed) < total {
                let start = Instant::now();
                let claimed = store.claim(&owner, CLAIM_LIMIT, LEASE, 0, 0).await?;
                claims.push(start.elapsed());
                ensure!(
                    !claimed.is_empty(),
                    "the queue ran dry: raise PG_BENCH_ROWS"
                );
                for image in claimed {
                    let start = Instant::now();
                    ensure!(
                        store.complete(&image.lease, &file, 0).await?,
                        "a fresh lease was lost"
                    );
                    completes.push(start.elapsed());
                    images += 1;
                }
            }
            anyhow::Ok((claims, completes, images))
        }));
    }
    let (mut claims, mut completes, mut images) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        let (c, d, n) = task.await??;
        claims.extend(c);
        completes.extend(d);
        images += n;
    }
    claims.sort();
    completes.sort();
    Ok((claims, completes, images))
}

async fn claims_run(cfg: &BenchConfig, pg: &PgCluster) -> anyhow::Result<ClaimRun> {
    let url = pg.fresh_database();
    let store = Arc::new(Store::open_postgres(&url, PgClock::Database).await?);
    let job = store
        .submit_job(&JobSpec::user("alice", Quality::Original), 0)
        .await?
        .job()
        .clone();
    store
        .transition_job(job.id, &[JobState::Queued], JobState::Enumerating, 0)
        .await?;
    let pages = cfg.rows / PAGE;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut inserted = 0;
    for p in 0..pages {
        let images: Vec<ListedImage> = page(1, p, IdOrder::Rising)
            .into_iter()
            .map(ListedImage::new)
            .collect::<Result<_, _>>()?;
        let cursor = format!("https://graph.example/images?after=cursor{p}");
        let next = (p + 1 < pages).then_some(cursor.as_str());
        inserted += store.insert_page(job.id, &images, next, 0).await?;
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "    ... {inserted:>8} rows after {:>5.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let ingest = started.elapsed();
    ensure!(
        inserted as usize == pages * PAGE,
        "stored {inserted} rows, not {}",
        pages * PAGE
    );
    store.fold_counts().await?;
    store
        .transition_job(job.id, JobState::ALL, JobState::Downloading, 0)
        .await?;
    let database = database_name(&url);
    let table_size = pg
        .psql(
            database,
            "SELECT pg_size_pretty(pg_total_relation_size('images'))",
        )
        .map_err(|e| anyhow::anyhow!("table size: {e}"))?;
    let analyzed = pg
        .psql(
            database,
            "SELECT coalesce(to_char(greatest(last_analyze, last_autoanalyze), 'HH24:MI:SS'), 'never') \
             FROM pg_stat_user_tables WHERE relname = 'images'",
        )
        .map_err(|e| anyhow::anyhow!("pg_stat_user_tables: {e}"))?;

    // As the supervisor does while daemons work.
    let folder = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLD_INTERVAL).await;
                let _ = store.fold_counts().await;
            }
        })
    };
    let (alone, _, _) = claim_and_complete(&store, 1, 200).await?;
    let started = Instant::now();
    let (claims, completes, images) = claim_and_complete(&store, CLAIMERS, cfg.claims).await?;
    let elapsed = started.elapsed();
    folder.abort();
    store.close().await;
    Ok(ClaimRun {
        rows: pages * PAGE,
        ingest,
        table_size,
        analyzed,
        alone,
        claims,
        completes,
        images,
        elapsed,
    })
}

fn print_claims(r: &ClaimRun) {
    println!(
        "  ingest: {} rows through insert_page in {:.1} s ({:.0} rows/s); images table + indexes {}; last analyze {}",
        r.rows,
        r.ingest.as_secs_f64(),
        r.rows as f64 / r.ingest.as_secs_f64(),
        r.table_size,
        r.analyzed
    );
    println!(
        "  {}",
        latency_line("claim(8), one claimer alone", &r.alone)
    );
    println!(
        "  {}",
        latency_line(&format!("claim(8), {CLAIMERS} claimers"), &r.claims)
    );
    println!(
        "  {}",
        latency_line(&format!("complete, {CLAIMERS} claimers"), &r.completes)
    );
    println!(
        "  claim(8) + complete x 8, {CLAIMERS} claimers: {} images in {:.2} s = {:.0} images/s",
        r.images,
        r.elapsed.as_secs_f64(),
        r.images as f64 / r.elapsed.as_secs_f64()
    );
}

/// The closing paragraph: what the figures say, in words.
fn summary(cfg: &BenchConfig, runs: &[DaemonRun], claims: Option<&ClaimRun>) -> String {
    let mut text = Vec::new();
    let pg_runs: Vec<&DaemonRun> = runs.iter().filter(|r| r.queue == Queue::Postgres).collect();
    if let Some(one) = pg_runs.iter().find(|r| r.daemons == 1) {
        let scaling: Vec<String> = pg_runs
            .iter()
            .map(|r| {
                format!(
                    "{} daemon{} {:.0}/s ({:.2}x)",
                    r.daemons,
                    if r.daemons == 1 { "" } else { "s" },
                    r.images_per_sec(),
                    r.images_per_sec() / one.images_per_sec()
                )
            })
            .collect();
        text.push(format!(
            "A job of {} images on one PostgreSQL queue, 32 workers per daemon and a 50 ms CDN, ran at {}.",
            cfg.images,
            scaling.join(", ")
        ));
        if let Some(sqlite) = runs.iter().find(|r| r.queue == Queue::Sqlite) {
            text.push(format!(
                "One daemon on SQLite did {:.0}/s, so the PostgreSQL queue itself costs a single daemon {:+.0} %.",
                sqlite.images_per_sec(),
                (one.images_per_sec() / sqlite.images_per_sec() - 1.0) * 100.0
            ));
        }
        if let Some(most) = pg_runs.iter().max_by_key(|r| r.daemons)
            && most.daemons > 1
        {
            let ratio = most.images_per_sec() / one.images_per_sec();
            let linear = ratio / most.daemons as f64;
            let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
            let postgres = most.postgres_cpu.map_or(String::new(), |cpu| {
                format!(", PostgreSQL {:.2} ms", cpu * 1e3 / most.images as f64)
            });
            let why = if most.machine_busy >= 0.8 {
                format!(
                    "the machine's {cores} cores were {:.0} % busy during that run (load average {} at its start; CPU per image: daemons {:.2} ms{postgres}, plus the fake CDN and whatever else runs here), so it measured this machine's CPU more than the queue",
                    most.machine_busy * 100.0,
                    most.load_at_start,
                    most.daemon_cpu_ms_per_image()
                )
            } else {
                format!(
                    "the machine's {cores} cores were only {:.0} % busy, so the limit lay elsewhere (the queue, the CDN's latency or the job's start and finish)",
                    most.machine_busy * 100.0
                )
            };
            text.push(format!(
                "{} daemons reached {:.0} % of linear scaling: {why}.",
                most.daemons,
                linear * 100.0
            ));
        }
        let twice: usize = runs.iter().map(|r| r.downloaded_twice).sum();
        text.push(format!(
            "Every run archived every image exactly once into the one shared archive ({twice} downloaded twice in all)."
        ));
    }
    if let Some(c) = claims {
        text.push(format!(
            "With {} pending rows in PostgreSQL, a claim of 8 took p50 {:.2} ms / p99 {:.2} ms alone and p50 {:.2} ms / p99 {:.2} ms with {CLAIMERS} concurrent claimers, who completed {:.0} images/s between them.",
            c.rows,
            ms(percentile(&c.alone, 0.5)),
            ms(percentile(&c.alone, 0.99)),
            ms(percentile(&c.claims, 0.5)),
            ms(percentile(&c.claims, 0.99)),
            c.images as f64 / c.elapsed.as_secs_f64()
        ));
    }
    text.join(" ")
}

async fn run(cfg: BenchConfig) -> anyhow::Result<()> {
    println!("cluster benchmark: {BINARY}");
    println!(
        "machine: {} CPUs, load average {} at start; data dirs under {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        cfg.data_root.display()
    );
    let pg = PgCluster::start();
    println!(
        "PostgreSQL from {} on port {} (fsync off: the testkit's throwaway cluster)",
        mld_testkit::postgres::bin_dir().display(),
        pg.port()
    );

    let mut runs = Vec::new();
    if cfg.run_daemons {
        println!(
            "\n[1] one job of {} images through 1..{} serve daemons: {WORKERS} workers each, CDN latency {} ms, \
             archive on the local disk (one shared dir, storage.shared_filesystem = true); \
             mapillary.calls_per_minute = {CALLS_PER_MINUTE} so the API limiter is not what is measured",
            cfg.images,
            cfg.daemon_counts.iter().max().unwrap_or(&1),
            CDN_LATENCY.as_millis()
        );
        if cfg.sqlite_reference {
            let run = daemon_run(&cfg, None, 1).await?;
            print_daemon_run(&run, None);
            runs.push(run);
        }
        for &daemons in &cfg.daemon_counts {
            let run = daemon_run(&cfg, Some(&pg), daemons).await?;
            let one = runs
                .iter()
                .find(|r| r.queue == Queue::Postgres && r.daemons == 1);
            print_daemon_run(&run, one);
            runs.push(run);
        }
    }
    let mut claims = None;
    if cfg.run_claims {
        println!(
            "\n[2] claims with {} pending rows of one job in PostgreSQL (Store::open_postgres, database clock)",
            cfg.rows / PAGE * PAGE
        );
        let run = claims_run(&cfg, &pg).await?;
        print_claims(&run);
        claims = Some(run);
    }

    println!("\ntargets");
    let mut missed = Vec::new();
    let mut verdict = |met: bool, what: String| {
        if !met {
            missed.push(what);
        }
        if met { "MET" } else { "MISSED" }
    };
    if let Some(one) = runs
        .iter()
        .find(|r| r.queue == Queue::Postgres && r.daemons == 1)
    {
        for r in runs
            .iter()
            .filter(|r| r.queue == Queue::Postgres && r.daemons > 1)
        {
            let ratio = r.images_per_sec() / one.images_per_sec();
            println!(
                "  {} daemons vs one: {ratio:.2}x (>= {SCALING_TARGET:.2}x, never slower)          {}",
                r.daemons,
                verdict(
                    ratio >= SCALING_TARGET,
                    format!("{} daemons slower than one", r.daemons)
                )
            );
        }
    }
    if let Some(c) = &claims {
        let p99 = percentile(&c.claims, 0.99);
        println!(
            "  claim(8) p99, {CLAIMERS} claimers, {} rows: {:.2} ms (<= {} ms)     {}",
            c.rows,
            ms(p99),
            CLAIM_P99_TARGET.as_millis(),
            verdict(p99 <= CLAIM_P99_TARGET, "claim p99".to_string())
        );
    }
    println!("\nsummary");
    println!("  {}", summary(&cfg, &runs, claims.as_ref()));
    println!("load average at end: {}", load_average());
    if missed.is_empty() {
        Ok(())
    } else {
        bail!("targets missed: {}", missed.join(", "))
    }
}

fn main() -> anyhow::Result<()> {
    let cfg = BenchConfig::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    runtime.block_on(run(cfg))?;
    println!("total wall time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
