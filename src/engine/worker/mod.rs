//! A worker step: one claimed image in, one [`Outcome`] out. The outcome is
//! then applied to the store by [`apply`]; the loop that repeats both is
//! [`run`]. Tests call [`process`] and [`apply`] directly.
//!
//! [`fetch`] is the network half (adopt a copy already archived, or
//! download); [`write`] is the rest (tag, re-encode, hash, store in the archive).

mod queue;
mod write;

pub use queue::{Slot, Work, WorkQueue};
pub use write::Body;

use super::EngineContext;
use crate::archive::{self, ArchiveError, ArchivedFile, FileKind};
use crate::clock::now_ms;
use crate::mapillary::{MapillaryError, RetryDecision, backoff_delay};
use crate::metrics;
use crate::model::ImageMeta;
use crate::store::{
    ClaimedImage, Completion, DeferPolicy, FailOutcome, FailReason, PauseReason, RetryPolicy,
    StoreError,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What became of one image.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Written durably (or adopted): where, how big, its SHA-256.
    Done {
        /// What the row records.
        file: ArchivedFile,
    },
    /// A fault that costs an attempt; retried with backoff until `max_attempts`.
    Retry {
        /// The row's `last_error`.
        error: String,
    },
    /// Will never work (an invalid id): failed for good now.
    GiveUp {
        /// The row's `last_error`.
        error: String,
    },
    /// Deleted on Mapillary: failed for good as deleted. No attempt.
    Deleted {
        /// The row's `last_error`.
        error: String,
    },
    /// The URL expired: drop it so the dispatcher refreshes it. No attempt.
    UrlExpired,
    /// The CDN rate-limited the download: back in the queue after at least
    /// `delay`, doubling if it keeps happening. No attempt.
    RateLimited {
        /// The CDN's `Retry-After`, or a default.
        delay: Duration,
    },
    /// The job cannot go on (bad token, full disk): pause it. No attempt.
    PauseJob {
        /// Why, as stored (a full disk resumes by itself).
        reason: PauseReason,
        /// The job's `last_error`.
        message: String,
    },
    /// Shutdown overtook the image: hand it back untouched. No attempt.
    Abandoned,
    /// The archive's bucket did not answer (after the client's own
    /// retries): not the image's fault, so no attempt; back after a delay
    /// that doubles while it lasts, with the error as the image's note.
    StorageUnavailable {
        /// The image's note.
        error: String,
    },
}

/// Downloads, tags and writes one image. Never touches the queue state.
pub async fn process(
    ctx: &EngineContext,
    image: &ClaimedImage,
    abort: &CancellationToken,
) -> Outcome {
    match fetch(ctx, image, abort).await {
        // After the shutdown grace a stuck write (a bucket that accepts and
        // never answers) is dropped like a stuck download.
        Fetched::Body(body) => tokio::select! {
            outcome = write::write(ctx, *body) => outcome,
            _ = abort.cancelled() => Outcome::Abandoned,
        },
        Fetched::Finished(outcome) => outcome,
    }
}

/// What the network half of [`process`] produced.
pub enum Fetched {
    /// Bytes to tag and write.
    Body(Box<Body>),
    /// Nothing to write: an error, or a file adopted in place.
    Finished(Outcome),
}

/// The network half: checks the ids, adopts a file already in place, or
/// downloads the body.
pub async fn fetch(
    ctx: &EngineContext,
    image: &ClaimedImage,
    abort: &CancellationToken,
) -> Fetched {
    let (meta, target) = match checked_target(ctx, image) {
        Ok(checked) => checked,
        Err(outcome) => return Fetched::Finished(outcome),
    };
    // Another job packed this image into a tar of the same collection (the
    // claim found it): take that copy, as is.
    if let Some(copy) = image.packed_copy.clone() {
        debug!(image = %image.image_id, "adopted a copy already packed in a tar");
        return Fetched::Finished(Outcome::Done { file: copy });
    }
    // A file at the final path is whole (it got there by rename): a crash hit
    // after the write but before the row was marked done, or another job of
    // the same collection archived it. Re-tag it from our metadata instead of
    // downloading it again.
    let adopted = tokio::select! {
        adopted = write::adopt_loose(ctx, &target, &meta) => adopted,
        _ = abort.cancelled() => return Fetched::Finished(Outcome::Abandoned),
    };
    match adopted {
        Ok(Some(file)) => return Fetched::Finished(Outcome::Done { file }),
        Ok(None) => {}
        Err(e) => {
            return Fetched::Finished(Outcome::StorageUnavailable {
                error: e.to_string(),
            });
        }
    }
    let Some(url) = image.url.as_deref() else {
        return Fetched::Finished(Outcome::Retry {
            error: format!(
                "the API served no {} URL for image {}",
                image.quality, image.image_id
            ),
        });
    };
    let body = tokio::select! {
        _ = abort.cancelled() => return Fetched::Finished(Outcome::Abandoned),
        body = ctx.client.download_hedged(url) => body,
    };
    match body {
        Ok(bytes) => Fetched::Body(Box::new(Body {
            bytes,
            meta,
            target,
        })),
        Err(error) => Fetched::Finished(download_failed(&error)),
    }
}

