//! The dispatcher: claims due images in batches, makes sure each has a URL
//! that will not expire before it is used (refreshing stale ones with one
//! `GET /?ids=` per 50 images), and hands them to the workers.
//!
//! The queue between dispatcher and workers is bounded by the worker count,
//! so at most `2 × workers` images are claimed at any moment: a crash hands
//! back at most that many, and only the ones a worker had started can have
//! been downloaded already (invariant 7).

use super::{EngineContext, now_ms};
use crate::mapillary::{RetryDecision, url_expires_at};
use crate::model::Quality;
use crate::store::ClaimedImage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most ids in one `GET /?ids=` call (the API's limit).
pub const REFRESH_BATCH: usize = 50;

/// A claimed image on its way to a worker. The permit frees a queue slot when
/// the worker is done with it.
pub struct Work {
    pub image: ClaimedImage,
    _slot: OwnedSemaphorePermit,
}

/// Bounded hand-off from the dispatcher to the workers.
#[derive(Clone)]
pub struct WorkQueue {
    slots: Arc<Semaphore>,
    capacity: usize,
    tx: mpsc::UnboundedSender<Work>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Work>>>,
}

impl WorkQueue {
    pub fn new(workers: usize) -> WorkQueue {
        let capacity = (workers * 2).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        WorkQueue {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            tx,
            rx: Arc::new(Mutex::new(rx)),
        }
    }

    /// Waits for the next image. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&self) -> Option<Work> {
        self.rx.lock().await.recv().await
    }
}

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

/// Claims up to `limit` due images, refreshes stale URLs in batches, and
/// returns the images ready to download. Images the API no longer knows keep
/// no URL; the worker then fails them with a clear error.
/// `after_job` is the job served last, so active jobs take turns.
pub async fn claim_batch(
    ctx: &EngineContext,
    limit: u32,
    after_job: i64,
) -> anyhow::Result<Vec<ClaimedImage>> {
    let mut claimed = ctx
        .store
        .claim_after_job(&ctx.owner, limit, ctx.tuning.lease, now_ms(), after_job)
        .await?;
    let now = now_ms();
    let margin = ctx.tuning.url_refresh_margin;
    let targets: Vec<RefreshTarget> = claimed
        .iter()
        .enumerate()
        .filter(|(_, c)| needs_refresh(c.url.as_deref(), now, margin))
        .map(|(i, c)| RefreshTarget {
            row_id: c.row_id,
            image_id: c.image_id.clone(),
            quality: c.quality,
            claimed: Some(i),
        })
        .collect();
    if targets.is_empty() {
        return Ok(claimed);
    }
    match refresh_urls(ctx, &mut claimed, targets, now).await {
        Ok(given_back) if given_back.is_empty() => Ok(claimed),
        Ok(given_back) => Ok(claimed
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !given_back.contains(i))
            .map(|(_, c)| c)
            .collect()),
        Err(e) => {
            // Do not strand the batch until its lease expires.
            for c in &claimed {
                let _ = ctx
                    .store
                    .release(c.row_id, &ctx.owner, c.attempt, now_ms(), None)
                    .await;
            }
            Err(e)
        }
    }
}

/// Renews the URLs of `targets` (claimed stale images first) plus look-ahead
/// rows of the same job, ≤ 50 ids per call. Returns the indexes of claimed
/// images it had to hand back (the refresh call failed).
async fn refresh_urls(
    ctx: &EngineContext,
    claimed: &mut [ClaimedImage],
    mut targets: Vec<RefreshTarget>,
    now: i64,
) -> anyhow::Result<Vec<usize>> {
    let margin = ctx.tuning.url_refresh_margin;
    let Some(first) = targets.first().and_then(|t| t.claimed).map(|i| &claimed[i]) else {
        return Ok(Vec::new());
    };
    let (job_id, quality) = (first.job_id, first.quality);
    // Fill the last call up to 50 ids with the job's next stale rows.
    let room = (REFRESH_BATCH - targets.len() % REFRESH_BATCH) % REFRESH_BATCH;
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
    let mut given_back = Vec::new();
    for chunk in targets.chunks(REFRESH_BATCH) {
        let ids: Vec<&str> = chunk.iter().map(|t| t.image_id.as_str()).collect();
        match ctx.client.fetch_images(&ids).await {
            Ok(fresh) => {
                let mut updates = Vec::with_capacity(chunk.len());
                for target in chunk {
                    let url = fresh
                        .get(&target.image_id)
                        .and_then(|m| m.url_for(target.quality))
                        .map(str::to_owned);
                    if let Some(i) = target.claimed {
                        claimed[i].url.clone_from(&url);
                    }
                    updates.push((target.row_id, url));
                }
                ctx.store.update_urls(&updates).await?;
                debug!(images = chunk.len(), "refreshed image URLs");
            }
            Err(error) => {
                let decision = error.decision();
                if decision == RetryDecision::PauseJob {
                    let reason = format!(
                        "refreshing image URLs failed: {error}. Set a valid MAPILLARY_TOKEN, restart, then POST /jobs/{job_id}/resume"
                    );
                    super::enumerate::pause(ctx, job_id, &reason).await?;
                }
                // Hand the claimed images back at no cost; the error decides when.
                let delay = match decision {
                    RetryDecision::RateLimited(wait) => {
                        debug!(%error, "URL refresh rate limited");
                        wait.unwrap_or(Duration::from_secs(1))
                    }
                    _ => {
                        warn!(%error, images = chunk.len(), "URL refresh failed; images go back to the queue");
                        ctx.tuning.backoff_base
                    }
                };
                let run_at = now_ms() + delay.as_millis() as i64;
                for i in chunk.iter().filter_map(|t| t.claimed) {
                    let c = &claimed[i];
                    ctx.store
                        .release(
                            c.row_id,
                            &ctx.owner,
                            c.attempt,
                            run_at,
                            Some(&error.to_string()),
                        )
                        .await?;
                    given_back.push(i);
                }
            }
        }
    }
    Ok(given_back)
}

/// Feeds the work queue until `cancel` fires.
pub async fn run(ctx: EngineContext, queue: WorkQueue, cancel: CancellationToken) {
    let mut last_job = 0;
    loop {
        // Wait for at least one free slot, then take every free one (≤ 50).
        let first = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = queue.slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while permits.len() < REFRESH_BATCH.min(queue.capacity) {
            match queue.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        // A refresh can wait on the shared limiter for as long as a
        // Retry-After says; shutdown must not. Anything half-claimed is
        // handed back by the engine's final reset.
        let claimed = tokio::select! {
            _ = cancel.cancelled() => break,
            claimed = claim_batch(&ctx, permits.len() as u32, last_job) => claimed,
        };
        let images = match claimed {
            Ok(images) => {
                last_job = images.last().map_or(0, |i| i.job_id);
                images
            }
            Err(e) => {
                warn!(error = %e, "claiming images failed");
                Vec::new()
            }
        };
        if images.is_empty() {
            drop(permits);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ctx.wake.notified() => {}
                _ = tokio::time::sleep(ctx.tuning.poll_interval) => {}
            }
            continue;
        }
        for image in images {
            let Some(slot) = permits.pop() else { break };
            if queue.tx.send(Work { image, _slot: slot }).is_err() {
                return;
            }
        }
    }
}
