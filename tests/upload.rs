//! Upload to the Internet Archive against the kit's fake IA (IA-S3 and the
//! metadata API on one port): a packed collection folder made by hand (tars
//! of known bytes, `metadata.jsonl.gz`, thumbnail, `.meta/` tags), a job
//! whose collection it is, and the uploader run in-process on SQLite and on
//! PostgreSQL; the kill -9 test runs the real binary.

use flate2::{Compression, GzBuilder};
use mapillary_downloader::config::IaSettings;
use mapillary_downloader::model::{ImageMeta, Packaging, Quality, UploadTarget};
use mapillary_downloader::secret::Secret;
use mapillary_downloader::selection::JobSpec;
use mapillary_downloader::store::{PgClock, Store, UploadState};
use mapillary_downloader::units::format_bytes;
use mapillary_downloader::upload::client::IaClient;
use mapillary_downloader::upload::command;
use mapillary_downloader::upload::credentials::{CredentialSource, IaCredentials};
use mapillary_downloader::upload::run::{UploadEnd, Uploader};
use mld_testkit::archive_check::tar_names;
use mld_testkit::fake_ia::{FakeIa, FakeIaOptions};
use mld_testkit::postgres::PgCluster;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const COLLECTION: &str = "mapillary-alice-original";
const DAYS: [&str; 3] = ["2024-01-01", "2024-01-02", "2024-01-03"];
const DESCRIPTION: &str = "Street-level imagery from Zürich — café corner";

/// A data dir with a store, one tar job of alice's (upload: ia) and its
/// packed collection folder.
struct Setup {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    job: i64,
}

impl Setup {
    /// How many tars are recorded as held on archive.org only and not yet
    /// removed from the disk.
    async fn tars_to_remove(&self) -> usize {
        self.store.tars_to_remove(COLLECTION).await.unwrap().len()
    }

    /// Puts the job's confirmed upload track back to `waiting`, as a
    /// re-sync's new tar or a changed setting makes it run again.
    async fn reopen_confirmed(&self, now_ms: i64) {
        let (from, to) = (UploadState::Confirmed, UploadState::Waiting);
        let reopened = self
            .store
            .set_upload_state(self.job, from, to, None, now_ms);
        assert!(reopened.await.unwrap(), "the track was confirmed");
    }

    async fn new(postgres: bool, tar_bytes: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = if postgres {
            let url = PgCluster::shared().fresh_database();
            Store::open_postgres(&url, PgClock::Database).await.unwrap()
        } else {
            Store::open(&dir.path().join("mapillary.db")).await.unwrap()
        };
        let mut spec = JobSpec::user("alice", Quality::Original);
        spec.package = Packaging::Tar;
        spec.upload = Some(UploadTarget::Ia);
        let job = store.submit_job(&spec, 1_000).await.unwrap().job().id;
        store.enable_upload(job, 1_000).await.unwrap();
        let metas: Vec<ImageMeta> = (0..3).map(meta).collect();
        store.insert_page(job, &metas, None, 1_000).await.unwrap();
        let setup = Setup {
            dir,
            store: Arc::new(store),
            job,
        };
        for (i, day) in DAYS.iter().enumerate() {
            setup.write(&format!("{day}.tar"), &body(i as u8, tar_bytes));
        }
        setup.write_item_files();
        setup
    }

    fn folder(&self) -> PathBuf {
        self.dir.path().join("archive").join(COLLECTION)
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        let path = self.folder().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn write_item_files(&self) {
        let mut gz = GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::fast());
        for i in 0..3 {
            writeln!(gz, "{}", serde_json::to_string(&meta(i)).unwrap()).unwrap();
        }
        self.write("metadata.jsonl.gz", &gz.finish().unwrap());
        self.write("__ia_thumb__.jpg", b"\xff\xd8 a tiny thumbnail \xff\xd9");
        self.write(".meta/title/0", b"Mapillary images by alice");
        self.write(".meta/description/0", DESCRIPTION.as_bytes());
        for (n, subject) in ["mapillary", "street-view", "photography"]
            .iter()
            .enumerate()
        {
            self.write(&format!(".meta/subject/{n}"), subject.as_bytes());
        }
        self.write(".meta/mapillary_downloader/0", b"1.0");
    }

