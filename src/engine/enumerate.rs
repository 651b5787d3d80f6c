//! The enumerator: pages through `GET /images` for one job and writes each
//! page's images together with the next cursor, in one transaction, so a crash
//! between pages resumes from the last stored page and never skips one.
//!
//! A listing always ends: an empty page, or a `next` whose cursor this run
//! already followed, is the last page, whatever `next` says (Graph APIs may
//! send a `next` to an empty page whose `next` is itself).

use super::EngineContext;
use crate::clock::now_ms;
use crate::config::TOKEN_ENV;
use crate::mapillary::{MapillaryError, RetryDecision, backoff_delay};
use crate::store::{ACTIVE, JobState, PauseReason};
use std::collections::HashSet;
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

/// What one enumerator run remembers between pages.
#[derive(Debug, Default)]
pub struct Listing {
    /// Consecutive failed tries of the current page, for the backoff.
    pub failures: u32,
    /// Cursors of the pages this run fetched: a `next` back to one of them
    /// is a loop, and ends the listing.
    seen: HashSet<String>,
}

/// The identity of a page link: its `after` cursor when it has one, else
/// the whole link.
fn cursor_of(link: &str) -> String {
    url::Url::parse(link)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "after")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_else(|| link.to_string())
}

/// Fetches and stores one page of `job_id`.
pub async fn step(
    ctx: &EngineContext,
    job_id: i64,
    listing: &mut Listing,
) -> anyhow::Result<PageOutcome> {
    let failures = listing.failures;
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
    listing.seen.insert(cursor_of(&url));
    let mut next = page.next.as_deref();
    if next.is_some() && page.images.is_empty() && page.skipped == 0 {
        info!(
            job = job_id,
            "an empty page ends the listing, whatever its next link says"
        );
        next = None;
    } else if let Some(link) = next
        && listing.seen.contains(&cursor_of(link))
    {
        warn!(
            job = job_id,
            "the next link leads back to a page already read; ending the listing"
        );
        next = None;
    }
    let last = next.is_none();
    let new_images = ctx
        .store
        .insert_page(job_id, job.quality, &page.images, next, now_ms())
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
    error: MapillaryError,
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
                "{message}. Set a valid {TOKEN_ENV} and restart: the job resumes by itself"
            );
            pause(ctx, job_id, PauseReason::TokenRejected, &reason).await?;
            PageOutcome::Paused { reason }
        }
        RetryDecision::GiveUp | RetryDecision::Gone => {
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
pub(crate) async fn pause(
    ctx: &EngineContext,
    job_id: i64,
    reason: PauseReason,
    message: &str,
) -> anyhow::Result<()> {
    let paused = ctx
        .store
        .pause_job(job_id, ACTIVE, reason, Some(message), now_ms())
        .await?;
    if paused.is_some() {
        warn!(job = job_id, %reason, message, "job paused");
    }
    Ok(())
}

/// Runs [`step`] until the job is enumerated, stopped, or `cancel` fires.
pub async fn run(ctx: &EngineContext, job_id: i64, cancel: CancellationToken) {
    let mut listing = Listing::default();
    let mut pages = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = step(ctx, job_id, &mut listing) => outcome,
        };
        match outcome {
            Ok(PageOutcome::More { .. }) => {
                listing.failures = 0;
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
                listing.failures = listing.failures.saturating_add(1);
                debug!(job = job_id, ?delay, error, "page will be retried");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                // A store error: wait and try again rather than spin.
                listing.failures = listing.failures.saturating_add(1);
                warn!(job = job_id, error = %e, "enumeration step failed");
                let delay = backoff_delay(
                    listing.failures,
                    ctx.tuning.backoff_base,
                    ctx.tuning.backoff_cap,
                );
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
