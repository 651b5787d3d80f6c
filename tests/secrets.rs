//! Invariant 2 on the real binary: the Mapillary token goes to the API host
//! in the `Authorization` header and nowhere else: not into a query string,
//! not to the CDN (in any parameter or header), not into any file of the
//! data dir (database, WAL, images, metadata.jsonl), not into a log line
//! even at debug level, and not into any API response; not even when the
//! API echoes it back in its `next` links, raw and percent-encoded, under
//! `access_token` and under another name.

use mld_testkit::env::{self, test_env};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary, Faults, Route, mentions_token};
use mld_testkit::process::DaemonProcess;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

const BINARY: &str = env!("CARGO_BIN_EXE_mapillary-downloader");

/// Whether `bytes` hold the token's secret part, raw or percent-encoded.
fn holds_token(bytes: &[u8]) -> bool {
    mentions_token(&String::from_utf8_lossy(bytes), DEFAULT_TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_only_to_the_api_in_its_header_even_when_echoed_back() {
    let fake = FakeMapillary::start(FakeConfig {
        token_in_next: true,
        // Errors and retries make the daemon log more, at every level.
        faults: Faults {
            api_5xx_json: 0.05,
            cdn_5xx: 0.05,
            cdn_redirect: 0.05,
            ..Faults::default()
        },
        ..FakeConfig::default()
    })
    .await;
    fake.add_user("hana", 700, 9);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = test_env(fake.api_url().as_str(), DEFAULT_TOKEN);
    env::set(&mut env, "RUST_LOG", "debug");
    env::set(&mut env, "MLD__LOG__LEVEL", "debug");
    env::set(&mut env, "MLD__RETRY__MAX_ATTEMPTS", "20");
    let daemon = DaemonProcess::spawn(BINARY, &data, 4, &env).unwrap();
    let api = daemon.api();
    let (_, job) = api.post_job(json!({"username": "hana"})).await;
    let id = job["id"].as_i64().unwrap();
    // Read the API mid-enumeration too, while a cursor is stored.
    let mut bodies = Vec::new();
    let paths = ["/jobs", "/status", "/metrics", &format!("/jobs/{id}")];
    for path in paths {
        bodies.push(api.request(Method::GET, path, None).await.1.to_string());
    }
    let done = api
        .wait_for_state(id, &["done"], Duration::from_secs(120))
        .await;
    assert_eq!(done["counts"]["done"], 700, "{done}");
    for path in paths {
        bodies.push(api.request(Method::GET, path, None).await.1.to_string());
    }
    let log = daemon.log_text();
    drop(daemon);

    for body in &bodies {
        assert!(
            !holds_token(body.as_bytes()),
            "token in an API response: {body}"
        );
    }
    assert!(log.contains("DEBUG"), "the log was captured at debug level");
    assert!(!holds_token(log.as_bytes()), "token in the log");
    let files = mld_testkit::tar_check::files_under(&data);
    assert!(files.len() > 700, "{} files", files.len());
    for file in &files {
        let bytes = std::fs::read(data.join(file)).unwrap();
        assert!(!holds_token(&bytes), "token in {file}");
    }
    let api_requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Api)
        .collect();
    assert!(api_requests.len() >= 7, "one call per page at least");
    for request in &api_requests {
        assert!(
            !mentions_token(&request.query, DEFAULT_TOKEN),
            "token in an API query: {}",
            request.query
        );
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("OAuth {DEFAULT_TOKEN}").as_str()),
            "the API gets the token in its header"
        );
    }
    assert!(
        api_requests
            .iter()
            .any(|r| r.query.contains("after=") && !r.query.contains("session_echo")),
        "later pages were fetched from the stored, cleaned next link"
    );
    assert!(!fake.saw_token_on_cdn(), "token sent to the CDN");
}
