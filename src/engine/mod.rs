//! The engine: enumerators fill the queue, a dispatcher claims due images in
//! batches and refreshes their URLs, workers download, tag and write them, and
//! a supervisor loop starts enumerators and finishes (packs) jobs.
//!
//! Each piece exposes a *step* that returns an outcome enum
//! ([`enumerate::PageOutcome`], [`worker::Outcome`]); the loops that repeat the
//! steps live apart, so tests can drive the queue one step at a time.
//!
//! The process owns one lease owner id. Rows it claimed carry it; a crash
//! leaves them `in_progress`, and [`Engine::start`] hands them back first.

pub mod dispatch;
pub mod enumerate;
pub mod finalize;
mod heartbeat;
pub mod refresh;
pub mod stalls;
pub mod worker;

use crate::archive::Archive;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::mapillary::MapillaryClient;
use crate::stats::Stats;
use crate::store::{ACTIVE, JobState, PauseReason, Store, StoreKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Everything a step needs. Cheap to clone (all shared).
#[derive(Clone)]
pub struct EngineContext {
    /// The job store: the one source of truth every step reads and writes.
    pub store: Arc<Store>,
    /// The Graph API and CDN client (its limiter shared by every task).
    pub client: MapillaryClient,
    /// Throughput for `/status` and the ETA.
    pub stats: Arc<Stats>,
    /// Woken whenever work may have appeared (a new job, a resume, a retry).
    pub wake: Arc<Notify>,
    /// Where images are stored: the local disk or a bucket, chosen once
    /// from the settings.
    pub archive: Archive,
    /// This process's lease owner id.
    pub owner: Arc<str>,
    /// Free URL refreshes in a row per image row (see [`worker::apply`]).
    pub url_strikes: Arc<Mutex<HashMap<i64, u32>>>,
    /// Permits to re-encode an image (WebP): `output.encode_threads` at once,
    /// so CPU and decoded-image memory stay bounded whatever `workers` is.
    pub encoder: Arc<tokio::sync::Semaphore>,
    /// Held while packing a collection: one packer at a time, so two jobs
    /// finishing on one collection never plan the same date twice.
    pub packer: Arc<tokio::sync::Mutex<()>>,
    /// Jobs whose last finishing attempt failed (its error is their
    /// `last_error`), so a later success knows to clear it.
    pub finish_failures: Arc<Mutex<std::collections::HashSet<i64>>>,
    /// The numbers the engine runs by.
    pub tuning: Tuning,
}

impl EngineContext {
    /// A context over `store` and `client` with fresh shared state.
    pub fn new(
        store: Arc<Store>,
        client: MapillaryClient,
        archive: Archive,
        tuning: Tuning,
    ) -> EngineContext {
        EngineContext {
            store,
            client,
            stats: Arc::new(Stats::new()),
            wake: Arc::new(Notify::new()),
            archive,
            owner: new_owner_id(),
            url_strikes: Arc::default(),
            encoder: Arc::new(tokio::sync::Semaphore::new(tuning.encode_threads.max(1))),
            packer: Arc::default(),
            finish_failures: Arc::default(),
            tuning,
        }
    }
}

/// The numbers the engine runs by, taken from [`Settings`].
#[derive(Debug, Clone)]
pub struct Tuning {
    /// `workers.count`: image tasks at once.
    pub workers: usize,
    /// How long a claim holds an image.
    pub lease: Duration,
    /// Attempts before an image fails for good.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Pause between looks for due work while idle.
    pub poll_interval: Duration,
    /// A URL expiring within this is refreshed before its download.
    pub url_refresh_margin: Duration,
    /// How long in-flight images may finish after a stop.
    pub shutdown_grace: Duration,
    /// How often a job paused for a full disk is tried again.
    pub disk_full_retry: Duration,
    /// A job with work and no progress for this long is marked stalled.
    pub stall_after: Duration,
    /// `output.webp_quality`, 0-100.
    pub webp_quality: f32,
    /// Images re-encoded at once.
    pub encode_threads: usize,
    /// `archive.skip_if_on_ia` and `archive.ia_url`.
    pub skip_if_on_ia: bool,
    /// Base URL of the Internet Archive for that check.
    pub ia_url: String,
    /// `cluster.dead_after_secs`: a daemon silent this long is rescued.
    pub dead_after: Duration,
}

impl Tuning {
    /// The engine's numbers from the settings, in the units the engine uses.
    pub fn from_settings(settings: &Settings) -> Tuning {
        Tuning {
            workers: settings.workers.count as usize,
            lease: settings.lease(),
            max_attempts: settings.retry.max_attempts,
            backoff_base: Duration::from_millis(settings.retry.backoff_base_ms),
            backoff_cap: Duration::from_millis(settings.retry.backoff_cap_ms),
            poll_interval: Duration::from_millis(settings.workers.poll_interval_ms),
            url_refresh_margin: Duration::from_secs(settings.mapillary.url_refresh_margin_secs),
            shutdown_grace: Duration::from_secs(settings.workers.shutdown_grace_secs),
            disk_full_retry: Duration::from_secs(10),
            stall_after: Duration::from_secs(settings.jobs.stall_after_secs),
            webp_quality: settings.output.webp_quality as f32,
            encode_threads: settings.output.encode_threads(),
            skip_if_on_ia: settings.archive.skip_if_on_ia,
            ia_url: settings.archive.ia_url.clone(),
            dead_after: Duration::from_secs(settings.cluster.dead_after_secs),
        }
    }
}

/// This machine's name (for lock files and the daemons table), or
/// `unknown-host`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A fresh lease owner id for this process: pid plus randomness, so two
/// processes (or two runs of one pid) never share one.
pub fn new_owner_id() -> Arc<str> {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>()).into()
}

