//! What the real service does that no document lists, and how the daemon
//! comes through it: images deleted mid-run, a batch of mostly deleted ids,
//! an API that refuses every refresh, a `next` that loops through empty
//! pages, CDN bodies that stall half-way, and a token fixed by a restart.

mod common;

use common::{TestDaemon, test_settings};
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::store::{FailReason, ImageState, JobState, Store};
use mld_testkit::archive_check::check_collection;
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeImage, FakeMapillary, Faults, Quality};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

fn job_id(v: &Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {v}"))
}

/// `GET /` calls with `ids=`: URL refreshes.
fn refresh_calls(fake: &FakeMapillary) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path == "/" && r.query.contains("ids="))
        .count()
}

fn listing_calls(fake: &FakeMapillary) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.path == "/images")
        .count()
}

/// Writes a finished listing of `images` with URLs that expired a minute
/// ago straight into a new database, so the daemon's first move for every
/// image is a `GET /?ids=` refresh. Returns the job id.
async fn job_with_stale_urls(
    fake: &FakeMapillary,
    data_dir: &Path,
    username: &str,
    images: &[FakeImage],
) -> i64 {
    use mapillary_downloader::model::{self, ImageMeta};
    let now = chrono::Utc::now().timestamp_millis();
    let store = Store::open(&data_dir.join("mapillary.db")).await.unwrap();
    let job = store
        .submit_job(&JobSpec::user(username, model::Quality::Original), now)
        .await
        .unwrap()
        .job()
        .clone();
    let stale: Vec<ImageMeta> = images
        .iter()
        .map(|image| {
            let mut meta: ImageMeta = image.to();
            meta.thumb_original_url =
                Some(fake.thumb_url_expiring_at(&image.id, Quality::Original, now / 1000 - 60));
            meta
        })
        .collect();
    store.insert_page(job.id, &stale, None, now).await.unwrap();
    store
        .transition_job(job.id, &[JobState::Queued], JobState::Downloading, now)
        .await
        .unwrap()
        .expect("the job was queued");
    store.close().await;
    job.id
}