/// The image's metadata (under the id the queue knows) and where it goes,
/// once both ids are checked safe for a path; an invalid one gives up.
fn checked_target(
    ctx: &EngineContext,
    image: &ClaimedImage,
) -> Result<(ImageMeta, write::Target), Outcome> {
    let give_up = |e: ArchiveError| Outcome::GiveUp {
        error: e.to_string(),
    };
    let collection =
        archive::collection_path(ctx.archive.root(), &image.collection).map_err(give_up)?;
    // The row's image id is the one the queue knows; the metadata must agree.
    let mut meta = image.meta.clone();
    meta.id.clone_from(&image.image_id);
    // Checked here, and kept: the adoption check and the JPEG write use it.
    let jpeg = archive::image_path(&collection, &meta, FileKind::Jpeg).map_err(give_up)?;
    let target = write::Target {
        collection,
        jpeg,
        format: image.format,
    };
    Ok((meta, target))
}

/// What a failed download means for the image.
fn download_failed(error: &MapillaryError) -> Outcome {
    match error.decision() {
        RetryDecision::RefreshUrl => Outcome::UrlExpired,
        RetryDecision::RateLimited(wait) => Outcome::RateLimited {
            delay: wait.unwrap_or(Duration::from_secs(5)),
        },
        RetryDecision::PauseJob => Outcome::PauseJob {
            reason: PauseReason::TokenRejected,
            message: format!("download rejected: {error}"),
        },
        RetryDecision::Gone => Outcome::Deleted {
            error: format!("deleted on Mapillary: {error}"),
        },
        // A CDN refusal outside the known classes (say, HTTP 400 for a
        // mangled URL) may pass with the next fresh URL: it costs an
        // attempt rather than failing the image at once.
        RetryDecision::Retryable | RetryDecision::GiveUp => Outcome::Retry {
            error: format!("download failed: {error}"),
        },
    }
}

/// Records a failed attempt (a download's, or a URL refresh's that waiting
/// cannot fix): back after the backoff, failed for good once the image's
/// attempts are spent.
pub(super) async fn fail_attempt(
    ctx: &EngineContext,
    image: &ClaimedImage,
    error: &str,
    now: i64,
) -> anyhow::Result<()> {
    let lease = &image.lease;
    let delay = backoff_delay(
        lease.attempt as u32,
        ctx.tuning.backoff_base,
        ctx.tuning.backoff_cap,
    );
    let policy = RetryPolicy {
        max_attempts: ctx.tuning.max_attempts,
        retry_at_ms: now + delay.as_millis() as i64,
    };
    match ctx.store.fail(lease, error, policy, now).await? {
        FailOutcome::FailedForGood => {
            metrics::add(&ctx.client.metrics().images_failed, 1);
            warn!(image = %image.image_id, attempt = lease.attempt, error, "image failed for good")
        }
        // Taken over meanwhile (this daemon was taken for dead, or its
        // lease expired): the new holder's outcome stands.
        FailOutcome::LeaseLost => {
            warn!(image = %image.image_id, error, "lost the lease before recording a failed attempt; nothing recorded")
        }
        FailOutcome::Retrying { .. } => {
            metrics::add(&ctx.client.metrics().retries, 1);
            debug!(image = %image.image_id, attempt = lease.attempt, error, ?delay, "image will be retried")
        }
    }
    Ok(())
}

