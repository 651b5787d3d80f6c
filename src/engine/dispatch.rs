//! The dispatcher: claims due images in batches, makes sure each has a URL
//! that will not expire before it is used (refreshing stale ones with one
//! `GET /?ids=` per 50 images), and hands them to the workers.
//!
//! The queue between dispatcher and workers is bounded by the worker count,
//! so at most `2 × workers` images are claimed at any moment: a crash hands
//! back at most that many, and only the ones a worker had started can have
//! been downloaded already (invariant 7).

use super::EngineContext;
use super::refresh::{Renewal, renew};
// The supervisor builds the queue under this name; it lives with the
// workers, so that this module depends on them and not the reverse.
pub use super::worker::WorkQueue;
use super::worker::fail_attempt;
use crate::clock::now_ms;
use crate::config::TOKEN_ENV;
use crate::mapillary::{
    MAX_IDS_PER_CALL, MapillaryError, RetryDecision, backoff_delay, url_expires_at,
};
use crate::model::Quality;
use crate::store::{ClaimedImage, DeferPolicy, FailReason, PauseReason};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Does `url` need a refresh before a download that starts now?
pub fn needs_refresh(url: Option<&str>, now_ms: i64, margin: Duration) -> bool {
    match url {
        None => true,
        Some(url) => match url_expires_at(url) {
            // `oe` is in Unix seconds.
            Some(expires_s) => expires_s.saturating_mul(1000) <= now_ms + margin.as_millis() as i64,
            None => false,
        },
    }
}

/// One image whose URL a refresh call will renew.
struct RefreshTarget {
    row_id: i64,
    image_id: String,
    quality: Quality,
    /// Index into the claimed batch; `None` for a look-ahead row not claimed.
    claimed: Option<usize>,
}

/// What one claim produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Images ready to download, with fresh URLs.
    pub ready: Vec<ClaimedImage>,
    /// Claimed images handed back because their URL refresh failed.
    pub handed_back: usize,
}

/// Claims up to `limit` due images, refreshes stale URLs in batches, and
/// returns the images ready to download. Images deleted on Mapillary are
/// failed for good on the way; images whose refresh failed otherwise go back
/// to the queue. `after_job` is the job served last, so active jobs take turns.
pub async fn claim_batch(ctx: &EngineContext, limit: u32, after_job: i64) -> anyhow::Result<Batch> {
    let claimed = ctx
        .store
        .claim(&ctx.owner, limit, ctx.tuning.lease, now_ms(), after_job)
        .await?;
    ready_to_download(ctx, claimed).await
}

/// Refreshes the stale URLs of a claimed batch; see [`claim_batch`].
async fn ready_to_download(
    ctx: &EngineContext,
    mut claimed: Vec<ClaimedImage>,
) -> anyhow::Result<Batch> {
    let now = now_ms();
    let margin = ctx.tuning.url_refresh_margin;
    let targets: Vec<RefreshTarget> = claimed
        .iter()
        .enumerate()
        .filter(|(_, c)| needs_refresh(c.url.as_deref(), now, margin))
        .map(|(i, c)| RefreshTarget {
            row_id: c.row_id(),
            image_id: c.image_id.clone(),
            quality: c.quality,
            claimed: Some(i),
        })
        .collect();
    if targets.is_empty() {
        return Ok(Batch {
            ready: claimed,
            handed_back: 0,
        });
    }
    match refresh_urls(ctx, &mut claimed, targets, now).await {
        Ok(outcome) => Ok(Batch {
            ready: claimed
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !outcome.settled.contains(i))
                .map(|(_, c)| c)
                .collect(),
            handed_back: outcome.handed_back,
        }),
        Err(e) => {
            // Do not strand the batch until its lease expires.
            for c in &claimed {
                let _ = ctx
                    .store
                    .release(&c.lease, Duration::ZERO, None, now_ms())
                    .await;
            }
            Err(e)
        }
    }
}

/// Claimed images a refresh dealt with itself.
#[derive(Debug, Default)]
struct Settled {
    /// Indexes into the claimed batch: deleted images (failed for good) and
    /// images handed back because their refresh failed.
    settled: Vec<usize>,
    handed_back: usize,
}

