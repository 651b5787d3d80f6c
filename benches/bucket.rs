//! What archiving into a bucket costs against the local disk (issue 15):
//! the same JPEG job through the real daemon, once into `<data-dir>/archive`
//! and once into moto's S3 server (`s3://bench/archive`), with images/s, the
//! daemon's CPU ms per image and peak RSS for each, and the difference per
//! image.
//!
//! Run: `cargo bench --bench bucket` (after `bash scripts/test` has put moto
//! into `target/venv`). `BENCH_BUCKET_IMAGES` (default 2,000), 32 workers,
//! fake CDN latency 50 ms, ~100 KB bodies.
//!
//! moto is a Python server on the same 2 cores: its own CPU is not in the
//! daemon's figure, but it slows the wall clock, so the images/s of the
//! bucket run are a floor for a real S3 endpoint; the CPU per image is ours.

use anyhow::Context;
use mld_testkit::env;
use mld_testkit::fake::{self as fake_mapillary, FakeConfig, FakeMapillary};
use mld_testkit::process::{DaemonProcess, KeepLog};
use mld_testkit::s3::S3Server;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

struct Figures {
    images_per_sec: f64,
    cpu_ms_per_image: f64,
    peak_rss_mib: f64,
}

fn main() -> anyhow::Result<()> {
    let images: u64 = std::env::var("BENCH_BUCKET_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        println!("A JPEG job of {images} images through the daemon: 32 workers, CDN latency 50 ms");
        let local = run(images, None).await?;
        report("local disk", &local);
        let s3 = S3Server::start("bench").await;
        let bucket = run(images, Some(&s3)).await?;
        report("bucket (moto)", &bucket);
        println!(
            "   bucket - disk: {:+.2} ms of daemon CPU per image; {:+.1} % images/s",
            bucket.cpu_ms_per_image - local.cpu_ms_per_image,
            (bucket.images_per_sec / local.images_per_sec - 1.0) * 100.0
        );
        anyhow::Ok(())
    })
}

fn report(label: &str, f: &Figures) {
    println!(
        "   {label:>14}: {:.1} images/s, daemon CPU {:.2} ms per image, peak RSS {:.0} MiB",
        f.images_per_sec, f.cpu_ms_per_image, f.peak_rss_mib
    );
}

async fn run(images: u64, bucket: Option<&S3Server>) -> anyhow::Result<Figures> {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("bucky", images, 88);
    let dir =
        tempfile::tempdir_in(std::env::var_os("BENCH_DATA_DIR").unwrap_or_else(|| ".".into()))?;
    let mut env = env::daemon_env(fake.api_url().as_str(), fake_mapillary::DEFAULT_TOKEN);
    if let Some(s3) = bucket {
        env.extend(s3.daemon_env("archive"));
    }
    let daemon = DaemonProcess::spawn_keeping(BINARY, dir.path(), 32, &env, KeepLog::Tail(100))?;
    let cpu_before = daemon.cpu_time()?;
    let start = Instant::now();
    let (_, job) = daemon
        .api()
        .post_job(serde_json::json!({"username": "bucky"}))
        .await;
    let id = job["id"].as_i64().context("no job id")?;
    let done = daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(1800))
        .await;
    anyhow::ensure!(done["counts"]["done"] == images, "{done}");
    let secs = start.elapsed().as_secs_f64();
    let cpu = (daemon.cpu_time()? - cpu_before).as_secs_f64();
    let memory = daemon.memory()?;
    Ok(Figures {
        images_per_sec: images as f64 / secs,
        cpu_ms_per_image: cpu * 1000.0 / images as f64,
        peak_rss_mib: memory.hwm_kib as f64 / 1024.0,
    })
}
