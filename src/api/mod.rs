//! The HTTP control plane: JSON endpoints to submit and steer jobs, read
//! progress, probe health and scrape metrics.
//!
//! Handlers never talk to the network or hold a transaction: they read
//! counters from the store, make one conditional state change, and wake the
//! engine. The engine reacts to state, so the API needs no handle on it.

pub mod auth;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod metrics;
pub mod page;
pub mod status;
pub mod validate;

use crate::secret::Secret;
use crate::stats::Stats;
use crate::store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// Poked after every change, so idle workers and enumerators look again.
    pub wake: Arc<tokio::sync::Notify>,
    pub stats: Arc<Stats>,
    /// When set, every request but `GET /healthz` and the page (`page::PATHS`)
    /// needs `Authorization: Bearer <token>`.
    pub api_token: Option<Secret>,
    /// Process start, for the uptime metric.
    pub started: Instant,
    /// `jobs.resync_every`: a new job's re-sync interval when its post does
    /// not say.
    pub default_resync: Option<std::time::Duration>,
}

impl AppState {
    /// Wakes both the engine tasks already waiting and the next one to wait,
    /// so a change made between two waits is not missed.
    pub(crate) fn wake_engine(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(status::healthz))
        .route("/status", get(status::status))
        .route("/metrics", get(metrics::metrics))
        .route("/jobs", get(jobs::list_jobs).post(jobs::create_job))
        .route("/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/jobs/{id}/pause", post(jobs::pause_job))
        .route("/jobs/{id}/resume", post(jobs::resume_job))
        .route("/jobs/{id}/retry", post(jobs::retry_job))
        .merge(page::routes())
        // Must follow the routes: it is installed on each one.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ))
        .layer(DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
        .with_state(state)
}

/// A bound but not yet serving HTTP server; `local_addr` is the real port,
/// which matters when binding port 0.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    listener: TcpListener,
    app: Router,
}

pub async fn bind(addr: SocketAddr, state: AppState) -> std::io::Result<HttpServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    Ok(HttpServer {
        local_addr,
        listener,
        app: router(state),
    })
}

impl HttpServer {
    /// Serves until `shutdown` is cancelled, then stops accepting and lets
    /// requests in flight finish.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // Small JSON answers: do not let Nagle hold them back.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY");
            }
        });
        tracing::info!(addr = %self.local_addr, "HTTP API listening");
        axum::serve(listener, self.app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}
