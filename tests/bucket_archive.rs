//! The archive in an S3-compatible bucket (`storage.archive_url = s3://…`),
//! against moto's S3 server (a separate process speaking the S3 protocol;
//! see `mld_testkit::s3`): the same layout, EXIF and metadata as on disk,
//! adoption with a HEAD, `verify` and `--repair` on objects, an outage that
//! costs no image, kill -9, clear refusals, and credentials that never leak.
//! (Tar jobs into a bucket: `archives::a_tar_job_into_a_bucket_…`.)
//!
//! Objects are read back with plain HTTP by the kit and mirrored to a
//! temporary folder, where the same on-disk checks as every other test
//! apply (each file's mtime set from its `captured-at` metadata).

mod common;

use common::{TestDaemon, done_ids, test_settings, unfinished_packings};
use mld_testkit::archive_check::check_collection;
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Quality};
use mld_testkit::process::{self, DaemonProcess};
use mld_testkit::s3::{FlakyProxy, S3Server, SECRET_KEY};
use reqwest::StatusCode;
use serde_json::json;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
const LONG: Duration = Duration::from_secs(120);
const PREFIX: &str = "mirror/mapillary";

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn job_id(v: &serde_json::Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id in {v}"))
}

/// Runs the binary to completion off the async runtime.
async fn run(args: &[&str], data: &Path, env: &[(String, String)]) -> Output {
    let mut cmd = process::command(BINARY, env);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_lands_in_the_bucket_as_it_would_on_disk_and_a_new_database_adopts_it_by_head() {
    let s3 = S3Server::start("archive").await;
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("alice", 300, 41);
    fake.add_user("bea", 30, 42);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s3_env = s3.daemon_env(PREFIX);
    let settings = test_settings(fake.api_url().as_str(), &data, 8, &pairs(&s3_env));
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    assert_eq!(
        daemon.archive_dir(),
        Path::new("s3://archive/mirror/mapillary")
    );

    let (status, alice) = daemon.post_job(json!({"username": "alice"})).await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    let (status, bea) = daemon
        .post_job(json!({"username": "bea", "quality": "256", "format": "webp"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bea}");
    let alice = daemon.wait_for_state(job_id(&alice), &["done"], LONG).await;
    let bea = daemon.wait_for_state(job_id(&bea), &["done"], LONG).await;
    assert_eq!(
        (
            alice["counts"]["done"].as_u64(),
            alice["counts"]["failed"].as_u64()
        ),
        (Some(300), Some(0)),
        "{alice}"
    );
    assert_eq!(bea["counts"]["done"].as_u64(), Some(30), "{bea}");
    daemon.stop().await;

    // The bucket holds the layout a local archive has, object for object.
    let mirror = dir.path().join("mirror");
    let objects = s3.mirror(PREFIX, &mirror).await;
    assert_eq!(
        objects,
        300 + 1 + 30 + 1,
        "images and one metadata.jsonl per collection"
    );
    check_collection(
        &mirror,
        "alice",
        Quality::Original,
        &fake.images("alice"),
        |id| fake.jpeg_marker(id, Quality::Original),
    );
    let webp_keys: Vec<String> = s3
        .keys(&format!("{PREFIX}/mapillary-bea-256-webp/"))
        .await
        .into_iter()
        .filter(|k| k.ends_with(".webp"))
        .collect();
    assert_eq!(webp_keys.len(), 30);
    let one = mirror.join(webp_keys[0].strip_prefix(&format!("{PREFIX}/")).unwrap());
    let exiftool = std::process::Command::new("exiftool")
        .args([
            "-s3",
            "-n",
            "-GPSLatitude",
            "-DateTimeOriginal",
            "-FileType",
        ])
        .arg(&one)
        .output()
        .expect("exiftool (Debian: libimage-exiftool-perl; bash scripts/test installs it)");
    let read = text(&exiftool.stdout);
    assert!(read.contains("WEBP") && read.lines().count() == 3, "{read}");
    let metadata = s3
        .get(&format!("{PREFIX}/mapillary-bea-256-webp/metadata.jsonl"))
        .await
        .expect("metadata.jsonl in the bucket");
    assert_eq!(text(&metadata).lines().count(), 30);
    // Nothing of the archive touched the local disk, and the spool is empty.
    assert!(!data.join("archive").exists());
    assert!(files_under(&data.join("spool")).is_empty());
    assert_eq!(fake.cdn_hits_total(), 330);

    // A new database over the same bucket adopts every object with a HEAD:
    // nothing is downloaded again, and nothing is put again (a re-put would
    // show a later LastModified, a second on at least).
    let alice_prefix = format!("{PREFIX}/mapillary-alice-original/");
    let before = s3.listing(&alice_prefix).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = dir.path().join("fresh");
    let settings = test_settings(fake.api_url().as_str(), &fresh, 8, &pairs(&s3_env));
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, again) = daemon.post_job(json!({"username": "alice"})).await;
    let again = daemon.wait_for_state(job_id(&again), &["done"], LONG).await;
    assert_eq!(again["counts"]["done"].as_u64(), Some(300), "{again}");
    assert_eq!(fake.cdn_hits_total(), 330, "adopted, not downloaded again");
    daemon.stop().await;
    let after = s3.listing(&alice_prefix).await;
    let images_before: Vec<_> = before.iter().filter(|(k, _)| k.ends_with(".jpg")).collect();
    let images_after: Vec<_> = after.iter().filter(|(k, _)| k.ends_with(".jpg")).collect();
    assert_eq!(images_before.len(), 300);
    let put_again = images_before
        .iter()
        .zip(&images_after)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(images_after.len(), 300);
    assert_eq!(
        put_again, 0,
        "adopted with a HEAD: no object may be put again"
    );

    // `verify` reads the objects back: all there, all whole.
    let out = run(&["verify"], &data, &s3_env).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("verified 330 images: 330 ok, 0 missing, 0 corrupt"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_finds_deleted_and_damaged_objects_and_repair_heals_them() {
    let s3 = S3Server::start("archive").await;
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("cleo", 40, 43);
    let dir = tempfile::tempdir().unwrap();
    let mut env = mld_testkit::env::test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    env.extend(s3.daemon_env(PREFIX));
    let out = run(&["download", "cleo", "--workers", "4"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fake.cdn_hits_total(), 40);

    let images = fake.images("cleo");
    let key = |i: usize| {
        let path = mld_testkit::archive_check::image_path(
            Path::new("mapillary-cleo-original"),
            &images[i],
        );
        format!("{PREFIX}/{}", path.display())
    };
    s3.delete(&key(0)).await;
    let mut flipped = s3.get(&key(1)).await.unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xFF;
    s3.put(&key(1), flipped).await;

    let out = run(&["verify", "--json"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["missing"].as_u64(),
            report["corrupt"].as_u64(),
            report["ok"].as_u64()
        ),
        (Some(1), Some(1), Some(38)),
        "{report}"
    );
    let locations: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["location"].as_str().unwrap())
        .collect();
    assert!(
        locations
            .iter()
            .all(|l| l.starts_with("s3://archive/mirror/mapillary/")),
        "{locations:?}"
    );

    let damaged = s3.get(&key(1)).await.unwrap();
    let out = run(&["verify", "--repair"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        s3.get(&key(1)).await.is_none(),
        "the corrupt object leaves its key, so nothing adopts it"
    );
    let quarantined = key(1).replacen(PREFIX, &format!("{PREFIX}/quarantine"), 1);
    assert_eq!(
        s3.get(&quarantined).await,
        Some(damaged),
        "... but is kept whole under the quarantine/ prefix"
    );
    let out = run(&["download", "cleo", "--workers", "4"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        fake.cdn_hits_total(),
        42,
        "only the two damaged images are fetched again"
    );
    let out = run(&["verify"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Every request the daemon and verify sent was signed right, and each
    // body carried its own SHA-256 (the kit's proxy checked them all).
    assert_eq!(s3.checked.refused(), Vec::<String>::new());
    assert!(s3.checked.signed() >= 100 && s3.checked.payloads() >= 42);

    // The credentials reached the S3 client only: not the logs, the
    // database or the spool.
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !text(&bytes).contains(SECRET_KEY),
            "{} holds the secret key",
            file.display()
        );
    }
    assert!(!text(&out.stdout).contains(SECRET_KEY) && !text(&out.stderr).contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_mid_run_costs_no_image_and_no_attempt() {
    let s3 = S3Server::start("archive").await;
    let proxy = FlakyProxy::start(&s3.checked.endpoint).await;
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("dora", 300, 44);
    let dir = tempfile::tempdir().unwrap();
    let mut s3_env = s3.daemon_env(PREFIX);
    mld_testkit::env::set(&mut s3_env, "AWS_ENDPOINT_URL", &proxy.endpoint);
    let mut extra = pairs(&s3_env);
    // One attempt only: an outage that cost attempts would fail images.
    extra.push(("MLD__RETRY__MAX_ATTEMPTS", "1"));
    let settings = test_settings(fake.api_url().as_str(), dir.path(), 8, &extra);
    let daemon = TestDaemon::start(settings, DEFAULT_TOKEN).await;
    let (_, job) = daemon.post_job(json!({"username": "dora"})).await;
    let id = job_id(&job);
    loop {
        let job = daemon.job(id).await;
        if job["counts"]["done"].as_u64().unwrap_or(0) >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_outage(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = daemon.job(id).await;
    proxy.set_outage(false);
    assert!(proxy.refused() > 0, "the outage was felt");
    assert_ne!(during["state"], "done", "{during}");
    let done = daemon.wait_for_state(id, &["done"], LONG).await;
    assert_eq!(
        (
            done["counts"]["done"].as_u64(),
            done["counts"]["failed"].as_u64()
        ),
        (Some(300), Some(0)),
        "{done}"
    );
    daemon.stop().await;
    let mirror = dir.path().join("mirror");
    s3.mirror(PREFIX, &mirror).await;
    check_collection(
        &mirror,
        "dora",
        Quality::Original,
        &fake.images("dora"),
        |id| fake.jpeg_marker(id, Quality::Original),
    );
}

/// kill -9 while images are being put: the bucket ends exact, nothing done
/// is fetched again, and an object put just before a kill (its row not yet
/// done) is adopted with a HEAD rather than downloaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_putting_loses_nothing_and_redoes_almost_nothing() {
    let s3 = S3Server::start("archive").await;
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(10),
        cdn_latency_jitter: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("kai", 600, 46);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = mld_testkit::env::test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    env.extend(s3.daemon_env(PREFIX));
    let workers = 4;
    let spawn = |env: &[(String, String)]| {
        DaemonProcess::spawn(BINARY, &data, workers, env).expect("the daemon starts")
    };
    let mut daemon = spawn(&env);
    let (_, job) = daemon.api().post_job(json!({"username": "kai"})).await;
    let id = job_id(&job);
    let mut snapshots = Vec::new();
    let mut logs = String::new();
    for delay in [700, 900, 1100] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        logs.push_str(&daemon.log_text());
        daemon.kill9();
        let done = done_ids(&data.join("mapillary.db"), id).await;
        let hits: std::collections::HashMap<String, usize> =
            done.iter().map(|i| (i.clone(), fake.cdn_hits(i))).collect();
        snapshots.push((done, hits));
        daemon = spawn(&env);
    }
    assert!(
        snapshots[0].0.len() < 600,
        "the first kill should land mid-run"
    );
    let job = daemon.api().wait_for_state(id, &["done"], LONG).await;
    assert_eq!(
        (
            job["counts"]["done"].as_u64(),
            job["counts"]["failed"].as_u64()
        ),
        (Some(600), Some(0)),
        "{job}"
    );
    logs.push_str(&daemon.log_text());
    drop(daemon);

    let mirror = dir.path().join("mirror");
    s3.mirror(PREFIX, &mirror).await;
    check_collection(
        &mirror,
        "kai",
        Quality::Original,
        &fake.images("kai"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );
    for (k, (done, hits)) in snapshots.iter().enumerate() {
        for image in done {
            assert_eq!(
                fake.cdn_hits(image),
                hits[image],
                "image {image} done before kill {k} was fetched again"
            );
        }
    }
    let redownloads: usize = fake
        .images("kai")
        .iter()
        .map(|m| fake.cdn_hits(&m.id).saturating_sub(1))
        .sum();
    assert!(
        redownloads <= snapshots.len() * workers as usize,
        "{redownloads} re-downloads after {} kills",
        snapshots.len()
    );
    assert!(
        !logs.contains(SECRET_KEY),
        "the S3 secret reached a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bucket_settings_are_refused_clearly_and_change_nothing() {
    let s3 = S3Server::start("archive").await;
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("eve", 5, 45);
    let dir = tempfile::tempdir().unwrap();
    let mut env = mld_testkit::env::test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    env.extend(s3.daemon_env(PREFIX));

    // A URL that is not a bucket: a usage error naming the setting.
    for (url, says) in [
        ("s3://", "not a bucket name"),
        ("gs://bucket/x", "only s3://"),
        ("s3://bucket/../x", "plain names"),
    ] {
        let out = run(&["download", "eve", "--archive-url", url], dir.path(), &env).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(
            stderr.contains("storage.archive_url") && stderr.contains(says),
            "{url}: {stderr}"
        );
    }
    // A bucket that does not answer: the run stops at once, naming the
    // bucket and what to check, never the secret.
    let mut unreachable = env.clone();
    mld_testkit::env::set(&mut unreachable, "AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let out = run(&["download", "eve"], dir.path(), &unreachable).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s3://archive/mirror/mapillary") && stderr.contains("AWS_ENDPOINT_URL"),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
    assert!(s3.keys("").await.is_empty(), "nothing was written");

    // A data dir whose images are on the local disk cannot switch to a
    // bucket (its rows would point at objects that do not exist).
    let local = dir.path().join("local");
    let out = run(
        &["download", "eve", "--workers", "2"],
        &local,
        &mld_testkit::env::test_env(fake.api_url().as_str(), DEFAULT_TOKEN),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = run(&["download", "eve"], &local, &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot switch between a local disk and a bucket"),
        "{stderr}"
    );
    assert!(s3.keys("").await.is_empty(), "nothing was written");
}

/// kill -9 while tars are built in the spool, uploaded, and their loose
/// objects deleted: after every kill each tar in the bucket is whole and
/// byte for byte the one an uninterrupted run on disk writes, every image
/// is a loose object or in such a tar, and the next start finishes with
/// exactly those tars, nothing downloaded twice and no spool left over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_while_packing_into_the_bucket_ends_with_the_tars_a_disk_run_writes() {
    use mld_testkit::archive_check::member_name;
    use mld_testkit::tar_check::tars_in;
    let s3 = S3Server::start("archive").await;
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("tara", 600, 31);
    let images = fake.images("tara");
    let dir = tempfile::tempdir().unwrap();
    let disk_env = mld_testkit::env::test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let mut env = disk_env.clone();
    env.extend(s3.daemon_env(PREFIX));
    let spec = json!({"username": "tara", "package": "tar"});

    // The reference: one uninterrupted run on the local disk.
    let reference = dir.path().join("reference");
    let daemon = DaemonProcess::spawn(BINARY, &reference, 8, &disk_env).unwrap();
    let (_, job) = daemon.api().post_job(spec.clone()).await;
    daemon
        .api()
        .wait_for_state(job_id(&job), &["done"], LONG)
        .await;
    drop(daemon);
    let reference = reference.join("archive/mapillary-tara-original");
    let want = tars_in(&reference);
    let hits_before: usize = images.iter().map(|m| fake.cdn_hits(&m.id)).sum();

    let data = dir.path().join("data");
    let db = data.join("mapillary.db");
    let mut daemon = DaemonProcess::spawn(BINARY, &data, 8, &env).unwrap();
    let (_, job) = daemon.api().post_job(spec).await;
    let id = job_id(&job);
    let mut kills_mid_packing = Vec::new();
    for k in 0..4 {
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
        let mirror = dir.path().join(format!("after-kill-{k}"));
        s3.mirror(PREFIX, &mirror).await;
        let collection = mirror.join("mapillary-tara-original");
        let mut packed = std::collections::HashSet::new();
        for (name, bytes) in tars_in(&collection) {
            assert_eq!(
                Some(&bytes),
                want.get(&name),
                "{name} after a kill is not the finished tar"
            );
            for entry in mld_testkit::tar_check::list(&collection.join(&name)) {
                packed.insert(entry.name);
            }
        }
        for image in &images {
            let member = member_name(image, "jpg");
            assert!(
                packed.contains(&member) || collection.join(&member).exists(),
                "{} is neither a loose object nor in a tar after a kill",
                image.id
            );
        }
        daemon = DaemonProcess::spawn(BINARY, &data, 8, &env).unwrap();
    }
    assert!(
        kills_mid_packing.len() >= 2,
        "at least two kills should land mid-packing: {kills_mid_packing:?}"
    );
    eprintln!("kills landed with unfinished packings in states {kills_mid_packing:?}");
    let job = daemon.api().wait_for_state(id, &["done"], LONG).await;
    assert_eq!(job["counts"]["done"], 600, "{job}");
    drop(daemon);

    let mirror = dir.path().join("final");
    s3.mirror(PREFIX, &mirror).await;
    let collection = mirror.join("mapillary-tara-original");
    assert_eq!(tars_in(&collection), want, "the same tars, byte for byte");
    let loose: Vec<String> = mld_testkit::tar_check::files_under(&collection)
        .into_iter()
        .filter(|f| f.ends_with(".jpg") && f != "__ia_thumb__.jpg")
        .collect();
    assert!(loose.is_empty(), "loose objects left: {loose:?}");
    assert_eq!(
        std::fs::read(collection.join("metadata.jsonl.gz")).unwrap(),
        std::fs::read(reference.join("metadata.jsonl.gz")).unwrap()
    );
    let hits_after: usize = images.iter().map(|m| fake.cdn_hits(&m.id)).sum();
    assert_eq!(hits_after - hits_before, 600, "nothing downloaded twice");
    assert!(
        files_under(&data.join("spool")).is_empty(),
        "spool left: {:?}",
        files_under(&data.join("spool"))
    );
}

/// S3 answers a bad signature with a 403 whose body echoes the access key,
/// the string to sign and the canonical request (with any session token).
/// That text must reach no log line, no file of the data dir and no API
/// answer: at start (the run stops, naming the error code) and mid-run
/// (the images wait, then finish once the bucket accepts again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_error_that_echoes_the_credentials_never_shows_them() {
    use mld_testkit::s3::ACCESS_KEY;
    let s3 = S3Server::start("archive").await;
    let proxy = FlakyProxy::start(&s3.checked.endpoint).await;
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("ines", 200, 47);
    let dir = tempfile::tempdir().unwrap();
    let mut env = mld_testkit::env::test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    env.extend(s3.daemon_env(PREFIX));
    mld_testkit::env::set(&mut env, "AWS_ENDPOINT_URL", &proxy.endpoint);
    let leaks = |text: &str| text.contains(ACCESS_KEY) || text.contains(SECRET_KEY);

    proxy.set_forbidden(true);
    let out = run(&["download", "ines"], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(!leaks(&stderr), "{stderr}");
    proxy.set_forbidden(false);

    let data = dir.path().join("daemon");
    let daemon = DaemonProcess::spawn(BINARY, &data, 4, &env).expect("the daemon starts");
    let (_, job) = daemon.api().post_job(json!({"username": "ines"})).await;
    let id = job_id(&job);
    while daemon.api().job(id).await["counts"]["done"]
        .as_u64()
        .unwrap_or(0)
        < 40
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refused until the daemon has met the refusal (a connection refused),
    // then 2 s more: a fixed window could pass on pooled connections alone.
    let refused_before = proxy.refused();
    proxy.set_forbidden(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while proxy.refused() == refused_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon made no request to the bucket in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_forbidden(false);
    let done = daemon.api().wait_for_state(id, &["done"], LONG).await;
    assert_eq!(
        (
            done["counts"]["done"].as_u64(),
            done["counts"]["failed"].as_u64()
        ),
        (Some(200), Some(0)),
        "{done}"
    );
    let (_, jobs) = daemon
        .api()
        .request(reqwest::Method::GET, "/jobs", None)
        .await;
    let (_, status) = daemon
        .api()
        .request(reqwest::Method::GET, "/status", None)
        .await;
    let log = daemon.log_text();
    drop(daemon);
    // A PUT or GET refused shows the error code; a HEAD refused (adoption's
    // check, whose answer has no body) shows the daemon's own message.
    assert!(
        log.contains("SignatureDoesNotMatch") || log.contains("the archive bucket refused"),
        "the refusal was met and logged"
    );
    assert!(!leaks(&log), "a credential reached the log");
    assert!(!leaks(&jobs.to_string()) && !leaks(&status.to_string()));
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !leaks(&text(&bytes)),
            "{} holds a credential",
            file.display()
        );
    }
}

/// A file larger than one part (8 MiB) goes up in parts and comes back
/// whole; a download streams it back to disk byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_several_parts_uploads_whole_and_downloads_back() {
    use mapillary_downloader::archive::bucket::{ArchiveUrl, AwsEnvironment, Bucket};
    let s3 = S3Server::start("archive").await;
    let dir = tempfile::tempdir().unwrap();
    let vars: std::collections::HashMap<String, String> =
        s3.daemon_env(PREFIX).into_iter().collect();
    let url = ArchiveUrl::parse(&vars["MLD__STORAGE__ARCHIVE_URL"]).unwrap();
    let bucket = Bucket::open(
        &url,
        &AwsEnvironment::from_vars(&vars),
        dir.path().join("spool"),
    )
    .unwrap();
    bucket.check_reachable().await.unwrap();
    assert!(s3.keys("").await.is_empty(), "the write probe is removed");

    let local = dir.path().join("big.tar");
    let bytes: Vec<u8> = (0..(20 << 20) + 12_345_u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &bytes).unwrap();
    let path = bucket.root().join("mapillary-x-original/2024-01-02.tar");
    bucket.upload_file(&local, &path).await.unwrap();
    let stored = s3
        .get(&format!("{PREFIX}/mapillary-x-original/2024-01-02.tar"))
        .await
        .unwrap();
    assert!(
        stored == bytes,
        "the object is the file ({} vs {} bytes)",
        stored.len(),
        bytes.len()
    );

    let back = dir.path().join("back.tar");
    assert!(bucket.download(&path, &back).await.unwrap());
    assert!(std::fs::read(&back).unwrap() == bytes);
    assert!(
        !bucket
            .download(&bucket.root().join("mapillary-x-original/none.tar"), &back)
            .await
            .unwrap()
    );
}

/// A bucket built from the daemon's variables for `s3`, spooling in `dir`.
fn open_bucket(
    s3: &S3Server,
    dir: &Path,
) -> std::sync::Arc<mapillary_downloader::archive::bucket::Bucket> {
    use mapillary_downloader::archive::bucket::{ArchiveUrl, AwsEnvironment, Bucket};
    let vars: std::collections::HashMap<String, String> =
        s3.daemon_env(PREFIX).into_iter().collect();
    let url = ArchiveUrl::parse(&vars["MLD__STORAGE__ARCHIVE_URL"]).unwrap();
    std::sync::Arc::new(
        Bucket::open(&url, &AwsEnvironment::from_vars(&vars), dir.join("spool")).unwrap(),
    )
}

/// A tar's upload is create-only: it completes only while no object has
/// the key, and never replaces one; an aborted upload can no longer
/// complete; aborting one already over is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_upload_never_replaces_an_object_and_an_aborted_one_never_completes() {
    use mapillary_downloader::archive::bucket::Completed;
    use mapillary_downloader::archive::checksum::sha256_hex;
    let s3 = S3Server::start("archive").await;
    let dir = tempfile::tempdir().unwrap();
    let bucket = open_bucket(&s3, dir.path());
    let local = dir.path().join("a.tar");
    let bytes: Vec<u8> = (0..(9 << 20) + 777_u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(&local, &bytes).unwrap();
    let sha = sha256_hex(&bytes);
    let path = bucket.root().join("mapillary-x-original/2024-01-02.tar");
    let key = format!("{PREFIX}/mapillary-x-original/2024-01-02.tar");

    let first = bucket.begin_upload(&path, &sha).await.unwrap();
    let parts = bucket.upload_parts(&local, &path, &first).await.unwrap();
    assert_eq!(parts.len(), 2, "9 MiB and a bit: two parts");
    assert_eq!(
        bucket
            .complete_create_only(&path, &first, &parts)
            .await
            .unwrap(),
        Completed::Created
    );
    assert!(s3.get(&key).await.unwrap() == bytes);
    assert_eq!(s3.metadata(&key).await["sha256"], sha);

    // Sizes at part boundaries: exactly one and two parts, and empty.
    for (size, want_parts) in [(8_usize << 20, 1), (16 << 20, 2), (0, 1)] {
        let exact: Vec<u8> = bytes.iter().copied().cycle().take(size).collect();
        std::fs::write(&local, &exact).unwrap();
        let at = bucket
            .root()
            .join(format!("mapillary-x-original/exact-{size}.tar"));
        let id = bucket.begin_upload(&at, &sha256_hex(&exact)).await.unwrap();
        let sent = bucket.upload_parts(&local, &at, &id).await.unwrap();
        assert_eq!(sent.len(), want_parts, "{size} bytes");
        assert_eq!(
            bucket.complete_create_only(&at, &id, &sent).await.unwrap(),
            Completed::Created
        );
        let stored = s3
            .get(&format!("{PREFIX}/mapillary-x-original/exact-{size}.tar"))
            .await
            .unwrap();
        assert!(stored == exact, "{size} bytes: the object is the file");
    }

    // A second upload to the taken key: not completed, the object unchanged.
    std::fs::write(&local, b"a shorter tar").unwrap();
    let second = bucket.begin_upload(&path, "other").await.unwrap();
    let parts = bucket.upload_parts(&local, &path, &second).await.unwrap();
    assert_eq!(
        bucket
            .complete_create_only(&path, &second, &parts)
            .await
            .unwrap(),
        Completed::KeyTaken
    );
    assert!(s3.get(&key).await.unwrap() == bytes, "never replaced");
    bucket.abort_upload(&path, &second).await.unwrap();

    // Aborted before its completion (a taker-over did it): it cannot
    // complete, and no object appears.
    let other = bucket.root().join("mapillary-x-original/2024-01-03.tar");
    let third = bucket.begin_upload(&other, "x").await.unwrap();
    let parts = bucket.upload_parts(&local, &other, &third).await.unwrap();
    bucket.abort_upload(&other, &third).await.unwrap();
    assert!(
        bucket
            .complete_create_only(&other, &third, &parts)
            .await
            .is_err()
    );
    assert!(
        s3.get(&format!("{PREFIX}/mapillary-x-original/2024-01-03.tar"))
            .await
            .is_none()
    );
    bucket.abort_upload(&other, &third).await.unwrap();
    assert!(s3.multipart_uploads().await.is_empty(), "no upload left");
}

/// A packer that lost its collection while uploading a tar (stalled) cannot
/// complete the upload once the new packer aborted it, cannot record
/// anything, and the bucket ends with the new packer's tars only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_packer_aborts_the_upload_a_stalled_one_left_and_the_stalled_one_changes_nothing()
{
    use mapillary_downloader::archive::Archive;
    use mapillary_downloader::archive::checksum::sha256_hex;
    use mapillary_downloader::archive::{ArchivedFile, FileKind, collection_path, image_path};
    use mapillary_downloader::model::{ImageMeta, Packaging, Quality};
    use mapillary_downloader::package::{self, PackStep};
    use mapillary_downloader::selection::JobSpec;
    use mapillary_downloader::store::{JobState, PackingState, Store};
    use std::sync::Arc;
    const COLLECTION: &str = "mapillary-pia-1024";
    let s3 = S3Server::start("archive").await;
    let dir = tempfile::tempdir().unwrap();
    let bucket = open_bucket(&s3, dir.path());
    let files = Archive::bucket(bucket.clone(), 0);
    let root = bucket.root().to_path_buf();
    let store = Arc::new(Store::open(&dir.path().join("mapillary.db")).await.unwrap());
    let mut spec = JobSpec::user("pia", Quality::Q1024);
    spec.package = Packaging::Tar;
    let job = store.submit_job(&spec, 1).await.unwrap().job().id;
    let images: Vec<ImageMeta> = (0..12_u64)
        .map(|i| ImageMeta {
            id: (5000 + i).to_string(),
            captured_at: Some(1_704_153_600_000 + i as i64 * 1000),
            sequence: Some("seq".into()),
            thumb_1024_url: Some(format!("https://cdn.example/{i}.jpg")),
            ..Default::default()
        })
        .collect();
    store.insert_page(job, &images, None, 2).await.unwrap();
    store
        .transition_job(job, &[JobState::Queued], JobState::Downloading, 2)
        .await
        .unwrap();
    let folder = collection_path(&root, COLLECTION).unwrap();
    let owner: Arc<str> = "worker".into();
    for image in store
        .claim(&owner, 100, Duration::from_secs(60), 3, 0)
        .await
        .unwrap()
    {
        let path = image_path(&folder, &image.meta, FileKind::Jpeg).unwrap();
        let bytes = format!("image {}", image.image_id).repeat(40).into_bytes();
        let sha = sha256_hex(&bytes);
        bucket
            .put_image(
                &path,
                bytes.clone().into(),
                &sha,
                image.meta.captured_at,
                "t",
            )
            .await
            .unwrap();
        let file = ArchivedFile::loose(&path, bytes.len() as u64, Some(sha));
        assert!(store.complete(&image.lease, &file, 3).await.unwrap());
    }
    let lease = |owner: &'static str, at: i64| {
        let store = store.clone();
        async move {
            store
                .take_collection_task(COLLECTION, &Arc::from(owner), Duration::from_millis(1), at)
                .await
                .unwrap()
                .expect("the collection's lease")
        }
    };

    // The first packer plans the tar, begins its upload, records it, sends
    // the parts, and stalls before the completion.
    let stalled = lease("daemon-a", 1 << 40).await;
    let planned = match package::step(&store, &files, &stalled).await.unwrap() {
        PackStep::Planned(p) => p,
        other => panic!("expected a plan, got {other:?}"),
    };
    let tar = folder.join(&planned.tar_name);
    let local = dir.path().join("stalled.tar");
    std::fs::write(&local, b"what the stalled packer had built").unwrap();
    let upload = bucket.begin_upload(&tar, "stalled").await.unwrap();
    store
        .record_upload(&stalled, &upload, &tar.to_string_lossy(), 10)
        .await
        .unwrap();
    let parts = bucket.upload_parts(&local, &tar, &upload).await.unwrap();
    assert_eq!(s3.multipart_uploads().await.len(), 1);

    // Its lease expires; the next packer aborts the upload and packs.
    let holder = lease("daemon-b", (1 << 40) + 10).await;
    let report = package::pack_collection(&store, &files, &holder)
        .await
        .unwrap();
    assert_eq!(report.tars, std::slice::from_ref(&planned.tar_name));
    assert_eq!(report.members, 12);
    assert!(store.recorded_uploads(COLLECTION).await.unwrap().is_empty());
    assert!(s3.multipart_uploads().await.is_empty(), "aborted, not left");

    // The stalled packer wakes: its completion does not complete (the
    // upload is gone, the key taken), its writes are refused, and the tar
    // in the bucket stays the one recorded.
    let late = bucket.complete_create_only(&tar, &upload, &parts).await;
    assert!(
        !matches!(
            late,
            Ok(mapillary_downloader::archive::bucket::Completed::Created)
        ),
        "{late:?}"
    );
    let err = store
        .record_upload(&stalled, "another", &tar.to_string_lossy(), 20)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lost the lease"), "{err}");
    let key = format!("{PREFIX}/{COLLECTION}/{}", planned.tar_name);
    let stored = s3.get(&key).await.unwrap();
    let packing = &store.packings(COLLECTION).await.unwrap()[0];
    assert_eq!(packing.state, PackingState::Cleaned);
    assert_eq!(
        packing.sha256.as_deref(),
        Some(sha256_hex(&stored).as_str())
    );
    let loose: Vec<String> = s3
        .keys(&format!("{PREFIX}/{COLLECTION}/"))
        .await
        .into_iter()
        .filter(|k| k.ends_with(".jpg"))
        .collect();
    assert!(loose.is_empty(), "the loose objects went: {loose:?}");
    assert!(s3.multipart_uploads().await.is_empty());
}
