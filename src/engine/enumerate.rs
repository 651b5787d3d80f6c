//! The enumerator: pages through `GET /images` for one job and writes each
//! page's images together with the next cursor, in one transaction, so a crash
//! between pages resumes from the last stored page and never skips one.

use super::{EngineContext, now_ms};
use crate::mapillary::{ApiError, RetryDecision, backoff_delay};
use crate::store::JobState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What one page step did.
#[derive(Debug)]
pub enum PageOutcome {
    /// A page was stored; more pages follow.
    More { new_images: u64 },
    /// The last page was stored; enumeration is complete.
    Finished { new_images: u64 },
    /// The job is no longer one we enumerate (paused, cancelled, gone).
    Stopped,
    /// A transient fault or rate limit: try the same page again after this long.
    RetryAfter { delay: Duration, error: String },
    /// The token was rejected: the job is paused with a clear error.
    Paused { reason: String },
    /// The API refused the request for good (bad parameter): the job failed.
    Failed { reason: String },
}

/// Fetches and stores one page of `job_id`. `failures` is the count of
/// consecutive failed tries of this page, for the backoff.
pub async fn step(ctx: &EngineContext, job_id: i64, failures: u32) -> anyhow::Result<PageOutcome> {
    let Some(job) = ctx.store.find_job(job_id).await? else {
        return Ok(PageOutcome::Stopped);
    };
    if job.enumeration_complete {
        return Ok(PageOutcome::Finished { new_images: 0 });
    }
    match job.state {
        JobState::Queued => {
            ctx.store
                .transition_job(job_id, &[JobState::Queued], JobState::Enumerating, now_ms())
                .await?;
        }
        JobState::Enumerating | JobState::Downloading => {}
        _ => return Ok(PageOutcome::Stopped),
    }
    let url = match job.cursor {
        Some(cursor) => cursor,
        None => ctx.client.first_page_url(&job.username, job.bbox),
    };
    let page = match ctx.client.fetch_page(&url).await {
        Ok(page) => page,
        Err(error) => return classify_failure(ctx, job_id, failures, error).await,
    };
    let last = page.next.is_none();
    let new_images = ctx
        .store
        .insert_page(
            job_id,
            job.quality,
            &page.images,
            page.next.as_deref(),
            now_ms(),
        )
        .await?;
    if failures > 0 {
        ctx.store.set_job_error(job_id, None, now_ms()).await?;
    }
    debug!(
        job = job_id,
        images = page.images.len(),
        new_images,
        "stored a page"
    );
    if last {
        ctx.store
            .transition_job(
                job_id,
                &[JobState::Enumerating],
                JobState::Downloading,
                now_ms(),
            )
            .await?;
        Ok(PageOutcome::Finished { new_images })
    } else {
        Ok(PageOutcome::More { new_images })
    }
}

async fn classify_failure(
    ctx: &EngineContext,
    job_id: i64,
    failures: u32,
    error: ApiError,
) -> anyhow::Result<PageOutcome> {
    let message = format!("listing images failed: {error}");
    Ok(match error.decision() {
        RetryDecision::RateLimited(wait) => PageOutcome::RetryAfter {
            // The client already holds every API call back; this only spaces our own retries.
            delay: wait.unwrap_or(Duration::from_secs(1)),
            error: message,
        },
        RetryDecision::Retryable | RetryDecision::RefreshUrl => {
            ctx.store
                .set_job_error(job_id, Some(&message), now_ms())
                .await?;
            PageOutcome::RetryAfter {
                delay: backoff_delay(
                    failures + 1,
                    ctx.tuning.backoff_base,
                    ctx.tuning.backoff_cap,
                ),
                error: message,
            }
        }
        RetryDecision::PauseJob => {
            let reason = format!(
                "{message}. Set a valid MAPILLARY_TOKEN, restart, then POST /jobs/{job_id}/resume"
            );
            pause(ctx, job_id, &reason).await?;
            PageOutcome::Paused { reason }
        }
        RetryDecision::GiveUp => {
            // Only an active job fails; a pause or cancel meanwhile stands.
            let failed = ctx
                .store
                .transition_job(
                    job_id,
                    &[JobState::Enumerating, JobState::Downloading],
                    JobState::Failed,
                    now_ms(),
                )
                .await?;
            if failed.is_some() {
                ctx.store
                    .set_job_error(job_id, Some(&message), now_ms())
                    .await?;
            }
            PageOutcome::Failed { reason: message }
        }
    })
}

/// Pauses a job that is still active, recording why.
pub(crate) async fn pause(ctx: &EngineContext, job_id: i64, reason: &str) -> anyhow::Result<()> {
    let paused = ctx
        .store
        .transition_job(
            job_id,
            &[
                JobState::Queued,
                JobState::Enumerating,
                JobState::Downloading,
            ],
            JobState::Paused,
            now_ms(),
        )
        .await?;
    if paused.is_some() {
        ctx.store
            .set_job_error(job_id, Some(reason), now_ms())
            .await?;
        warn!(job = job_id, reason, "job paused");
    }
    Ok(())
}

/// Runs [`step`] until the job is enumerated, stopped, or `cancel` fires.
pub async fn run(ctx: &EngineContext, job_id: i64, cancel: CancellationToken) {
    let mut failures = 0u32;
    let mut pages = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = step(ctx, job_id, failures) => outcome,
        };
        match outcome {
            Ok(PageOutcome::More { .. }) => {
                failures = 0;
                pages += 1;
                ctx.wake.notify_waiters();
            }
            Ok(PageOutcome::Finished { .. }) => {
                info!(job = job_id, pages = pages + 1, "enumeration complete");
                ctx.wake.notify_waiters();
                return;
            }
            Ok(PageOutcome::Stopped | PageOutcome::Paused { .. } | PageOutcome::Failed { .. }) => {
                return;
            }
            Ok(PageOutcome::RetryAfter { delay, error }) => {
                failures = failures.saturating_add(1);
                debug!(job = job_id, ?delay, error, "page will be retried");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                // A store error: wait and try again rather than spin.
                failures = failures.saturating_add(1);
                warn!(job = job_id, error = %e, "enumeration step failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff_delay(failures, ctx.tuning.backoff_base, ctx.tuning.backoff_cap)) => {}
                }
            }
        }
    }
}