/// A running engine. Call [`Engine::shutdown`] to stop it gracefully;
/// dropping it aborts every task at once (the `JoinSet` aborts on drop), which
/// loses nothing but the in-flight downloads.
pub struct Engine {
    ctx: EngineContext,
    cancel: CancellationToken,
    abort: CancellationToken,
    tasks: JoinSet<()>,
}

impl Engine {
    /// Recovers from any earlier crash, then starts the supervisor, the
    /// dispatcher and the workers.
    pub async fn start(ctx: EngineContext) -> anyhow::Result<Engine> {
        // On SQLite this process is the only one: whatever is in flight was
        // left by a crash. On a shared PostgreSQL queue in-flight rows are
        // other daemons' live work; a dead daemon's are rescued by the live
        // ones once its heartbeat stops (see `heartbeat`).
        let sole_engine = ctx.store.kind() == StoreKind::Sqlite;
        if sole_engine {
            let reset = ctx.store.reset_in_flight(now_ms()).await?;
            if reset > 0 {
                info!(
                    images = reset,
                    "handed back images left in flight by an earlier run"
                );
            }
        }
        // A bucket has no partial objects (an upload is whole or absent),
        // but its spool (this data dir's own) may hold a half-built tar. A
        // local archive shared by several daemons may hold their `.part`
        // files: left alone (a crashed one's is replaced when its image is
        // written again).
        let local_root = ctx
            .archive
            .own_partial_files(sole_engine)
            .map(|root| root.to_path_buf());
        let swept = match local_root {
            Some(root) => {
                tokio::task::spawn_blocking(move || crate::archive::remove_part_files(&root))
                    .await??
            }
            None => 0,
        };
        if swept > 0 {
            info!(
                files = swept,
                "removed partial files left by an earlier run"
            );
        }
        ctx.store.heartbeat(&daemon_info(&ctx), now_ms()).await?;
        resume_token_paused_jobs(&ctx).await?;
        let hour = crate::stats::history_start_ms(now_ms());
        ctx.stats
            .seed_history(&ctx.store.finished_by_minute(hour).await?);
        let cancel = CancellationToken::new();
        let abort = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let queue = dispatch::WorkQueue::new(ctx.tuning.workers);
        tasks.spawn(heartbeat::run(ctx.clone(), cancel.clone()));
        tasks.spawn(supervise(ctx.clone(), cancel.clone()));
        tasks.spawn(dispatch::run(ctx.clone(), queue.clone(), cancel.clone()));
        for index in 0..ctx.tuning.workers {
            tasks.spawn(worker::run(
                ctx.clone(),
                index,
                queue.clone(),
                cancel.clone(),
                abort.clone(),
            ));
        }
        Ok(Engine {
            ctx,
            cancel,
            abort,
            tasks,
        })
    }

