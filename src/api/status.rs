//! `/status` (progress for humans and scripts) and `/healthz` (liveness).
//!
//! Both read only the per-job counters the store keeps, so they cost O(jobs)
//! however many images are queued.

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::stats::Stats;
use crate::store::{Job, JobState};
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::time::Duration;

/// How long `/healthz` waits for the database before calling it down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub discovered: u64,
    pub pending: u64,
    pub in_progress: u64,
    pub done: u64,
    pub failed: u64,
    /// Deleted on Mapillary: a subset of `failed`.
    pub deleted: u64,
    pub bytes_done: u64,
}

impl Totals {
    pub fn of(jobs: &[Job]) -> Totals {
        jobs.iter().fold(Totals::default(), |t, job| Totals {
            discovered: t.discovered + job.counts.discovered,
            pending: t.pending + job.counts.pending,
            in_progress: t.in_progress + job.counts.in_progress,
            done: t.done + job.counts.done,
            failed: t.failed + job.counts.failed,
            deleted: t.deleted + job.counts.deleted,
            bytes_done: t.bytes_done + job.bytes_done,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Throughput {
    pub images_per_sec: f64,
    pub bytes_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub jobs: Vec<Job>,
    pub totals: Totals,
    pub throughput: Throughput,
    /// Seconds until the images known so far are downloaded; `null` while
    /// nothing has completed in the last minute.
    pub eta_seconds: Option<u64>,
}

/// Images still to download in jobs the engine is working on. Paused and
/// cancelled jobs are not counted: they will not progress by waiting.
pub fn remaining_images(jobs: &[Job]) -> u64 {
    jobs.iter()
        .filter(|job| {
            matches!(
                job.state,
                JobState::Queued | JobState::Enumerating | JobState::Downloading
            )
        })
        .map(|job| job.counts.pending + job.counts.in_progress)
        .sum()
}

impl StatusReport {
    pub fn build(jobs: Vec<Job>, stats: &Stats) -> StatusReport {
        let rate = stats.rate();
        // One reading for both, so the ETA matches the throughput shown.
        let eta_seconds = rate
            .eta(remaining_images(&jobs))
            .map(|eta| eta.as_secs_f64().ceil() as u64);
        StatusReport {
            totals: Totals::of(&jobs),
            throughput: Throughput {
                images_per_sec: rate.images_per_sec,
                bytes_per_sec: rate.bytes_per_sec,
            },
            eta_seconds,
            jobs,
        }
    }
}

pub async fn status(State(state): State<AppState>) -> Result<Json<StatusReport>, ApiError> {
    let jobs = state.store.list_jobs().await?;
    Ok(Json(StatusReport::build(jobs, &state.stats)))
}

pub async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match tokio::time::timeout(PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(serde_json::json!({ "status": "ok" }))),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health check: database ping failed");
            Err(ApiError::Unavailable)
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, "health check: database ping timed out");
            Err(ApiError::Unavailable)
        }
    }
}