    fn uploader(&self, fake: &FakeIa, max_item_bytes: u64) -> Uploader {
        Uploader {
            store: self.store.clone(),
            client: IaClient::new(&fake.base_url(), &fake.base_url()).unwrap(),
            credentials: IaCredentials {
                access: fake.access(),
                secret: Secret::new(fake.secret()),
                source: CredentialSource::Environment,
            },
            settings: ia_settings(&fake.base_url(), max_item_bytes),
            archive_dir: self.dir.path().join("archive"),
            spool: self.dir.path().join("spool").join("ia"),
        }
    }

    async fn state(&self) -> (UploadState, Option<String>) {
        let track = self.store.upload_track(self.job).await.unwrap().unwrap();
        (track.state, track.last_error)
    }
}

fn ia_settings(endpoint: &str, max_item_bytes: u64) -> IaSettings {
    IaSettings {
        endpoint: endpoint.into(),
        max_item_bytes,
        max_item_files: 9_000,
        confirm_timeout_secs: 20,
        confirm_poll_ms: 20,
        slowdown_max_secs: 1,
        delete_after_confirm: false,
    }
}

/// Image `i`, captured on `DAYS[i]` at noon UTC.
fn meta(i: u64) -> ImageMeta {
    ImageMeta {
        id: (100 + i).to_string(),
        captured_at: Some(1_704_110_400_000 + i as i64 * 86_400_000),
        sequence: Some("seq".into()),
        ..Default::default()
    }
}

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn fake() -> FakeIa {
    FakeIa::start(FakeIaOptions {
        listing_delay: Duration::from_millis(100),
        ..FakeIaOptions::default()
    })
    .await
}

async fn run(setup: &Setup, uploader: &Uploader) -> UploadEnd {
    let shutdown = CancellationToken::new();
    let end = uploader.run_job(setup.job, &shutdown);
    tokio::time::timeout(Duration::from_secs(60), end)
        .await
        .expect("the upload ends")
        .unwrap()
}

/// One item whose files are the local ones byte for byte, every `.meta` tag
/// sent as a header (repeated and non-ASCII values included), confirmed.
async fn a_collection_uploads_as_one_item_byte_for_byte_with_its_tags(postgres: bool) {
    let setup = Setup::new(postgres, 4_000).await;
    let fake = fake().await;
    assert_eq!(
        run(&setup, &setup.uploader(&fake, 1 << 30)).await,
        UploadEnd::Confirmed
    );
    assert_eq!(fake.items(), [COLLECTION]);
    let mut names: Vec<String> = DAYS.iter().map(|d| format!("{d}.tar")).collect();
    names.extend(["metadata.jsonl.gz".into(), "__ia_thumb__.jpg".into()]);
    for name in &names {
        let local = std::fs::read(setup.folder().join(name)).unwrap();
        assert_eq!(
            fake.file_bytes(COLLECTION, name).as_ref(),
            Some(&local),
            "{name}"
        );
    }
    let meta = fake.item_metadata(COLLECTION).unwrap();
    assert_eq!(meta["title"], ["Mapillary images by alice"]);
    assert_eq!(meta["description"], [DESCRIPTION]);
    assert_eq!(meta["subject"], ["mapillary", "street-view", "photography"]);
    assert_eq!(meta["mapillary_downloader"], ["1.0"]);
    let progress = &setup.store.upload_progress(Some(setup.job)).await.unwrap()[0];
    assert_eq!(
        (progress.state, progress.items),
        (UploadState::Confirmed, 1)
    );
    assert_eq!((progress.files_confirmed, progress.files_total), (5, 5));
    assert_eq!(progress.bytes_sent, progress.bytes_total);
}

