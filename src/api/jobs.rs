//! `/jobs` handlers: submit, list, inspect and steer jobs.
//!
//! Every state change is one conditional UPDATE in the store, so two racing
//! requests (or a request racing the engine) cannot both win; when it does
//! not apply, the job is read back to tell "no such job" (404) from "not in
//! a state that allows this" (409).

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, JobId};
use crate::api::openapi::ErrorBody;
use crate::api::paging::{JobsQuery, paged};
use crate::api::validate::{CreateJobRequest, RetryParams};
use crate::clock::now_ms;
use crate::store::{Job, JobState, PauseReason, Submitted, UploadState};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

/// States a job can be paused from: the ones where work is (or will be) running.
const PAUSABLE: &[JobState] = &[
    JobState::Queued,
    JobState::Enumerating,
    JobState::Downloading,
];

/// Every state but `cancelled`.
const CANCELLABLE: &[JobState] = &[
    JobState::Queued,
    JobState::Enumerating,
    JobState::Downloading,
    JobState::Paused,
    JobState::Done,
    JobState::Failed,
];

/// Finished states that a retry brings back to work.
const FINISHED: &[JobState] = &[JobState::Done, JobState::Failed];

/// `POST /jobs`: 201 for a new job; 200 with the existing job when one with
/// the same selection, quality, format and package is queued, running or
/// paused (a different `resync_every` is applied to it); 200 and a re-sync
/// when that job had finished. A cancelled job does not count.
#[utoipa::path(
    post,
    path = "/jobs",
    tag = "jobs",
    summary = "Submit a job",
    request_body(content = CreateJobRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "A new job", body = Job),
        (status = 200, description = "The same selection, quality, format and package is already a job: that job (re-synced if it had finished)", body = Job),
        (status = 400, description = "The body is not JSON, or not an object", body = ErrorBody),
        (status = 413, description = "The body is larger than 256 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 422, description = "A field breaks a rule; the message names it", body = ErrorBody)
    )
)]
pub async fn create_job(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateJobRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let spec = request.into_spec(state.default_resync)?;
    let submitted = state.store.submit_job(&spec, now_ms()).await?;
    if spec.upload.is_some() {
        state
            .store
            .enable_upload(submitted.job().id, now_ms())
            .await?;
    }
    let (status, mut job) = match submitted {
        Submitted::Created(job) => {
            tracing::info!(job = job.id, selection = %job.selection, quality = %job.quality, "job created");
            (StatusCode::CREATED, job)
        }
        Submitted::Resynced(job) => {
            tracing::info!(job = job.id, selection = %job.selection, "finished job re-synced");
            (StatusCode::OK, job)
        }
        Submitted::Existing(job) => (StatusCode::OK, job),
    };
    state.wake_engine();
    state
        .store
        .with_uploads(std::slice::from_mut(&mut job))
        .await?;
    Ok((status, Json(job)))
}

/// `GET /jobs[?limit=&after=]`: one page of jobs in id order (oldest
/// first), a `Link: <…>; rel="next"` header while more remain.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    summary = "Jobs, oldest first, a page at a time",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Jobs per page (default 100, at most 1000)"),
        ("after" = Option<i64>, Query, minimum = 0, description = "The last job id of the page before (from the `Link` header)")
    ),
    responses(
        (status = 200, description = "One page of jobs", body = Vec<Job>,
            headers(("Link" = String, description = "`</jobs?limit=…&after=…>; rel=\"next\"` while more jobs follow"))),
        (status = 422, description = "`limit` or `after` is not a valid value, or the query names another parameter", body = ErrorBody)
    )
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = JobsQuery::parse(query.as_deref())?;
    let page = state.store.jobs_page(query.after, query.limit).await?;
    let next = match page.items.last() {
        Some(last) if page.more => Some(format!("/jobs?limit={}&after={}", query.limit, last.id)),
        _ => None,
    };
    Ok(paged(page.items, next))
}

/// `GET /jobs/{id}`.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "jobs",
    summary = "One job",
    params(("id" = i64, Path, description = "Job id (a positive integer)", minimum = 1)),
    responses((status = 200, description = "The job", body = Job), (status = 400, description = "The id is not a positive integer", body = ErrorBody), (status = 404, description = "No such job", body = ErrorBody))
)]
pub async fn get_job(
    State(state): State<AppState>,
    JobId(id): JobId,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(with_upload(&state, id).await?))
}

/// `POST /jobs/{id}/pause`: queued, enumerating or downloading -> paused.
/// Images in flight finish; nothing new is claimed for the job.
#[utoipa::path(
    post,
    path = "/jobs/{id}/pause",
    tag = "jobs",
    summary = "Pause a queued or running job",
    params(("id" = i64, Path, description = "Job id (a positive integer)", minimum = 1)),
    responses((status = 200, description = "The paused job", body = Job), (status = 400, description = "The id is not a positive integer", body = ErrorBody), (status = 404, description = "No such job", body = ErrorBody), (status = 409, description = "The job's state does not allow it", body = ErrorBody))
)]
pub async fn pause_job(
    State(state): State<AppState>,
    JobId(id): JobId,
) -> Result<Json<Job>, ApiError> {
    let now = now_ms();
    match state
        .store
        .pause_job(id, PAUSABLE, PauseReason::User, None, now)
        .await?
    {
        Some(job) => {
            tracing::info!(job = id, "job paused");
            state.wake_engine();
            Ok(Json(job))
        }
        None if crate::upload::daemon::pause(&state.store, id).await? => {
            tracing::info!(job = id, "upload paused");
            Ok(Json(with_upload(&state, id).await?))
        }
        None => Err(refusal(&state, id, "paused", PAUSABLE).await),
    }
}

