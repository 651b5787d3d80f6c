//! The API description against the API: `GET /openapi.json` is OpenAPI 3.1
//! and names every route the router serves, and schemathesis (from PyPI, in
//! the venv `bash scripts/test` makes) fuzzes a live daemon from it: no 5xx,
//! every status code, content type and body as described, with and without
//! an API token.

mod common;

use common::{TestDaemon, test_settings};
use mld_testkit::fake::{DEFAULT_TOKEN, FakeConfig, FakeMapillary};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The schemathesis CLI: `MLD_SCHEMATHESIS`, else the venv `scripts/test`
/// makes under `target/venv`.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("MLD_SCHEMATHESIS") {
        return path.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/schemathesis");
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: run `bash scripts/test` (it makes that venv with \
         `pip install schemathesis`), or set MLD_SCHEMATHESIS",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_description_is_openapi_3_1_and_names_every_route() {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start(
        test_settings(fake.api_url().as_str(), dir.path(), 2, &[]),
        DEFAULT_TOKEN,
    )
    .await;
    let (status, doc) = daemon
        .request_json(reqwest::Method::GET, "/openapi.json", None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                !responses.is_empty(),
                "{method} {path} describes no response"
            );
            let open = path == "/healthz" || path == "/" || path.starts_with("/assets/");
            if !open {
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} must describe 401"
                );
            }
        }
    }
    let want: BTreeSet<String> = [
        "GET /healthz",
        "GET /status",
        "GET /metrics",
        "GET /openapi.json",
        "GET /jobs",
        "POST /jobs",
        "GET /jobs/{id}",
        "DELETE /jobs/{id}",
        "POST /jobs/{id}/pause",
        "POST /jobs/{id}/resume",
        "POST /jobs/{id}/retry",
        "GET /jobs/{id}/images",
        "GET /",
        "GET /assets/app.js",
        "GET /assets/style.css",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(operations, want);
    // Every described operation is served (not the 404 fallback).
    for operation in &want {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path.replace("{id}", "1");
        let (status, body) = daemon
            .try_request(method.parse().unwrap(), &path, None)
            .await
            .unwrap();
        let fallback = status == reqwest::StatusCode::NOT_FOUND
            && body.to_string().contains("no such endpoint");
        assert!(!fallback, "{operation} is described but not routed");
    }
    let job: &Value = &doc["components"]["schemas"]["Job"];
    assert!(job["properties"]["state"].is_object(), "{job}");
    daemon.stop().await;
}

async fn run_schemathesis(token: Option<&str>) {
    let fake = FakeMapillary::start(FakeConfig::default()).await;
    fake.add_user("sam", 20, 61);
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<(&str, &str)> = token.map(|t| ("MLD__API__TOKEN", t)).into_iter().collect();
    let daemon = TestDaemon::start(
        test_settings(fake.api_url().as_str(), dir.path(), 2, &extra),
        DEFAULT_TOKEN,
    )
    .await;
    let url = format!("{}/openapi.json", daemon.base());
    let binary = schemathesis();
    let mut command = Command::new(&binary);
    command
        .args(["run", &url, "--checks"])
        .arg("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance")
        .args(["--max-examples", "40", "--seed", "20261126", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir.path());
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{text}"
    );
    assert!(text.contains("passed"), "{text}");
    // The daemon is still up and answering.
    let (status, _) = daemon
        .try_request(reqwest::Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(status, reqwest::StatusCode::OK);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_description() {
    run_schemathesis(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_with_a_token_finds_nothing_either() {
    run_schemathesis(Some("openapi-test-token-7")).await;
}