/// Over a small `max_item_bytes` the collection becomes `-2`, `-3` with
/// whole dates; a re-sync's addendum goes to the last item, and nothing
/// placed before moves or is sent again.
async fn a_collection_over_the_item_limit_splits_by_whole_dates(postgres: bool) {
    let setup = Setup::new(postgres, 3_000).await;
    let fake = fake().await;
    let uploader = setup.uploader(&fake, 5_000);
    assert_eq!(run(&setup, &uploader).await, UploadEnd::Confirmed);
    let parts = [
        COLLECTION.to_string(),
        format!("{COLLECTION}-2"),
        format!("{COLLECTION}-3"),
    ];
    assert_eq!(fake.items(), parts);
    for (part, day) in parts.iter().zip(DAYS) {
        assert!(
            fake.stored(part, &format!("{day}.tar")).is_some(),
            "{day} in {part}"
        );
        assert!(fake.stored(part, "metadata.jsonl.gz").is_some());
    }
    let title = &fake.item_metadata(&parts[2]).unwrap()["title"];
    assert_eq!(title, &["Mapillary images by alice (part 3)"]);

    setup.write("2024-01-01.1.tar", &body(9, 1_000));
    setup.reopen_confirmed(2).await;
    assert_eq!(run(&setup, &uploader).await, UploadEnd::Confirmed);
    assert!(
        fake.stored(&parts[2], "2024-01-01.1.tar").is_some(),
        "to the last item"
    );
    assert_eq!(
        fake.puts_stored(&parts[0], "2024-01-01.tar"),
        1,
        "never sent twice"
    );
    assert_eq!(fake.items().len(), 3);
}

/// A file the item already lists with the same MD5 and size is not sent.
async fn files_already_in_the_item_are_not_sent_again(postgres: bool) {
    let setup = Setup::new(postgres, 2_000).await;
    let fake = fake().await;
    let first = std::fs::read(setup.folder().join("2024-01-01.tar")).unwrap();
    fake.preload(COLLECTION, "2024-01-01.tar", &first);
    fake.preload(
        COLLECTION,
        "2024-01-02.tar",
        b"other bytes under the same name",
    );
    assert_eq!(
        run(&setup, &setup.uploader(&fake, 1 << 30)).await,
        UploadEnd::Confirmed
    );
    assert_eq!(fake.put_attempts(COLLECTION, "2024-01-01.tar"), 0);
    assert_eq!(
        fake.put_attempts(COLLECTION, "2024-01-02.tar"),
        1,
        "another MD5: sent"
    );
    assert_eq!(fake.put_attempts(COLLECTION, "2024-01-03.tar"), 1);
}

/// A storm of `503 SlowDown` and an `over_limit` while it lasts slow the
/// upload down; it still ends confirmed.
async fn slowdown_storms_slow_the_upload_without_failing_it(postgres: bool) {
    let setup = Setup::new(postgres, 1_000).await;
    let fake = fake().await;
    fake.slow_down_next(6, Some(0));
    fake.set_over_limit(1);
    let clear = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            fake.put_attempts(COLLECTION, "2024-01-01.tar"),
            0,
            "over_limit holds PUTs"
        );
        fake.set_over_limit(0);
    };
    let uploader = setup.uploader(&fake, 1 << 30);
    let (end, ()) = tokio::join!(run(&setup, &uploader), clear);
    assert_eq!(end, UploadEnd::Confirmed);
    let attempts: u32 = DAYS
        .iter()
        .map(|d| fake.put_attempts(COLLECTION, &format!("{d}.tar")))
        .sum();
    assert!(
        attempts >= 9,
        "each SlowDown answer was retried: {attempts}"
    );
    assert_eq!(setup.state().await.0, UploadState::Confirmed);
}

