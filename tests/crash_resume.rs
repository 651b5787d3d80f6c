//! The real binary under kill -9 and SIGTERM, and a full disk: nothing is
//! lost, nothing finished is downloaded again, no `.part` survives.

mod common;

use common::{TestDaemon, done_ids, test_settings, unfinished_packings};
use mapillary_downloader::store::Store;
use mld_testkit::archive_check::{
    check_collection, check_image, collection_dir, image_path, part_files,
};
use mld_testkit::env::test_env;
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Quality, Route};
use mld_testkit::process::DaemonProcess;
use mld_testkit::tmpfs::{Tmpfs, fs_free_bytes};
use rand::Rng;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

/// `serve` as a child process over `data`, until it listens.
fn spawn(data: &Path, workers: u32, env: &[(String, String)]) -> DaemonProcess {
    DaemonProcess::spawn(BINARY, data, workers, env).expect("the daemon starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_moments_loses_nothing_and_redoes_almost_nothing() {
    let fake = FakeMapillary::start(FakeConfig {
        api_latency: Duration::from_millis(40),
        cdn_latency: Duration::from_millis(10),
        cdn_latency_jitter: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("kim", 1500, 11);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let workers = 4;
    let mut daemon = spawn(&data, workers, &env);
    let (_, job) = daemon.api().post_job(json!({"username": "kim"})).await;
    let id = job["id"].as_i64().unwrap();

    let mut rng = rand::rng();
    let mut snapshots: Vec<(HashSet<String>, HashMap<String, usize>)> = Vec::new();
    let mut logs = String::new();
    // The first kill lands during enumeration (15 pages × 40 ms), the rest during downloads.
    let delays = [
        250,
        rng.random_range(400..900),
        rng.random_range(400..900),
        rng.random_range(400..900),
    ];
    for delay in delays {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        logs.push_str(&daemon.log_text());
        daemon.kill9();
        let done = done_ids(&data.join("mapillary.db"), id).await;
        let hits: HashMap<String, usize> =
            done.iter().map(|i| (i.clone(), fake.cdn_hits(i))).collect();
        snapshots.push((done, hits));
        daemon = spawn(&data, workers, &env);
    }
    assert!(
        snapshots.first().unwrap().0.len() < 1500,
        "the first kill should land before the archive is complete"
    );
    let job = daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    assert_eq!(job["counts"]["done"], 1500, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    logs.push_str(&daemon.log_text());
    drop(daemon);

    check_collection(
        &data.join("archive"),
        "kim",
        Quality::Original,
        &fake.images("kim"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );
    // A done image is never downloaded again after any kill.
    for (k, (done, hits)) in snapshots.iter().enumerate() {
        for image in done {
            assert_eq!(
                fake.cdn_hits(image),
                hits[image],
                "image {image} done before kill {k} was fetched again"
            );
        }
    }
    // Re-downloads are bounded by what was in flight at each kill.
    let images = fake.images("kim");
    let redownloads: usize = images
        .iter()
        .map(|m| fake.cdn_hits(&m.id).saturating_sub(1))
        .sum();
    assert!(
        redownloads <= snapshots.len() * workers as usize,
        "{redownloads} re-downloads after {} kills with {workers} workers",
        snapshots.len()
    );
    let secret = DEFAULT_TOKEN.rsplit('|').next().unwrap();
    assert!(!logs.contains(secret), "the token reached a log line");
    assert!(
        logs.contains("handed back"),
        "restarts recovered in-flight images:\n{logs}"
    );
}

/// 2,000 images, URLs expiring every few seconds, 3 % deleted on Mapillary
/// once listed, and kill -9 twice mid-run: the job still ends with every
/// live image archived and exact, every deleted one failed as deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_twice_while_images_are_deleted_and_urls_expire() {
    let fake = FakeMapillary::start(FakeConfig {
        url_ttl_secs: 4,
        cdn_latency: Duration::from_millis(10),
        cdn_latency_jitter: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("lena", 2000, 13);
    let all = fake.images("lena");
    let doomed: HashSet<String> = all.iter().step_by(33).map(|m| m.id.clone()).collect();
    fake.delete_when_listed(doomed.iter().cloned());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    mld_testkit::env::set(&mut env, "MLD__MAPILLARY__URL_REFRESH_MARGIN_SECS", "1");
    let workers = 8;
    let mut daemon = spawn(&data, workers, &env);
    let (_, job) = daemon.api().post_job(json!({"username": "lena"})).await;
    let id = job["id"].as_i64().unwrap();
    for delay in [700, 1500] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        daemon.kill9();
        daemon = spawn(&data, workers, &env);
    }
    let job = daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    drop(daemon);
    let archived = done_ids(&data.join("mapillary.db"), id).await;
    // A kill between a page's listing and its storing lets the re-read page
    // skip what was deleted meanwhile: never discovered, so not counted.
    let deleted = job["counts"]["deleted"].as_u64().unwrap();
    let discovered = job["counts"]["discovered"].as_u64().unwrap();
    let undiscovered = all.len() as u64 - discovered;
    assert_eq!(deleted + undiscovered, doomed.len() as u64, "{job}");
    assert!(deleted > 0, "{job}");
    assert_eq!(job["counts"]["failed"], job["counts"]["deleted"], "{job}");
    assert_eq!(archived.len(), all.len() - doomed.len(), "{job}");
    assert!(archived.is_disjoint(&doomed));
    let live: Vec<_> = all
        .iter()
        .filter(|m| !doomed.contains(&m.id))
        .cloned()
        .collect();
    check_collection(
        &data.join("archive"),
        "lena",
        Quality::Original,
        &live,
        |i| fake.jpeg_marker(i, Quality::Original),
    );
}

/// kill -9 while each kind of source is being enumerated (an organization's
/// pages, a sequence's id lists and batches, an image-id list's batches):
/// every job resumes from its stored parts and ends with exactly its set,
/// nothing downloaded twice beyond what was in flight at each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_enumeration_of_every_source_kind_resumes_exactly() {
    kill_9_during_enumeration(Queue::Sqlite).await;
}

/// The same on a PostgreSQL queue: the child daemon is a process, so
/// `MLD_TEST_QUEUE` (which only reaches in-process daemons) cannot switch it;
/// the queue is given through its environment instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_enumeration_of_every_source_kind_resumes_exactly_on_postgres() {
    kill_9_during_enumeration(Queue::Postgres).await;
}

/// Where the child daemon keeps its queue.
#[derive(Clone, Copy, Debug)]
enum Queue {
    /// The default: a SQLite file in the data dir.
    Sqlite,
    /// A fresh database of the test binary's PostgreSQL cluster, the archive
    /// on the local disk (marked shared, as a shared queue requires).
    Postgres,
}

impl Queue {
    /// The child's environment for this queue, on top of the kit's.
    fn env(self, fake: &FakeMapillary) -> Vec<(String, String)> {
        let mut env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
        if let Queue::Postgres = self {
            let url = mld_testkit::postgres::PgCluster::shared().fresh_database();
            mld_testkit::env::set(&mut env, "MLD__STORAGE__DATABASE_URL", &url);
            mld_testkit::env::set(&mut env, "MLD__STORAGE__SHARED_FILESYSTEM", "true");
            // No start-up reset on a shared queue: a killed daemon's images
            // wait for its heartbeat rescue. The shortest wait allowed keeps
            // the test lean.
            mld_testkit::env::set(&mut env, "MLD__CLUSTER__DEAD_AFTER_SECS", "4");
        }
        env
    }
}

/// Two kill -9s while every source kind is being listed, on `queue`.
async fn kill_9_during_enumeration(queue: Queue) {
    let fake = FakeMapillary::start(FakeConfig {
        api_latency: Duration::from_millis(150),
        cdn_latency: Duration::from_millis(5),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("ola", 500, 31);
    fake.add_user("per", 300, 32);
    fake.add_user_to_org("ola", "4242");
    fake.add_user_to_org("per", "4242");
    let sequences: Vec<String> = (0..12).map(|i| format!("SEQkill{i:015}")).collect();
    for (i, seq) in sequences.iter().enumerate() {
        fake.add_sequence(seq, &[("quin", 20 + i as u64)]);
    }
    fake.add_user("rae", 400, 33);
    fake.add_user("sam", 2_000, 34);
    let rae: Vec<String> = fake.images("rae").iter().map(|m| m.id.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = queue.env(&fake);
    let workers = 4;
    let mut daemon = spawn(&data, workers, &env);
    let api = daemon.api();
    let mut jobs = Vec::new();
    for body in [
        json!({"username": "sam", "quality": "256"}),
        json!({"organization_id": "4242", "quality": "256"}),
        json!({"sequence_ids": sequences, "quality": "256"}),
        json!({"image_ids": rae, "quality": "1024"}),
    ] {
        let (_, job) = api.post_job(body).await;
        jobs.push(job["id"].as_i64().unwrap());
    }
    // Each kill lands once many listing pages, id lists and batches were
    // answered since the last start, and some listing is unfinished.
    let mut kills = Vec::new();
    let mut since = std::time::Instant::now();
    for _ in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut enumerating = false;
            for &id in &jobs {
                enumerating |= daemon.api().job(id).await["enumeration_complete"] == false;
            }
            assert!(
                enumerating,
                "kill {} should land during enumeration",
                kills.len()
            );
            let answered = answered_api_keys(&fake, since, std::time::Instant::now()).len();
            if answered >= 20 || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        daemon.kill9();
        let killed = std::time::Instant::now();
        kills.push(killed);
        since = killed;
        daemon = spawn(&data, workers, &env);
    }
    for &id in &jobs {
        let job = daemon
            .api()
            .wait_for_state(id, &["done"], Duration::from_secs(120))
            .await;
        assert_eq!(job["counts"]["failed"], 0, "{job}");
    }
    drop(daemon);
    let archive = data.join("archive");
    if let Queue::Postgres = queue {
        assert!(
            !data.join("mapillary.db").exists(),
            "the daemon was given PostgreSQL, yet made a SQLite file"
        );
        // A local archive on a shared queue is never swept at start-up
        // (another daemon may be writing there), so a killed daemon's
        // `.part` files stay: not this test's subject (enumeration), and
        // at most one per worker per kill. Cleared so the set check runs.
        let parts = part_files(&archive);
        assert!(parts.len() <= kills.len() * workers as usize, "{parts:?}");
        for part in parts {
            std::fs::remove_file(part).unwrap();
        }
    }
    let fake = &fake;
    for (user, quality) in [
        ("sam", Quality::Q256),
        ("ola", Quality::Q256),
        ("per", Quality::Q256),
        ("quin", Quality::Q256),
        ("rae", Quality::Q1024),
    ] {
        check_collection(&archive, user, quality, &fake.images(user), |i| {
            fake.jpeg_marker(i, quality)
        });
    }
    let ola_per: Vec<_> = fake
        .images("ola")
        .into_iter()
        .chain(fake.images("per"))
        .collect();
    let total = ola_per.len()
        + fake.images("quin").len()
        + fake.images("rae").len()
        + fake.images("sam").len();
    let downloads = fake.cdn_hits_total();
    assert!(
        downloads <= total + kills.len() * workers as usize,
        "{downloads} downloads for {} kills with {workers} workers",
        kills.len()
    );
    assert_resumed_where_it_stopped(fake, &kills);
}

/// The API requests (listing pages, sequence id lists, id batches) the fake
/// answered in full between `from` and `to`: `path?query` each.
fn answered_api_keys(
    fake: &FakeMapillary,
    from: std::time::Instant,
    to: std::time::Instant,
) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.route == Route::Api && r.status == 200 && r.fault.is_none())
        .filter(|r| r.started >= from && r.at < to)
        .map(|r| format!("{}?{}", r.path, r.query))
        .collect()
}

/// After each kill -9, each request answered before it is asked again at
/// most once, and only the few that were in flight (answered but not yet
/// stored: parts list 8 at a time): an enumerator that started a source
/// over would ask again for every page it had. Every source kind counts:
/// user listings, organisation members, sequence id lists, id batches.
fn assert_resumed_where_it_stopped(fake: &FakeMapillary, kills: &[std::time::Instant]) {
    let start = kills[0] - Duration::from_secs(3600);
    for (k, &killed) in kills.iter().enumerate() {
        let next = kills
            .get(k + 1)
            .copied()
            .unwrap_or_else(std::time::Instant::now);
        let before: HashSet<String> = answered_api_keys(fake, start, killed).into_iter().collect();
        let mut again: HashMap<String, usize> = HashMap::new();
        for request in fake.requests() {
            let key = format!("{}?{}", request.path, request.query);
            if request.route == Route::Api
                && request.started >= killed
                && request.started < next
                && before.contains(&key)
            {
                *again.entry(key).or_default() += 1;
            }
        }
        eprintln!(
            "kill {k}: {} API requests answered before, {} asked again",
            before.len(),
            again.len()
        );
        if let Some((key, n)) = again.iter().find(|(_, n)| **n > 1) {
            panic!("kill {k}: {key} asked {n} times again");
        }
        // A listing asks for its first page again only if it had got no
        // further before the kill.
        for key in again.keys() {
            let Some((listing, None)) = listing_page(key) else {
                continue;
            };
            let further = before
                .iter()
                .filter_map(|b| listing_page(b))
                .any(|(l, after)| l == listing && after.is_some());
            assert!(!further, "kill {k}: a listing started over: {key}");
        }
        // What was in flight (answered, not yet stored) is a few requests
        // per source; starting over would ask for every one again.
        assert!(
            again.len() * 2 <= before.len(),
            "kill {k}: {} of {} answered requests asked again: {:?}",
            again.len(),
            before.len(),
            again.keys().collect::<Vec<_>>()
        );
    }
}

/// A listing page's listing (its query without the cursor) and cursor.
fn listing_page(key: &str) -> Option<(String, Option<String>)> {
    let query = key.strip_prefix("/images?")?;
    let mut after = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|p| match p.strip_prefix("after=") {
            Some(cursor) => {
                after = Some(cursor.to_string());
                false
            }
            None => true,
        })
        .collect();
    Some((rest.join("&"), after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_in_flight_images_and_exits_zero() {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(60),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("lou", 400, 12);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let mut daemon = spawn(&data, 4, &env);
    let api = daemon.api();
    let id = api.post_job(json!({"username": "lou"})).await.1["id"]
        .as_i64()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while api.job(id).await["counts"]["done"].as_u64() < Some(40) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = std::time::Instant::now();
    daemon.signal(libc::SIGTERM).unwrap();
    let in_flight = fake.cdn_images_started_before(signalled);
    let status = daemon
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .expect("exits within the grace period");
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    assert!(daemon.log_text().contains("shutdown complete"));
    assert!(
        part_files(&data).is_empty(),
        "no .part after a clean shutdown"
    );

    let store = Store::open(&data.join("mapillary.db")).await.unwrap();
    let job = store.find_job(id).await.unwrap().unwrap();
    assert_eq!(job.counts.in_progress, 0, "nothing left claimed: {job:?}");
    assert!(job.counts.done < 400, "stopped before the end");
    let stopped_at = job.counts.done;
    store.close().await;

    // Every image counted done is on disk and correct; nothing was fetched twice.
    let done = done_ids(&data.join("mapillary.db"), id).await;
    assert_eq!(done.len() as u64, stopped_at);
    // Every download the CDN had started before the signal was finished,
    // not abandoned: the fake records a request when it arrives, so one cut
    // off mid-latency or mid-body would be missing here.
    let unfinished: Vec<&String> = in_flight.difference(&done).collect();
    assert!(
        unfinished.is_empty(),
        "downloads in flight at SIGTERM were abandoned: {unfinished:?}"
    );
    assert!(
        in_flight.len() as u64 > stopped_at.saturating_sub(8),
        "the signal landed while downloads were in flight"
    );
    let collection = collection_dir(&data.join("archive"), "lou", Quality::Original);
    for meta in fake.images("lou").iter().filter(|m| done.contains(&m.id)) {
        let path = image_path(&collection, meta);
        check_image(&path, meta, &fake.jpeg_marker(&meta.id, Quality::Original));
    }
    let daemon = spawn(&data, 4, &env);
    daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    assert_eq!(
        fake.cdn_hits_total(),
        400,
        "a graceful stop leaves nothing to download twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_pauses_without_burning_attempts_and_resumes_when_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mount = Tmpfs::mount(&dir.path().join("small"), "16m");
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("mo", 200, 13);
    let data = mount.0.join("data");
    let settings = test_settings(
        fake.api_url().as_str(),
        &data,
        2,
        &[
            ("MLD__RETRY__MAX_ATTEMPTS", "1"),
            ("MLD__STORAGE__MIN_FREE_MIB", "2"),
        ],
    );
    let running = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = running.post_job(json!({"username": "mo"})).await;
    let id = job["id"].as_i64().unwrap();
    let job = running
        .wait_for_state(id, &["paused"], Duration::from_secs(60))
        .await;
    let error = job["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("disk full"), "last_error says so: {job}");
    assert_eq!(job["counts"]["failed"], 0, "no attempt burnt: {job}");
    assert!(part_files(&data).is_empty(), "the partial file was removed");
    // Whatever is on disk is whole.
    let collection = collection_dir(running.archive_dir(), "mo", Quality::Original);
    let mut on_disk = 0;
    for meta in fake.images("mo") {
        let path = image_path(&collection, &meta);
        if path.exists() {
            check_image(&path, &meta, &fake.jpeg_marker(&meta.id, Quality::Original));
            on_disk += 1;
        }
    }
    assert!(on_disk > 0 && on_disk < 200, "{on_disk} images fit");

    mount.resize("256m");
    let (status, _) = running
        .request(reqwest::Method::POST, &format!("/jobs/{id}/resume"), None)
        .await;
    assert!(
        status.is_success() || status == reqwest::StatusCode::CONFLICT,
        "{status}"
    );
    let job = running
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    assert_eq!(job["counts"]["done"], 200, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    check_collection(
        running.archive_dir(),
        "mo",
        Quality::Original,
        &fake.images("mo"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );
    running.stop().await;
}

/// The reserve at 0, so the pre-check never refuses: a real ENOSPC hits in
/// the middle of an image's write. The archive sits on a small tmpfs of its
/// own (the database on the ordinary disk still has room to record the
/// pause). The job pauses saying the disk is full, no partial file remains,
/// no attempt is burnt, and it finishes once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_enospc_mid_write_leaves_no_partial_file_and_burns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mount = Tmpfs::mount(&data.join("archive"), "3m");
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("nell", 120, 14);
    let settings = test_settings(
        fake.api_url().as_str(),
        &data,
        2,
        &[
            ("MLD__RETRY__MAX_ATTEMPTS", "1"),
            ("MLD__STORAGE__MIN_FREE_MIB", "0"),
        ],
    );
    let running = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = running.post_job(json!({"username": "nell"})).await;
    let id = job["id"].as_i64().unwrap();
    let job = running
        .wait_for_state(id, &["paused"], Duration::from_secs(60))
        .await;
    let error = job["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("disk full") && error.contains("No space left on device"),
        "a real ENOSPC, not the reserve: {job}"
    );
    assert_eq!(job["pause_reason"], "disk_full", "{job}");
    assert_eq!(job["counts"]["failed"], 0, "no attempt burnt: {job}");
    assert!(
        part_files(&data).is_empty(),
        "the partial file of the write that hit ENOSPC was removed"
    );
    // The tmpfs really was filled: a write got cut off, not refused up front.
    let free = fs_free_bytes(&mount.0);
    assert!(free < 200 * 1024, "{free} bytes free on the archive tmpfs");

    mount.resize("256m");
    let job = running
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    assert_eq!(job["counts"]["done"], 120, "resumed by itself: {job}");
    check_collection(
        running.archive_dir(),
        "nell",
        Quality::Original,
        &fake.images("nell"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );
    running.stop().await;
}

/// The packings not yet `cleaned`, read from the database beside the daemon.
/// kill -9 while tars are being written and while their loose files are
/// being removed: no half tar ever sits under a final name, no image is
/// lost (each is loose or in a whole tar), nothing is downloaded again, and
/// the next start finishes the packing into exactly the tars an
/// uninterrupted run writes, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_packing_loses_nothing_and_ends_with_the_same_tars() {
    use mld_testkit::tar_check::{self, tars_in};
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("tara", 600, 31);
    let images = fake.images("tara");
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let spec = json!({"username": "tara", "package": "tar"});
    let collection_of =
        |data: &Path| collection_dir(&data.join("archive"), "tara", Quality::Original);

    // The reference: one uninterrupted run.
    let reference = dir.path().join("reference");
    let daemon = spawn(&reference, 8, &env);
    let (_, job) = daemon.api().post_job(spec.clone()).await;
    let id = job["id"].as_i64().unwrap();
    daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    drop(daemon);
    let want = tars_in(&collection_of(&reference));
    let dates: HashSet<String> = images
        .iter()
        .map(|m| {
            let path = mld_testkit::archive_check::member_name(m, "jpg");
            path.split('/').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(want.len(), dates.len(), "one tar per capture date");
    let hits_before: usize = images.iter().map(|m| fake.cdn_hits(&m.id)).sum();

    let data = dir.path().join("data");
    let db = data.join("mapillary.db");
    let mut daemon = spawn(&data, 8, &env);
    let (_, job) = daemon.api().post_job(spec).await;
    let id = job["id"].as_i64().unwrap();
    let mut kills_mid_packing = Vec::new();
    for _ in 0..4 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while seen.is_empty() && std::time::Instant::now() < deadline {
            if daemon.api().job(id).await["state"] == "done" {
                break;
            }
            seen = unfinished_packings(&db).await;
            if seen.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if seen.is_empty() {
            break;
        }
        daemon.kill9();
        kills_mid_packing.push(seen);
        // After the kill: every tar under a final name is whole and is the
        // reference's, and every image is loose or in one of them.
        let collection = collection_of(&data);
        let mut packed = HashSet::new();
        for (name, bytes) in tars_in(&collection) {
            assert_eq!(
                Some(&bytes),
                want.get(&name),
                "{name} after a kill is not the finished tar"
            );
            for entry in tar_check::list(&collection.join(&name)) {
                packed.insert(entry.name);
            }
        }
        for image in &images {
            let member = mld_testkit::archive_check::member_name(image, "jpg");
            assert!(
                packed.contains(&member) || collection.join(&member).exists(),
                "{} is neither loose nor in a tar after a kill",
                image.id
            );
        }
        daemon = spawn(&data, 8, &env);
    }
    assert!(
        kills_mid_packing.len() >= 2,
        "at least two kills should land mid-packing: {kills_mid_packing:?}"
    );
    eprintln!("kills landed with unfinished packings in states {kills_mid_packing:?}");
    let job = daemon
        .api()
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    assert_eq!(job["counts"]["done"], 600, "{job}");
    drop(daemon);
    let collection = collection_of(&data);
    assert_eq!(tars_in(&collection), want, "the same tars, byte for byte");
    assert!(part_files(&data).is_empty());
    let loose: Vec<String> = tar_check::files_under(&collection)
        .into_iter()
        .filter(|f| f.ends_with(".jpg") && f != "__ia_thumb__.jpg")
        .collect();
    assert!(loose.is_empty(), "loose files left: {loose:?}");
    let hits_after: usize = images.iter().map(|m| fake.cdn_hits(&m.id)).sum();
    assert_eq!(hits_after - hits_before, 600, "nothing downloaded twice");
    assert_eq!(
        std::fs::read(collection.join("metadata.jsonl.gz")).unwrap(),
        std::fs::read(collection_of(&reference).join("metadata.jsonl.gz")).unwrap()
    );
}
