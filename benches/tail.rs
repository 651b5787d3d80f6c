//! The tail: a job whose CDN has a few bodies that stall half-way.
//!
//! Run: `cargo bench --bench tail`. The real binary (`serve`, default
//! settings but the worker count) archives 1,500 images from the fake (CDN
//! latency 40..60 ms), once with no fault and once with ~1.2 % of the images
//! (18 of 1,500, chosen by id) stalling half-way through the body on their
//! first request. Without hedging each stall holds its worker for the 20 s
//! read-idle timeout; the target (issue 24) is the stalled job within 3x its
//! N/L time plus the listing. Exits 1 on a miss.
//!
//! `BENCH_TAIL_IMAGES` (1500), `BENCH_TAIL_WORKERS` (32), `BENCH_TAIL_STALL`
//! (0.012), `BENCH_LATENCY_MS` (50), `BENCH_DATA_DIR` (the temp dir).

mod common;

use anyhow::{Context, bail};
use mld_testkit::api_client::ApiClient;
use mld_testkit::env;
use mld_testkit::fake::{FakeConfig, FakeMapillary};
use mld_testkit::process::{DaemonProcess, KeepLog};
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
/// The stalled job may take this many times its N/L time (plus listing).
const TARGET_MULTIPLE: f64 = 3.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

struct Config {
    images: u64,
    workers: u32,
    stall: f64,
    latency: Duration,
}

/// What one job run measured.
struct Run {
    /// POST to `done`.
    total: Duration,
    /// POST to `enumeration_complete`.
    listing: Duration,
    stalled: usize,
    hedges: String,
}

async fn job(api: &ApiClient, id: i64) -> anyhow::Result<Value> {
    let (status, body) = api
        .try_request_json(Method::GET, &format!("/jobs/{id}"), None)
        .await?;
    if !status.is_success() {
        bail!("GET /jobs/{id} answered {status}: {body}");
    }
    Ok(body)
}

/// The `mapillary_hedged_downloads_total` lines of `/metrics`, joined.
async fn hedge_counts(api: &ApiClient) -> anyhow::Result<String> {
    let (_, text) = api.try_request(Method::GET, "/metrics", None).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("mapillary_hedged_downloads_total{"))
        .map(|l| l.trim_start_matches("mapillary_hedged_downloads_total"))
        .collect::<Vec<_>>()
        .join(" "))
}

async fn run(cfg: &Config, stall: f64) -> anyhow::Result<Run> {
    let jitter = cfg.latency * 2 / 5;
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: cfg.latency - jitter / 2,
        cdn_latency_jitter: jitter,
        log_capacity: 10_000,
        ..FakeConfig::default()
    })
    .await;
    let user = "tail";
    fake.add_user(user, cfg.images, 24);
    fake.stall_halfway(stall, 1);
    let images = fake.images(user);
    let stalled = fake
        .halfway_stalled(images.iter().map(|i| i.id.as_str()))
        .len();
    let dir = tempfile::Builder::new()
        .prefix("mld-bench-tail-")
        .tempdir_in(
            std::env::var_os("BENCH_DATA_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )?;
    let vars = env::daemon_env(fake.api_url().as_str(), &fake.token());
    let mut daemon =
        DaemonProcess::spawn_keeping(BINARY, dir.path(), cfg.workers, &vars, KeepLog::Tail(100))?;
    let api = daemon.api();
    let started = Instant::now();
    let id = common::job::post_username_job(&api, user).await?;
    let mut listing = None;
    let deadline = started + Duration::from_secs(300);
    let total = loop {
        let view = job(&api, id).await?;
        if listing.is_none() && view["enumeration_complete"] == true {
            listing = Some(started.elapsed());
        }
        if view["state"] == "done" {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!("no done after 300 s: {view}\n{}", daemon.log_tail(50));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hedges = hedge_counts(&api).await?;
    daemon.terminate(Duration::from_secs(60))?;
    Ok(Run {
        total,
        listing: listing.unwrap_or(total),
        stalled,
        hedges,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config {
        images: env_or("BENCH_TAIL_IMAGES", 1_500)?,
        workers: env_or("BENCH_TAIL_WORKERS", 32)?,
        stall: env_or("BENCH_TAIL_STALL", 0.012)?,
        latency: Duration::from_millis(env_or("BENCH_LATENCY_MS", 50)?),
    };
    let ideal = cfg
        .latency
        .mul_f64(cfg.images as f64 / f64::from(cfg.workers));
    println!(
        "tail: {} images, {} workers, CDN {:?} mean: N/L time {:.2} s",
        cfg.images,
        cfg.workers,
        cfg.latency,
        ideal.as_secs_f64()
    );
    let clean = run(&cfg, 0.0).await?;
    println!(
        "  no stalls        : {:>6.2} s (listing {:.2} s)  hedges: {}",
        clean.total.as_secs_f64(),
        clean.listing.as_secs_f64(),
        clean.hedges
    );
    let stalled = run(&cfg, cfg.stall).await?;
    let target = stalled.listing + ideal.mul_f64(TARGET_MULTIPLE);
    let met = stalled.total <= target;
    println!(
        "  {:>3} stalled      : {:>6.2} s (listing {:.2} s)  hedges: {}",
        stalled.stalled,
        stalled.total.as_secs_f64(),
        stalled.listing.as_secs_f64(),
        stalled.hedges
    );
    println!(
        "target: job with {} half-way stalls <= listing + {TARGET_MULTIPLE}x N/L = {:.2} s -> {} ({:.2} s)",
        stalled.stalled,
        target.as_secs_f64(),
        if met { "MET" } else { "MISSED" },
        stalled.total.as_secs_f64()
    );
    if !met {
        eprintln!("target missed: the tail");
        std::process::exit(1);
    }
    Ok(())
}