    /// Stops claiming, lets in-flight images finish within the grace period,
    /// then aborts the rest (their rows are handed back, their `.part` files
    /// removed), and leaves the database consistent.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.ctx.wake.notify_waiters();
        let grace = self.ctx.tuning.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                ?grace,
                "in-flight images did not finish within the grace period; abandoning them"
            );
            self.abort.cancel();
            while self.tasks.join_next().await.is_some() {}
        }
        // Anything still marked ours (a queued claim nobody started) goes back.
        match self
            .ctx
            .store
            .hand_back_leases_of(&self.ctx.owner, now_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(images = n, "handed back claimed images at shutdown"),
            Err(e) => warn!(error = %e, "could not hand back claimed images"),
        }
        if let Err(e) = self.ctx.store.forget_daemon(&self.ctx.owner).await {
            debug!(error = %e, "could not remove this daemon's heartbeat row; it ages out");
        }
    }
}

/// How often the supervisor folds PostgreSQL's counter deltas.
const FOLD_INTERVAL: Duration = Duration::from_secs(5);

/// How this daemon announces itself in the daemons table.
fn daemon_info(ctx: &EngineContext) -> crate::store::DaemonInfo {
    crate::store::DaemonInfo {
        id: ctx.owner.to_string(),
        host: host_name(),
        workers: ctx.tuning.workers as u32,
    }
}

