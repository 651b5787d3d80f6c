//! Settings and secrets as a user meets them in the first hour, through the
//! real binary: a misspelt key is an error that names it, tokens come from
//! files (Docker and Kubernetes secrets), and a run whose only failures are
//! images deleted on Mapillary is a success.

use mld_testkit::env::{self, test_env};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary};
use mld_testkit::process::{self, DaemonProcess};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

/// Runs the binary to completion off the async runtime (the fake keeps serving).
async fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = process::command(BINARY, env);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || cmd.output().expect("run the binary"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The three commands that load settings, each on its own data dir.
fn commands(data: &Path) -> Vec<Vec<String>> {
    let dir = data.display().to_string();
    [
        vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", &dir],
        vec!["download", "someone", "--data-dir", &dir],
        vec!["status", "--data-dir", &dir],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(String::from).collect())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_exit_2_naming_the_key_its_source_and_the_closest_known_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = test_env("http://127.0.0.1:9/", DEFAULT_TOKEN);
    let config = dir.path().join("settings.toml");
    std::fs::write(&config, "[workers]\nconut = 5\n").unwrap();
    for args in commands(&dir.path().join("data")) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();

        let mut env = base.clone();
        env::set(&mut env, "MLD__WORKERS__CONUT", "32");
        let out = run(&args, &env).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for needle in ["workers.conut", "MLD__WORKERS__CONUT", "workers.count"] {
            assert!(stderr.contains(needle), "{args:?} lacks {needle}: {stderr}");
        }

        let mut with_file = vec!["--config", config.to_str().unwrap()];
        with_file.extend(&args);
        let out = run(&with_file, &base).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for needle in ["workers.conut", "settings.toml", "workers.count"] {
            assert!(stderr.contains(needle), "{args:?} lacks {needle}: {stderr}");
        }

        // A whole unknown section, far from any key: named, no guess.
        let mut env = base.clone();
        env::set(&mut env, "MLD__NOTHING__LIKE_IT", "1");
        let out = run(&args, &env).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing.like_it"), "{stderr}");
        assert!(!stderr.contains("did you mean"), "{stderr}");
    }
    assert!(!dir.path().join("data").exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapillary_token_can_come_from_a_file() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("quinn", 30, 71);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("mapillary_token");
    // A secret file as editors and `echo` leave it: a trailing newline.
    std::fs::write(&secret, format!("{DEFAULT_TOKEN}\n")).unwrap();
    let mut env = env::without(
        &test_env(fake.api_url().as_str(), DEFAULT_TOKEN),
        "MAPILLARY_TOKEN",
    );
    env::set(&mut env, "MAPILLARY_TOKEN_FILE", secret.to_str().unwrap());
    env::set(&mut env, "RUST_LOG", "debug");
    // An empty MAPILLARY_TOKEN= (as a compose .env leaves it) counts as unset.
    env::set(&mut env, "MAPILLARY_TOKEN", "");
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let out = run(&["download", "quinn", "--data-dir", &data_arg], &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("30 of 30 images archived"), "{stderr}");
    assert!(
        !stderr.contains(DEFAULT_TOKEN),
        "the token reached a log line"
    );
    let token_secret = DEFAULT_TOKEN.rsplit('|').next().unwrap();
    assert!(
        !stderr.contains(token_secret),
        "the token reached a log line"
    );

    // Both set: a clear error naming both, nothing written.
    let mut both = env.clone();
    env::set(&mut both, "MAPILLARY_TOKEN", DEFAULT_TOKEN);
    let fresh = dir.path().join("fresh");
    let fresh_arg = fresh.display().to_string();
    let out = run(&["download", "quinn", "--data-dir", &fresh_arg], &both).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("MAPILLARY_TOKEN") && stderr.contains("MAPILLARY_TOKEN_FILE"),
        "{stderr}"
    );
    assert!(!stderr.contains(token_secret), "{stderr}");
    assert!(!fresh.exists());

    // A file that is missing or empty: named, exit 2.
    for (name, content) in [("missing", None), ("empty", Some("  \n"))] {
        let path = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let mut env = env.clone();
        env::set(&mut env, "MAPILLARY_TOKEN_FILE", path.to_str().unwrap());
        let out = run(&["download", "quinn", "--data-dir", &fresh_arg], &env).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let api_secret = "api-bearer-Zq9-from-a-file";
    let secret = dir.path().join("api_token");
    std::fs::write(&secret, format!("  {api_secret}\n")).unwrap();
    let mut env = test_env("http://127.0.0.1:9/", DEFAULT_TOKEN);
    env::set(&mut env, "MLD__API__TOKEN_FILE", secret.to_str().unwrap());
    env::set(&mut env, "MLD__API__TOKEN", "");
    env::set(&mut env, "RUST_LOG", "debug");
    let daemon = DaemonProcess::spawn(BINARY, &dir.path().join("data"), 2, &env).unwrap();
    let api = daemon.api();
    let (status, _) = api
        .try_request(reqwest::Method::GET, "/status", None)
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    let response = api
        .http()
        .get(api.url("/status"))
        .bearer_auth(api_secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let log = daemon.log_text();
    assert!(
        !log.contains(api_secret),
        "the API token reached a log line"
    );
    drop(daemon);

    // Both the token and its file: exit 2, naming both keys.
    let mut both = env.clone();
    env::set(&mut both, "MLD__API__TOKEN", "another");
    let data = dir.path().join("other").display().to_string();
    let out = run(
        &["serve", "--listen", "127.0.0.1:0", "--data-dir", &data],
        &both,
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("api.token") && stderr.contains("api.token_file"),
        "{stderr}"
    );
    assert!(!stderr.contains(api_secret) && !stderr.contains("another"));
}

/// Images deleted on Mapillary while `download` runs are counted apart: the
/// run archives everything that still exists, exits 0 and says how many
/// were deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_exits_zero_when_the_only_failures_are_deleted_images() {
    let fake = FakeMapillary::start(FakeConfig {
        cdn_latency: Duration::from_millis(5),
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("rita", 40, 72);
    let gone: Vec<String> = fake
        .images("rita")
        .iter()
        .step_by(10)
        .map(|m| m.id.clone())
        .collect();
    fake.delete_when_listed(gone.iter().cloned());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    let out = run(&["download", "rita", "--data-dir", &data], &env).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("36 of 40 images archived") && stderr.contains("4 deleted on Mapillary"),
        "{stderr}"
    );
    assert!(!stderr.contains("failed for good"), "{stderr}");
    let out = run(&["status", "--data-dir", &data], &env).await;
    let stdout = text(&out.stdout);
    assert!(stdout.contains("4 (4 deleted)"), "{stdout}");
}