/// `POST /jobs/{id}/resume`: paused -> enumerating (listing unfinished) or
/// downloading, with `last_error` cleared.
#[utoipa::path(
    post,
    path = "/jobs/{id}/resume",
    tag = "jobs",
    summary = "Resume a paused job",
    params(("id" = i64, Path, description = "Job id (a positive integer)", minimum = 1)),
    responses((status = 200, description = "The resumed job", body = Job), (status = 400, description = "The id is not a positive integer", body = ErrorBody), (status = 404, description = "No such job", body = ErrorBody), (status = 409, description = "The job's state does not allow it", body = ErrorBody))
)]
pub async fn resume_job(
    State(state): State<AppState>,
    JobId(id): JobId,
) -> Result<Json<Job>, ApiError> {
    match state
        .store
        .reactivate_job(id, &[JobState::Paused], now_ms())
        .await?
    {
        Some(job) => {
            tracing::info!(job = id, state = job.state.as_str(), "job resumed");
            state.wake_engine();
            Ok(Json(job))
        }
        None if crate::upload::daemon::restart(&state.store, id, &[UploadState::Paused])
            .await? =>
        {
            tracing::info!(job = id, "upload resumed");
            Ok(Json(with_upload(&state, id).await?))
        }
        None => Err(refusal(&state, id, "resumed", &[JobState::Paused]).await),
    }
}

/// `POST /jobs/{id}/retry[?include_deleted=true]`: failed images go back to
/// the queue (images deleted on Mapillary only when asked); a finished job
/// goes back to work. A paused job stays paused (its images wait).
#[utoipa::path(
    post,
    path = "/jobs/{id}/retry",
    tag = "jobs",
    summary = "Queue a job's failed images again",
    params(
        ("id" = i64, Path, description = "Job id (a positive integer)", minimum = 1),
        ("include_deleted" = Option<bool>, Query, description = "Also images deleted on Mapillary (default false)")
    ),
    responses(
        (status = 200, description = "The job, back at work if it had finished", body = Job),
        (status = 400, description = "The id is not a positive integer, or the query is not `include_deleted=true|false`", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is cancelled", body = ErrorBody)
    )
)]
pub async fn retry_job(
    State(state): State<AppState>,
    JobId(id): JobId,
    RawQuery(query): RawQuery,
) -> Result<Json<Job>, ApiError> {
    let params = RetryParams::parse(query.as_deref())?;
    let job = state
        .store
        .find_job(id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(id))?;
    if job.state == JobState::Cancelled {
        return Err(ApiError::Conflict(format!(
            "job {id} is cancelled and cannot be retried; submit it again with POST /jobs"
        )));
    }
    let now = now_ms();
    let requeued = state
        .store
        .retry_failed(id, params.include_deleted, now)
        .await?;
    // Only a finished job changes state; the conditional update ignores the others.
    state.store.reactivate_job(id, FINISHED, now).await?;
    let stopped = [UploadState::Failed, UploadState::Paused];
    crate::upload::daemon::restart(&state.store, id, &stopped).await?;
    tracing::info!(job = id, requeued, "failed images re-queued");
    state.wake_engine();
    Ok(Json(with_upload(&state, id).await?))
}

/// Job `id` with its upload, as the answers that show it.
async fn with_upload(state: &AppState, id: i64) -> Result<Job, ApiError> {
    let mut job = state
        .store
        .find_job(id)
        .await?
        .ok_or_else(|| ApiError::job_not_found(id))?;
    state
        .store
        .with_uploads(std::slice::from_mut(&mut job))
        .await?;
    Ok(job)
}

/// `DELETE /jobs/{id}`: cancels the job and keeps its files. Cancelling a
/// cancelled job answers it again, so the call is idempotent.
#[utoipa::path(
    delete,
    path = "/jobs/{id}",
    tag = "jobs",
    summary = "Cancel a job (its files stay)",
    params(("id" = i64, Path, description = "Job id (a positive integer)", minimum = 1)),
    responses((status = 200, description = "The cancelled job", body = Job), (status = 400, description = "The id is not a positive integer", body = ErrorBody), (status = 404, description = "No such job", body = ErrorBody))
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    JobId(id): JobId,
) -> Result<Json<Job>, ApiError> {
    if let Some(job) = state
        .store
        .transition_job(id, CANCELLABLE, JobState::Cancelled, now_ms())
        .await?
    {
        tracing::info!(job = id, "job cancelled");
        state.wake_engine();
        return Ok(Json(job));
    }
    state
        .store
        .find_job(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::job_not_found(id))
}

/// Why a conditional transition did not apply: the job is missing (404) or
/// in a state that does not allow it (409).
async fn refusal(state: &AppState, id: i64, verb: &str, allowed: &[JobState]) -> ApiError {
    match state.store.find_job(id).await {
        Ok(Some(job)) => {
            let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
            ApiError::Conflict(format!(
                "job {id} is {} and cannot be {verb}; only a job that is {} can",
                job.state.as_str(),
                allowed.join(" or ")
            ))
        }
        Ok(None) => ApiError::job_not_found(id),
        Err(err) => ApiError::Store(err),
    }
}
