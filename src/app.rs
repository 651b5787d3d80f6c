//! Wiring: builds the store, the client, the engine and the HTTP server from
//! [`Settings`], and runs them until a shutdown signal.
//!
//! [`Application::build`] binds the listener itself and reports the real
//! address, so tests run the whole daemon on `127.0.0.1:0`;
//! [`Application::spawn`] runs it on a task of its own, for a program (or a
//! test) that embeds the daemon.

use crate::api::{self, AppState, HttpServer};
use crate::archive::Archive;
use crate::archive::bucket::Bucket;
use crate::config::Settings;
use crate::engine::{Engine, EngineContext, Tuning};
use crate::mapillary::SharedBudget;
use crate::mapillary::{ClientSettings, MapillaryClient};
use crate::secret::Secret;
use crate::store::{ApiSlot, PgClock, Store};
use anyhow::Context;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Read connections reserved for the HTTP API on SQLite: `/status` reads
/// three things at once (see `api::status`), and one is left for the page's
/// other requests.
const API_READERS: u32 = 4;

/// Name of the lock file that keeps two engines off one data dir.
const LOCK_FILE: &str = "mapillary.lock";

/// Takes the data dir's exclusive lock. On SQLite two engines on one
/// database would hand back each other's in-flight images at startup; on
/// PostgreSQL many daemons share the queue, but one data dir (its spool,
/// its `.part` files) still belongs to one daemon per host, so the lock is
/// per host there (a shared filesystem holds one per machine).
/// `status` needs no lock.
pub fn lock_data_dir(settings: &Settings) -> anyhow::Result<File> {
    let data_dir = &settings.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let shared_queue = settings
        .database_url()
        .map_err(anyhow::Error::msg)?
        .is_some();
    let path = if shared_queue {
        data_dir.join(format!("mapillary.{}.lock", crate::engine::host_name()))
    } else {
        data_dir.join(LOCK_FILE)
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another mapillary-downloader is already running on {} (lock file {})",
            data_dir.display(),
            path.display()
        )
    })?;
    Ok(file)
}

/// Builds the client settings from the `[mapillary]` section.
pub fn client_settings(settings: &Settings) -> anyhow::Result<ClientSettings> {
    Ok(ClientSettings::from_config(&settings.mapillary)?)
}

/// The engine's shared context, ready to start.
pub async fn engine_context(settings: &Settings, token: Secret) -> anyhow::Result<EngineContext> {
    let archive = open_archive(settings).await?;
    let store = open_store(settings).await?;
    store
        .rebase_archive(&settings.archive_dir())
        .await
        .context("rebasing stored image paths onto the archive directory")?;
    let store = Arc::new(store);
    let mut client = MapillaryClient::new(client_settings(settings)?, token)?;
    if store.shares_api_budget() {
        client = client.with_shared_budget(Arc::new(QueueBudget(store.clone())));
    }
    Ok(EngineContext::new(
        store,
        client,
        archive,
        Tuning::from_settings(settings),
    ))
}

/// The API budget of a shared queue: every daemon's calls take their slot
/// in the database. When the database does not answer, calls go on at this
/// daemon's own pace (its limiter) rather than stop: a brief overshoot of
/// the cluster budget beats a cluster that cannot list while PostgreSQL
/// restarts, and the API's own rate limits still hold everyone.
struct QueueBudget(Arc<Store>);

impl SharedBudget for QueueBudget {
    fn take_slot(
        &self,
        interval: std::time::Duration,
        tolerance: std::time::Duration,
    ) -> futures_util::future::BoxFuture<'_, Result<std::time::Duration, std::time::Duration>> {
        Box::pin(async move {
            match self.0.take_api_slot(interval, tolerance).await {
                Ok(ApiSlot::Now) => Ok(std::time::Duration::ZERO),
                Ok(ApiSlot::After(wait)) => Ok(wait),
                Ok(ApiSlot::Held(hold)) => Err(hold),
                Err(e) => {
                    tracing::warn!(error = %e, "the shared API budget did not answer; going on at this daemon's pace");
                    Ok(std::time::Duration::ZERO)
                }
            }
        })
    }

    fn hold(&self, pause: std::time::Duration) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.0.hold_api_calls(pause).await {
                tracing::warn!(error = %e, "could not share a rate-limit hold with the other daemons");
            }
        })
    }
}

