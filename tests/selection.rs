//! Choosing what to archive, end to end against the fake: organizations,
//! sequences (one spanning two creators), image ids (some unknown), each
//! filter alone and together against an API that honours them and one that
//! ignores them, capped bbox searches, query timeouts, and scheduled
//! re-syncs. Every archived file is checked: body, EXIF, layout by creator.

mod common;

use common::{TestDaemon, test_settings};
use mld_testkit::archive_check::check_collection;
use mld_testkit::fake::{
    DEFAULT_TOKEN, FakeConfig, FakeImage, FakeMapillary, Faults, FilterMode, Quality, REGION,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(180);

fn job_id(v: &Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {v}"))
}

fn ids(images: &[FakeImage]) -> Vec<String> {
    images.iter().map(|m| m.id.clone()).collect()
}

/// Checks `collection`'s files against exactly `expected`.
fn check(
    daemon: &TestDaemon,
    fake: &FakeMapillary,
    user: &str,
    q: Quality,
    expected: &[FakeImage],
) {
    check_collection(daemon.archive_dir(), user, q, expected, |id| {
        fake.jpeg_marker(id, q)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_organization_job_files_each_image_under_its_creator_and_merges_metadata() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("alice", 300, 101);
    fake.add_user("bob", 200, 102);
    fake.add_user("outsider", 50, 103);
    fake.add_user_to_org("alice", "777");
    fake.add_user_to_org("bob", "777");
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 8, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;

    // A username job for part of alice's images first, in the same collection.
    let alice = fake.images("alice");
    let first_day: Vec<FakeImage> = alice[..120].to_vec();
    let start = first_day[0].captured_at.unwrap();
    let end = first_day[119].captured_at.unwrap() + 1;
    let (status, user_job) = daemon
        .post_job(json!({"username": "alice", "quality": "1024",
            "start_captured_at": mapillary_downloader::selection::rfc3339(start),
            "end_captured_at": mapillary_downloader::selection::rfc3339(end)}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user_job}");
    daemon
        .wait_for_state(job_id(&user_job), &["done"], LONG)
        .await;

    let (status, org) = daemon
        .post_job(json!({"organization_id": "777", "quality": "1024"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    assert_eq!(org["source_kind"], "organization");
    assert_eq!(org["organization_id"], "777");
    assert!(org["username"].is_null());
    let done = daemon.wait_for_state(job_id(&org), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 500, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    // Each creator's collection holds all their images once: alice's merges
    // both jobs in one metadata.jsonl; nobody else's images are there.
    check(&daemon, &fake, "alice", Quality::Q1024, &alice);
    check(&daemon, &fake, "bob", Quality::Q1024, &fake.images("bob"));
    assert!(
        !daemon
            .archive_dir()
            .join("mapillary-outsider-1024")
            .exists()
    );
    // Images the first job archived were not downloaded again.
    for image in &first_day {
        assert_eq!(fake.cdn_hits(&image.id), 1, "{}", image.id);
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sequence_job_spans_two_creators_and_an_image_job_fails_unknown_ids_clearly() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("carl", 40, 104);
    fake.add_user("dina", 10, 105);
    fake.add_sequence("SEQspanning0000000000a", &[("carl", 30), ("dina", 20)]);
    fake.add_sequence("SEQcarlonly00000000000b", &[("carl", 15)]);
    let in_sequence = |user: &str, seq: &str| -> Vec<FakeImage> {
        fake.images(user)
            .into_iter()
            .filter(|m| m.sequence.as_deref() == Some(seq))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 8, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;

    let (status, job) = daemon
        .post_job(
            json!({"sequence_ids": ["SEQspanning0000000000a", "SEQcarlonly00000000000b",
            "SEQnobodyhasthis000000c", "SEQspanning0000000000a"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(
        job["sequence_ids"],
        json!([
            "SEQcarlonly00000000000b",
            "SEQnobodyhasthis000000c",
            "SEQspanning0000000000a"
        ]),
        "deduplicated and sorted"
    );
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 30 + 20 + 15, "{done}");
    let mut carl = in_sequence("carl", "SEQspanning0000000000a");
    carl.extend(in_sequence("carl", "SEQcarlonly00000000000b"));
    check(&daemon, &fake, "carl", Quality::Original, &carl);
    check(
        &daemon,
        &fake,
        "dina",
        Quality::Original,
        &in_sequence("dina", "SEQspanning0000000000a"),
    );

    // Image ids: some of two users, plus three that do not exist.
    let mut wanted: Vec<FakeImage> = fake.images("carl")[..12].to_vec();
    wanted.extend(fake.images("dina")[..5].to_vec());
    let mut posted = ids(&wanted);
    posted.extend(["999000000000001", "999000000000002", "999000000000003"].map(String::from));
    let (status, job) = daemon
        .post_job(json!({"image_ids": posted, "quality": "256"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 17, "{done}");
    assert_eq!(done["counts"]["failed"], 3, "{done}");
    assert_eq!(
        done["counts"]["deleted"], 0,
        "unknown ids are errors, not deletions"
    );
    let carl_256: Vec<FakeImage> = wanted[..12].to_vec();
    check(&daemon, &fake, "carl", Quality::Q256, &carl_256);
    check(&daemon, &fake, "dina", Quality::Q256, &wanted[12..]);
    let store =
        mapillary_downloader::store::Store::open_read_only(&dir.path().join("mapillary.db"))
            .await
            .unwrap();
    let failed = store.failed_images(job_id(&job), 10).await.unwrap();
    assert_eq!(failed.len(), 3);
    for image in failed {
        let error = image.last_error.unwrap_or_default();
        assert!(error.contains("no image with this id"), "{error}");
    }
    store.close().await;
    daemon.stop().await;
}

/// The filters the test applies itself, independently of the daemon.
struct Expect {
    bbox: Option<[f64; 4]>,
    since: Option<i64>,
    until: Option<i64>,
    pano: Option<bool>,
}

impl Expect {
    fn keeps(&self, m: &FakeImage) -> bool {
        if let Some([w, s, e, n]) = self.bbox {
            match m.position() {
                Some((lat, lon)) if lon >= w && lon <= e && lat >= s && lat <= n => {}
                _ => return false,
            }
        }
        if (self.since.is_some() || self.until.is_some()) && m.captured_at.is_none() {
            return false;
        }
        let at = m.captured_at.unwrap_or(0);
        if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u) {
            return false;
        }
        match self.pano {
            Some(true) => m.is_pano == Some(true),
            Some(false) => m.is_pano != Some(true),
            None => true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_filter_alone_and_combined_holds_whether_the_api_honours_it_or_not() {
    for mode in [FilterMode::Honour, FilterMode::Ignore] {
        let fake = FakeMapillary::start(FakeConfig {
            filters: mode,
            ..FakeConfig::default()
        })
        .await;
        fake.add_user("erin", 1200, 106);
        let all = fake.images("erin");
        let mut times: Vec<i64> = all.iter().filter_map(|m| m.captured_at).collect();
        times.sort_unstable();
        let (since, until) = (times[times.len() / 4], times[times.len() * 3 / 4]);
        let bbox = [
            REGION[0],
            REGION[1],
            (REGION[0] + REGION[2]) / 2.0,
            (REGION[1] + REGION[3]) / 2.0,
        ];
        let date = mapillary_downloader::selection::rfc3339;
        // One quality per case, so each lands in a collection of its own.
        let cases = [
            (
                Quality::Original,
                json!({"bbox": bbox}),
                Expect {
                    bbox: Some(bbox),
                    since: None,
                    until: None,
                    pano: None,
                },
            ),
            (
                Quality::Q2048,
                json!({"start_captured_at": date(since), "end_captured_at": date(until)}),
                Expect {
                    bbox: None,
                    since: Some(since),
                    until: Some(until),
                    pano: None,
                },
            ),
            (
                Quality::Q1024,
                json!({"pano": "only"}),
                Expect {
                    bbox: None,
                    since: None,
                    until: None,
                    pano: Some(true),
                },
            ),
            (
                Quality::Q256,
                json!({"bbox": bbox, "start_captured_at": date(since), "pano": "exclude"}),
                Expect {
                    bbox: Some(bbox),
                    since: Some(since),
                    until: None,
                    pano: Some(false),
                },
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(fake.api_url().as_str(), dir.path(), 8, &[]);
        let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
        for (quality, filters, expect) in &cases {
            let mut body = filters.clone();
            body["username"] = json!("erin");
            body["quality"] = json!(quality.as_str());
            let (status, job) = daemon.post_job(body).await;
            assert_eq!(status, StatusCode::CREATED, "{job}");
            let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
            let expected: Vec<FakeImage> =
                all.iter().filter(|m| expect.keeps(m)).cloned().collect();
            assert!(
                !expected.is_empty() && expected.len() < all.len(),
                "{quality:?}: the case selects some images"
            );
            assert_eq!(
                done["counts"]["discovered"].as_u64(),
                Some(expected.len() as u64),
                "{mode:?} {quality:?}: only the selection is counted: {done}"
            );
            check(&daemon, &fake, "erin", *quality, &expected);
        }
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capped_bbox_search_is_split_until_every_one_of_9000_images_is_found() {
    let fake = FakeMapillary::start(FakeConfig {
        cap_bbox_searches: true,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("fay", 9000, 107);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        16,
        &[("MLD__MAPILLARY__PAGE_SIZE", "2000")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon
        .post_job(json!({"username": "fay", "quality": "256", "bbox": REGION}))
        .await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    // Positions are the computed ones where served: a few lie just outside.
    let inside = Expect {
        bbox: Some(REGION),
        since: None,
        until: None,
        pano: None,
    };
    let expected: Vec<FakeImage> = fake
        .images("fay")
        .into_iter()
        .filter(|m| inside.keeps(m))
        .collect();
    assert!(expected.len() > 8_900, "{}", expected.len());
    assert_eq!(
        done["counts"]["discovered"].as_u64(),
        Some(expected.len() as u64),
        "{done}"
    );
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    check(&daemon, &fake, "fay", Quality::Q256, &expected);
    assert!(done["note"].is_null(), "no tile stayed full: {done}");
    let listings = fake.api_requests_to("/images");
    assert!(
        (5..200).contains(&listings),
        "{listings} listing calls for 9,000 images in capped pages of 2,000"
    );
    eprintln!("capped bbox: 9,000 images found with {listings} listing calls");
    daemon.stop().await;
}

/// A capped bbox page is full even when one of its items does not parse:
/// the tile is split, and only that one item is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_page_with_an_unreadable_item_still_splits_the_tile() {
    let fake = FakeMapillary::start(FakeConfig {
        cap_bbox_searches: true,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("gil", 400, 108);
    let inside = Expect {
        bbox: Some(REGION),
        since: None,
        until: None,
        pano: None,
    };
    let expected: Vec<FakeImage> = fake
        .images("gil")
        .into_iter()
        .filter(|m| inside.keeps(m))
        .collect();
    assert!(expected.len() > 300, "{}", expected.len());
    let unreadable = expected[0].id.clone();
    fake.set_unreadable_in_listings([unreadable.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        8,
        &[("MLD__MAPILLARY__PAGE_SIZE", "100")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon
        .post_job(json!({"username": "gil", "quality": "256", "bbox": REGION}))
        .await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    let expected: Vec<FakeImage> = expected
        .into_iter()
        .filter(|m| m.id != unreadable)
        .collect();
    assert_eq!(
        done["counts"]["discovered"].as_u64(),
        Some(expected.len() as u64),
        "{done}"
    );
    check(&daemon, &fake, "gil", Quality::Q256, &expected);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn query_timeouts_on_a_third_of_pages_shrink_the_pages_and_end_complete() {
    let fake = FakeMapillary::start(FakeConfig {
        faults: Faults {
            api_query_timeout: 0.3,
            ..Faults::default()
        },
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("gil", 4000, 108);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        8,
        &[("MLD__MAPILLARY__PAGE_SIZE", "2000")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon
        .post_job(json!({"username": "gil", "quality": "256"}))
        .await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 4000, "{done}");
    let limits = fake.images_limits();
    assert_eq!(limits.first(), Some(&2000));
    assert!(
        limits.windows(2).all(|w| w[1] <= w[0]),
        "a smaller limit is kept for the rest of the job: {limits:?}"
    );
    assert!(limits.iter().all(|&l| l >= 100), "{limits:?}");
    assert!(
        limits.last() < limits.first(),
        "timeouts halved the page size: {limits:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_resync_fires_by_itself_and_fetches_only_new_images() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("hugo", 120, 109);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (status, job) = daemon
        .post_job(json!({"username": "hugo", "resync_every": "10m"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["resync_every"], "10m");
    let id = job_id(&job);
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    let due = done["next_sync_at"].as_str().expect("a next re-sync time");
    let due_ms = chrono::DateTime::parse_from_rfc3339(due)
        .unwrap()
        .timestamp_millis();
    let finished_ms = chrono::DateTime::parse_from_rfc3339(done["updated_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_eq!(due_ms - finished_ms, 600_000, "{done}");

    // The same post with another interval updates the job.
    let (status, same) = daemon
        .post_job(json!({"username": "hugo", "resync_every": "6h"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{same}");
    assert_eq!(job_id(&same), id);
    assert_eq!(same["resync_every"], "6h");
    // Posting a done job's selection again also re-syncs it now: let that
    // run end first, or its finish would overwrite the due time set below.
    assert_ne!(same["state"], "done", "{same}");
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 120, "{done}");

    // New images appear; the clock is moved to the due time (the scheduler
    // itself is not touched: it notices on its own).
    fake.add_user("hugo", 30, 110);
    let raw = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("mapillary.db")),
        )
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET next_sync_at = ? WHERE id = ?")
        .bind(chrono::Utc::now().timestamp_millis() - 1)
        .bind(id)
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let started = Instant::now();
    loop {
        let job = daemon.job(id).await;
        if job["state"] == "done" && job["counts"]["done"] == 150 {
            assert!(job["next_sync_at"].is_string(), "{job}");
            break;
        }
        assert!(started.elapsed() < LONG, "the re-sync never ran: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(
        &daemon,
        &fake,
        "hugo",
        Quality::Original,
        &fake.images("hugo"),
    );
    assert_eq!(
        fake.cdn_hits_total(),
        150,
        "only the 30 new images were downloaded by the re-sync"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_whatever_the_spelling() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ivo", 5, 111);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 2, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (status, a) = daemon
        .post_job(
            json!({"image_ids": ["30", "4", "30"], "start_captured_at": "2024-01-01",
            "pano": "exclude"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(a["image_ids"], json!(["4", "30"]));
    assert_eq!(a["start_captured_at"], "2024-01-01T00:00:00.000Z");
    let (status, b) = daemon
        .post_job(
            json!({"image_ids": ["4", "30"], "start_captured_at": "2024-01-01T01:00:00+01:00",
            "pano": "exclude", "quality": "original", "format": "jpeg", "package": "none"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(job_id(&a), job_id(&b));
    let (status, c) = daemon
        .post_job(json!({"image_ids": ["4", "30"], "start_captured_at": "2024-01-01"}))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "another pano filter is another job: {c}"
    );
    let (_, list) = daemon.request(Method::GET, "/jobs", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    daemon.stop().await;
}
