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
    let stale: Vec<usize> = claimed
        .iter()
        .enumerate()
        .filter(|(_, c)| needs_refresh(c.url.as_deref(), now, ctx.tuning.url_refresh_margin))
        .map(|(i, _)| i)
        .collect();
    for chunk in stale.chunks(REFRESH_BATCH) {
        let ids: Vec<&str> = chunk
            .iter()
            .map(|&i| claimed[i].image_id.as_str())
            .collect();
        match ctx.client.fetch_images(&ids).await {
            Ok(fresh) => {
                let mut updates = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let image = &mut claimed[i];
                    let url = fresh
                        .get(&image.image_id)
                        .and_then(|m| m.url_for(image.quality))
                        .map(str::to_owned);
                    image.url.clone_from(&url);
                    updates.push((image.row_id, url));
                }
                ctx.store.update_urls(&updates).await?;
                debug!(images = chunk.len(), "refreshed image URLs");
            }
            Err(error) => {
                // Hand the whole chunk back at no cost; the error decides when.
                let delay = match error.decision() {
                    RetryDecision::RateLimited(wait) => wait.unwrap_or(Duration::from_secs(1)),
                    _ => ctx.tuning.backoff_base,
                };
                if error.decision() == RetryDecision::PauseJob {
                    let mut jobs: Vec<i64> = chunk.iter().map(|&i| claimed[i].job_id).collect();
                    jobs.dedup();
                    for job in jobs {
                        let reason = format!(
                            "refreshing image URLs failed: {error}. Set a valid MAPILLARY_TOKEN, restart, then POST /jobs/{job}/resume"
                        );
                        super::enumerate::pause(ctx, job, &reason).await?;
                    }
                }
                warn!(%error, images = chunk.len(), "URL refresh failed; images go back to the queue");
                let run_at = now_ms() + delay.as_millis() as i64;
                for &i in chunk {
                    let c = &claimed[i];
                    ctx.store
                        .release(
                            c.row_id,
                            &ctx.owner,
                            c.attempt,
                            run_at,
                            Some(&format!("{error}")),
                        )
                        .await?;
                }
                // Mark them so they are dropped below.
                for &i in chunk {
                    claimed[i].row_id = -1;
                }
            }
        }
    }
    claimed.retain(|c| c.row_id >= 0);
    Ok(claimed)
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
        let images = match claim_batch(&ctx, permits.len() as u32, last_job).await {
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
