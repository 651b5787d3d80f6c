//! Enumeration rate of the new sources against the fake with 50 ms API
//! latency: an organization of 100,000 images, and 1,000 sequences.
//!
//! Run: `cargo bench --bench enumerate`. The daemon is the release binary as
//! a child process, with default settings but one worker and a CDN so slow
//! that downloads never compete; the figure is discovered images (and
//! sequences) per second of wall time from `POST /jobs` to
//! `enumeration_complete`. Sizes: `BENCH_ORG_IMAGES` (100,000),
//! `BENCH_SEQUENCES` (1,000), `BENCH_SEQUENCE_IMAGES` (20 per sequence),
//! `BENCH_API_LATENCY_MS` (50).

use anyhow::Context;
use mld_testkit::env;
use mld_testkit::fake::{FakeConfig, FakeMapillary};
use mld_testkit::process::{DaemonProcess, KeepLog};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Posts `body` to a fresh daemon and times it until enumeration completes.
async fn time_enumeration(fake: &FakeMapillary, body: Value) -> anyhow::Result<(Duration, u64)> {
    let dir = tempfile::tempdir()?;
    let mut daemon_env = env::daemon_env(fake.api_url().as_str(), &fake.token());
    env::set(
        &mut daemon_env,
        "MLD__LOG__LEVEL",
        "warn,mapillary_downloader=info",
    );
    let daemon = DaemonProcess::spawn_keeping(
        BINARY,
        &dir.path().join("data"),
        1,
        &daemon_env,
        KeepLog::Tail(50),
    )?;
    let api = daemon.api();
    let started = Instant::now();
    let (_, job) = api.post_job(body).await;
    let id = job["id"].as_i64().context("no job id")?;
    loop {
        let job = api.job(id).await;
        if job["enumeration_complete"] == true {
            let discovered = job["counts"]["discovered"].as_u64().unwrap_or(0);
            return Ok((started.elapsed(), discovered));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "enumeration did not finish: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let org_images = env_u64("BENCH_ORG_IMAGES", 100_000)?;
    let sequences = env_u64("BENCH_SEQUENCES", 1_000)?;
    let per_sequence = env_u64("BENCH_SEQUENCE_IMAGES", 20)?;
    let latency = Duration::from_millis(env_u64("BENCH_API_LATENCY_MS", 50)?);
    let fake = FakeMapillary::start(FakeConfig {
        api_latency: latency,
        cdn_latency: Duration::from_secs(3600),
        log_capacity: 10_000,
        ..FakeConfig::default()
    })
    .await;
    for (i, user) in ["orga", "orgb"].iter().enumerate() {
        fake.add_user(user, org_images / 2, 500 + i as u64);
        fake.add_user_to_org(user, "1");
    }
    let ids: Vec<String> = (0..sequences).map(|i| format!("SEQbench{i:014}")).collect();
    for id in &ids {
        fake.add_sequence(id, &[("seqer", per_sequence)]);
    }
    println!(
        "enumeration against the fake, API latency {} ms, default settings (page size 2000)",
        latency.as_millis()
    );

    let (elapsed, discovered) =
        time_enumeration(&fake, json!({"organization_id": "1", "quality": "256"})).await?;
    let calls = fake.api_requests_to("/images");
    println!(
        "organization of {org_images} images: {discovered} discovered in {:.1} s = {:.0} images/s ({calls} listing calls)",
        elapsed.as_secs_f64(),
        discovered as f64 / elapsed.as_secs_f64()
    );

    fake.clear_log();
    let (elapsed, discovered) =
        time_enumeration(&fake, json!({"sequence_ids": ids, "quality": "256"})).await?;
    println!(
        "{sequences} sequences of {per_sequence} images: {discovered} discovered in {:.1} s = {:.1} sequences/s, {:.0} images/s ({} /image_ids and {} ?ids= calls)",
        elapsed.as_secs_f64(),
        sequences as f64 / elapsed.as_secs_f64(),
        discovered as f64 / elapsed.as_secs_f64(),
        fake.api_requests_to("/image_ids"),
        fake.api_requests_to("/"),
    );
    Ok(())
}