/// IA's spam answer pauses the track with the reason; nothing is retried.
async fn the_spam_answer_pauses_the_upload_with_the_reason(postgres: bool) {
    let setup = Setup::new(postgres, 1_000).await;
    let fake = fake().await;
    fake.refuse_as_spam(true);
    let end = run(&setup, &setup.uploader(&fake, 1 << 30)).await;
    assert!(
        matches!(&end, UploadEnd::Paused(m) if m.contains("spam")),
        "{end:?}"
    );
    let (state, error) = setup.state().await;
    assert_eq!(state, UploadState::Paused);
    let error = error.unwrap();
    assert!(
        error.contains("appears to be spam"),
        "IA's own sentence: {error}"
    );
    assert!(error.contains("info@archive.org"), "{error}");
    let attempts: u32 = DAYS
        .iter()
        .map(|d| fake.put_attempts(COLLECTION, &format!("{d}.tar")))
        .sum();
    assert_eq!(attempts, 1, "a refusal is not retried");
}

/// The secret key is in no `--dry-run` output and no API answer, even
/// after a refusal.
async fn the_secret_key_is_in_no_dry_run_output_nor_answer(postgres: bool) {
    let setup = Setup::new(postgres, 1_000).await;
    let fake = fake().await;
    let mut uploader = setup.uploader(&fake, 2_000);
    let mut out = Vec::new();
    command::dry_run(&uploader, &[setup.job], &mut out)
        .await
        .unwrap();
    let printed = String::from_utf8(out).unwrap();
    assert!(
        printed.contains(&format!("item {COLLECTION}-2")),
        "{printed}"
    );
    assert!(
        printed.contains("x-archive-meta03-subject: photography"),
        "{printed}"
    );
    assert!(
        printed.contains("[redacted]") && !printed.contains(&fake.secret()),
        "{printed}"
    );
    assert!(fake.requests().is_empty(), "a dry run sends nothing");
    assert!(
        setup
            .store
            .upload_items(COLLECTION)
            .await
            .unwrap()
            .is_empty(),
        "writes nothing"
    );

    uploader.credentials.secret = Secret::new("wrong-secret-key-value");
    let end = run(&setup, &uploader).await;
    assert!(
        matches!(&end, UploadEnd::Paused(m) if m.contains("IA_SECRET_KEY")),
        "{end:?}"
    );
    let mut job = vec![setup.store.find_job(setup.job).await.unwrap().unwrap()];
    setup.store.with_uploads(&mut job).await.unwrap();
    let answer = serde_json::to_string(&job[0]).unwrap();
    assert!(answer.contains("\"state\":\"paused\""), "{answer}");
    assert!(!answer.contains("wrong-secret-key-value") && !answer.contains(&fake.secret()));
}

/// The collection's tars still in its folder, by name.
fn local_tars(setup: &Setup) -> Vec<String> {
    tar_names(&setup.folder())
}

fn all_tars() -> Vec<String> {
    DAYS.iter().map(|d| format!("{d}.tar")).collect()
}

/// `ia.delete_after_confirm`: every tar goes once the item lists it with
/// our MD5 (the item's own files stay); without it, every tar stays.
async fn confirmed_tars_are_removed_with_delete_after_confirm_only(postgres: bool) {
    let kept = Setup::new(postgres, 2_000).await;
    let first_fake = fake().await;
    assert_eq!(
        run(&kept, &kept.uploader(&first_fake, 1 << 30)).await,
        UploadEnd::Confirmed
    );
    assert_eq!(
        local_tars(&kept),
        all_tars(),
        "without the setting, tars stay"
    );
    assert_eq!(kept.tars_to_remove().await, 0);

    let setup = Setup::new(postgres, 2_000).await;
    let fake = fake().await;
    let mut uploader = setup.uploader(&fake, 1 << 30);
    uploader.settings.delete_after_confirm = true;
    assert_eq!(run(&setup, &uploader).await, UploadEnd::Confirmed);
    assert_eq!(
        local_tars(&setup),
        Vec::<String>::new(),
        "every confirmed tar removed"
    );
    for (i, day) in DAYS.iter().enumerate() {
        assert_eq!(
            fake.file_bytes(COLLECTION, &format!("{day}.tar")),
            Some(body(i as u8, 2_000)),
            "{day}.tar is on archive.org"
        );
    }
    for kept_file in ["metadata.jsonl.gz", "__ia_thumb__.jpg", ".meta/title/0"] {
        assert!(
            setup.folder().join(kept_file).is_file(),
            "{kept_file} stays"
        );
    }
    assert_eq!(setup.tars_to_remove().await, 0);
    assert_eq!(setup.state().await.0, UploadState::Confirmed);
}

