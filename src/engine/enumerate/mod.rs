//! The enumerator: works through one job's parts ([`crate::store::Part`])
//! in order, and stores each page together with where its part stands, in
//! one transaction, so a crash between pages resumes from the last stored
//! page and never skips one. A part is a listing ([`listing`]: the job's
//! `GET /images` query, or a tile of its bbox), a sequence or a batch of
//! image ids ([`by_id`]). Every image is checked against the job's filters
//! before it is stored.

mod by_id;
mod listing;

use super::EngineContext;
use crate::clock::now_ms;
use crate::config::TOKEN_ENV;
use crate::mapillary::{MapillaryError, RetryDecision, backoff_delay};
use crate::selection::PartSpec;
use crate::store::{ACTIVE, JobState, JobTask, PauseReason, StoreError};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What one step did.
#[derive(Debug)]
pub enum PageOutcome {
    /// A page (or a part) was stored; more follow.
    More {
        /// Images new to the queue.
        new_images: u64,
    },
    /// The last part was stored; enumeration is complete.
    Finished {
        /// Images new to the queue.
        new_images: u64,
    },
    /// The job is no longer one we enumerate (paused, cancelled, gone).
    Stopped,
    /// A transient fault or rate limit: try the same page again after this long.
    RetryAfter {
        /// How long to wait.
        delay: Duration,
        /// What went wrong, for the job's note.
        error: String,
    },
    /// The token was rejected: the job is paused with a clear error.
    Paused {
        /// The job's `last_error`.
        reason: String,
    },
    /// The API refused the request for good (bad parameter): the job failed.
    Failed {
        /// The job's `last_error`.
        reason: String,
    },
}

/// What one enumerator run remembers between pages.
#[derive(Debug, Default)]
pub struct Listing {
    /// Consecutive failed tries of the current page, for the backoff.
    pub failures: u32,
    /// Cursors of the pages this run fetched: a `next` back to one of them
    /// is a loop, and ends the part.
    seen: HashSet<String>,
    /// Empty pages in a row that still had a `next`.
    empty_pages: u32,
    /// The lease this run holds on the job's task: every page write checks
    /// it (`None` in tests that drive steps by hand).
    pub task: Option<JobTask>,
}

/// Fetches and stores one page (or one part) of `job_id`.
pub async fn step(
    ctx: &EngineContext,
    job_id: i64,
    listing: &mut Listing,
) -> anyhow::Result<PageOutcome> {
    let Some(job) = ctx.store.find_job(job_id).await? else {
        return Ok(PageOutcome::Stopped);
    };
    match job.state {
        JobState::Queued => {
            if skip_if_on_internet_archive(ctx, &job).await? {
                return Ok(PageOutcome::Stopped);
            }
            ctx.store
                .transition_job(job_id, &[JobState::Queued], JobState::Enumerating, now_ms())
                .await?;
        }
        JobState::Enumerating | JobState::Downloading => {}
        _ => return Ok(PageOutcome::Stopped),
    }
    let parts = ctx.store.open_parts(job_id, PARTS_AT_ONCE).await?;
    let Some(first) = parts.first() else {
        return finished(ctx, job_id, 0).await;
    };
    let outcomes = match &first.spec {
        // A listing is a chain of cursors: one page at a time.
        PartSpec::Listing { bbox } => vec![listing::step(ctx, &job, first, *bbox, listing).await?],
        // Parts named by id stand alone: the leading run of them goes at once.
        _ => {
            let task = listing.task.as_ref();
            let steps = parts
                .iter()
                .take_while(|p| !matches!(p.spec, PartSpec::Listing { .. }))
                .map(|part| by_id_step(ctx, &job, part, task));
            futures_util::future::join_all(steps)
                .await
                .into_iter()
                .collect::<anyhow::Result<Vec<Stored>>>()?
        }
    };
    let mut new_images = 0;
    for outcome in outcomes {
        match outcome {
            Stored::Images(n) => new_images += n,
            Stored::Failure(error) => {
                return classify_failure(ctx, job_id, listing.failures, error).await;
            }
        }
    }
    if listing.failures > 0 {
        ctx.store.set_job_error(job_id, None, now_ms()).await?;
    }
    match ctx.store.current_part(job_id).await? {
        Some(_) => Ok(PageOutcome::More { new_images }),
        None => finished(ctx, job_id, new_images).await,
    }
}