/// The job store `storage.database_url` names: PostgreSQL (on the database's
/// clock), or SQLite under the data dir. Never names the URL in an error: it
/// may hold a password.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    match settings.database_url().map_err(anyhow::Error::msg)? {
        Some(url) => {
            let store = Store::open_postgres(url.expose().trim(), PgClock::Database)
                .await
                .context("cannot open the PostgreSQL queue (storage.database_url)")?;
            info!("job queue on PostgreSQL, shared with any other daemon on it");
            Ok(store)
        }
        None => Store::open(&settings.database_path())
            .await
            .with_context(|| {
                format!(
                    "cannot open the database {}",
                    settings.database_path().display()
                )
            }),
    }
}

/// The archive the settings name: the bucket of `storage.archive_url`
/// (checked to answer with the configured credentials, its spool under the
/// data dir), or the local `<data-dir>/archive`; either keeps
/// `storage.min_free_mib` free on the disk it writes locally.
pub async fn open_archive(settings: &Settings) -> anyhow::Result<Archive> {
    let reserve = settings.storage.min_free_mib.saturating_mul(1024 * 1024);
    let Some(url) = settings.archive_url().map_err(anyhow::Error::msg)? else {
        return Ok(Archive::disk(settings.archive_dir(), reserve));
    };
    let spool = settings.storage.data_dir.join("spool");
    let bucket = Bucket::open(&url, &settings.storage.aws, spool)?;
    bucket.check_reachable().await.with_context(|| {
        format!(
            "the archive bucket {url} refused us or did not answer: check AWS_ENDPOINT_URL, AWS_REGION and \
             that the credentials may list, write and delete under the prefix"
        )
    })?;
    info!(archive = %url, "archiving into an S3-compatible bucket");
    Ok(Archive::bucket(Arc::new(bucket), reserve))
}

/// The daemon: HTTP API + engine.
pub struct Application {
    server: HttpServer,
    engine: Engine,
    _lock: File,
    /// The upload track's loop (`"upload": "ia"` jobs); stops when dropped.
    _uploads: crate::upload::daemon::UploadDaemon,
}

impl Application {
    /// Opens the store and the archive, starts the engine and binds the
    /// listener: a daemon ready to [`Application::run_until`] a signal, its address known.
    pub async fn build(settings: &Settings, token: Secret) -> anyhow::Result<Application> {
        let lock = lock_data_dir(settings)?;
        let ctx = engine_context(settings, token).await?;
        let addr = settings.listen_addr().map_err(anyhow::Error::msg)?;
        let state = AppState {
            store: Arc::new(ctx.store.for_api(API_READERS).await?),
            wake: ctx.wake.clone(),
            stats: ctx.stats.clone(),
            metrics: ctx.client.metrics().clone(),
            api_token: settings.api_token().cloned(),
            trusted_hosts: settings.trusted_hosts().into(),
            auth_failures: Default::default(),
            started: std::time::Instant::now(),
            default_resync: settings.default_resync().map_err(anyhow::Error::msg)?,
        };
        let server = api::bind(addr, api::router(state), settings.api_limits())
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let uploads = crate::upload::daemon::spawn(settings, ctx.store.clone());
        let engine = Engine::start(ctx).await?;
        Ok(Application {
            server,
            engine,
            _uploads: uploads,
            _lock: lock,
        })
    }

    /// The address the API really listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr
    }

    /// Serves until `shutdown` resolves, then stops the engine gracefully.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let stop_http = CancellationToken::new();
        // The API on a thread of its own (see `HttpServer::spawn_own_thread`).
        let server = self
            .server
            .spawn_own_thread(stop_http.clone())
            .context("starting the HTTP server's thread")?;
        shutdown.await;
        info!("shutting down: no new claims; letting in-flight images finish");
        self.engine.shutdown().await;
        stop_http.cancel();
        server.join().await.context("HTTP server")?;
        info!("shutdown complete");
        Ok(())
    }

    /// Runs the daemon on a task of its own (see [`Application::run_until`])
    /// until [`RunningApplication::stop`]. Must be called within a Tokio runtime.
    pub fn spawn(self) -> RunningApplication {
        let local_addr = self.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.run_until(shutdown.clone().cancelled_owned()));
        RunningApplication {
            local_addr,
            shutdown,
            task,
        }
    }
}

/// A daemon running on its own task. Dropping it aborts the task: no graceful
/// shutdown, like a crash (the database makes that safe); `stop` is graceful.
pub struct RunningApplication {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningApplication {
    /// The address the API really listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops gracefully, as SIGTERM does: no new claims, in-flight images
    /// finish, the HTTP server closes. Returns how the daemon ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        (&mut self.task).await.context("the application task")?
    }
}

impl Drop for RunningApplication {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM"),
        _ = int.recv() => info!("received SIGINT"),
    }
}
