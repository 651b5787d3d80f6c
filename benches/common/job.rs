//! A job posted to a running daemon, as the benches that time one do it.

use anyhow::{Context, bail};
use mld_testkit::api_client::ApiClient;
use reqwest::Method;

/// Posts a username job; its id, or what the API answered instead.
pub async fn post_username_job(api: &ApiClient, user: &str) -> anyhow::Result<i64> {
    let (status, body) = api
        .try_request_json(
            Method::POST,
            "/jobs",
            Some(serde_json::json!({ "username": user })),
        )
        .await?;
    if !status.is_success() {
        bail!("POST /jobs answered {status}: {body}");
    }
    body["id"].as_i64().context("no job id")
}
