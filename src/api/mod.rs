//! The HTTP control plane: JSON endpoints to submit and steer jobs, read
//! progress, probe health and scrape metrics.
//!
//! Handlers never talk to the network or hold a transaction: they read
//! counters from the store, make one conditional state change, and wake the
//! engine. The engine reacts to state, so the API needs no handle on it.

pub mod auth;
pub mod connections;
pub mod error;
pub mod extract;
pub mod guard;
pub mod images;
pub mod jobs;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod paging;
pub mod server;
pub mod status;
pub mod validate;

use crate::secret::Secret;
use crate::stats::Stats;
use crate::store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use std::sync::Arc;
use std::time::Instant;

pub use crate::config::HttpLimits;
/// The server's limits by the name its callers (tests, benches) use.
pub type Limits = HttpLimits;
pub use server::{HttpServer, OwnThread, bind};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The job store every handler reads and writes.
    pub store: Arc<Store>,
    /// Poked after every change, so idle workers and enumerators look again.
    pub wake: Arc<tokio::sync::Notify>,
    /// Throughput for `/status`.
    pub stats: Arc<Stats>,
    /// Counters and histograms since the start, shared with the engine.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When set, every request but `GET /healthz` and the page (`page::PATHS`)
    /// needs `Authorization: Bearer <token>`.
    pub api_token: Option<Secret>,
    /// Host names (lower-case, no port) a request may name without a token
    /// besides the loopback names: the listen address and
    /// `api.allowed_hosts` (`Settings::trusted_hosts`).
    pub trusted_hosts: Arc<[String]>,
    /// When each address's last failed authentication was logged.
    pub auth_failures: Arc<auth::FailureLog>,
    /// Process start, for the uptime metric.
    pub started: Instant,
    /// `jobs.resync_every`: a new job's re-sync interval when its post does
    /// not say.
    pub default_resync: Option<std::time::Duration>,
}

impl AppState {
    /// The API over `store` alone, as tests and benches serve it: fresh
    /// stats and counters, no token, no default re-sync, no engine to wake.
    /// Override fields with struct update syntax.
    pub fn standalone(store: Arc<Store>) -> AppState {
        AppState {
            store,
            wake: Arc::default(),
            stats: Arc::new(Stats::new()),
            metrics: Arc::default(),
            api_token: None,
            trusted_hosts: Arc::new([]),
            auth_failures: Arc::default(),
            started: Instant::now(),
            default_resync: None,
        }
    }

    /// Wakes both the engine tasks already waiting and the next one to wait,
    /// so a change made between two waits is not missed.
    pub(crate) fn wake_engine(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

/// The whole HTTP surface: routes, the OpenAPI description built from them,
/// and the guard and auth layers, over `state`.
pub fn router(state: AppState) -> Router {
    let (documented, description) = utoipa_axum::router::OpenApiRouter::with_openapi(
        <openapi::ApiDoc as utoipa::OpenApi>::openapi(),
    )
    .routes(utoipa_axum::routes!(status::healthz))
    .routes(utoipa_axum::routes!(status::status))
    .routes(utoipa_axum::routes!(metrics::metrics))
    .routes(utoipa_axum::routes!(openapi::openapi_json))
    .routes(utoipa_axum::routes!(jobs::list_jobs, jobs::create_job))
    .routes(utoipa_axum::routes!(jobs::get_job, jobs::cancel_job))
    .routes(utoipa_axum::routes!(jobs::pause_job))
    .routes(utoipa_axum::routes!(jobs::resume_job))
    .routes(utoipa_axum::routes!(jobs::retry_job))
    .routes(utoipa_axum::routes!(images::list_images))
    .routes(utoipa_axum::routes!(page::index))
    .routes(utoipa_axum::routes!(page::script))
    .routes(utoipa_axum::routes!(page::style))
    .split_for_parts();
    openapi::publish(&description);
    documented
        // Must follow the routes: it is installed on each one.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ))
        .layer(DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
        // Before the token: a refused Host or Origin reaches nothing else.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check_request,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers every answer carries unless its handler set its own (the page
/// sets a Content-Security-Policy that lets it load its assets).
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    response
}
