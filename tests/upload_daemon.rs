//! The upload to the Internet Archive as `serve` runs it, end to end: the
//! real binary as a child against the fake Mapillary and the fake IA, a job
//! posted over HTTP with `"upload": "ia"`, on SQLite and on PostgreSQL.
//!
//! - The upload track moves waiting → uploading → … → confirmed in
//!   `GET /jobs/{id}`, and the job's pause and resume act on it.
//! - With `ia.delete_after_confirm`, the confirmed tars leave the disk;
//!   `verify` then reports their images as held on the Internet Archive
//!   only (exit 0), `verify --repair` re-queues none of them, and a daemon
//!   started again downloads nothing.

use mapillary_downloader::archive::checksum::sha256_hex;
use mapillary_downloader::store::{PgClock, Store};
use mld_testkit::api_client::ApiClient;
use mld_testkit::archive_check::{collection_dir, tar_names};
use mld_testkit::env::{set, test_env};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Quality};
use mld_testkit::fake_ia::{FakeIa, FakeIaOptions};
use mld_testkit::postgres::PgCluster;
use mld_testkit::process::DaemonProcess;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");
const LONG: Duration = Duration::from_secs(180);
const IMAGES: u64 = 130;

/// The fakes, a data dir and the daemon's environment over them.
struct World {
    fake: FakeMapillary,
    ia: FakeIa,
    _dir: tempfile::TempDir,
    data: PathBuf,
    env: Vec<(String, String)>,
    database_url: Option<String>,
}

impl World {
    async fn new(postgres: bool, listing_delay: Duration) -> World {
        let fake = FakeMapillary::start(FakeConfig::default()).await;
        let ia = FakeIa::start(FakeIaOptions {
            listing_delay,
            ..FakeIaOptions::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
        for (key, value) in [
            ("IA_ACCESS_KEY", ia.access()),
            ("IA_SECRET_KEY", ia.secret()),
            ("MLD__IA__ENDPOINT", ia.base_url()),
            ("MLD__ARCHIVE__IA_URL", ia.base_url()),
            ("MLD__IA__CONFIRM_POLL_MS", "20".into()),
            ("MLD__IA__SLOWDOWN_MAX_SECS", "1".into()),
            ("HOME", data.display().to_string()),
        ] {
            set(&mut env, key, &value);
        }
        let database_url = postgres.then(|| PgCluster::shared().fresh_database());
        if let Some(url) = &database_url {
            set(&mut env, "MLD__STORAGE__DATABASE_URL", url);
            set(&mut env, "MLD__STORAGE__SHARED_FILESYSTEM", "true");
        }
        World {
            fake,
            ia,
            _dir: dir,
            data,
            env,
            database_url,
        }
    }

    fn daemon(&self) -> DaemonProcess {
        DaemonProcess::spawn(BINARY, &self.data, 4, &self.env).expect("the daemon starts")
    }

    fn folder(&self, user: &str, quality: Quality) -> PathBuf {
        collection_dir(&self.data.join("archive"), user, quality)
    }

    async fn store(&self) -> Store {
        match &self.database_url {
            Some(url) => Store::open_postgres(url, PgClock::Database).await.unwrap(),
            None => Store::open(&self.data.join("mapillary.db")).await.unwrap(),
        }
    }

    /// `verify --data-dir <data>` with `args`.
    fn run_verify(&self, args: &[&str]) -> std::process::Output {
        mld_testkit::process::command(BINARY, &self.env)
            .args(["verify", "--data-dir"])
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap()
    }

    /// `verify --json` with `args`: exit code and report.
    fn verify(&self, args: &[&str]) -> (i32, Value) {
        let out = self.run_verify(&[&["--json"], args].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), report)
    }
}

/// Posts `user`'s job with `"upload": "ia"`; returns its id and the answer.
async fn post_upload_job(api: &ApiClient, user: &str, quality: &str) -> (i64, Value) {
    let body = json!({"username": user, "quality": quality, "upload": "ia"});
    let (status, job) = api.post_job(body).await;
    assert!(status.is_success(), "{status}: {job:#}");
    (job["id"].as_i64().unwrap(), job)
}

/// Polls job `id` until its upload is `state`, calling `seen` with each
/// answer; panics with the job after [`LONG`].
async fn wait_for_upload(api: &ApiClient, id: i64, state: &str, seen: impl FnMut(&Value)) -> Value {
    wait_until(api, id, state, |job| job["upload"]["state"] == state, seen).await
}

/// Polls job `id` until `done(job)`, calling `seen` with each answer;
/// panics with the job (and `what` it waited for) after [`LONG`].
async fn wait_until(
    api: &ApiClient,
    id: i64,
    what: &str,
    done: impl Fn(&Value) -> bool,
    mut seen: impl FnMut(&Value),
) -> Value {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let job = api.job(id).await;
        seen(&job);
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id}'s upload never got to {what}: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `serve` uploads with `ia.delete_after_confirm`: the tars leave the disk
/// once the item lists them; `verify` reports every image as held on the
/// Internet Archive only and exits 0; `--repair` re-queues nothing; a
/// daemon started again downloads nothing.
async fn deleted_tars_leave_their_images_held_on_the_internet_archive_only(postgres: bool) {
    let mut world = World::new(postgres, Duration::from_millis(100)).await;
    world.fake.add_user("ivy", IMAGES, 41);
    set(&mut world.env, "MLD__IA__DELETE_AFTER_CONFIRM", "true");
    let mut daemon = world.daemon();
    let api = daemon.api();
    let (id, _) = post_upload_job(&api, "ivy", "256").await;
    let job = wait_for_upload(&api, id, "confirmed", |_| {}).await;
    assert_eq!(job["state"], "done", "{job:#}");
    assert_eq!(
        job["upload"]["files_confirmed"],
        job["upload"]["files_total"]
    );
    daemon.terminate(Duration::from_secs(30)).unwrap();

    let folder = world.folder("ivy", Quality::Q256);
    let collection = folder.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        tar_names(&folder),
        Vec::<String>::new(),
        "every tar removed"
    );
    assert!(
        folder.join("metadata.jsonl.gz").is_file(),
        "item files stay"
    );
    let store = world.store().await;
    let packings = store.packings(&collection).await.unwrap();
    assert!(packings.len() >= 2, "{packings:?}");
    for packing in &packings {
        let on_ia = world.ia.file_bytes(&collection, &packing.tar_name);
        let on_ia = on_ia.unwrap_or_else(|| panic!("{} not on the item", packing.tar_name));
        assert_eq!(
            Some(sha256_hex(&on_ia)),
            packing.sha256,
            "{}",
            packing.tar_name
        );
    }
    let done = store.done_rows(Some(id)).await.unwrap();
    assert_eq!(done, IMAGES);
    store.close().await;