/// Renews the URLs of `targets` (claimed stale images first) plus look-ahead
/// rows of the same job, ≤ 50 ids per call.
async fn refresh_urls(
    ctx: &EngineContext,
    claimed: &mut [ClaimedImage],
    mut targets: Vec<RefreshTarget>,
    now: i64,
) -> anyhow::Result<Settled> {
    let margin = ctx.tuning.url_refresh_margin;
    let Some(first) = targets.first().and_then(|t| t.claimed).map(|i| &claimed[i]) else {
        return Ok(Settled::default());
    };
    let (job_id, quality) = (first.job_id, first.quality);
    // Fill the last call up to 50 ids with the job's next stale rows.
    let room = (MAX_IDS_PER_CALL - targets.len() % MAX_IDS_PER_CALL) % MAX_IDS_PER_CALL;
    if room > 0 {
        let upcoming = ctx
            .store
            .upcoming_urls(job_id, now, (room * 4) as u32)
            .await?;
        targets.extend(
            upcoming
                .into_iter()
                .filter(|(_, _, url)| needs_refresh(url.as_deref(), now, margin))
                .take(room)
                .map(|(row_id, image_id, _)| RefreshTarget {
                    row_id,
                    image_id,
                    quality,
                    claimed: None,
                }),
        );
    }
    let mut settled = Settled::default();
    for chunk in targets.chunks(MAX_IDS_PER_CALL) {
        let ids = chunk.iter().map(|t| t.image_id.clone()).collect();
        let client = &ctx.client;
        let renewal = renew(ids, |group| async move {
            let refs: Vec<&str> = group.iter().map(String::as_str).collect();
            client.fetch_images(&refs).await
        })
        .await;
        apply_renewal(ctx, claimed, chunk, renewal, &mut settled).await?;
    }
    Ok(settled)
}

/// Records what one renewal learned: fresh URLs, deleted images (failed for
/// good, no attempt burnt), and images left unsettled by another failure,
/// handed back as that failure decides.
async fn apply_renewal(
    ctx: &EngineContext,
    claimed: &mut [ClaimedImage],
    chunk: &[RefreshTarget],
    renewal: Renewal,
    settled: &mut Settled,
) -> anyhow::Result<()> {
    let now = now_ms();
    let rows = settle_claimed(ctx, claimed, chunk, &renewal, settled, now).await?;
    let counters = ctx.client.metrics();
    crate::metrics::add(&counters.url_refreshes, rows.fresh_urls.len() as u64);
    let deleted = renewal.deleted.len() as u64;
    crate::metrics::add(&counters.images_deleted, deleted);
    crate::metrics::add(&counters.images_failed, deleted);
    ctx.store.update_urls(&rows.fresh_urls).await?;
    ctx.store
        .mark_pending_deleted(&rows.deleted_pending, DELETED, now)
        .await?;
    if !renewal.deleted.is_empty() {
        info!(
            images = renewal.deleted.len(),
            calls = renewal.calls,
            "found images deleted on Mapillary; they are counted apart and not retried"
        );
    }
    if let Some((_, error)) = &renewal.unsettled {
        pause_if_token_rejected(ctx, claimed, chunk, error).await?;
    }
    debug!(
        fresh = renewal.fresh.len(),
        deleted = renewal.deleted.len(),
        calls = renewal.calls,
        "renewed image URLs"
    );
    Ok(())
}

/// What a renewal writes after the claimed images are settled.
#[derive(Debug, Default)]
struct RowChanges {
    /// Every renewed row's fresh URL, claimed and look-ahead rows alike.
    fresh_urls: Vec<(i64, Option<String>)>,
    /// Look-ahead rows found deleted: failed for good without a claim.
    deleted_pending: Vec<i64>,
}

/// Settles each claimed image of `chunk` by what the renewal learned of it:
/// a fresh URL (set on the claim), deleted, unreadable (an attempt), or
/// unsettled (handed back); collects what the look-ahead rows need.
async fn settle_claimed(
    ctx: &EngineContext,
    claimed: &mut [ClaimedImage],
    chunk: &[RefreshTarget],
    renewal: &Renewal,
    settled: &mut Settled,
    now: i64,
) -> anyhow::Result<RowChanges> {
    let mut rows = RowChanges {
        fresh_urls: Vec::with_capacity(chunk.len()),
        deleted_pending: Vec::new(),
    };
    for target in chunk {
        if let Some(meta) = renewal.fresh.get(&target.image_id) {
            let url = meta.url_for(target.quality).map(str::to_owned);
            if let Some(i) = target.claimed {
                claimed[i].url.clone_from(&url);
            }
            rows.fresh_urls.push((target.row_id, url));
        } else if renewal.deleted.contains(&target.image_id) {
            match target.claimed {
                Some(i) => {
                    ctx.store
                        .fail_for_good(&claimed[i].lease, FailReason::Deleted, DELETED, now)
                        .await?;
                    settled.settled.push(i);
                }
                None => rows.deleted_pending.push(target.row_id),
            }
        } else if let Some((_, reason)) = renewal
            .unreadable
            .iter()
            .find(|(id, _)| *id == target.image_id)
        {
            // The API answered for it, we could not read the answer: an
            // error of the image (an attempt), never a deletion.
            if let Some(i) = target.claimed {
                let note = format!("the API's answer for it could not be read: {reason}");
                fail_attempt(ctx, &claimed[i], &note, now).await?;
                settled.settled.push(i);
            }
        } else if let (Some(i), Some((unsettled, error))) = (target.claimed, &renewal.unsettled)
            && unsettled.contains(&target.image_id)
        {
            hand_back(ctx, &claimed[i], error).await?;
            settled.settled.push(i);
            settled.handed_back += 1;
        }
    }
    Ok(rows)
}