/// A tar archive.org never lists is never removed, nor recorded as held
/// there: the upload fails on the confirmation timeout and the disk keeps
/// everything.
async fn a_tar_never_confirmed_is_never_removed(postgres: bool) {
    let setup = Setup::new(postgres, 1_000).await;
    let fake = FakeIa::start(FakeIaOptions {
        listing_delay: Duration::from_secs(3_600),
        ..FakeIaOptions::default()
    })
    .await;
    let mut uploader = setup.uploader(&fake, 1 << 30);
    uploader.settings.delete_after_confirm = true;
    uploader.settings.confirm_timeout_secs = 1;
    let end = run(&setup, &uploader).await;
    assert!(matches!(end, UploadEnd::Failed(_)), "{end:?}");
    assert_eq!(local_tars(&setup), all_tars());
    for file in setup.store.upload_files(COLLECTION).await.unwrap() {
        assert!(
            !setup.store.record_tar_on_ia_only(file.id, 5).await.unwrap(),
            "{} is {}: not recordable",
            file.name,
            file.state
        );
    }
    assert_eq!(setup.tars_to_remove().await, 0);
}

/// What a kill -9 leaves between recording a tar as held on archive.org
/// only and removing it (the record, the file still there), and between
/// removing it and marking it removed (the record, the file gone): the next
/// run finishes both removals, even with the setting off since, and sends
/// nothing again.
async fn a_kill_between_recording_and_removing_leaves_a_consistent_state(postgres: bool) {
    let setup = Setup::new(postgres, 1_500).await;
    let fake = fake().await;
    let uploader = setup.uploader(&fake, 1 << 30);
    assert_eq!(run(&setup, &uploader).await, UploadEnd::Confirmed);
    let files = setup.store.upload_files(COLLECTION).await.unwrap();
    let tar = |name: &str| files.iter().find(|f| f.name == name).unwrap().id;
    let (first, second) = (tar("2024-01-01.tar"), tar("2024-01-02.tar"));
    // Killed right after the record's commit: the file is still there.
    assert!(setup.store.record_tar_on_ia_only(first, 10).await.unwrap());
    // Killed right after the removal: not marked removed yet.
    assert!(setup.store.record_tar_on_ia_only(second, 11).await.unwrap());
    std::fs::remove_file(setup.folder().join("2024-01-02.tar")).unwrap();
    assert_eq!(setup.tars_to_remove().await, 2);

    setup.reopen_confirmed(12).await;
    assert_eq!(run(&setup, &uploader).await, UploadEnd::Confirmed);
    assert_eq!(
        local_tars(&setup),
        ["2024-01-03.tar"],
        "only the recorded ones go"
    );
    assert_eq!(setup.tars_to_remove().await, 0);
    for name in all_tars() {
        assert_eq!(
            fake.put_attempts(COLLECTION, &name),
            1,
            "{name} not sent again"
        );
    }
    let progress = &setup.store.upload_progress(Some(setup.job)).await.unwrap()[0];
    assert_eq!((progress.files_confirmed, progress.files_total), (5, 5));
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(false).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(true).await
            })*
        }
    };
}

on_both_backends!(
    a_collection_uploads_as_one_item_byte_for_byte_with_its_tags,
    a_collection_over_the_item_limit_splits_by_whole_dates,
    files_already_in_the_item_are_not_sent_again,
    slowdown_storms_slow_the_upload_without_failing_it,
    the_spam_answer_pauses_the_upload_with_the_reason,
    the_secret_key_is_in_no_dry_run_output_nor_answer,
    confirmed_tars_are_removed_with_delete_after_confirm_only,
    a_tar_never_confirmed_is_never_removed,
    a_kill_between_recording_and_removing_leaves_a_consistent_state,
);

