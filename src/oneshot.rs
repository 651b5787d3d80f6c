//! The one-shot `download` command: the daemon's engine, run in-process until
//! the named users are archived, with progress on the terminal. It shares the
//! database and archive with `serve`, so each resumes the other's work.

use crate::app::{engine_context, lock_data_dir};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::engine::{Engine, EngineContext};
use crate::mapillary::{MapillaryClient, MapillaryError, RetryDecision, backoff_delay};
use crate::model::{Bbox, Quality, validate_username};
use crate::progress::{JobProgress, RateMeter, Reporter};
use crate::secret::Secret;
use crate::store::{Job, JobState, PauseReason, Store};
use crate::units::{format_bytes, group_digits};
use rand::Rng;
use std::time::Duration;

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub usernames: Vec<String>,
    pub quality: Quality,
    pub bbox: Option<Bbox>,
}

/// How a run ended; `commands` maps it to the exit codes README documents.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Everything archived (exit 0).
    Archived,
    /// Some images failed for good, or a job failed (exit 1).
    SomeFailed,
    /// The token was rejected (exit 2).
    TokenRejected,
    /// Interrupted by Ctrl-C/SIGTERM; a later run resumes (exit 130).
    Interrupted,
    /// Paused for another reason, e.g. a full disk (exit 1).
    Stalled,
}

/// Creates or picks up one job per user, exactly as `POST /jobs` would; a
/// job paused earlier (say, for a full disk) is resumed and its failed images
/// are re-queued, since the user is asking for them now.
pub async fn prepare_jobs(store: &Store, request: &DownloadRequest) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for username in &request.usernames {
        let submitted = store
            .submit_job(username, request.quality, request.bbox, now_ms())
            .await?;
        let job = submitted.job();
        // Running again is how a user retries: failed images go back in the queue.
        // Images deleted on Mapillary stay failed: asking again cannot bring them back.
        let requeued = store.retry_failed(job.id, false, now_ms()).await?;
        if job.state == JobState::Paused || (requeued > 0 && job.state == JobState::Done) {
            store
                .reactivate_job(job.id, &[JobState::Paused, JobState::Done], now_ms())
                .await?;
        }
        ids.push(job.id);
    }
    Ok(ids)
}

/// Checks the usernames before anything is written.
pub fn validate_request(request: &DownloadRequest) -> Result<(), String> {
    if request.usernames.is_empty() {
        return Err("give at least one USERNAME".into());
    }
    for name in &request.usernames {
        validate_username(name).map_err(|e| format!("username {name:?}: {e}"))?;
    }
    Ok(())
}