/// Pauses the chunk's job when the renewal failed on a rejected token: no
/// claim can go on until the user sets a valid one.
async fn pause_if_token_rejected(
    ctx: &EngineContext,
    claimed: &[ClaimedImage],
    chunk: &[RefreshTarget],
    error: &MapillaryError,
) -> anyhow::Result<()> {
    let job_id = chunk
        .iter()
        .find_map(|t| t.claimed.map(|i| claimed[i].job_id));
    if error.decision() == RetryDecision::PauseJob
        && let Some(job_id) = job_id
    {
        let message = format!(
            "refreshing image URLs failed: {error}. Set a valid {TOKEN_ENV} and restart: the job resumes by itself"
        );
        super::enumerate::pause(ctx, job_id, PauseReason::TokenRejected, &message).await?;
    }
    Ok(())
}

/// What an image's refresh refusal says about it: `last_error` of the row.
const DELETED: &str = "deleted on Mapillary: the API no longer knows this image";

/// Hands a claimed image back after its URL refresh failed: at no attempt,
/// after the delay the failure asks for. A transient failure defers the
/// image with its own growing backoff, so it never comes back in a loop; a
/// refusal no retry can fix costs an attempt, so it ends.
async fn hand_back(
    ctx: &EngineContext,
    image: &ClaimedImage,
    error: &MapillaryError,
) -> anyhow::Result<()> {
    let now = now_ms();
    let note = format!("refreshing its URL failed: {error}");
    match error.decision() {
        RetryDecision::RateLimited(wait) => {
            let delay = wait.unwrap_or(Duration::from_secs(1));
            ctx.store
                .release(&image.lease, delay, Some(&note), now)
                .await?;
        }
        RetryDecision::PauseJob => {
            ctx.store
                .release(&image.lease, Duration::ZERO, Some(&note), now)
                .await?;
        }
        RetryDecision::GiveUp => {
            // A refusal retrying cannot fix (a 4xx that is neither a rate
            // limit nor a missing id): it costs the claim's attempt, so the
            // image ends failed with the reason instead of waiting forever.
            fail_attempt(ctx, image, &note, now).await?;
        }
        _ => {
            let policy = DeferPolicy {
                base: ctx.tuning.backoff_base,
                cap: ctx.tuning.backoff_cap,
                jitter: rand::random_range(0.5..=1.0),
            };
            let due = ctx.store.defer(&image.lease, &note, policy, now).await?;
            warn!(image = %image.image_id, %error, due_in_ms = due.map(|d| d - now), "URL refresh failed; image deferred");
        }
    }
    Ok(())
}

/// Feeds the work queue until `cancel` fires.
///
/// Claims that yield nothing because every URL refresh failed (the API down,
/// say) back off exponentially, so an outage costs a few calls a minute, not
/// one per batch of the whole queue.
pub async fn run(ctx: EngineContext, queue: WorkQueue, cancel: CancellationToken) {
    let mut last_job = 0;
    let mut failed_rounds = 0u32;
    loop {
        // Wait for at least one free slot, then take every free one (≤ 50).
        let mut slots = tokio::select! {
            _ = cancel.cancelled() => break,
            slots = queue.free_slots(MAX_IDS_PER_CALL) => match slots {
                Some(slots) => slots,
                None => break,
            },
        };
        // A refresh can wait on the shared limiter for as long as a
        // Retry-After says; shutdown must not. Anything half-claimed is
        // handed back by the engine's final reset.
        let claimed = tokio::select! {
            _ = cancel.cancelled() => break,
            claimed = claim_batch(&ctx, slots.len() as u32, last_job) => claimed,
        };
        let batch = match claimed {
            Ok(batch) => {
                last_job = batch.ready.last().map_or(0, |i| i.job_id);
                batch
            }
            Err(e) => {
                warn!(error = %e, "claiming images failed");
                Batch::default()
            }
        };
        if batch.ready.is_empty() {
            drop(slots);
            let all_failed = batch.handed_back > 0;
            failed_rounds = if all_failed {
                failed_rounds.saturating_add(1)
            } else {
                0
            };
            let backoff = all_failed.then(|| {
                backoff_delay(
                    failed_rounds,
                    ctx.tuning.backoff_base,
                    ctx.tuning.backoff_cap,
                )
            });
            if !wait_for_work(&ctx, &cancel, backoff).await {
                break;
            }
            continue;
        }
        failed_rounds = 0;
        for image in batch.ready {
            let Some(slot) = slots.pop() else { break };
            if !queue.send(image, slot) {
                return;
            }
        }
    }
}

/// Waits before the next claim: `backoff` after a round whose every refresh
/// failed (new work announced meanwhile does not cut it short), else until
/// new work is announced or the poll interval passes. `false` once `cancel`
/// fires.
async fn wait_for_work(
    ctx: &EngineContext,
    cancel: &CancellationToken,
    backoff: Option<Duration>,
) -> bool {
    match backoff {
        Some(pause) => tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        },
        None => tokio::select! {
            _ = cancel.cancelled() => false,
            _ = ctx.wake.notified() => true,
            _ = tokio::time::sleep(ctx.tuning.poll_interval) => true,
        },
    }
}
