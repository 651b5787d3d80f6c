//! The HTTP server under the router: our own accept loop over hyper's
//! HTTP/1.1 connection, so the limits a long-lived service needs are ours:
//!
//! - **header-read timeout**: a connection that has not sent a complete
//!   request head within `api.header_read_timeout_secs` is closed; that
//!   covers idle connections (the timer starts when the connection is ready
//!   for a request, whether or not a byte came) and slowloris clients;
//! - **request timeout**: a request (its body included) that takes longer
//!   than `api.request_timeout_secs` is answered 408 and dropped;
//! - **write timeout**: an answer the client leaves unread for
//!   `api.write_timeout_secs` closes the connection (a client pipelining
//!   requests it never reads would otherwise hold it for ever);
//! - **connection age**: at `api.max_connection_age_secs` a connection is
//!   closed after its request in flight;
//! - **connection cap**: at most `api.max_connections` connections at once,
//!   at most `api.max_connections_per_ip` from one address (more are
//!   answered 429 and closed). When every slot is taken, the longest-idle
//!   connection is closed to make room (see `connections`), so `/healthz`
//!   answers at once even when idle sockets hold every other slot; with
//!   every connection busy, the next waits in the kernel's accept queue;
//! - graceful shutdown: stop accepting, let requests in flight finish.

use crate::api::connections::{Connection, Table, WriteTimeout};
use crate::api::error::ApiError;
use crate::config::HttpLimits;
use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown (or a connection past its age) waits for requests in
/// flight to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// What a connection over the per-address cap is told before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
content-length: 51\r\nconnection: close\r\n\r\n{\"error\":\"too many connections from this address\"}\n";

/// A bound but not yet serving HTTP server; `local_addr` is the real port,
/// which matters when binding port 0.
pub struct HttpServer {
    /// The address it is bound to.
    pub local_addr: SocketAddr,
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
}

/// Binds `addr` for `app`.
pub async fn bind(
    addr: SocketAddr,
    app: Router,
    limits: HttpLimits,
) -> std::io::Result<HttpServer> {
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
        let (listener, app, limits) = (self.listener, self.app, self.limits);
        tracing::info!(
            addr = %self.local_addr,
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_connections_per_ip,
            "HTTP API listening"
        );
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let table = Table::new(limits.max_connections_per_ip);
        let tasks = TaskTracker::new();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(connection) = table.admit(peer.ip()) else {
                refuse_over_cap(tcp, peer);
                continue;
            };
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = take_slot(&slots, &table) => slot,
            };
            let served = Served {
                tcp,
                peer,
                app: app.clone(),
                limits,
                connection,
                shutdown: shutdown.clone(),
            };
            tasks.spawn(async move {
                served.run().await;
                drop(slot);
            });
        }
        drop(listener);
        drain(tasks).await;
        Ok(())
    }
}

/// An [`HttpServer`] serving on a thread of its own
/// ([`HttpServer::spawn_own_thread`]).
pub struct OwnThread {
    done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
}

impl OwnThread {
    /// Waits for the server to end (once its shutdown token is cancelled
    /// and the requests in flight have drained).
    pub async fn join(self) -> std::io::Result<()> {
        self.done
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the HTTP server's thread panicked")))
    }
}

impl HttpServer {
    /// Serves on an OS thread of its own, with a single-threaded runtime of
    /// its own, until `shutdown` is cancelled (see [`HttpServer::serve`]).
    ///
    /// Why: the engine's tasks (pages parsed and inserted while a job is
    /// enumerated, images tagged and hashed) run on the main runtime's few
    /// threads and never yield mid-step, and every database answer is handed
    /// back through a task spawned there. A request served there queued
    /// behind all of it: `/status` p99 was 26 ms while a 1,000,000-image job
    /// was enumerated against a p50 under 2 ms (`cargo bench --bench
    /// status_load`). On its own thread the kernel schedules the API beside
    /// the engine instead of after it.
    pub fn spawn_own_thread(self, shutdown: CancellationToken) -> std::io::Result<OwnThread> {
        let HttpServer {
            local_addr,
            listener,
            app,
            limits,
        } = self;
        // A tokio listener belongs to the runtime that made it: it moves
        // to the new one as a std listener.
        let listener = listener.into_std()?;
        let (finished, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("mld-http".into())
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        let served = runtime.block_on(async move {
                            let listener = TcpListener::from_std(listener)?;
                            let server = HttpServer {
                                local_addr,
                                listener,
                                app,
                                limits,
                            };
                            server.serve(shutdown).await
                        });
                        // Connections have drained: what is left (a
                        // connection being handed back to a pool) may go.
                        runtime.shutdown_timeout(Duration::from_secs(1));
                        served
                    });
                let _ = finished.send(served);
            })?;
        Ok(OwnThread { done })
    }
}

/// Waits for the connections (told to shut down gracefully) to end.
async fn drain(tasks: TaskTracker) {
    tasks.close();
    if tokio::time::timeout(DRAIN + Duration::from_secs(1), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?DRAIN,
            "HTTP connections still open after the drain period; closing them"
        );
    }
}

/// A free slot; when there is none, the longest-idle connection is closed
/// to free one. With every connection busy, waits for one to end.
async fn take_slot(slots: &Arc<Semaphore>, table: &Table) -> OwnedSemaphorePermit {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return slot;
    }
    table.evict_oldest_idle();
    slots
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed")
}

/// Tells a client over the per-address cap so (best effort, never waiting)
/// and closes.
fn refuse_over_cap(tcp: TcpStream, peer: SocketAddr) {
    tracing::debug!(%peer, "refused a connection: too many from this address");
    let _ = tcp.try_write(TOO_MANY);
}

/// One accepted connection and what serving it needs.
struct Served {
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    connection: Arc<Connection>,
    shutdown: CancellationToken,
}

impl Served {
    /// Serves the connection until the client closes it, it times out, it
    /// reaches its age, it is evicted, or the server shuts down.
    async fn run(self) {
        let Served {
            tcp,
            peer,
            app,
            limits,
            connection,
            shutdown,
        } = self;
        // Small JSON answers: do not let Nagle hold them back.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let io = TokioIo::new(WriteTimeout::new(tcp, limits.write_timeout));
        let tracked = connection.clone();
        let app = TowerToHyperService::new(app);
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                // The peer, for per-address logging (failed authentication).
                request.extensions_mut().insert(ConnectInfo(peer));
                let busy = tracked.request_started();
                let answer = app.call(request);
                async move {
                    let response = answer.await;
                    drop(busy);
                    response
                }
            });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            .serve_connection(io, service);
        let mut served = std::pin::pin!(served);
        let age = tokio::time::sleep(limits.max_connection_age);
        tokio::select! {
            result = served.as_mut() => return log_end(result),
            // Idle (no request in flight): closing loses nothing.
            _ = connection.evicted().cancelled() => return,
            _ = shutdown.cancelled() => {}
            _ = age => {}
        }
        served.as_mut().graceful_shutdown();
        if let Ok(result) = tokio::time::timeout(DRAIN, served).await {
            log_end(result);
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_429_declares_its_body_length() {
        let text = std::str::from_utf8(TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
    }
}