    let downloads = world.fake.cdn_requests();
    let (code, report) = world.verify(&[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["held_on_ia_only"], done, "{report:#}");
    assert_eq!(
        (report["missing"].as_u64(), report["checked"].as_u64()),
        (Some(0), Some(0))
    );
    let out = world.run_verify(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{done} held on the Internet Archive only")),
        "{text}"
    );
    let (code, report) = world.verify(&["--repair"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["requeued"], 0, "{report:#}");
    assert_eq!(report["held_on_ia_only"], done, "{report:#}");

    let mut daemon = world.daemon();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = daemon.api().job(id).await;
    assert_eq!(
        (job["state"].as_str(), job["upload"]["state"].as_str()),
        (Some("done"), Some("confirmed")),
        "{job:#}"
    );
    assert_eq!(
        world.fake.cdn_requests(),
        downloads,
        "nothing downloaded again"
    );
    daemon.terminate(Duration::from_secs(30)).unwrap();
}

/// PUTs the fake IA began for the item's files (its tars and own files).
fn puts_begun(ia: &FakeIa, collection: &str, folder: &Path) -> u32 {
    let mut names = tar_names(folder);
    names.extend(["metadata.jsonl.gz".into(), "__ia_thumb__.jpg".into()]);
    names
        .iter()
        .map(|name| ia.put_attempts(collection, name))
        .sum()
}

/// Files of the item the fake IA holds whole.
fn stored_files(ia: &FakeIa, collection: &str, folder: &Path) -> usize {
    let mut names = tar_names(folder);
    names.extend(["metadata.jsonl.gz".into(), "__ia_thumb__.jpg".into()]);
    names
        .iter()
        .filter(|name| ia.stored(collection, name).is_some())
        .count()
}

/// `serve` runs a job's upload on its own track, visible in
/// `GET /jobs/{id}`: waiting while the job works, then uploading, …,
/// confirmed. The job's pause stops it (no PUT begins while paused) and
/// its resume finishes it; the item then holds the local tars byte for byte.
async fn the_daemons_upload_track_shows_in_the_job_and_pauses_and_resumes(postgres: bool) {
    let world = World::new(postgres, Duration::from_millis(300)).await;
    world.fake.add_user("jon", IMAGES, 42);
    world.ia.set_bandwidth(Some(250_000));
    let mut daemon = world.daemon();
    let api = daemon.api();
    let (id, posted) = post_upload_job(&api, "jon", "1024").await;
    let mut states: Vec<String> = Vec::new();
    let mut note = |job: &Value| {
        let state = job["upload"]["state"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        if states.last() != Some(&state) {
            states.push(state);
        }
    };
    note(&posted);
    let first_sent = |job: &Value| {
        job["upload"]["state"] == "uploading" && job["upload"]["bytes_sent"].as_u64() > Some(0)
    };
    wait_until(&api, id, "a file sent", first_sent, &mut note).await;

    let (status, paused) = api
        .request(reqwest::Method::POST, &format!("/jobs/{id}/pause"), None)
        .await;
    assert!(status.is_success(), "{status}: {paused:#}");
    assert_eq!(paused["upload"]["state"], "paused", "{paused:#}");
    let count = |job: &Value, key: &str| job["upload"][key].as_u64().unwrap();
    assert!(
        count(&paused, "files_confirmed") < count(&paused, "files_total"),
        "paused half-way: {paused:#}"
    );
    note(&paused);
    // Within a tick of the loop (2 s; 4 s leaves room on a busy machine)
    // the runner stops: then nothing begins and nothing arrives (the ~1.5 MB
    // left would take ~6 s at this bandwidth).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let folder = world.folder("jon", Quality::Q1024);
    let collection = folder.file_name().unwrap().to_string_lossy().into_owned();
    let begun = puts_begun(&world.ia, &collection, &folder);
    let stored = stored_files(&world.ia, &collection, &folder);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(puts_begun(&world.ia, &collection, &folder), begun, "paused");
    assert_eq!(
        stored_files(&world.ia, &collection, &folder),
        stored,
        "paused"
    );
    let job = api.job(id).await;
    assert_eq!(
        (job["state"].as_str(), job["upload"]["state"].as_str()),
        (Some("done"), Some("paused")),
        "{job:#}"
    );
    assert!(
        job["upload"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("paused by the user")
    );

    world.ia.set_bandwidth(None);
    let (status, resumed) = api
        .request(reqwest::Method::POST, &format!("/jobs/{id}/resume"), None)
        .await;
    assert!(status.is_success(), "{status}: {resumed:#}");
    note(&resumed);
    let job = wait_for_upload(&api, id, "confirmed", &mut note).await;
    daemon.terminate(Duration::from_secs(30)).unwrap();
    assert!(
        puts_begun(&world.ia, &collection, &folder) > begun,
        "resumed"
    );

    assert_eq!(
        states.first().map(String::as_str),
        Some("waiting"),
        "{states:?}"
    );
    let at = |s: &str| states.iter().position(|x| x == s);
    assert!(at("uploading") < at("paused"), "{states:?}");
    assert!(at("paused") < at("confirmed"), "{states:?}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("confirmed"),
        "{states:?}"
    );
    let upload = &job["upload"];
    assert_eq!(
        (upload["items"].as_u64(), upload["last_error"].as_str()),
        (Some(1), None),
        "{job:#}"
    );
    assert_eq!(upload["files_confirmed"], upload["files_total"], "{job:#}");
    assert_eq!(upload["bytes_sent"], upload["bytes_total"], "{job:#}");
    let tars = tar_names(&folder);
    assert!(!tars.is_empty());
    for name in &tars {
        let local = std::fs::read(folder.join(name)).unwrap();
        assert_eq!(
            world.ia.file_bytes(&collection, name),
            Some(local),
            "{name}"
        );
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(false).await
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(true).await
            })*
        }
    };
}

on_both_backends!(
    deleted_tars_leave_their_images_held_on_the_internet_archive_only,
    the_daemons_upload_track_shows_in_the_job_and_pauses_and_resumes,
);
