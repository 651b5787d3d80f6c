//! The HTTP server under the router: our own accept loop over hyper's
//! HTTP/1.1 connection, so the limits a long-lived service needs are ours:
//!
//! - **header-read timeout**: a connection that has not sent a complete
//!   request head within `api.header_read_timeout_secs` is closed; that
//!   covers idle connections (the timer starts when the connection is ready
//!   for a request, whether or not a byte came) and slowloris clients;
//! - **request timeout**: a request (its body included) that takes longer
//!   than `api.request_timeout_secs` is answered 408 and dropped;
//! - **connection cap**: at most `api.max_connections` connections at once;
//!   the next waits in the kernel's accept queue until one closes, so a
//!   flood can neither exhaust file descriptors nor starve `/status` of CPU;
//! - graceful shutdown: stop accepting, let requests in flight finish.

use crate::api::error::ApiError;
use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The server's limits, from `[api]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// How long shutdown waits for connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(10);

/// A bound but not yet serving HTTP server; `local_addr` is the real port,
/// which matters when binding port 0.
pub struct HttpServer {
    pub local_addr: SocketAddr,
    listener: TcpListener,
    app: Router,
    limits: Limits,
}

/// Binds `addr` for `app`.
pub async fn bind(addr: SocketAddr, app: Router, limits: Limits) -> std::io::Result<HttpServer> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_timeout,
    ));
    Ok(HttpServer {
        local_addr,
        listener,
        app,
        limits,
    })
}

impl HttpServer {
    /// Serves until `shutdown` is cancelled, then stops accepting and lets
    /// requests in flight finish (for up to ten seconds).
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let HttpServer {
            local_addr,
            listener,
            app,
            limits,
        } = self;
        tracing::info!(addr = %local_addr, max_connections = limits.max_connections, "HTTP API listening");
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        loop {
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let tcp = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Small JSON answers: do not let Nagle hold them back.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()));
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "HTTP connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?DRAIN,
                "HTTP connections still open after the drain period; closing them"
            );
        }
        Ok(())
    }
}

/// Answers 408 when a request (reading its body included) outlasts the
/// request timeout.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(format!(
            "the request took longer than {} s",
            limit.as_secs()
        ))
        .into_response(),
    }
}