/// The fate of every image of a job, read beside the daemon.
async fn image_states(
    data_dir: &Path,
    job: i64,
    ids: impl Iterator<Item = String>,
) -> Vec<(String, ImageState, Option<FailReason>)> {
    let store = Store::open_read_only(&data_dir.join("mapillary.db"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for id in ids {
        let record = store
            .image_by_id(job, &id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("image {id} was never discovered"));
        out.push((id, record.state, record.fail_reason));
    }
    store.close().await;
    out
}

/// 2,000 images whose URLs expire every few seconds; 3 % of them are
/// deleted on Mapillary a few seconds into the run. The job ends, every
/// surviving image is archived and exact, every deleted one not archived
/// before its deletion is failed with reason `deleted`, and the API calls
/// stay within a bound: the listing's pages, plus one refresh per 50 images
/// per URL lifetime of the run, plus one isolating call per deleted image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_deleted_mid_run_fail_as_deleted_and_the_rest_is_archived() {
    let ttl_secs = 4;
    let fake = FakeMapillary::start(FakeConfig {
        url_ttl_secs: ttl_secs,
        cdn_latency: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("dora", 2000, 61);
    let all = fake.images("dora");
    let doomed: Vec<String> = all.iter().step_by(33).map(|m| m.id.clone()).collect();
    assert_eq!(doomed.len(), 61);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        16,
        &[("MLD__MAPILLARY__URL_REFRESH_MARGIN_SECS", "1")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let started = Instant::now();
    let (_, job) = daemon.post_job(json!({"username": "dora"})).await;
    let id = job_id(&job);
    // A few seconds in: every image discovered, some archived, most still
    // to come. (An image deleted before it is listed is never discovered.)
    loop {
        let job = daemon.job(id).await;
        if job["counts"]["done"].as_u64().unwrap_or(0) >= 150 && job["enumeration_complete"] == true
        {
            break;
        }
        assert!(started.elapsed() < LONG, "no progress: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.delete_images(doomed.iter().cloned());
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    let elapsed = started.elapsed();

    let states = image_states(dir.path(), id, all.iter().map(|m| m.id.clone())).await;
    let doomed_set: HashSet<&String> = doomed.iter().collect();
    let mut deleted = 0;
    for (image, state, reason) in &states {
        if doomed_set.contains(image) {
            // Archived before it was deleted, or failed as deleted: never an error.
            match state {
                ImageState::Done => {}
                ImageState::Failed => {
                    assert_eq!(*reason, Some(FailReason::Deleted), "{image}");
                    deleted += 1;
                }
                other => panic!("{image} ended {other:?}"),
            }
        } else {
            assert_eq!(
                *state,
                ImageState::Done,
                "{image} lives and must be archived"
            );
        }
    }
    assert!(deleted > 0, "the deletion came after every image was done");
    assert_eq!(done["counts"]["deleted"].as_u64(), Some(deleted), "{done}");
    assert_eq!(done["counts"]["failed"].as_u64(), Some(deleted), "{done}");
    assert_eq!(
        done["counts"]["done"].as_u64(),
        Some(2000 - deleted),
        "{done}"
    );
    let archived: Vec<FakeImage> = all
        .iter()
        .filter(|m| {
            states
                .iter()
                .any(|(id, state, _)| *id == m.id && *state == ImageState::Done)
        })
        .cloned()
        .collect();
    check_collection(
        daemon.archive_dir(),
        "dora",
        Quality::Original,
        &archived,
        |id| fake.jpeg_marker(id, Quality::Original),
    );

    let pages = 2000usize.div_ceil(250);
    let lifetimes = (elapsed.as_secs() as usize / (ttl_secs as usize - 1)) + 1;
    let bound = pages + 1 + 2000usize.div_ceil(50) * lifetimes + doomed.len() + 10;
    let calls = fake.api_calls();
    assert!(
        calls <= bound,
        "{calls} API calls in {elapsed:?}; bound {bound} ({pages} pages, {lifetimes} URL lifetimes, {} deleted)",
        doomed.len()
    );
    eprintln!(
        "deleted mid-run: {deleted} failed as deleted, {} archived, {calls} API calls ({} refreshes) in {elapsed:?}; bound {bound}",
        2000 - deleted,
        refresh_calls(&fake)
    );
    daemon.stop().await;
}

/// One `GET /?ids=` batch of 50 where 49 ids were deleted: the one that
/// lives is archived, the 49 fail as deleted at no attempt, within 51 calls.
/// A retry leaves deleted images alone unless asked to include them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_fifty_with_forty_nine_deleted_still_archives_the_live_one() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("eve", 50, 62);
    let all = fake.images("eve");
    let live = all[20].clone();
    let dir = tempfile::tempdir().unwrap();
    let job = job_with_stale_urls(&fake, dir.path(), "eve", &all).await;
    fake.delete_images(all.iter().filter(|m| m.id != live.id).map(|m| m.id.clone()));

    let settings = test_settings(fake.api_url().as_str(), dir.path(), 4, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let done = daemon.wait_for_state(job, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 1, "{done}");
    assert_eq!(done["counts"]["failed"], 49, "{done}");
    assert_eq!(done["counts"]["deleted"], 49, "{done}");
    assert!(done["last_error"].is_null(), "{done}");
    assert_eq!(fake.cdn_hits(&live.id), 1);
    assert_eq!(fake.cdn_hits_total(), 1);
    let refreshes = refresh_calls(&fake);
    assert!(refreshes <= 51, "{refreshes} refresh calls for one batch");
    check_collection(
        daemon.archive_dir(),
        "eve",
        Quality::Original,
        std::slice::from_ref(&live),
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    {
        let store = Store::open_read_only(&dir.path().join("mapillary.db"))
            .await
            .unwrap();
        let failed = store.failed_images(job, 100).await.unwrap();
        assert_eq!(failed.len(), 49);
        for image in &failed {
            assert_eq!(image.fail_reason, Some(FailReason::Deleted), "{image:?}");
            assert_eq!(image.attempts, 0, "no attempt burnt on a deleted image");
            let error = image.last_error.as_deref().unwrap_or_default();
            assert!(error.contains("deleted on Mapillary"), "{error}");
        }
        store.close().await;
    }

    // /metrics counts them.
    let (status, text) = daemon
        .try_request(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.lines()
            .any(|l| l.starts_with("mapillary_deleted_images ") && l.ends_with(" 49")),
        "{text}"
    );

    // A plain retry re-queues nothing: deleted images cannot come back.
    let (status, retried) = daemon
        .request(Method::POST, &format!("/jobs/{job}/retry"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    let after = daemon.wait_for_state(job, &["done"], LONG).await;
    assert_eq!(after["counts"]["deleted"], 49, "{after}");
    let before_calls = fake.api_calls();
    // Asked explicitly, they are tried again and found deleted again.
    let (status, retried) = daemon
        .request(
            Method::POST,
            &format!("/jobs/{job}/retry?include_deleted=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    let after = daemon.wait_for_state(job, &["done"], LONG).await;
    assert_eq!(after["counts"]["deleted"], 49, "{after}");
    assert!(
        fake.api_calls() > before_calls,
        "the retry asked the API again"
    );
    let (status, bad) = daemon
        .request(
            Method::POST,
            &format!("/jobs/{job}/retry?include_deleted=maybe"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    daemon.stop().await;
}

/// A URL refresh the API refuses with a 4xx that is neither a rate limit nor
/// a missing id (400 code 100, "Invalid parameter"): retrying cannot help, so
/// each refusal costs an attempt and the images end failed with the reason,
/// not deferred for ever. A retry once the API accepts the call archives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_refused_for_good_fails_the_images_instead_of_waiting_forever() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("gus", 60, 64);
    let all = fake.images("gus");
    let dir = tempfile::tempdir().unwrap();
    let job = job_with_stale_urls(&fake, dir.path(), "gus", &all).await;
    fake.set_refuse_ids_calls(true);
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[
            ("MLD__RETRY__MAX_ATTEMPTS", "3"),
            ("MLD__RETRY__BACKOFF_BASE_MS", "50"),
            ("MLD__RETRY__BACKOFF_CAP_MS", "200"),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let ended = daemon.wait_for_state(job, &["done", "failed"], LONG).await;
    assert_eq!(ended["counts"]["failed"], 60, "{ended}");
    assert_eq!(ended["counts"]["deleted"], 0, "{ended}");
    assert_eq!(fake.cdn_hits_total(), 0, "no stale URL was used");
    // Three attempts per image, many images per call: fewer calls than
    // images, where a loop would have gone on until the deadline.
    let calls = fake.api_calls();
    assert!(calls <= 60, "{calls} refused calls");
    let store = Store::open_read_only(&dir.path().join("mapillary.db"))
        .await
        .unwrap();
    let failed = store.failed_images(job, 100).await.unwrap();
    assert_eq!(failed.len(), 60);
    for image in &failed {
        assert_eq!(image.attempts, 3, "{image:?}");
        let error = image.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("Invalid parameter"), "{image:?}");
    }
    store.close().await;

    fake.set_refuse_ids_calls(false);
    let (status, _) = daemon
        .request(Method::POST, &format!("/jobs/{job}/retry"), None)
        .await;
    assert!(status.is_success(), "{status}");
    let done = daemon.wait_for_state(job, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 60, "{done}");
    assert_eq!(done["counts"]["failed"], 0, "{done}");
    daemon.stop().await;
}

/// A refresh answer that has the image but in a shape we cannot read (a
/// field's type changed, say) is no proof of deletion: that image fails as
/// an error with the reason after its attempts, never as deleted; the rest
/// of its batch is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_refresh_answer_is_an_error_not_a_deletion() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("hal", 30, 65);
    let all = fake.images("hal");
    let odd = all[7].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let job = job_with_stale_urls(&fake, dir.path(), "hal", &all).await;
    fake.set_unreadable_in_ids([odd.clone()]);
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[
            ("MLD__RETRY__MAX_ATTEMPTS", "2"),
            ("MLD__RETRY__BACKOFF_BASE_MS", "50"),
            ("MLD__RETRY__BACKOFF_CAP_MS", "200"),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let ended = daemon.wait_for_state(job, &["done", "failed"], LONG).await;
    assert_eq!(ended["counts"]["done"], 29, "{ended}");
    assert_eq!(ended["counts"]["failed"], 1, "{ended}");
    assert_eq!(ended["counts"]["deleted"], 0, "{ended}");
    let store = Store::open_read_only(&dir.path().join("mapillary.db"))
        .await
        .unwrap();
    let failed = store.failed_images(job, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].image_id, odd);
    let error = failed[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("could not be read"), "{error}");
    store.close().await;
    daemon.stop().await;
}

/// An API that refuses every URL refresh: the job cannot progress, and
/// within the configured time its `last_error`, `/status` and `/metrics`
/// say so and why. Once the API answers again, the job finishes and the
/// stall clears. Refusals back off per image: no tight loop of calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_progress_says_why_then_recovers() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("finn", 120, 63);
    let all = fake.images("finn");
    let dir = tempfile::tempdir().unwrap();
    let job = job_with_stale_urls(&fake, dir.path(), "finn", &all).await;
    fake.set_faults(Faults {
        api_5xx_html: 1.0,
        ..Faults::default()
    });
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[
            ("MLD__JOBS__STALL_AFTER_SECS", "2"),
            ("MLD__RETRY__BACKOFF_BASE_MS", "100"),
            ("MLD__RETRY__BACKOFF_CAP_MS", "2000"),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let started = Instant::now();
    let stalled = loop {
        let job = daemon.job(job).await;
        if !job["stalled_since"].is_null() {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never marked stalled: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = stalled["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("no progress for"), "{stalled}");
    assert!(error.contains("120 images waiting"), "{stalled}");
    assert!(
        error.contains("503"),
        "the reason names the refusal: {stalled}"
    );
    assert_eq!(stalled["state"], "downloading");
    let (_, report) = daemon.request(Method::GET, "/status", None).await;
    assert_eq!(report["jobs"][0]["last_error"], stalled["last_error"]);
    let (_, metrics) = daemon
        .try_request(Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mapillary_job_stalled{") && l.ends_with(" 1")),
        "{metrics}"
    );
    // Per-image backoff: 120 images in 3 batches, each refusal doubling the
    // images' delay from 100 ms: a handful of calls a second, not a spin.
    let seconds = started.elapsed().as_secs_f64();
    let calls = fake.api_calls();
    assert!(
        (calls as f64) < 20.0 * seconds.max(1.0),
        "{calls} refused calls in {seconds:.1} s"
    );

    fake.set_faults(Faults::default());
    let done = daemon.wait_for_state(job, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 120, "{done}");
    assert!(done["stalled_since"].is_null(), "{done}");
    assert!(done["last_error"].is_null(), "{done}");
    daemon.stop().await;
}

/// The last page's `next` leads to an empty page whose `next` is itself:
/// the listing ends after that empty page, at most pages + 2 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_looping_through_empty_pages_ends_the_listing() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("gus", 1000, 64);
    fake.set_looping_next(true);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 8, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "gus"})).await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 1000, "{done}");
    let pages = 1000 / 250;
    let calls = listing_calls(&fake);
    assert!(
        calls <= pages + 2,
        "{calls} listing calls for {pages} pages of data"
    );
    daemon.stop().await;
}

/// A listing that opens with empty pages (an API filtering after paging):
/// each has a `next`, and the data after them is all archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_pages_with_a_next_do_not_end_the_listing() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ivy", 600, 66);
    fake.set_empty_pages_first(3);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 8, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "ivy"})).await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 600, "{done}");
    assert!(done["note"].is_null(), "{done}");
    assert_eq!(listing_calls(&fake), 3 + 600 / 250 + 1);
    daemon.stop().await;
}

/// A chain of empty pages whose fresh `next` links never end: the listing
/// stops after its bound and the job says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chain_of_empty_pages_ends_with_a_note() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("jay", 50, 67);
    fake.set_empty_pages_first(u32::MAX);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 2, &[]);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "jay"})).await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    assert_eq!(done["counts"]["discovered"], 0, "{done}");
    let note = done["note"].as_str().unwrap_or_default();
    assert!(note.contains("1000 empty pages in a row"), "{done}");
    assert_eq!(listing_calls(&fake), 1000);
    daemon.stop().await;
}

