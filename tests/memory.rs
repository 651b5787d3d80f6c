//! Invariant 11, checked on every CI run (the full-size figure, 1,000,000
//! images, is `cargo bench --bench daemon`): the real binary with a large
//! queue and 32 workers stays within 64 MiB of peak RSS, through the whole
//! listing and a stretch of downloads. Memory must not grow with the queue:
//! nothing may hold all of a user's images.

use mld_testkit::env::{self, test_env};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary};
use mld_testkit::process::DaemonProcess;
use serde_json::json;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
/// The target of ARCHITECTURE.md invariant 11 and SPEC's performance section.
const RSS_TARGET_MIB: f64 = 64.0;
const IMAGES: u64 = 150_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_rss_stays_within_64_mib_with_a_large_queue_and_32_workers() {
    let fake = FakeMapillary::start(FakeConfig {
        // Slow downloads keep nearly the whole queue pending.
        cdn_latency: Duration::from_millis(100),
        log_capacity: 1_000,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("megan", IMAGES, 91);
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    env::set(&mut env, "MLD__MAPILLARY__PAGE_SIZE", "2000");
    env::set(
        &mut env,
        "MLD__LOG__LEVEL",
        "warn,mapillary_downloader=info",
    );
    let daemon = DaemonProcess::spawn(BINARY, &dir.path().join("data"), 32, &env).unwrap();
    let api = daemon.api();
    let (_, job) = api.post_job(json!({"username": "megan"})).await;
    let id = job["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let job = api.job(id).await;
        if job["enumeration_complete"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "listing did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after_listing = daemon.memory().unwrap();
    // A stretch of downloads with the full queue behind them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let job = api.job(id).await;
    assert!(
        job["counts"]["done"].as_u64().unwrap_or(0) > 100,
        "downloads ran: {job}"
    );
    assert_eq!(job["counts"]["discovered"].as_u64(), Some(IMAGES), "{job}");
    let memory = daemon.memory().unwrap();
    let peak_mib = memory.hwm_kib as f64 / 1024.0;
    eprintln!(
        "{IMAGES} images queued, 32 workers: peak RSS {peak_mib:.1} MiB (after the listing {:.1} MiB, now {:.1} MiB, {} threads)",
        after_listing.hwm_kib as f64 / 1024.0,
        memory.rss_kib as f64 / 1024.0,
        memory.threads
    );
    assert!(
        peak_mib <= RSS_TARGET_MIB,
        "peak RSS {peak_mib:.1} MiB > {RSS_TARGET_MIB} MiB with {IMAGES} images queued"
    );
}
