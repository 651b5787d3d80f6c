//! `/status` (progress for humans and scripts) and `/healthz` (liveness).
//!
//! Both read only the per-job counters the store keeps, so they cost O(jobs)
//! however many images are queued; `/status` lists at most
//! [`STATUS_JOBS`] jobs, their selections summarised, so its size stays
//! bounded however many jobs there are.

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::openapi::{ErrorBody, Health};
use crate::status::{JobsView, STATUS_JOBS, StatusReport, live_daemons};
use crate::store::StoreKind;
use axum::Json;
use axum::extract::State;
use std::time::Duration;

/// How long `/healthz` waits for the database before calling it down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /status`.
#[utoipa::path(
    get,
    path = "/status",
    tag = "status",
    summary = "The 100 most recently updated jobs (selections summarised), totals over every job, throughput and ETA",
    responses((status = 200, description = "The report", body = StatusReport), (status = 401, description = "A token is configured and the request has none or another", body = ErrorBody))
)]
pub async fn status(State(state): State<AppState>) -> Result<Json<StatusReport>, ApiError> {
    // Every read at once, each on its own connection of the read pool: the
    // answer waits for the slowest read rather than for their sum.
    let (jobs, daemons) = tokio::try_join!(
        JobsView::recent(&state.store, STATUS_JOBS),
        live_daemons(&state.store)
    )?;
    let stats = &state.stats;
    // On a shared queue this daemon's memory knows only its own share: the
    // cluster's figures come from the database.
    let report = match state.store.kind() {
        StoreKind::Postgres => StatusReport::from_database(&state.store, jobs).await?,
        StoreKind::Sqlite => StatusReport::with_history(jobs, stats.rate(), &stats.history()),
    };
    Ok(Json(report.with_daemons(daemons)))
}

/// `GET /healthz` (never needs a token).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "status",
    summary = "Liveness: 200 while the database answers",
    security(()),
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database is not answering", body = ErrorBody)
    )
)]
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