/// `archive.skip_if_on_ia`: a new username job whose collection is already
/// an Internet Archive item ends at once, done, with a note. Returns whether
/// it did. Not knowing (archive.org unreachable) means going ahead.
async fn skip_if_on_internet_archive(
    ctx: &EngineContext,
    job: &crate::store::Job,
) -> anyhow::Result<bool> {
    let Some(username) = job.username().filter(|_| ctx.tuning.skip_if_on_ia) else {
        return Ok(false);
    };
    let collection = crate::model::collection_name(Some(username), job.quality, job.format);
    match crate::archive::archive_org::item_exists(&ctx.tuning.ia_url, &collection).await {
        Ok(true) => {
            let note = format!(
                "{collection} is already on the Internet Archive ({}); nothing was downloaded \
                 (archive.skip_if_on_ia is on)",
                crate::archive::archive_org::item_url(&ctx.tuning.ia_url, &collection)
            );
            if ctx
                .store
                .skip_queued_job(job.id, &note, now_ms())
                .await?
                .is_some()
            {
                info!(
                    job = job.id,
                    collection, "already on the Internet Archive: job done without downloading"
                );
            }
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(reason) => {
            warn!(
                job = job.id,
                collection, reason, "could not ask the Internet Archive; downloading anyway"
            );
            Ok(false)
        }
    }
}

/// Parts named by id (sequences, image batches) worked on at once: their
/// calls overlap the API's latency; the shared limiter still caps the rate.
const PARTS_AT_ONCE: u32 = 8;

/// One sequence or image-batch part.
async fn by_id_step(
    ctx: &EngineContext,
    job: &crate::store::Job,
    part: &crate::store::Part,
    task: Option<&JobTask>,
) -> anyhow::Result<Stored> {
    match &part.spec {
        PartSpec::Sequence(sequence) => {
            by_id::sequence_step(ctx, job, part.seq, sequence, task).await
        }
        PartSpec::Images(ids) => by_id::images_step(ctx, job, part.seq, ids, task).await,
        PartSpec::Listing { .. } => {
            anyhow::bail!(
                "part {} is a listing: those go one page at a time",
                part.seq
            )
        }
    }
}

/// What a part step did: stored its page (counting the new images), or met
/// an API failure that [`classify_failure`] decides on.
pub(super) enum Stored {
    Images(u64),
    Failure(MapillaryError),
}

/// Enumeration is complete: the job moves on to downloading.
async fn finished(
    ctx: &EngineContext,
    job_id: i64,
    new_images: u64,
) -> anyhow::Result<PageOutcome> {
    ctx.store
        .transition_job(
            job_id,
            &[JobState::Enumerating],
            JobState::Downloading,
            now_ms(),
        )
        .await?;
    Ok(PageOutcome::Finished { new_images })
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

/// Did the step fail because another holder took the job's task over?
/// Then this enumerator must stop, not retry.
fn lost_job_task(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<StoreError>(),
        Some(StoreError::LostJobTask(_))
    )
}

/// Runs [`step`] until the job is enumerated, stopped, or `cancel` fires.
pub async fn run(ctx: &EngineContext, task: JobTask, cancel: CancellationToken) {
    let job_id = task.job_id;
    let mut listing = Listing {
        task: Some(task),
        ..Listing::default()
    };
    let mut pages = 0u64;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = step(ctx, job_id, &mut listing) => outcome,
        };
        let delay = match outcome {
            Ok(PageOutcome::More { .. }) => {
                listing.failures = 0;
                pages += 1;
                ctx.wake.notify_waiters();
                continue;
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
                delay
            }
            Err(e) if lost_job_task(&e) => {
                warn!(job = job_id, error = %e, "enumeration stopped");
                return;
            }
            Err(e) => {
                // A store error: wait and try again rather than spin.
                listing.failures = listing.failures.saturating_add(1);
                warn!(job = job_id, error = %e, "enumeration step failed");
                backoff_delay(
                    listing.failures,
                    ctx.tuning.backoff_base,
                    ctx.tuning.backoff_cap,
                )
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
