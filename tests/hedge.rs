//! Hedged downloads in the running daemon: CDN bodies that stall half-way
//! get a second request once they have been quiet far longer than the
//! other downloads, the first whole body wins, and every image is archived
//! once, bytes intact; with no stall, not one extra request is made.

mod common;

use common::{TestDaemon, test_settings};
use mld_testkit::archive_check::{check_collection, collection_dir, image_path};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeImage, FakeMapillary, Quality};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);
/// The daemon's default read-idle timeout, which these tests keep.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// A fake whose CDN answers in 10..30 ms: downloads with a spread, so the
/// daemon's estimate of a healthy download has something to learn.
async fn fake_with(user: &str, images: u64) -> FakeMapillary {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(10),
        cdn_latency_jitter: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user(user, images, 91);
    fake
}

/// Runs one job of `user` to `done` with 8 workers and the default 20 s
/// read-idle timeout; returns the daemon (still running), the job and how
/// long it took.
async fn archive(
    fake: &FakeMapillary,
    user: &str,
    dir: &std::path::Path,
) -> (TestDaemon, Value, Duration) {
    let settings = test_settings(fake.api_url().as_str(), dir, 8, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let started = Instant::now();
    let (_, job) = daemon.post_job(json!({ "username": user })).await;
    let id = job["id"].as_i64().expect("job id");
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    (daemon, done, started.elapsed())
}

/// `mapillary_hedged_downloads_total{won="..."}` from `/metrics`.
async fn hedges(daemon: &TestDaemon) -> HashMap<String, u64> {
    let (_, text) = daemon.request(Method::GET, "/metrics", None).await;
    let text = text.as_str().expect("metrics text").to_string();
    text.lines()
        .filter_map(|line| line.strip_prefix("mapillary_hedged_downloads_total{won=\""))
        .filter_map(|rest| rest.split_once("\"} "))
        .map(|(won, n)| {
            (
                won.to_string(),
                n.trim().parse::<f64>().expect("a count") as u64,
            )
        })
        .collect()
}

/// Every line of the collection's `metadata.jsonl` names a file whose
/// SHA-256 and size are what it says.
fn check_checksums(archive: &std::path::Path, user: &str, images: &[FakeImage]) {
    let collection = collection_dir(archive, user, Quality::Original);
    let by_id: HashMap<&str, &FakeImage> = images.iter().map(|i| (i.id.as_str(), i)).collect();
    let lines = std::fs::read_to_string(collection.join("metadata.jsonl")).expect("metadata.jsonl");
    let mut checked = 0;
    for line in lines.lines() {
        let record: Value = serde_json::from_str(line).expect("a JSON line");
        let id = record["id"].as_str().expect("id");
        let path = image_path(&collection, by_id[id]);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(record["bytes"].as_u64(), Some(bytes.len() as u64), "{line}");
        let sha = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(record["sha256"].as_str(), Some(sha.as_str()), "{line}");
        checked += 1;
    }
    assert_eq!(checked, images.len(), "one metadata line per image");
}

/// About 1 % of 600 bodies stall half-way on their first request (chosen by
/// id, so the same ones every run). Without hedging each would hold its
/// worker for the 20 s idle timeout; hedged, the job ends before one such
/// timeout, each stalled image was requested exactly twice (the twin
/// won), every other image once, and every file is whole and exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_bodies_are_hedged_and_every_image_is_archived_once() {
    let user = "hedda";
    let fake = fake_with(user, 600).await;
    fake.stall_halfway(0.01, 1);
    let images = fake.images(user);
    let stalled = fake.halfway_stalled(images.iter().map(|i| i.id.as_str()));
    assert!(
        (2..=15).contains(&stalled.len()),
        "{} of 600 chosen to stall",
        stalled.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let (daemon, done, took) = archive(&fake, user, dir.path()).await;
    assert_eq!(done["counts"]["done"], 600, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    // The bound is the idle timeout itself, not a speed: a stall left to run
    // holds its worker for all of it, so the job cannot end sooner. How far
    // inside it the job ends is the `tail` bench's figure, where load is
    // controlled (a test on a busy machine took 17 s of its 600 images).
    assert!(
        took < IDLE_TIMEOUT,
        "{} stalls took {took:?}: one waited out the idle timeout",
        stalled.len()
    );
    let stalls = fake
        .requests()
        .iter()
        .filter(|r| r.fault == Some("stall"))
        .count();
    assert_eq!(stalls, stalled.len(), "each chosen image stalled once");
    let requests = fake.cdn_requests_by_image();
    for image in &images {
        let want = if stalled.contains(&image.id) { 2 } else { 1 };
        assert_eq!(
            requests.get(&image.id),
            Some(&want),
            "requests of {}",
            image.id
        );
    }
    let hedged = hedges(&daemon).await;
    assert_eq!(
        hedged.get("twin"),
        Some(&(stalled.len() as u64)),
        "{hedged:?}"
    );
    assert_eq!(hedged.get("neither"), Some(&0), "{hedged:?}");
    check_collection(
        daemon.archive_dir(),
        user,
        Quality::Original,
        &images,
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    check_checksums(daemon.archive_dir(), user, &images);
    daemon.stop().await;
}

/// With no stall, hedging costs nothing: exactly one CDN request per image
/// and no hedge counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_stalls_every_image_is_requested_exactly_once() {
    let user = "hector";
    let fake = fake_with(user, 400).await;
    let dir = tempfile::tempdir().unwrap();
    let (daemon, done, _) = archive(&fake, user, dir.path()).await;
    assert_eq!(done["counts"]["done"], 400, "{done}");
    let requests = fake.cdn_requests_by_image();
    assert_eq!(requests.len(), 400);
    let twice: Vec<_> = requests.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "{} images requested more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let hedged = hedges(&daemon).await;
    assert!(hedged.values().all(|n| *n == 0), "{hedged:?}");
    assert_eq!(hedged.len(), 3, "{hedged:?}");
    check_checksums(daemon.archive_dir(), user, &fake.images(user));
    daemon.stop().await;
}
