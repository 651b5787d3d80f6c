//! The one-shot `download` command: the daemon's engine, run in-process until
//! the named users are archived, with progress on the terminal. It shares the
//! database and archive with `serve`, so each resumes the other's work.

use crate::app::{engine_context, lock_data_dir};
use crate::cli::progress::{JobProgress, RateMeter, Reporter};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::engine::{Engine, EngineContext};
use crate::model::{OutputFormat, Packaging, Quality};
use crate::secret::Secret;
use crate::selection::{Filters, JobSpec, Resync, Selection, Source};
use crate::store::{Job, JobState, PauseReason, Store};
use crate::units::{format_bytes, group_digits};
use std::sync::Arc;
use std::time::Duration;

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct DownloadRequest {
    /// Users to archive, one job each.
    pub usernames: Vec<String>,
    /// Organizations to archive, one job each.
    pub organizations: Vec<String>,
    /// Sequences to archive, together in one job.
    pub sequences: Vec<String>,
    /// Image ids to archive, together in one job.
    pub images: Vec<String>,
    /// The size to download.
    pub quality: Quality,
    /// JPEG or WebP.
    pub format: OutputFormat,
    /// Loose files or tars.
    pub package: Packaging,
    /// `--upload-ia`: upload the packed collections once archived (sets `package`).
    pub upload: Option<crate::model::UploadTarget>,
    /// Filters every job of the request shares.
    pub filters: Filters,
}

impl DownloadRequest {
    /// The jobs it asks for: one per username and per organization, one
    /// for all the sequences, one for all the image ids; each with the same
    /// filters and output. Every value is checked before anything is written.
    pub fn specs(&self) -> Result<Vec<JobSpec>, String> {
        let mut sources: Vec<Source> = Vec::new();
        sources.extend(self.usernames.iter().cloned().map(Source::Username));
        sources.extend(self.organizations.iter().cloned().map(Source::Organization));
        if !self.sequences.is_empty() {
            sources.push(Source::Sequences(self.sequences.clone()));
        }
        if !self.images.is_empty() {
            sources.push(Source::Images(self.images.clone()));
        }
        if sources.is_empty() {
            return Err("give at least one USERNAME, --organization, --sequence or --image".into());
        }
        let filters = self.filters.checked().map_err(|e| e.to_string())?;
        sources
            .into_iter()
            .map(|source| {
                Ok(JobSpec {
                    selection: Selection {
                        source: source.normalized().map_err(|e| e.to_string())?,
                        filters,
                    },
                    quality: self.quality,
                    format: self.format,
                    package: self.package,
                    upload: self.upload,
                    resync: Resync::KeepOr(None),
                })
            })
            .collect()
    }
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

/// Creates or picks up each job, exactly as `POST /jobs` would; a job
/// paused earlier (say, for a full disk) is resumed and its failed images are
/// re-queued, since the user is asking for them now.
pub async fn prepare_jobs(store: &Store, specs: &[JobSpec]) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    for spec in specs {
        let submitted = store.submit_job(spec, now_ms()).await?;
        let job = submitted.job();
        if spec.upload.is_some() {
            store.enable_upload(job.id, now_ms()).await?;
        }
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

/// Runs the engine until every job of `specs` has ended or `shutdown` fires.
pub async fn download(
    settings: &Settings,
    token: Secret,
    specs: &[JobSpec],
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<RunEnd> {
    let _lock = lock_data_dir(settings)?;
    let ctx = engine_context(settings, token).await?;
    let job_ids = prepare_jobs(&ctx.store, specs).await?;
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
    let uploads: Vec<i64> = job_ids
        .iter()
        .zip(specs)
        .filter(|(_, spec)| spec.upload.is_some())
        .map(|(id, _)| *id)
        .collect();
    if end != RunEnd::Archived || uploads.is_empty() {
        return Ok(end);
    }
    upload_after(settings, &ctx.store, &uploads, shutdown).await
}

/// `--upload-ia`: the archived jobs' upload, until every file is confirmed
/// (`Archived`), it pauses or fails (`SomeFailed`), or `shutdown` fires.
async fn upload_after(
    settings: &Settings,
    store: &Arc<Store>,
    job_ids: &[i64],
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<RunEnd> {
    use crate::upload::{command, run::UploadEnd};
    let uploader = command::uploader(settings, store.clone())?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = command::run_tracks(&uploader, job_ids, &cancel);
    let end = tokio::select! {
        end = run => end?,
        () = shutdown => UploadEnd::Interrupted,
    };
    Ok(match end {
        UploadEnd::Confirmed => RunEnd::Archived,
        UploadEnd::Paused(message) | UploadEnd::Failed(message) => {
            eprintln!("upload to the Internet Archive stopped: {message}");
            RunEnd::SomeFailed
        }
        UploadEnd::Interrupted => RunEnd::Interrupted,
    })
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
    let who = format!("{} [{}]", job.selection, job.quality);
    if job.state == JobState::Done && job.counts.discovered == 0 {
        return format!(
            "{who}: no images found (unknown source, or nothing matches the filters); nothing archived"
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