/// Archives 1,500 images at 30 ms CDN latency; returns the time taken and
/// how many bodies the fake stalled.
async fn archive_with_cdn_faults(faults: Faults) -> (Duration, usize) {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(30),
        faults,
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("hal", 1500, 65);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        16,
        &[
            ("MLD__MAPILLARY__READ_IDLE_TIMEOUT_SECS", "1"),
            ("MLD__MAPILLARY__DOWNLOAD_TIMEOUT_SECS", "300"),
            ("MLD__RETRY__MAX_ATTEMPTS", "10"),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let started = Instant::now();
    let (_, job) = daemon.post_job(json!({"username": "hal"})).await;
    let done = daemon.wait_for_state(job_id(&job), &["done"], LONG).await;
    let elapsed = started.elapsed();
    assert_eq!(done["counts"]["done"], 1500, "{done}");
    check_collection(
        daemon.archive_dir(),
        "hal",
        Quality::Original,
        &fake.images("hal"),
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    let stalls = fake
        .requests()
        .iter()
        .filter(|r| r.fault == Some("stall"))
        .count();
    daemon.stop().await;
    (elapsed, stalls)
}

/// CDN bodies that stop half-way with the connection left open cost the
/// idle timeout (1 s here), not the 300 s download timeout: 1,500 images
/// with 1 % stalls end within a few idle timeouts of the no-stall time,
/// every file exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_bodies_cost_an_idle_timeout_not_the_download_timeout() {
    let (clean, none) = archive_with_cdn_faults(Faults::default()).await;
    assert_eq!(none, 0, "no stall without the fault");
    let (stalling, stalls) = archive_with_cdn_faults(Faults {
        cdn_stall: 0.01,
        ..Faults::default()
    })
    .await;
    // 1 % of at least 1,500 bodies: about 15. Fewer than 5 (a chance under
    // 1 in 1,000) would leave the bound below untested.
    assert!(stalls >= 5, "only {stalls} bodies stalled");
    // Each stall costs about one idle timeout (1 s), spread over 16
    // workers; the 300 s download timeout even once would blow the bound.
    assert!(
        stalling < clean + Duration::from_secs(10),
        "with {stalls} stalls {stalling:?}, without {clean:?}"
    );
}

/// A job paused because Mapillary rejected the token resumes by itself when
/// the daemon restarts with a good token; with a still-bad token it pauses
/// again at its first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_paused_jobs_resume_after_a_restart_with_a_valid_token() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("ida", 80, 66);
    let dir = tempfile::tempdir().unwrap();
    let settings = || test_settings(fake.api_url().as_str(), dir.path(), 4, &[]);

    let daemon = TestDaemon::start(settings(), "MLY|1|wrong").await;
    let (_, job) = daemon.post_job(json!({"username": "ida"})).await;
    let id = job_id(&job);
    let paused = daemon.wait_for_state(id, &["paused"], LONG).await;
    assert_eq!(paused["pause_reason"], "token_rejected", "{paused}");
    daemon.stop().await;

    // Still the wrong token: it tries once more and pauses again.
    let daemon = TestDaemon::start(settings(), "MLY|1|still-wrong").await;
    let calls = fake.api_calls();
    let again = daemon.wait_for_state(id, &["paused"], LONG).await;
    assert_eq!(again["pause_reason"], "token_rejected", "{again}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = daemon.job(id).await;
    assert_eq!(job["state"], "paused", "{job}");
    assert!(fake.api_calls() - calls <= 2, "no crash loop of API calls");
    daemon.stop().await;

    // A user pause is not undone by a restart.
    let daemon = TestDaemon::start(settings(), DEFAULT_TOKEN).await;
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 80, "{done}");
    assert!(done["pause_reason"].is_null(), "{done}");
    // Slow listing, so the new job is still at work when the user pauses it.
    fake.set_api_latency(Duration::from_secs(1));
    let (_, other) = daemon
        .post_job(json!({"username": "ida", "quality": "256"}))
        .await;
    let other = job_id(&other);
    let (status, _) = daemon
        .request(Method::POST, &format!("/jobs/{other}/pause"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    daemon.stop().await;
    fake.set_api_latency(Duration::ZERO);
    let daemon = TestDaemon::start(settings(), DEFAULT_TOKEN).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = daemon.job(other).await;
    assert_eq!(job["state"], "paused", "{job}");
    assert_eq!(job["pause_reason"], "user", "{job}");
    daemon.stop().await;
}

/// Invariant 4 in the engine, not only in the store: one image whose every
/// download answers 503 is retried with the configured exponential backoff
/// (each delay the engine scheduled, read from the row as `run_at` minus
/// the failure time, lies within equal jitter of `base × 2^(attempt-1)`),
/// and fails for good at exactly `max_attempts` downloads, while the rest
/// of the job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_503_backs_off_exponentially_and_fails_at_max_attempts() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("jude", 30, 67);
    let victim = fake.images("jude")[7].id.clone();
    fake.fail_image_always(&victim, Some(mld_testkit::fake::Fault::Status503Html));
    let dir = tempfile::tempdir().unwrap();
    let (base_ms, cap_ms, max_attempts) = (300i64, 1_500i64, 5i64);
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[
            ("MLD__RETRY__BACKOFF_BASE_MS", &base_ms.to_string()),
            ("MLD__RETRY__BACKOFF_CAP_MS", &cap_ms.to_string()),
            ("MLD__RETRY__MAX_ATTEMPTS", &max_attempts.to_string()),
        ],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "jude"})).await;
    let id = job_id(&job);
    // Watch the victim's row: after each failure it is pending with the
    // retry the engine scheduled.
    let deadline = Instant::now() + LONG;
    let store = loop {
        if let Ok(store) = Store::open_read_only(&dir.path().join("mapillary.db")).await {
            break store;
        }
        assert!(Instant::now() < deadline, "the database never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut scheduled: Vec<(i64, i64)> = Vec::new();
    let last = loop {
        assert!(Instant::now() < deadline, "the image never failed for good");
        if let Some(row) = store.image_by_id(id, &victim).await.unwrap() {
            if row.state == ImageState::Pending
                && row.attempts > 0
                && scheduled.last().is_none_or(|(a, _)| *a != row.attempts)
            {
                scheduled.push((row.attempts, row.run_at - row.updated_at));
            }
            if row.state == ImageState::Failed {
                break row;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    store.close().await;
    assert_eq!(last.attempts, max_attempts, "{last:?}");
    assert_eq!(last.fail_reason, Some(FailReason::Error));
    assert!(
        last.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("503"),
        "{last:?}"
    );
    let attempts: Vec<i64> = scheduled.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        attempts,
        (1..max_attempts).collect::<Vec<_>>(),
        "{scheduled:?}"
    );
    for (attempt, delay) in &scheduled {
        let ceiling = (base_ms << (attempt - 1)).min(cap_ms);
        assert!(
            (ceiling / 2..=ceiling).contains(delay),
            "attempt {attempt}: scheduled {delay} ms, outside [{}, {ceiling}]",
            ceiling / 2
        );
    }
    let downloads = fake
        .started_requests()
        .iter()
        .filter(|r| r.image_id.as_deref() == Some(victim.as_str()))
        .count();
    assert_eq!(downloads as i64, max_attempts, "one download per attempt");
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    assert_eq!(done["counts"]["done"], 29, "{done}");
    assert_eq!(done["counts"]["failed"], 1, "{done}");
    daemon.stop().await;
}

/// Invariant 6 mid-run: the token is revoked while images download (their
/// URLs expire every few seconds, so refreshes need the API). The job
/// pauses for the rejected token, no image loses an attempt, and no API
/// call is made on behalf of the paused job afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_mid_download_pauses_the_job_without_burning_attempts() {
    let fake = FakeMapillary::start(FakeConfig {
        url_ttl_secs: 3,
        cdn_latency: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("kai", 1500, 68);
    let dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        fake.api_url().as_str(),
        dir.path(),
        4,
        &[("MLD__MAPILLARY__URL_REFRESH_MARGIN_SECS", "1")],
    );
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "kai"})).await;
    let id = job_id(&job);
    let started = Instant::now();
    loop {
        let job = daemon.job(id).await;
        if job["counts"]["done"].as_u64().unwrap_or(0) >= 100 {
            break;
        }
        assert!(started.elapsed() < LONG, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.set_token("MLY|1|revoked-and-replaced");
    let paused = daemon.wait_for_state(id, &["paused"], LONG).await;
    assert_eq!(paused["pause_reason"], "token_rejected", "{paused}");
    assert!(
        paused["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("MAPILLARY_TOKEN"),
        "{paused}"
    );
    // Let in-flight downloads settle, then the API must stay quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = fake.api_calls();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.api_calls(), calls, "API calls made for a paused job");
    let job = daemon.job(id).await;
    assert_eq!(job["state"], "paused", "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    assert_eq!(job["counts"]["in_progress"], 0, "{job}");
    let store = Store::open_read_only(&dir.path().join("mapillary.db"))
        .await
        .unwrap();
    let mut burnt = 0;
    for image in fake.images("kai") {
        let row = store.image_by_id(id, &image.id).await.unwrap().unwrap();
        if row.state != ImageState::Done {
            burnt += row.attempts;
        }
    }
    store.close().await;
    assert_eq!(
        burnt, 0,
        "attempts burnt on images of a job paused for its token"
    );
    daemon.stop().await;
}
