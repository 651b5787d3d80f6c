//! The one-shot `download` and the `status` commands, as a user runs them:
//! the real binary against the fake API, exit codes, resume, dry run, output.

use mld_testkit::archive_check::{check_collection, part_files};
use mld_testkit::env::{self, test_env};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeImage, FakeMapillary, Quality};
use mld_testkit::process::{self, DaemonProcess};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

fn command(args: &[&str], data: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = process::command(BINARY, env);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a command to completion off the async runtime (the fake keeps serving).
async fn run(args: &[&str], data: &Path, env: &[(String, String)]) -> Output {
    let mut cmd = command(args, data, env);
    tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .unwrap()
}

/// Ids of every image the database calls done, in any job.
async fn done_ids(db: &Path) -> std::collections::HashSet<String> {
    let store = mapillary_downloader::store::Store::open_read_only(db)
        .await
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    for job in store.list_jobs().await.unwrap() {
        let mut after = None;
        loop {
            let page = store.finished_images(job.id, after, 2000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.row_id);
            ids.extend(page.into_iter().map(|i| i.meta.id));
        }
    }
    store.close().await;
    ids
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_plain(output: &str) {
    assert!(
        output.chars().all(|c| c == '\n' || !c.is_control()),
        "non-TTY output must be plain lines: {output:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_archives_a_user_then_a_second_run_downloads_nothing() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("nina", 150, 21);
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let out = run(&["download", "nina", "--workers", "4"], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_plain(&stderr);
    assert!(
        stderr.contains("nina [original]: done: 150 of 150 images archived"),
        "{stderr}"
    );
    check_collection(
        &dir.path().join("archive"),
        "nina",
        Quality::Original,
        &fake.images("nina"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );
    assert_eq!(fake.cdn_hits_total(), 150);

    let out = run(&["download", "nina", "--workers", "4"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        fake.cdn_hits_total(),
        150,
        "a second run downloads nothing already done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exit_codes_say_what_happened() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("olga", 30, 22);
    let first = fake.images("olga")[0].clone();
    fake.add_image(
        "olga",
        FakeImage {
            id: "not/a/number".into(),
            ..first
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);

    // Some images failed for good: 1.
    let out = run(&["download", "olga", "--workers", "2"], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 failed for good"), "{stderr}");

    // An unknown user archives nothing, says so, and succeeds.
    let out = run(&["download", "nobody-here"], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no images found"), "{stderr}");

    // A missing token: 2, one clear line naming the variable, nothing written.
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("data");
    let no_token = env::without(&env, "MAPILLARY_TOKEN");
    let out = run(&["download", "olga"], &data, &no_token).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("MAPILLARY_TOKEN"), "{stderr}");
    assert!(!data.exists(), "nothing is written on a usage error");

    // A rejected token: 2.
    let mut bad = env.clone();
    env::set(&mut bad, "MAPILLARY_TOKEN", "MLY|1|wrong");
    let out = run(&["download", "olga"], &data, &bad).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("MAPILLARY_TOKEN") && !stderr.contains("wrong"),
        "{stderr}"
    );

    // A bad setting: 2, naming the key and where it came from.
    let mut bad_config = env.clone();
    env::set(&mut bad_config, "MLD__MAPILLARY__PAGE_SIZE", "0");
    let out = run(
        &["download", "olga"],
        &fresh.path().join("other"),
        &bad_config,
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("mapillary.page_size") && stderr.contains("MLD__MAPILLARY__PAGE_SIZE"),
        "{stderr}"
    );

    // Usage errors: 2.
    for args in [
        vec!["download"],
        vec!["download", "a", "--quality", "999"],
        vec!["download", "a", "--bbox", "3,2,1,4"],
        vec!["download", "a/b"],
    ] {
        let out = run(&args, &fresh.path().join("other"), &env).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctrl_c_exits_promptly_and_the_next_run_resumes_without_downloading_twice() {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(50),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("pia", 300, 23);
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let mut child = command(&["download", "pia", "--workers", "4"], dir.path(), &env)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.cdn_hits_total() < 40 {
        assert!(Instant::now() < deadline, "download never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    process::signal(child.id(), libc::SIGINT).unwrap();
    let in_flight = fake.cdn_images_started_before(started);
    let out = tokio::task::spawn_blocking(move || {
        let _ = &mut child;
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "Ctrl-C is prompt"
    );
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("run the same command again to resume"));
    assert!(part_files(dir.path()).is_empty(), "nothing half-written");
    assert!(fake.cdn_hits_total() < 300);
    // Every download the CDN had started before Ctrl-C finished and counts.
    let done = done_ids(&dir.path().join("mapillary.db")).await;
    let abandoned: Vec<&String> = in_flight.difference(&done).collect();
    assert!(abandoned.is_empty(), "abandoned at Ctrl-C: {abandoned:?}");

    let out = run(&["download", "pia", "--workers", "4"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fake.cdn_hits_total(), 300, "nothing was downloaded twice");
    check_collection(
        &dir.path().join("archive"),
        "pia",
        Quality::Original,
        &fake.images("pia"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_estimates_within_twenty_percent_and_writes_no_image() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("quinn", 1200, 24);
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let out = run(&["download", "quinn", "--dry-run"], dir.path(), &env).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        stdout.contains("about to download 1,200 images"),
        "{stdout}"
    );
    assert!(stdout.contains("randomly sampled"), "says how: {stdout}");
    let estimate: u64 = stdout
        .split(" bytes)")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {stdout}"));
    let truth: u64 = fake
        .images("quinn")
        .iter()
        .map(|m| fake.expected_body(&m.id, Quality::Original).len() as u64)
        .sum();
    let error = (estimate as f64 - truth as f64).abs() / truth as f64;
    assert!(
        error <= 0.20,
        "estimate {estimate} vs true {truth}: {:.1} % off",
        error * 100.0
    );
    assert_eq!(fake.cdn_hits_total(), 0, "no image was downloaded");
    assert!(!dir.path().join("archive").exists(), "no image was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_works_beside_a_running_daemon() {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(30),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("rita", 200, 25);
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let daemon = DaemonProcess::spawn(BINARY, dir.path(), 2, &env).expect("the daemon starts");
    let client = daemon.api();
    let (_, created) = client
        .post_job(serde_json::json!({"username": "rita"}))
        .await;
    assert_eq!(created["username"], "rita");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.cdn_hits_total() < 10 {
        assert!(Instant::now() < deadline, "downloads never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = run(&["status"], dir.path(), &env).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_plain(&stdout);
    let header = stdout.lines().next().unwrap_or_default();
    for column in [
        "SELECTION",
        "QUALITY",
        "STATE",
        "DONE/DISCOVERED",
        "FAILED",
        "SIZE",
        "LAST ERROR",
    ] {
        assert!(header.contains(column), "{stdout}");
    }
    let row = stdout.lines().nth(1).unwrap_or_default();
    assert!(row.contains("rita") && row.contains("original"), "{stdout}");

    let out = run(&["status", "--json"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let (_, api) = client
        .request_json(reqwest::Method::GET, "/status", None)
        .await;
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&report), keys(&api), "the same shape as GET /status");
    assert_eq!(keys(&report["jobs"][0]), keys(&api["jobs"][0]));
    assert_eq!(report["jobs"][0]["username"], "rita");
    // The history comes from the database: every image done so far finished
    // within the hour, so the minutes add up to at least the done count read
    // just before them.
    let finished = |report: &serde_json::Value| -> u64 {
        let history = report["throughput_history"].as_array().expect("a history");
        assert_eq!(history.len(), 60, "{report}");
        history.iter().map(|m| m["images"].as_u64().unwrap()).sum()
    };
    let done = report["totals"]["done"].as_u64().unwrap();
    assert!(finished(&report) >= done.max(1), "{report}");

    // A restarted daemon's chart goes on where the last one's stopped.
    let (_, before) = client
        .request_json(reqwest::Method::GET, "/status", None)
        .await;
    let done_before = before["totals"]["done"].as_u64().unwrap();
    drop(daemon);
    let daemon = DaemonProcess::spawn(BINARY, dir.path(), 2, &env).expect("the daemon restarts");
    let (_, after) = daemon
        .api()
        .request_json(reqwest::Method::GET, "/status", None)
        .await;
    assert!(finished(&after) >= done_before.max(1), "{after}");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_takes_every_source_and_filter_and_dry_runs_each() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("uma", 60, 41);
    fake.add_user_to_org("uma", "55");
    fake.add_sequence("SEQcli000000000000000a", &[("vic", 12)]);
    fake.add_user("wes", 5, 42);
    let wes: Vec<String> = fake.images("wes").iter().map(|m| m.id.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let data = dir.path().join("data");

    let out = run(
        &[
            "download",
            "--organization",
            "55",
            "--sequence",
            "SEQcli000000000000000a",
            "--image",
            &wes[0],
            "--image",
            &wes[1],
            "--dry-run",
        ],
        &data,
        &env,
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for line in [
        "organization 55: about to download 60 images",
        "sequence SEQcli000000000000000a: about to download 12 images",
        "2 images: ",
    ] {
        assert!(stdout.contains(line), "{line:?} in {stdout}");
    }
    assert!(
        !data.join("archive").exists(),
        "a dry run downloads nothing"
    );

    // Filters: only panoramas-excluded images of uma captured since a date.
    let uma = fake.images("uma");
    let mut times: Vec<i64> = uma.iter().filter_map(|m| m.captured_at).collect();
    times.sort_unstable();
    let since = mapillary_downloader::selection::rfc3339(times[20]);
    let out = run(
        &[
            "download",
            "uma",
            "--since",
            &since,
            "--pano",
            "exclude",
            "--workers",
            "4",
        ],
        &data,
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let expected: Vec<FakeImage> = uma
        .iter()
        .filter(|m| m.captured_at.is_some_and(|t| t >= times[20]) && m.is_pano != Some(true))
        .cloned()
        .collect();
    check_collection(
        &data.join("archive"),
        "uma",
        Quality::Original,
        &expected,
        |i| fake.jpeg_marker(i, Quality::Original),
    );
    let out = run(
        &[
            "download",
            "--sequence",
            "SEQcli000000000000000a",
            "--image",
            &wes[0],
        ],
        &data,
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    check_collection(
        &data.join("archive"),
        "vic",
        Quality::Original,
        &fake.images("vic"),
        |i| fake.jpeg_marker(i, Quality::Original),
    );

    // Bad input: exit 2, nothing written.
    let fresh = dir.path().join("fresh");
    for args in [
        vec!["download"],
        vec!["download", "--organization", "12x"],
        vec!["download", "--sequence", "a/b"],
        vec!["download", "--image", "nope"],
        vec!["download", "uma", "--since", "yesterday"],
        vec!["download", "uma", "--pano", "maybe"],
        vec![
            "download",
            "uma",
            "--since",
            "2024-02-01",
            "--until",
            "2024-01-01",
        ],
    ] {
        let out = run(&args, &fresh, &env).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(!fresh.exists(), "nothing is written on a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_webp_tar_packs_for_the_internet_archive_then_verify_passes() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("oona", 90, 28);
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let args = [
        "download",
        "oona",
        "--quality",
        "256",
        "--format",
        "webp",
        "--tar",
    ];
    let out = run(&args, dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let collection = dir.path().join("archive/mapillary-oona-256-webp");
    let files = mld_testkit::tar_check::files_under(&collection);
    assert!(files.iter().any(|f| f.ends_with(".tar")), "{files:?}");
    assert!(files.contains("metadata.jsonl.gz") && files.contains("__ia_thumb__.jpg"));
    assert!(files.contains(".meta/title/0"), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with(".webp") || f.ends_with(".part")),
        "nothing loose: {files:?}"
    );
    let members: usize = files
        .iter()
        .filter(|f| f.ends_with(".tar"))
        .map(|f| mld_testkit::tar_check::list(&collection.join(f)).len())
        .sum();
    assert_eq!(members, 90);
    // A second run finds everything archived and packed: nothing to do.
    let before = fake.cdn_hits_total();
    let out = run(&args, dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(fake.cdn_hits_total(), before);
    let out = run(&["verify"], dir.path(), &env).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("verified 90 images: 90 ok, 0 missing, 0 corrupt"),
        "{stdout}"
    );
    // Bad input: a clear error, exit 2, nothing written.
    let out = run(&["download", "oona", "--format", "png"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown format"),
        "{}",
        text(&out.stderr)
    );
}

/// `status --database-url` reads a shared PostgreSQL queue beside live
/// daemons and never changes its schema: on a database with no queue it
/// says so and creates nothing; on one a daemon set up, it lists the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_a_postgres_queue_by_flag_and_never_migrates_it() {
    use mapillary_downloader::model::Quality as StoreQuality;
    use mapillary_downloader::selection::JobSpec;
    use mapillary_downloader::store::{PgClock, Store};
    let url = mld_testkit::postgres::PgCluster::shared().fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env("http://127.0.0.1:9/", DEFAULT_TOKEN);
    // A shared queue wants a shared archive (here, nobody writes one).
    env::set(&mut env, "MLD__STORAGE__SHARED_FILESYSTEM", "true");
    let out = run(&["status", "--database-url", &url], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no queue yet"), "{stderr}");
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&raw)
            .await
            .unwrap();
    assert_eq!(tables, 0, "status created nothing");

    let store = Store::open_postgres(&url, PgClock::Database).await.unwrap();
    store
        .submit_job(&JobSpec::user("alice", StoreQuality::Q1024), 1)
        .await
        .unwrap();
    store.close().await;
    let out = run(
        &["status", "--json", "--database-url", &url],
        dir.path(),
        &env,
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["jobs"][0]["username"], "alice", "{report}");
    assert!(
        !dir.path().join("mapillary.db").exists(),
        "no SQLite file beside a PostgreSQL queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_lists_each_failed_image_and_why_and_status_says_how_many_more() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("pia", 12, 23);
    let first = fake.images("pia")[0].clone();
    fake.add_image(
        "pia",
        FakeImage {
            id: "not/a/number".into(),
            ..first
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let out = run(&["download", "pia", "--workers", "2"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    let out = run(&["failures"], dir.path(), &env).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_plain(&stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    for column in ["JOB", "IMAGE", "REASON", "ATTEMPTS", "LAST ERROR"] {
        assert!(lines[0].contains(column), "{stdout}");
    }
    assert_eq!(lines.len(), 3, "header, one image, count: {stdout}");
    assert!(
        lines[1].starts_with("1 ")
            && lines[1].contains("not/a/number")
            && lines[1].contains("error"),
        "{stdout}"
    );
    assert_eq!(lines[2], "1 failed image");

    let out = run(&["failures", "1", "--json"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("failures --json is JSON");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let image = &listed[0];
    assert_eq!(image["image_id"], "not/a/number");
    assert_eq!(image["job_id"], 1);
    assert_eq!(image["state"], "failed");
    assert_eq!(image["fail_reason"], "error");
    assert!(
        !image["last_error"].as_str().unwrap_or_default().is_empty(),
        "{image}"
    );
    assert!(image["path"].is_null());

    let out = run(&["failures", "--reason", "deleted"], dir.path(), &env).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).ends_with("(no failed images)\n"),
        "{}",
        text(&out.stdout)
    );
    let out = run(
        &["failures", "--json", "--reason", "deleted"],
        dir.path(),
        &env,
    )
    .await;
    assert_eq!(text(&out.stdout), "[]\n");
    let out = run(&["failures", "99"], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no job with id 99"), "{stderr}");
    for bad in [["failures", "0"], ["failures", "--reason=lost"]] {
        let out = run(&bad, dir.path(), &env).await;
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }

    // 102 jobs: the table lists the 100 most recently updated and says so.
    let store = mapillary_downloader::store::Store::open(&dir.path().join("mapillary.db"))
        .await
        .unwrap();
    for n in 0..101 {
        let spec = mapillary_downloader::selection::JobSpec::user(
            &format!("more{n}"),
            mapillary_downloader::model::Quality::Q1024,
        );
        store
            .submit_job(&spec, 2_000_000_000_000 + n)
            .await
            .unwrap();
    }
    store.close().await;
    let out = run(&["status"], dir.path(), &env).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        stdout.lines().count(),
        102,
        "header, 100 jobs, the rest: {stdout}"
    );
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("… and 2 more"), "{last}");
    let out = run(&["status", "--json"], dir.path(), &env).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["jobs"].as_array().unwrap().len(), 100);
    assert_eq!(report["jobs_total"], 102);
    assert_eq!(report["jobs_truncated"], true);
    assert_eq!(report["totals"]["failed"], 1, "totals over every job");
}

/// Puts `n` images into a new job of `store` and fails every one for good
/// (every seventh deleted on Mapillary); returns the job's id.
async fn job_with_failures(store: &mapillary_downloader::store::Store, n: u64) -> i64 {
    use mapillary_downloader::model::{ImageMeta, Quality as StoreQuality};
    use mapillary_downloader::selection::JobSpec;
    use mapillary_downloader::store::{FailReason, JobState, RetryPolicy};
    let job = store
        .submit_job(&JobSpec::user("fay", StoreQuality::Q1024), 1_000)
        .await
        .unwrap()
        .job()
        .id;
    let images: Vec<ImageMeta> = (1..=n)
        .map(|i| ImageMeta {
            id: (100_000 + i).to_string(),
            ..ImageMeta::default()
        })
        .collect();
    store.insert_page(job, &images, None, 1_000).await.unwrap();
    store
        .transition_job(job, JobState::ALL, JobState::Downloading, 1_000)
        .await
        .unwrap();
    let claimed = store
        .claim(&"w".into(), n as u32, Duration::from_secs(600), 2_000, 0)
        .await
        .unwrap();
    assert_eq!(claimed.len() as u64, n);
    for (i, image) in claimed.iter().enumerate() {
        if i % 7 == 0 {
            let reason = FailReason::Deleted;
            store
                .fail_for_good(&image.lease, reason, "deleted on Mapillary", 3_000)
                .await
                .unwrap();
        } else {
            let policy = RetryPolicy {
                max_attempts: 1,
                retry_at_ms: 3_000,
            };
            store
                .fail(&image.lease, "HTTP 500", policy, 3_000)
                .await
                .unwrap();
        }
    }
    job
}

/// The image ids of `failures --json`, checked to be each listed once.
fn listed_ids(out: &Output) -> Vec<String> {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<String> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|i| i["image_id"].as_str().unwrap().to_string())
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an image listed twice");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_pages_through_thousands_on_sqlite_and_reads_postgres_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env("http://127.0.0.1:9/", DEFAULT_TOKEN);
    let store = mapillary_downloader::store::Store::open(&dir.path().join("mapillary.db"))
        .await
        .unwrap();
    job_with_failures(&store, 2_500).await;
    store.close().await;
    let ids = listed_ids(&run(&["failures", "--json"], dir.path(), &env).await);
    assert_eq!(
        ids.len(),
        2_500,
        "more than one store page, every image once"
    );
    let deleted = listed_ids(
        &run(
            &["failures", "--json", "--reason", "deleted"],
            dir.path(),
            &env,
        )
        .await,
    );
    assert_eq!(deleted.len(), 2_500usize.div_ceil(7));
    let out = run(&["failures", "1"], dir.path(), &env).await;
    assert_eq!(
        text(&out.stdout).lines().count(),
        2_502,
        "header, rows, count"
    );

    let url = mld_testkit::postgres::PgCluster::shared().fresh_database();
    let mut env = env;
    env::set(&mut env, "MLD__STORAGE__SHARED_FILESYSTEM", "true");
    let pg_dir = tempfile::tempdir().unwrap();
    let store = mapillary_downloader::store::Store::open_postgres(
        &url,
        mapillary_downloader::store::PgClock::Caller,
    )
    .await
    .unwrap();
    let job = job_with_failures(&store, 30).await;
    store.close().await;
    let job = job.to_string();
    let out = run(
        &["failures", &job, "--json", "--database-url", &url],
        pg_dir.path(),
        &env,
    )
    .await;
    assert_eq!(listed_ids(&out).len(), 30);
    assert!(
        !pg_dir.path().join("mapillary.db").exists(),
        "no SQLite file beside a PostgreSQL queue"
    );
}

/// What a newcomer sees at the default log level (no `RUST_LOG`, default
/// workers): the run's last line is its summary, and no single worker's
/// lifecycle (one line per worker at shutdown) is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_ends_with_its_summary_and_shows_no_worker_lifecycle_at_the_default_level() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("quinn", 40, 31);
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let env = env::without(&env::without(&env, "RUST_LOG"), "MLD__LOG__LEVEL");
    let out = run(&["download", "quinn"], dir.path(), &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(" INFO "), "info lines are shown: {stderr}");
    assert!(!stderr.contains("worker stopped"), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("user quinn [original]: done: 40 of 40 images archived, "),
        "the summary is the last line: {stderr}"
    );
}

/// Issue 23: a username outside `[A-Za-z0-9_.-]{1,64}` is a usage error (2)
/// that names the rule and writes nothing.
#[tokio::test]
async fn a_username_outside_the_rule_is_a_usage_error() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let long = "a".repeat(65);
    for bad in ["a\u{202e}b", "ａlice", "a?b", "a#b", "a%2F", &long] {
        let fresh = tempfile::tempdir().unwrap();
        let data = fresh.path().join("data");
        let out = run(&["download", bad], &data, &env).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("username"), "{stderr}");
        assert!(!data.join("archive").exists(), "{bad:?}: nothing archived");
    }
}
