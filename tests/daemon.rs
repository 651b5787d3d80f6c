//! The daemon end to end, in-process, against the fake Mapillary API: happy
//! paths, every fault at once, bad tokens, invalid ids, re-sync, and the
//! token never leaking.

mod common;

use common::{TestDaemon, test_settings};
use mapillary_downloader::model::{self, ImageMeta};
use mapillary_downloader::selection::JobSpec;
use mld_testkit::archive_check::{check_collection, image_path};
use mld_testkit::fake::{
    DEFAULT_TOKEN, FakeConfig, FakeImage, FakeMapillary, Fault, Faults, Quality, Route,
};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn job_id(v: &serde_json::Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archives_two_users_at_once_with_and_without_bbox() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("alice", 3000, 1);
    fake.add_user("bob", 1500, 2);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 16, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;

    // A bbox around the middle of bob's images.
    let bob_all = fake.images("bob");
    let (mut lats, mut lons): (Vec<f64>, Vec<f64>) =
        bob_all.iter().filter_map(FakeImage::position).unzip();
    lats.sort_by(f64::total_cmp);
    lons.sort_by(f64::total_cmp);
    let bbox = [
        lons[lons.len() / 4],
        lats[lats.len() / 4],
        lons[lons.len() * 3 / 4],
        lats[lats.len() * 3 / 4],
    ];
    let inside = |m: &FakeImage| {
        m.position().is_some_and(|(lat, lon)| {
            lon >= bbox[0] && lon <= bbox[2] && lat >= bbox[1] && lat <= bbox[3]
        })
    };
    let bob_expected: Vec<FakeImage> = bob_all.iter().filter(|m| inside(m)).cloned().collect();
    assert!(bob_expected.len() > 100 && bob_expected.len() < bob_all.len());

    let (status, alice) = daemon.post_job(json!({"username": "alice"})).await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    let (status, bob) = daemon
        .post_job(json!({"username": "bob", "quality": "1024", "bbox": bbox}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bob}");
    let (status, again) = daemon
        .post_job(json!({"username": "alice", "quality": "original"}))
        .await;
    assert_eq!(status, StatusCode::OK, "a repeated post is the same job");
    assert_eq!(job_id(&again), job_id(&alice));

    let alice = daemon.wait_for_state(job_id(&alice), &["done"], LONG).await;
    let bob = daemon.wait_for_state(job_id(&bob), &["done"], LONG).await;
    assert_eq!(alice["counts"]["done"], 3000, "{alice}");
    assert_eq!(alice["counts"]["failed"], 0);
    assert_eq!(alice["enumeration_complete"], true);
    assert_eq!(
        bob["counts"]["done"].as_u64(),
        Some(bob_expected.len() as u64),
        "{bob}"
    );

    check_collection(
        daemon.archive_dir(),
        "alice",
        Quality::Original,
        &fake.images("alice"),
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    check_collection(
        daemon.archive_dir(),
        "bob",
        Quality::Q1024,
        &bob_expected,
        |id| fake.jpeg_marker(id, Quality::Q1024),
    );
    // Every image was downloaded exactly once.
    assert_eq!(fake.cdn_hits_total(), 3000 + bob_expected.len());

    let (status, report) = daemon.request(reqwest::Method::GET, "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        report["totals"]["done"].as_u64(),
        Some(3000 + bob_expected.len() as u64)
    );
    daemon.stop().await;
    assert!(!fake.saw_token_on_cdn());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completes_correctly_with_every_fault_at_once() {
    let fake = FakeMapillary::start(FakeConfig {
        faults: Faults::preset("chaos").unwrap(),
        url_ttl_secs: 2,
        token_in_next: true,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("carol", 1200, 3);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        8,
        &[
            ("MLD__RETRY__MAX_ATTEMPTS", "30"),
            ("MLD__MAPILLARY__URL_REFRESH_MARGIN_SECS", "0"),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon
        .post_job(json!({"username": "carol", "quality": "2048"}))
        .await;
    let job = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(job["counts"]["done"], 1200, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    check_collection(
        daemon.archive_dir(),
        "carol",
        Quality::Q2048,
        &fake.images("carol"),
        |id| fake.jpeg_marker(id, Quality::Q2048),
    );
    assert!(!fake.saw_token_on_cdn());
    daemon.stop().await;
}

/// With `max_attempts = 1`, any attempt spent on an expired URL or a rate
/// limit would fail an image for good. None may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_urls_and_rate_limits_cost_no_attempt() {
    let fake = FakeMapillary::start(FakeConfig {
        faults: Faults::preset("ratelimit").unwrap(),
        // URLs expire one second after they are issued.
        url_ttl_secs: 1,
        cdn_latency: Duration::from_millis(5),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("dave", 400, 4);
    // Besides URLs that really expire, the CDN rejects some fresh-looking ones.
    let mut rejections = vec![Fault::Expired; 30];
    rejections.extend(vec![Fault::Gone; 10]);
    fake.script(Route::Cdn, rejections);
    // The first API call (the listing's first page) is surely rate-limited,
    // with a Retry-After of 2 s; the preset adds random ones later.
    fake.script(
        Route::Api,
        vec![Fault::RateLimit {
            retry_after: Some(2),
        }],
    );
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[
            ("MLD__RETRY__MAX_ATTEMPTS", "1"),
            ("MLD__MAPILLARY__URL_REFRESH_MARGIN_SECS", "0"),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "dave"})).await;
    let job = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    assert_eq!(job["counts"]["done"], 400, "{job}");
    let refreshes = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/" && r.query.contains("ids="))
        .count();
    assert!(
        refreshes > 0,
        "expired URLs were refreshed through GET /?ids="
    );
    let rejected = fake
        .requests()
        .iter()
        .filter(|r| r.status == 403 || r.status == 410)
        .count();
    assert!(rejected >= 40, "the CDN really rejected URLs ({rejected})");
    // The scripted 429 was served, and waited out: no API call started
    // until its Retry-After had passed.
    let api: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Api)
        .collect();
    let first = &api[0];
    assert_eq!(first.status, 429, "{first:?}");
    let next = api[1..]
        .iter()
        .map(|r| r.started)
        .min()
        .expect("the listing went on after the 429");
    let waited = next.duration_since(first.at);
    assert!(
        waited >= Duration::from_millis(1900),
        "the next API call came {waited:?} after a 429 asking for 2 s"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_pauses_the_job_and_the_daemon_stays_up() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("erin", 50, 5);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 2, &[]);
    let daemon = TestDaemon::start(settings, "MLY|1|not-the-right-token").await;
    let (_, job) = daemon.post_job(json!({"username": "erin"})).await;
    let job = daemon.wait_for_state(job_id(&job), &["paused"], LONG).await;
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("MAPILLARY_TOKEN"),
        "clear last_error: {error}"
    );
    assert!(!error.contains("not-the-right-token"));
    // No crash loop: the API answers and nothing was burnt.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = daemon.request(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    let api_calls = fake.api_calls();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.api_calls(),
        api_calls,
        "a paused job makes no more calls"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ids_fail_clearly_and_write_nothing_outside_the_archive() {
    // Deep enough that every chain below climbs out of the temp root.
    let root = tempfile::tempdir().unwrap();
    let marker = format!("mld-escape-{}", std::process::id());
    let climb = "../".repeat(16);
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("frank", 20, 6);
    let good = fake.images("frank")[0].clone();
    let hostile_ids = [
        format!("12/{climb}{marker}-a"),
        format!("{climb}{marker}-b"),
        format!("/tmp/{marker}-c"),
        format!("..\\..\\{marker}-d"),
    ];
    for id in &hostile_ids {
        fake.add_image(
            "frank",
            FakeImage {
                id: id.clone(),
                ..good.clone()
            },
        );
    }
    fake.add_image(
        "frank",
        FakeImage {
            id: "999000111".into(),
            sequence: Some(format!("{climb}tmp/{marker}-e")),
            ..good
        },
    );
    let data = root.path().join("a/b/data");
    let settings = test_settings(fake.api_url().as_str(), &data, 2, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "frank"})).await;
    let job = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    daemon.stop().await;

    // Nothing anywhere under the root but the data dir, and nothing named
    // after the marker anywhere the chains could have reached.
    let mut stack = vec![root.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            assert!(
                path.starts_with(&data) || data.starts_with(&path),
                "stray {}",
                path.display()
            );
            assert!(
                !entry.file_name().to_string_lossy().contains(&marker),
                "an escaped file: {}",
                path.display()
            );
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    for suffix in ["a", "b", "c", "d", "e"] {
        for base in [std::path::Path::new("/"), std::path::Path::new("/tmp")] {
            let name = format!("{marker}-{suffix}");
            for candidate in [base.join(&name), base.join(format!("{name}.jpg"))] {
                assert!(!candidate.exists(), "escaped to {}", candidate.display());
            }
        }
    }
    assert_eq!(job["counts"]["done"], 20, "{job}");
    assert_eq!(job["counts"]["failed"], 5, "{job}");
    let store = mapillary_downloader::store::Store::open_read_only(&data.join("mapillary.db"))
        .await
        .unwrap();
    let failed = store.failed_images(job_id(&job), 10).await.unwrap();
    assert_eq!(failed.len(), 5);
    assert!(
        failed
            .iter()
            .all(|f| f.last_error.as_deref().unwrap_or("").contains("invalid")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_post_of_a_done_job_fetches_only_new_images() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("gina", 300, 7);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "gina"})).await;
    daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(fake.cdn_hits_total(), 300);

    fake.add_user("gina", 40, 8);
    let (status, resync) = daemon.post_job(json!({"username": "gina"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job_id(&resync), job_id(&job));
    let job = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(job["counts"]["done"], 340, "{job}");
    assert_eq!(
        fake.cdn_hits_total(),
        340,
        "old images are not downloaded again"
    );
    check_collection(
        daemon.archive_dir(),
        "gina",
        Quality::Original,
        &fake.images("gina"),
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    daemon.stop().await;
}

/// URLs that went stale while the daemon was down are refreshed 50 per
/// `GET /?ids=` call, even though workers free their slots one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_urls_are_refreshed_fifty_at_a_time() {
    use mapillary_downloader::store::{JobState, Store};
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ivy", 400, 10);
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let store = Store::open(&dir.path().join("mapillary.db")).await.unwrap();
    let job = store
        .submit_job(&JobSpec::user("ivy", model::Quality::Original), now)
        .await
        .unwrap()
        .job()
        .clone();
    let stale: Vec<ImageMeta> = fake
        .images("ivy")
        .into_iter()
        .map(|mut m| {
            m.thumb_original_url =
                Some(fake.thumb_url_expiring_at(&m.id, Quality::Original, now / 1000 - 60));
            m.to()
        })
        .collect();
    store.insert_page(job.id, &stale, None, now).await.unwrap();
    store
        .transition_job(job.id, &[JobState::Queued], JobState::Downloading, now)
        .await
        .unwrap()
        .expect("the job was queued");
    store.close().await;

    let settings = test_settings(fake.api_url().as_str(), dir.path(), 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let done = daemon.wait_for_state(job.id, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 400, "{done}");
    let batches: Vec<usize> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/" && r.query.contains("ids="))
        .map(|r| {
            let ids = r
                .query
                .split('&')
                .find_map(|p| p.strip_prefix("ids="))
                .unwrap_or_default();
            ids.split("%2C").flat_map(|part| part.split(',')).count()
        })
        .collect();
    assert!(batches.iter().all(|&n| n <= 50), "{batches:?}");
    assert!(
        batches.len() <= 400 / 50 + 4,
        "{} refresh calls for 400 stale URLs: {batches:?}",
        batches.len()
    );
    assert_eq!(fake.cdn_hits_total(), 400);
    daemon.stop().await;
}

/// A whole file already at the final path (a crash between rename and the
/// done mark, or a Python-tool archive) is re-tagged, not downloaded; a file
/// that is not a JPEG there is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_already_in_place_are_adopted_not_downloaded() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("jo", 60, 14);
    let dir = tempfile::tempdir().unwrap();
    let collection = dir.path().join("archive/mapillary-jo-original");
    let images = fake.images("jo");
    for (i, meta) in images.iter().take(20).enumerate() {
        let path = image_path(&collection, meta);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let body = if i < 15 {
            fake.expected_body(&meta.id, Quality::Original)
        } else {
            b"<html>not an image</html>".to_vec()
        };
        std::fs::write(&path, body).unwrap();
    }
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 2, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "jo"})).await;
    daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    for meta in &images[..15] {
        assert_eq!(fake.cdn_hits(&meta.id), 0, "{} was in place", meta.id);
    }
    for meta in &images[15..20] {
        assert_eq!(fake.cdn_hits(&meta.id), 1, "{} held junk", meta.id);
    }
    check_collection(
        daemon.archive_dir(),
        "jo",
        Quality::Original,
        &images,
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    daemon.stop().await;
}

/// A CDN that refuses every fresh URL for an image (it was withdrawn) must
/// not keep the job busy forever: after a few free refreshes, refusals cost
/// attempts and the image ends failed with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_the_cdn_always_refuses_ends_failed_not_looping() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("lena", 1, 15);
    fake.script(Route::Cdn, vec![Fault::Expired; 100]);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        1,
        &[("MLD__RETRY__MAX_ATTEMPTS", "2")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "lena"})).await;
    let job = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(job["counts"]["failed"], 1, "{job}");
    let store =
        mapillary_downloader::store::Store::open_read_only(&dir.path().join("mapillary.db"))
            .await
            .unwrap();
    let failed = store.failed_images(job_id(&job), 5).await.unwrap();
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("refused"),
        "{failed:?}"
    );
    let refusals = fake.requests().iter().filter(|r| r.status == 403).count();
    assert!(
        (6..=20).contains(&refusals),
        "{refusals} refusals before giving up"
    );
    daemon.stop().await;
}

