//! The daemon's HTTP API as the bench drives it: post a job, read its counts,
//! and time `GET /status` from a thread of its own.

use anyhow::{Context, bail};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The fields of a job the bench reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobView {
    pub enumeration_complete: bool,
    pub discovered: u64,
    pub pending: u64,
    pub in_progress: u64,
    pub done: u64,
    pub failed: u64,
    pub bytes_done: u64,
}

impl JobView {
    fn from_json(job: &Value) -> anyhow::Result<JobView> {
        let count = |name: &str| -> anyhow::Result<u64> {
            job["counts"][name]
                .as_u64()
                .with_context(|| format!("job has no counts.{name}: {job}"))
        };
        Ok(JobView {
            enumeration_complete: job["enumeration_complete"]
                .as_bool()
                .with_context(|| format!("job has no enumeration_complete: {job}"))?,
            discovered: count("discovered")?,
            pending: count("pending")?,
            in_progress: count("in_progress")?,
            done: count("done")?,
            failed: count("failed")?,
            bytes_done: job["bytes_done"]
                .as_u64()
                .with_context(|| format!("job has no bytes_done: {job}"))?,
        })
    }
}

pub struct DaemonApi {
    base: String,
    http: reqwest::Client,
}

impl DaemonApi {
    pub fn new(base: &str) -> DaemonApi {
        DaemonApi {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST /jobs {"username": ..}`; returns the new job's id.
    pub async fn post_job(&self, username: &str) -> anyhow::Result<i64> {
        let response = self
            .http
            .post(format!("{}/jobs", self.base))
            .json(&serde_json::json!({ "username": username }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("POST /jobs answered {status}: {body}");
        }
        body["id"]
            .as_i64()
            .with_context(|| format!("POST /jobs returned no id: {body}"))
    }

    pub async fn job(&self, id: i64) -> anyhow::Result<JobView> {
        let response = self
            .http
            .get(format!("{}/jobs/{id}", self.base))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("GET /jobs/{id} answered {status}: {body}");
        }
        JobView::from_json(&body)
    }
}

/// Times `GET /status` (request to last body byte) on its own OS thread and
/// runtime, so the fake API busy in the bench's runtime cannot delay the
/// clock. Stops after `max_samples` or when `stop` is set.
pub fn sample_status(
    base: &str,
    interval: Duration,
    max_samples: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<anyhow::Result<Vec<Duration>>> {
    let url = format!("{base}/status");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let http = reqwest::Client::new();
            // Connection set up and first-request costs are not what is measured.
            for _ in 0..20 {
                http.get(&url).send().await?.bytes().await?;
            }
            let mut samples = Vec::with_capacity(max_samples.min(100_000));
            while samples.len() < max_samples && !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let response = http.get(&url).send().await?;
                let status = response.status();
                response.bytes().await?;
                let elapsed = start.elapsed();
                if !status.is_success() {
                    bail!("GET /status answered {status}");
                }
                samples.push(elapsed);
                tokio::time::sleep(interval).await;
            }
            samples.sort();
            Ok(samples)
        })
    })
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