/// `mapillary-downloader upload` killed with SIGKILL while a file is on its
/// way: the next run sends only that file again (and what never started),
/// and neither run's log holds the secret key.
// Two threads: the fake serves while the test waits on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_upload_resends_only_the_file_in_flight() {
    let setup = Setup::new(false, 200_000).await;
    let data = setup.dir.path().to_path_buf();
    setup.store.close().await;
    let fake = fake().await;
    fake.set_bandwidth(Some(400_000));
    let env = binary_env(&fake, &data);
    let log = data.join("first.log");
    let mut child = spawn(&env, &log);
    let first = "2024-01-01.tar";
    let second = "2024-01-02.tar";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.put_attempts(COLLECTION, second) == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", read(&log));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(fake.puts_stored(COLLECTION, first), 1);
    assert_eq!(fake.puts_stored(COLLECTION, second), 0, "killed mid-body");

    fake.set_bandwidth(None);
    let log2 = data.join("second.log");
    let mut rerun = spawn(&env, &log2);
    let status = tokio::task::spawn_blocking(move || rerun.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{}", read(&log2));
    assert_eq!(fake.put_attempts(COLLECTION, first), 1, "not sent again");
    assert_eq!(
        fake.put_attempts(COLLECTION, second),
        2,
        "the file in flight, again"
    );
    assert_eq!(fake.put_attempts(COLLECTION, "2024-01-03.tar"), 1);
    for text in [read(&log), read(&log2)] {
        assert!(!text.contains(&fake.secret()), "the secret key in a log");
    }
}

/// `upload` off a terminal: plain progress lines (no bar drawn), then a
/// summary line per job with the upload's figures: files confirmed of
/// placed, bytes sent of placed, items, and this run's bytes.
// Two threads: the fake serves while the test waits on the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_command_ends_with_a_summary_line_of_the_uploads_figures() {
    let setup = Setup::new(false, 200_000).await;
    let (data, job) = (setup.dir.path().to_path_buf(), setup.job);
    setup.store.close().await;
    let fake = fake().await;
    let log = data.join("upload.log");
    let mut child = spawn(&binary_env(&fake, &data), &log);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let text = read(&log);
    assert!(status.success(), "{text}");
    let store = Store::open(&data.join("mapillary.db")).await.unwrap();
    let p = store.upload_progress(Some(job)).await.unwrap().remove(0);
    assert_eq!((p.files_confirmed, p.files_total, p.items), (5, 5, 1));
    let head = format!("job {job} upload to the Internet Archive confirmed: ");
    let summary = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&head))
        .unwrap_or_else(|| panic!("no summary line: {text}"));
    let total = format_bytes(p.bytes_total);
    let figures =
        format!("5 of 5 files confirmed, {total} of {total} sent in 1 item(s); {total} sent in ");
    assert!(summary.starts_with(&figures), "{summary}");
    assert!(summary.ends_with("/s)"), "this run's rate: {summary}");
    let progress = format!("job {job} upload to the Internet Archive: ");
    assert!(
        text.lines().any(|l| l.starts_with(&progress)),
        "a plain progress line: {text}"
    );
    assert!(
        !text.contains('\r'),
        "no bar drawn off a terminal: {text:?}"
    );
}

fn binary_env(fake: &FakeIa, data: &Path) -> Vec<(String, String)> {
    [
        ("IA_ACCESS_KEY", fake.access()),
        ("IA_SECRET_KEY", fake.secret()),
        ("MLD__IA__ENDPOINT", fake.base_url()),
        ("MLD__ARCHIVE__IA_URL", fake.base_url()),
        ("MLD__IA__CONFIRM_POLL_MS", "20".into()),
        ("MLD__IA__SLOWDOWN_MAX_SECS", "1".into()),
        ("MLD__LOG__LEVEL", "debug".into()),
        ("MLD__STORAGE__DATA_DIR", data.display().to_string()),
        ("HOME", data.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn spawn(env: &[(String, String)], log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    mld_testkit::process::command(env!("CARGO_BIN_EXE_mapillary-downloader"), env)
        .arg("upload")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