/// A job whose finishing fails (its `metadata.jsonl` cannot be written: a
/// folder is in the way) stays open with `last_error` saying why, is tried
/// again, and once the obstacle is gone ends done with the error cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_finish_says_why_and_finishes_once_it_can() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("fern", 30, 41);
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(
        test_settings(fake.api_url().as_str(), dir.path(), 2, &[]),
        DEFAULT_TOKEN,
    )
    .await;
    let blocker = daemon
        .archive_dir()
        .join("mapillary-fern-256/metadata.jsonl");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let (_, job) = daemon
        .post_job(json!({"username": "fern", "quality": "256"}))
        .await;
    let id = job_id(&job);
    let deadline = std::time::Instant::now() + LONG;
    let stuck = loop {
        let job = daemon.job(id).await;
        if job["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not finish the job"))
        {
            break job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no finishing error: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stuck["counts"]["done"], 30, "{stuck}");
    assert_ne!(stuck["state"], "done", "{stuck}");
    std::fs::remove_dir_all(&blocker).unwrap();
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    assert!(
        done["last_error"].is_null(),
        "cleared once finished: {done}"
    );
    assert!(blocker.is_file(), "metadata.jsonl written");
    daemon.stop().await;
}

/// Shutdown does not wait for a job's finishing: packing can take minutes,
/// or hang on a stuck disk. Here one loose file is a FIFO nobody writes, so
/// the tar write blocks reading it; the daemon still stops within its grace,
/// and the next start (the file back in place) finishes the job with every
/// image in the tar.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_does_not_wait_for_a_packing_stuck_on_a_file() {
    use mapillary_downloader::archive::checksum::sha256_hex;
    use mapillary_downloader::archive::{ArchivedFile, FileKind, collection_path};
    use mapillary_downloader::model::Packaging;
    use mapillary_downloader::store::{JobState, Store};
    use std::sync::Arc;

    let fake = FakeMapillary::start(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        2,
        &[("MLD__WORKERS__SHUTDOWN_GRACE_SECS", "2")],
    );
    let archive = settings.archive_dir();
    let folder = collection_path(&archive, "mapillary-quinn-1024").unwrap();
    let store = Store::open(&settings.database_path()).await.unwrap();
    let mut spec = JobSpec::user("quinn", model::Quality::Q1024);
    spec.package = Packaging::Tar;
    let job = store.submit_job(&spec, 1).await.unwrap().job().id;
    let images: Vec<ImageMeta> = (0..5)
        .map(|i| ImageMeta {
            id: (5000 + i).to_string(),
            captured_at: Some(1_704_153_600_000 + i as i64 * 1000),
            thumb_1024_url: Some(format!("https://cdn.example/{i}.jpg")),
            ..Default::default()
        })
        .collect();
    store.insert_page(job, &images, None, 2).await.unwrap();
    store
        .transition_job(job, &[JobState::Queued], JobState::Downloading, 2)
        .await
        .unwrap();
    let owner: Arc<str> = "setup".into();
    let mut stuck = None;
    for image in store
        .claim(&owner, 10, Duration::from_secs(60), 3, 0)
        .await
        .unwrap()
    {
        let path = mapillary_downloader::archive::image_path(&folder, &image.meta, FileKind::Jpeg)
            .unwrap();
        let bytes = format!("image {}", image.image_id).repeat(40).into_bytes();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // The last image by capture time: the thumbnail (the first) reads fine.
        if image.image_id == "5004" {
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo reads a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            stuck = Some((path.clone(), bytes.clone()));
        } else {
            std::fs::write(&path, &bytes).unwrap();
        }
        let file = ArchivedFile::loose(&path, bytes.len() as u64, Some(sha256_hex(&bytes)));
        assert!(store.complete(&image.lease, &file, 3).await.unwrap());
    }
    store.close().await;
    let (fifo, bytes) = stuck.unwrap();

    let daemon = TestDaemon::start(settings.clone(), DEFAULT_TOKEN).await;
    // The tar's .part file appears: the packer is reading, and blocks on the FIFO.
    let deadline = std::time::Instant::now() + LONG;
    while !std::fs::read_dir(&folder)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".part"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "packing never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(8), daemon.stop()).await;
    // Free the blocked reader (it sees an empty file) whatever happened.
    let unblock = fifo.clone();
    tokio::task::spawn_blocking(move || {
        drop(std::fs::OpenOptions::new().write(true).open(unblock));
    })
    .await
    .unwrap();
    assert!(stopped.is_ok(), "shutdown waited for the stuck packing");

    // The file comes back; the next start finishes the job.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_file(&fifo);
    std::fs::write(&fifo, &bytes).unwrap();
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let done = daemon.wait_for_state(job, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 5, "{done}");
    let members: usize = mld_testkit::tar_check::tars_in(&folder)
        .keys()
        .map(|tar| mld_testkit::tar_check::list(&folder.join(tar)).len())
        .sum();
    assert_eq!(members, 5, "every image in the tar");
    daemon.stop().await;
}

/// The HTTP API runs on a thread and a runtime of its own (issue 24): with
/// every thread of the engine's runtime held by a task that never yields
/// (as a page parse or an image's hashing holds one for a while), `/status`
/// still answers at once, from the database, instead of queueing behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_every_engine_thread_is_busy() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 2, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (status, _) = daemon.request(reqwest::Method::GET, "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    let release = Arc::new(AtomicBool::new(false));
    for _ in 0..4 {
        let release = release.clone();
        tokio::spawn(async move {
            while !release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
    // This body runs on a thread of its own: let the spinners take both workers.
    std::thread::sleep(Duration::from_millis(100));
    let addr = daemon.base().trim_start_matches("http://").to_string();
    let asked = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let started = std::time::Instant::now();
        write!(
            tcp,
            "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let read = tcp.read_to_end(&mut answer);
        (read.map_err(|e| e.kind()), started.elapsed(), answer)
    })
    .join()
    .unwrap();
    release.store(true, Ordering::Relaxed);
    let (read, took, answer) = asked;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok() && answer.starts_with("HTTP/1.1 200") && answer.contains("\"totals\""),
        "no answer from /status in {took:?} with the engine's runtime busy ({read:?}): {answer}"
    );
    daemon.stop().await;
}