/// Records an outcome in the store, fenced by this claim's lease.
pub async fn apply(
    ctx: &EngineContext,
    image: &ClaimedImage,
    outcome: Outcome,
) -> anyhow::Result<()> {
    let outcome = count_url_strikes(ctx, image.row_id(), outcome);
    record(ctx, image, outcome).await
}

/// [`apply`] after the URL strikes are counted: what [`run`] repeats while
/// the database is away.
async fn record(ctx: &EngineContext, image: &ClaimedImage, outcome: Outcome) -> anyhow::Result<()> {
    let now = now_ms();
    let lease = &image.lease;
    match outcome {
        Outcome::Done { file } => record_done(ctx, image, &file, now).await?,
        Outcome::Retry { error } => fail_attempt(ctx, image, &error, now).await?,
        Outcome::GiveUp { error } => {
            warn!(image = %image.image_id, error, "image failed for good");
            metrics::add(&ctx.client.metrics().images_failed, 1);
            ctx.store
                .fail_for_good(lease, FailReason::Error, &error, now)
                .await?;
        }
        Outcome::Deleted { error } => {
            info!(image = %image.image_id, "image deleted on Mapillary");
            let counters = ctx.client.metrics();
            metrics::add(&counters.images_deleted, 1);
            metrics::add(&counters.images_failed, 1);
            ctx.store
                .fail_for_good(lease, FailReason::Deleted, &error, now)
                .await?;
        }
        Outcome::UrlExpired => {
            ctx.store.update_urls(&[(lease.row_id, None)]).await?;
            ctx.store.release(lease, Duration::ZERO, None, now).await?;
        }
        Outcome::RateLimited { delay } => {
            // Deferred, not released: a CDN that keeps refusing pushes this
            // image further back each time instead of cycling it.
            // No jitter below the delay: it honours the CDN's Retry-After.
            let policy = DeferPolicy {
                base: delay.max(ctx.tuning.backoff_base),
                cap: ctx.tuning.backoff_cap.max(delay),
                jitter: 1.0,
            };
            let note = "rate limited by the CDN";
            ctx.store.defer(lease, note, policy, now).await?;
        }
        Outcome::PauseJob { reason, message } => {
            ctx.store
                .release(lease, Duration::ZERO, Some(&message), now)
                .await?;
            super::enumerate::pause(ctx, image.job_id, reason, &message).await?;
        }
        Outcome::Abandoned => {
            ctx.store.release(lease, Duration::ZERO, None, now).await?;
        }
        Outcome::StorageUnavailable { error } => {
            let policy = DeferPolicy {
                base: ctx.tuning.backoff_base,
                cap: ctx.tuning.backoff_cap,
                jitter: rand::random_range(0.5..=1.0),
            };
            let due = ctx.store.defer(lease, &error, policy, now).await?;
            // Each image's delay doubles while it lasts, so this stays rare.
            warn!(image = %image.image_id, error, ?due, "the archive bucket refused or did not answer; the image waits");
        }
    }
    Ok(())
}

/// Marks a written (or adopted) image done, fenced by its lease.
async fn record_done(
    ctx: &EngineContext,
    image: &ClaimedImage,
    file: &ArchivedFile,
    now: i64,
) -> anyhow::Result<()> {
    let completion = ctx.store.complete_image(&image.lease, file, now).await?;
    if completion == Completion::LeaseLost {
        warn!(image = %image.image_id, "lost the lease before completing; the file is in place anyway");
        return Ok(());
    }
    ctx.stats.record_image(file.bytes);
    metrics::add(&ctx.client.metrics().images_completed, 1);
    if completion == Completion::JoinedTar {
        // Its date was packed meanwhile (by another job of the collection):
        // the tar holds the image, the loose file would stay behind untracked.
        debug!(image = %image.image_id, path = %file.path.display(), "joined a tar; removing the loose file");
        ctx.archive.remove_async(&file.path).await?;
    }
    Ok(())
}

/// Free URL refreshes one image may have in a row. The CDN answering 403/410
/// to URLs we just refreshed means the image is gone (or the clock is wrong),
/// not that its URL expired: past this, each refusal costs an attempt, so the
/// image ends `failed` instead of cycling forever.
const FREE_URL_REFRESHES: u32 = 5;