/// Runs the engine until every job of `request` has ended or `shutdown` fires.
pub async fn download(
    settings: &Settings,
    token: Secret,
    request: &DownloadRequest,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunEnd> {
    let _lock = lock_data_dir(&settings.storage.data_dir)?;
    let ctx = engine_context(settings, token).await?;
    let job_ids = prepare_jobs(&ctx.store, request).await?;
    let engine = Engine::start(ctx.clone()).await?;
    let mut reporter = Reporter::for_stderr();
    let mut meter = RateMeter::default();
    tokio::pin!(shutdown);
    let end = loop {
        let jobs = load_jobs(&ctx, &job_ids).await?;
        let snapshot: Vec<(i64, JobProgress)> = jobs
            .iter()
            .map(|job| {
                let (ips, bps) = meter.observe(job);
                (job.id, JobProgress::from_job(job, ips, bps))
            })
            .collect();
        reporter.update(&snapshot, false);
        if let Some(end) = run_end(&jobs) {
            reporter.update(&snapshot, true);
            break end;
        }
        tokio::select! {
            _ = &mut shutdown => break RunEnd::Interrupted,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };
    reporter.finish();
    engine.shutdown().await;
    for job in load_jobs(&ctx, &job_ids).await? {
        eprintln!("{}", summary_line(&job));
    }
    Ok(end)
}

async fn load_jobs(ctx: &EngineContext, ids: &[i64]) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(job) = ctx.store.find_job(*id).await? {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// `Some` once no job can make progress without the user.
pub fn run_end(jobs: &[Job]) -> Option<RunEnd> {
    let ended = |j: &Job| {
        matches!(
            j.state,
            JobState::Done | JobState::Failed | JobState::Paused | JobState::Cancelled
        )
    };
    if !jobs.iter().all(ended) {
        return None;
    }
    let token_rejected = jobs
        .iter()
        .any(|j| j.state == JobState::Paused && j.pause_reason == Some(PauseReason::TokenRejected));
    // Deleted images are not a failure of the run: everything that still
    // exists on Mapillary is archived.
    let failed_for_good = |j: &Job| j.counts.failed > j.counts.deleted;
    Some(if token_rejected {
        RunEnd::TokenRejected
    } else if jobs.iter().any(|j| j.state == JobState::Paused) {
        RunEnd::Stalled
    } else if jobs
        .iter()
        .any(|j| j.state == JobState::Failed || failed_for_good(j))
    {
        RunEnd::SomeFailed
    } else {
        RunEnd::Archived
    })
}

/// The closing line for one job.
pub fn summary_line(job: &Job) -> String {
    let who = format!("{} [{}]", job.username, job.quality);
    if job.state == JobState::Done && job.counts.discovered == 0 {
        return format!(
            "{who}: no images found (unknown user, or no images in that bbox); nothing archived"
        );
    }
    let mut line = format!(
        "{who}: {}: {} of {} images archived, {}",
        job.state.as_str(),
        group_digits(job.counts.done),
        group_digits(job.counts.discovered),
        format_bytes(job.bytes_done)
    );
    let errors = job.counts.failed - job.counts.deleted.min(job.counts.failed);
    if errors > 0 {
        line.push_str(&format!(
            "; {} failed for good (POST /jobs/{}/retry or run again to retry them)",
            group_digits(errors),
            job.id
        ));
    }
    if job.counts.deleted > 0 {
        line.push_str(&format!(
            "; {} deleted on Mapillary while the job ran (nothing left to archive)",
            group_digits(job.counts.deleted)
        ));
    }
    if let Some(error) = &job.last_error {
        line.push_str(&format!("; last error: {error}"));
    }
    line
}

/// Dry-run result for one user.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub username: String,
    pub images: u64,
    pub sampled: usize,
    pub estimated_bytes: u64,
}

/// Images whose size is sampled for the estimate.
const SAMPLE_SIZE: usize = 100;

/// Enumerates `username` without writing anything, and estimates the total
/// size from the Content-Length of a uniform random sample (reservoir
/// sampling, so memory stays flat however many images there are).
pub async fn estimate(
    client: &MapillaryClient,
    settings: &Settings,
    username: &str,
    quality: Quality,
    bbox: Option<Bbox>,
) -> Result<Estimate, MapillaryError> {
    let mut rng = rand::rng();
    let mut sample: Vec<String> = Vec::with_capacity(SAMPLE_SIZE);
    // Overlapping pages repeat ids of the page before; remembering one page
    // is enough to count each image once, and keeps memory flat.
    let mut previous_page = std::collections::HashSet::new();
    let mut count = 0u64;
    let mut url = Some(client.first_page_url(username, bbox));
    while let Some(page_url) = url.take() {
        let page = with_retries(settings, || client.fetch_page(&page_url)).await?;
        let mut this_page = std::collections::HashSet::with_capacity(page.images.len());
        for image in page.images {
            if previous_page.contains(&image.id) || !this_page.insert(image.id.clone()) {
                continue;
            }
            count += 1;
            if let Some(u) = image.url_for(quality) {
                if sample.len() < SAMPLE_SIZE {
                    sample.push(u.to_owned());
                } else {
                    let slot = rng.random_range(0..count) as usize;
                    if slot < SAMPLE_SIZE {
                        sample[slot] = u.to_owned();
                    }
                }
            }
        }
        previous_page = this_page;
        url = page.next;
    }
    let mut sizes = Vec::with_capacity(sample.len());
    for u in &sample {
        if let Ok(Some(size)) = with_retries(settings, || client.probe_size(u)).await {
            sizes.push(size);
        }
    }
    let mean = if sizes.is_empty() {
        0.0
    } else {
        sizes.iter().sum::<u64>() as f64 / sizes.len() as f64
    };
    Ok(Estimate {
        username: username.to_owned(),
        images: count,
        sampled: sizes.len(),
        estimated_bytes: (mean * count as f64).round() as u64,
    })
}

/// Retries transient faults and rate limits with backoff, up to `max_attempts`.
async fn with_retries<T, F, Fut>(settings: &Settings, mut call: F) -> Result<T, MapillaryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, MapillaryError>>,
{
    let base = Duration::from_millis(settings.retry.backoff_base_ms);
    let cap = Duration::from_millis(settings.retry.backoff_cap_ms);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => match e.decision() {
                RetryDecision::RateLimited(wait) => {
                    tokio::time::sleep(wait.unwrap_or(Duration::from_secs(1))).await;
                }
                RetryDecision::Retryable | RetryDecision::RefreshUrl
                    if attempt < settings.retry.max_attempts =>
                {
                    tokio::time::sleep(backoff_delay(attempt, base, cap)).await;
                }
                _ => return Err(e),
            },
        }
    }
}

/// The dry-run report line.
pub fn estimate_line(e: &Estimate, quality: Quality) -> String {
    if e.images == 0 {
        return format!(
            "{}: no images found (unknown user, or no images in that bbox)",
            e.username
        );
    }
    format!(
        "{}: about to download {} images at quality {quality} (≈ {}, {} bytes). Estimate: mean Content-Length of {} randomly sampled images (HEAD, or a 1-byte ranged GET where HEAD is refused) × {} images.",
        e.username,
        group_digits(e.images),
        format_bytes(e.estimated_bytes),
        e.estimated_bytes,
        e.sampled,
        group_digits(e.images),
    )
}