/// Starts enumerators for jobs that need one, finishes (and packs) jobs whose
/// queue has drained, and retries jobs paused for a full disk.
async fn supervise(ctx: EngineContext, cancel: CancellationToken) {
    let running: Arc<Mutex<HashMap<i64, CancellationToken>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut last_disk_retry = tokio::time::Instant::now();
    let mut last_stall_check = tokio::time::Instant::now();
    let mut last_fold = tokio::time::Instant::now();
    loop {
        // PostgreSQL's counter deltas onto the job rows, so reads stay
        // O(jobs) (SQLite keeps its counters there already: a no-op). The
        // heartbeat has a task of its own (`heartbeat::run`).
        if last_fold.elapsed() >= FOLD_INTERVAL {
            last_fold = tokio::time::Instant::now();
            if let Err(e) = ctx.store.fold_counts().await {
                warn!(error = %e, "could not fold the job counters");
            }
        }
        if let Err(e) = supervise_once(&ctx, &running, &mut tasks, &cancel).await {
            warn!(error = %e, "supervisor step failed");
        }
        if last_disk_retry.elapsed() >= ctx.tuning.disk_full_retry {
            last_disk_retry = tokio::time::Instant::now();
            if let Err(e) = resume_disk_full_jobs(&ctx).await {
                warn!(error = %e, "could not retry jobs paused for a full disk");
            }
        }
        if last_stall_check.elapsed() >= stalls::check_interval(ctx.tuning.stall_after) {
            last_stall_check = tokio::time::Instant::now();
            if let Err(e) = stalls::check(&ctx).await {
                warn!(error = %e, "could not check jobs for lack of progress");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ctx.wake.notified() => {}
            _ = tokio::time::sleep(ctx.tuning.poll_interval) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Enumerators stop at the next page boundary; a page is one transaction.
    if let Ok(map) = running.lock() {
        map.values().for_each(CancellationToken::cancel);
    }
    while tasks.join_next().await.is_some() {}
}

async fn supervise_once(
    ctx: &EngineContext,
    running: &Arc<Mutex<HashMap<i64, CancellationToken>>>,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for job in ctx.store.start_due_resyncs(now_ms()).await? {
        info!(
            job,
            "scheduled re-sync: listing the job's source again for new images"
        );
    }
    let jobs = ctx.store.jobs_in_states(ACTIVE).await?;
    for job in jobs {
        let drained = job.counts.pending == 0 && job.counts.in_progress == 0;
        if !job.enumeration_complete || drained {
            // One task per job at a time: its enumerator, or its finishing
            // (which packs, and may take minutes on a big collection).
            if running
                .lock()
                .map_err(|_| anyhow::anyhow!("job task map poisoned"))?
                .contains_key(&job.id)
            {
                continue;
            }
            // One process at a time in the whole cluster: on a shared queue
            // another daemon may hold the job's task.
            let Some(task) = ctx
                .store
                .take_job_task(job.id, &ctx.owner, job_task_ttl(ctx), now_ms())
                .await?
            else {
                continue;
            };
            let token = cancel.child_token();
            running
                .lock()
                .map_err(|_| anyhow::anyhow!("job task map poisoned"))?
                .insert(job.id, token.clone());
            let ctx = ctx.clone();
            let running = running.clone();
            let enumerate = !job.enumeration_complete;
            tasks.spawn(async move {
                let work = async {
                    if enumerate {
                        enumerate::run(&ctx, task.clone(), token.clone()).await;
                    } else {
                        finish(&ctx, job.id, &task, &token).await;
                    }
                };
                tokio::select! {
                    () = work => {}
                    () = hold_job_task(&ctx, &task) => {
                        warn!(job = job.id, "lost the lease on the job's task (another daemon took it over): stopping here");
                        token.cancel();
                    }
                }
                if let Err(e) = ctx.store.release_job_task(&task).await {
                    debug!(job = job.id, error = %e, "could not release the job's task lease; it expires");
                }
                if let Ok(mut map) = running.lock() {
                    map.remove(&job.id);
                }
                ctx.wake.notify_waiters();
            });
        } else if job.state == JobState::Enumerating {
            // A crash between the last page and its state change.
            ctx.store
                .transition_job(
                    job.id,
                    &[JobState::Enumerating],
                    JobState::Downloading,
                    now_ms(),
                )
                .await?;
        }
    }
    Ok(())
}

/// How long a job's task lease lasts unless renewed: how soon the cluster
/// takes over a dead daemon's enumeration or finishing.
fn job_task_ttl(ctx: &EngineContext) -> Duration {
    ctx.tuning.lease.min(Duration::from_secs(60))
}

/// Renews the job's task lease every third of its life; returns when it is
/// lost (taken over), or could not be renewed for a whole lease (the
/// database unreachable: another daemon may take it over from then on).
async fn hold_job_task(ctx: &EngineContext, task: &crate::store::JobTask) {
    let ttl = job_task_ttl(ctx);
    hold_lease(ttl, || ctx.store.renew_job_task(task, ttl, now_ms())).await;
    warn!(job = task.job_id, "lost the job's task lease");
}

/// Renews a lease of `ttl` with `renew` every third of its life; returns
/// when it is lost (`renew` said `false`), or once half of it passed since
/// the last renewal that took (the database unreachable: stop with half the
/// lease to spare rather than work on past it).
async fn hold_lease<F, R>(ttl: Duration, renew: R)
where
    R: Fn() -> F,
    F: std::future::Future<Output = crate::store::StoreResult<bool>>,
{
    // When the last renewal that took was sent: the lease runs from then
    // by the database's clock, so that is what the margin counts from.
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = tokio::time::Instant::now();
        // Bounded: a half-open connection must not hold this loop (and the
        // task it guards) past the lease.
        match tokio::time::timeout(ttl / 3, renew()).await {
            Ok(Ok(true)) => last_renewed = sent,
            Ok(Ok(false)) => return,
            Ok(Err(e)) => warn!(error = %e, "could not renew a lease"),
            Err(_) => warn!("renewing a lease timed out"),
        }
        // Stop with half the lease to spare rather than work on past it.
        if last_renewed.elapsed() >= ttl / 2 {
            return;
        }
    }
}

/// How long a job whose finishing failed waits before it is tried again, at
/// most: `retry.backoff_cap_ms` when that is shorter.
const FINISH_RETRY: Duration = Duration::from_secs(30);

/// Finishes a drained job. A failure (say, an unwritable collection folder)
/// goes to the job's `last_error` and is retried after [`FINISH_RETRY`] (or
/// the backoff cap); it never holds up the other jobs.
///
/// Shutdown does not wait for it: packing a big collection can take minutes
/// (or hang on a stuck disk), and every packing step is crash-safe, so the
/// step is dropped where it stands and the next start finishes it.
async fn finish(
    ctx: &EngineContext,
    job_id: i64,
    task: &crate::store::JobTask,
    cancel: &CancellationToken,
) {
    let finished = tokio::select! {
        _ = cancel.cancelled() => {
            info!(job = job_id, "shutting down mid-finishing; the next start finishes the job");
            return;
        }
        finished = finalize::finish_job(ctx, job_id, task) => finished,
    };
    let e = match finished {
        Ok(finished) => {
            // The error a failed finishing recorded is over once it finishes.
            let failed_before = finished
                && ctx
                    .finish_failures
                    .lock()
                    .is_ok_and(|mut set| set.remove(&job_id));
            if failed_before && let Err(e) = ctx.store.set_job_error(job_id, None, now_ms()).await {
                warn!(job = job_id, error = %e, "could not clear the finishing error");
            }
            return;
        }
        Err(e) => e,
    };
    if let Ok(mut set) = ctx.finish_failures.lock() {
        set.insert(job_id);
    }
    let retry = FINISH_RETRY.min(ctx.tuning.backoff_cap);
    let message = format!(
        "could not finish the job (tried again every {} s): {e:#}",
        retry.as_secs().max(1)
    );
    warn!(job = job_id, error = %message, "finishing failed");
    if let Err(e) = ctx
        .store
        .set_job_error(job_id, Some(&message), now_ms())
        .await
    {
        warn!(job = job_id, error = %e, "could not record the error");
    }
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(retry) => {}
    }
}

/// Resumes jobs paused for a full disk once twice the reserve is free again.
async fn resume_disk_full_jobs(ctx: &EngineContext) -> anyhow::Result<()> {
    // With a bucket, what fills is the spool (tars are built there).
    let root = ctx.archive.local_root().to_path_buf();
    let needed = ctx.archive.reserve().saturating_mul(2);
    let room =
        tokio::task::spawn_blocking(move || crate::archive::ensure_room(&root, 0, needed)).await?;
    if room.is_err() {
        return Ok(());
    }
    for id in ctx.store.jobs_paused_for(PauseReason::DiskFull).await? {
        info!(job = id, "retrying a job paused for a full disk");
        ctx.store
            .reactivate_job(id, &[JobState::Paused], now_ms())
            .await?;
        ctx.wake.notify_waiters();
    }
    Ok(())
}

/// At start: jobs paused only because Mapillary rejected the token go back
/// to work, since the user restarting the daemon has likely fixed the token.
/// If it is still rejected, each pauses again at its first API call.
async fn resume_token_paused_jobs(ctx: &EngineContext) -> anyhow::Result<()> {
    for id in ctx
        .store
        .jobs_paused_for(PauseReason::TokenRejected)
        .await?
    {
        let resumed = ctx
            .store
            .reactivate_job(id, &[JobState::Paused], now_ms())
            .await?;
        if resumed.is_some() {
            info!(
                job = id,
                "resuming a job paused for a rejected token: the token is checked again at its next API call"
            );
        }
    }
    Ok(())
}