fn count_url_strikes(ctx: &EngineContext, row_id: i64, outcome: Outcome) -> Outcome {
    let Ok(mut strikes) = ctx.url_strikes.lock() else {
        return outcome;
    };
    if !matches!(outcome, Outcome::UrlExpired) {
        strikes.remove(&row_id);
        return outcome;
    }
    let count = strikes.entry(row_id).or_insert(0);
    *count += 1;
    if *count <= FREE_URL_REFRESHES {
        return outcome;
    }
    strikes.remove(&row_id);
    Outcome::Retry {
        error: format!(
            "the CDN refused {} freshly refreshed URLs in a row (HTTP 403/410)",
            FREE_URL_REFRESHES + 1
        ),
    }
}

/// Takes images from the queue until shutdown. After `cancel`, the worker
/// finishes the image in hand, records it and stops; after `abort`, it
/// drops it.
///
/// A worker keeps its image through the write: handing bodies to a separate
/// write pool would let the next download start sooner (fsync is ~10 % of an
/// image's time on a real disk), but then up to twice `workers` downloaded
/// bodies could be unrecorded at a crash, and invariant 7 promises at most
/// `workers` re-downloads.
///
/// Recording is another matter: once an outcome is in hand its file (if
/// any) is durable at its final path, and a restart adopts such a file
/// without downloading it again. So the worker records image k while it
/// takes and downloads image k + 1, instead of leaving its download slot
/// idle for a commit. At most one outcome per worker waits to be recorded,
/// and it keeps its queue slot until it is, so no more than `2 × workers`
/// images are claimed at any moment, as before.
pub async fn run(
    ctx: EngineContext,
    index: usize,
    queue: WorkQueue,
    cancel: CancellationToken,
    abort: CancellationToken,
) {
    let mut finished: Option<(Work, Outcome)> = None;
    loop {
        let record = async {
            if let Some((work, outcome)) = finished.take() {
                apply_waiting_out_the_database(&ctx, index, &work.image, outcome, &abort).await;
            }
        };
        let next = async {
            let work = tokio::select! {
                biased;
                _ = cancel.cancelled() => return None,
                work = queue.next() => work?,
            };
            let outcome = process(&ctx, &work.image, &abort).await;
            Some((work, outcome))
        };
        // Both run to their end: the last outcome is recorded before a stop.
        let ((), next) = tokio::join!(record, next);
        match next {
            Some(done) => finished = Some(done),
            None => break,
        }
    }
    debug!(worker = index, "worker stopped");
}

/// The longest pause between two tries at recording an outcome while the
/// database is away (each try may itself wait for a connection).
const RECORD_RETRY_CAP: Duration = Duration::from_secs(2);

/// [`apply`], tried again while the database is away (a PostgreSQL server
/// restarting cuts every connection): an outcome not recorded would leave
/// the row ours and `in_progress` until its lease ran out, minutes of a
/// job held up and an attempt burnt for an image already archived. Gives
/// up once the lease must have ended (a write then is fenced off anyway),
/// on abort, or on any other error.
async fn apply_waiting_out_the_database(
    ctx: &EngineContext,
    index: usize,
    image: &ClaimedImage,
    outcome: Outcome,
    abort: &CancellationToken,
) {
    let outcome = count_url_strikes(ctx, image.row_id(), outcome);
    let started = tokio::time::Instant::now();
    let mut tries = 0u32;
    loop {
        let Err(e) = record(ctx, image, outcome.clone()).await else {
            if tries > 0 {
                info!(worker = index, image = %image.image_id, tries = tries + 1, "recorded an outcome once the database was back");
            }
            return;
        };
        let unavailable = e.chain().any(|c| {
            c.downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_unavailable)
        });
        if !unavailable || started.elapsed() >= ctx.tuning.lease || abort.is_cancelled() {
            warn!(worker = index, image = %image.image_id, error = %e, "could not record an outcome");
            return;
        }
        tries += 1;
        let pause = backoff_delay(tries, ctx.tuning.backoff_base, RECORD_RETRY_CAP);
        debug!(worker = index, image = %image.image_id, error = %e, ?pause, "the database is away; recording the outcome again");
        tokio::select! {
            _ = abort.cancelled() => {
                warn!(worker = index, image = %image.image_id, error = %e, "could not record an outcome before the shutdown");
                return;
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
