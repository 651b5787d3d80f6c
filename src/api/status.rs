//! `/status` (progress for humans and scripts) and `/healthz` (liveness).
//!
//! Both read only the per-job counters the store keeps, so they cost O(jobs)
//! however many images are queued.

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::status::StatusReport;
use axum::Json;
use axum::extract::State;
use std::time::Duration;

/// How long `/healthz` waits for the database before calling it down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn status(State(state): State<AppState>) -> Result<Json<StatusReport>, ApiError> {
    let jobs = state.store.list_jobs().await?;
    let stats = &state.stats;
    Ok(Json(StatusReport::with_history(
        jobs,
        stats.rate(),
        &stats.history(),
    )))
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
