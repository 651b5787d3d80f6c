//! An HTTP server on a tokio task of its own, stopped gracefully through a
//! cancellation token: how tests and benches run the daemon's router
//! (`api::bind(..)` + `HttpServer::serve(token)`) without the engine.

use std::future::Future;
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server. Dropping it leaves the server running until the runtime
/// ends; `stop` shuts it down.
pub struct ServerTask {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServerTask {
    /// Spawns `serve(token)` for a server bound at `addr`; `serve` must stop
    /// once the token is cancelled, e.g.
    /// `ServerTask::spawn(server.local_addr, |stop| server.serve(stop))`.
    pub fn spawn<F>(addr: SocketAddr, serve: impl FnOnce(CancellationToken) -> F) -> ServerTask
    where
        F: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(shutdown.clone()));
        ServerTask {
            addr,
            shutdown,
            task,
        }
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels the token and waits for the server to finish; panics if its
    /// task panicked, returns what `serve` returned.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.task.await.expect("the server task panicked")
    }
}
