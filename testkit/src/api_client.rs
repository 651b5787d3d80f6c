//! A client for the daemon's HTTP API as tests drive it, on a base URL, so
//! the same calls work against an in-process daemon and a child process.
//!
//! The plain methods panic when the daemon cannot be reached (a test
//! failure either way); `try_request` returns the error instead, for
//! benches that report it.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// How often `wait_for_state` polls.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the API at `base`, e.g. `http://127.0.0.1:41234`.
    pub fn new(base: impl Into<String>) -> ApiClient {
        ApiClient {
            base: base.into().trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client, for requests the helpers do not cover
    /// (custom headers, raw bodies).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends `method path` with an optional JSON body; returns the status and
    /// the body as text.
    pub async fn try_request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading the body"))?;
        Ok((status, text))
    }

    /// Sends a request; returns the status and the body as JSON, or as a JSON
    /// string holding the text when it is not JSON (e.g. `/metrics`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, text) = self
            .try_request(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("the API does not answer: {e:#}"));
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Sends a request whose answer must be JSON; an error if it is not.
    pub async fn try_request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, text) = self.try_request(method.clone(), path, body).await?;
        let value = serde_json::from_str(&text).with_context(|| {
            format!("{method} {path}: the body is not JSON ({status}): {text:?}")
        })?;
        Ok((status, value))
    }

    /// Sends a request whose answer must be JSON; panics otherwise.
    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.try_request_json(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `POST /jobs` with `body`.
    pub async fn post_job(&self, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, "/jobs", Some(body)).await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, id: i64) -> Value {
        self.request(Method::GET, &format!("/jobs/{id}"), None)
            .await
            .1
    }

    /// Polls a job until its state is one of `states`; panics with the job
    /// after `timeout`.
    pub async fn wait_for_state(&self, id: i64, states: &[&str], timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.job(id).await;
            if states.iter().any(|s| job["state"] == *s) {
                return job;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {id} did not reach {states:?} in {timeout:?}: {job:#}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
