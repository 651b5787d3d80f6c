//! `GET /status` while a 1,000,000-image job is enumerated and downloaded
//! (issue 24: p99 <= 3 ms with 1,000,000 rows, also while the job is being
//! enumerated).
//!
//! Run: `cargo bench --bench status_load`. The real binary (`serve`,
//! default settings, 32 workers) against the fake (CDN 40..60 ms): a job of
//! `BENCH_STATUS_IMAGES` (1,000,000) images is posted and `/status` is timed
//! from a thread of its own every `BENCH_STATUS_INTERVAL_MS` (5) while the
//! queue grows, then `BENCH_STATUS_SAMPLES` (3,000) times at full size
//! while the workers download. Prints both beside the target; exits 1 on a
//! miss. `BENCH_DATA_DIR` picks the disk (default the temp dir).

mod common;

use anyhow::{Context, bail};
use mld_testkit::env;
use mld_testkit::fake::{FakeConfig, FakeMapillary};
use mld_testkit::latency::{percentile, sample_get};
use mld_testkit::process::{DaemonProcess, KeepLog};
use reqwest::Method;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
const TARGET_P99: Duration = Duration::from_millis(3);

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

fn line(what: &str, samples: &[Duration]) -> String {
    format!(
        "{what:<44} n={:<6} p50={:>7.3} ms  p99={:>7.3} ms  max={:>8.3} ms",
        samples.len(),
        percentile(samples, 0.50).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let images = env_u64("BENCH_STATUS_IMAGES", 1_000_000)?;
    let workers = u32::try_from(env_u64("BENCH_STATUS_WORKERS", 32)?)?;
    let interval = Duration::from_millis(env_u64("BENCH_STATUS_INTERVAL_MS", 5)?);
    let samples = usize::try_from(env_u64("BENCH_STATUS_SAMPLES", 3_000)?)?;
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(40),
        cdn_latency_jitter: Duration::from_millis(20),
        log_capacity: 1_000,
        ..FakeConfig::default()
    })
    .await;
    let user = "status-load";
    fake.add_user(user, images, 3);
    let dir = tempfile::Builder::new()
        .prefix("mld-bench-status-")
        .tempdir_in(
            std::env::var_os("BENCH_DATA_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )?;
    let vars = env::daemon_env(fake.api_url().as_str(), &fake.token());
    let mut daemon =
        DaemonProcess::spawn_keeping(BINARY, dir.path(), workers, &vars, KeepLog::Tail(100))?;
    let api = daemon.api();
    let url = format!("{}/status", daemon.base());

    let stop = Arc::new(AtomicBool::new(false));
    let during = sample_get(url.clone(), interval, usize::MAX, stop.clone());
    let started = Instant::now();
    let id = common::job::post_username_job(&api, user).await?;
    let path = format!("/jobs/{id}");
    let discovered = loop {
        let (_, job) = api.try_request_json(Method::GET, &path, None).await?;
        if job["enumeration_complete"] == true {
            break job["counts"]["discovered"].as_u64().unwrap_or(0);
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!(
                "enumeration unfinished after 900 s: {job}\n{}",
                daemon.log_tail(50)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let enumeration = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = during
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
    let full = sample_get(url, interval, samples, Arc::new(AtomicBool::new(false)))
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
    daemon.terminate(Duration::from_secs(120))?;

    println!(
        "status_load: {discovered} rows enumerated in {:.1} s ({:.0} rows/s), {workers} workers",
        enumeration.as_secs_f64(),
        discovered as f64 / enumeration.as_secs_f64()
    );
    println!("{}", line("GET /status while enumerating", &during));
    println!(
        "{}",
        line(
            &format!("GET /status, {discovered} rows, downloading"),
            &full
        )
    );
    let p99 = percentile(&during, 0.99).max(percentile(&full, 0.99));
    let met = p99 <= TARGET_P99;
    println!(
        "target: /status p99 <= 3 ms with 1,000,000 rows, also while enumerating -> {} ({:.3} ms)",
        if met { "MET" } else { "MISSED" },
        p99.as_secs_f64() * 1e3
    );
    if !met {
        eprintln!("target missed: /status p99");
        std::process::exit(1);
    }
    Ok(())
}
