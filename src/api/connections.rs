//! Bookkeeping for the connections the server holds: how many per client
//! address, which are idle, and a socket wrapper that gives writes a
//! deadline.
//!
//! Why eviction: the connection cap must bound file descriptors, but a cap
//! alone lets anyone who reaches the port hold every slot with idle sockets
//! (the page's assets need no token), and then `/healthz` waits behind them
//! for the header-read timeout, longer than a container probe waits. So when
//! every slot is taken, the connection idle for longest (no request in
//! flight) is closed to make room; a connection serving a request is never
//! evicted.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// One open connection as the table sees it.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    ip: IpAddr,
    /// Requests being served on it now.
    busy: AtomicUsize,
    /// When it last started or finished a request (ms since the table's epoch).
    last_active_ms: AtomicU64,
    /// Cancelled when the table evicts it.
    evicted: CancellationToken,
    table: Arc<Table>,
}

impl Connection {
    /// Cancelled when the connection is to be closed to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// Marks a request in flight until the guard drops.
    pub fn request_started(self: &Arc<Connection>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy(self.clone())
    }

    fn touch(&self) {
        self.last_active_ms
            .store(self.table.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.table.remove(self.id, self.ip);
    }
}

/// A request in flight on a connection (see [`Connection::request_started`]).
pub struct Busy(Arc<Connection>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every open connection, and counts per client address.
#[derive(Debug)]
pub struct Table {
    epoch: Instant,
    per_ip_cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    per_ip: HashMap<IpAddr, usize>,
    open: HashMap<u64, std::sync::Weak<Connection>>,
}

impl Table {
    /// An empty table letting each address hold `per_ip_cap` connections.
    pub fn new(per_ip_cap: usize) -> Arc<Table> {
        Arc::new(Table {
            epoch: Instant::now(),
            per_ip_cap: per_ip_cap.max(1),
            inner: Mutex::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection from `ip`; `None` when that address already
    /// holds `max_connections_per_ip`.
    pub fn admit(self: &Arc<Table>, ip: IpAddr) -> Option<Arc<Connection>> {
        let mut inner = self.lock();
        let count = inner.per_ip.entry(ip).or_insert(0);
        if *count >= self.per_ip_cap {
            return None;
        }
        *count += 1;
        inner.next_id += 1;
        let connection = Arc::new(Connection {
            id: inner.next_id,
            ip,
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
            evicted: CancellationToken::new(),
            table: self.clone(),
        });
        inner
            .open
            .insert(connection.id, Arc::downgrade(&connection));
        Some(connection)
    }

    fn remove(&self, id: u64, ip: IpAddr) {
        let mut inner = self.lock();
        inner.open.remove(&id);
        if let Some(count) = inner.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                inner.per_ip.remove(&ip);
            }
        }
    }

    /// Closes the connection idle for longest (none in flight, not already
    /// evicted); `false` when every connection is serving a request.
    pub fn evict_oldest_idle(&self) -> bool {
        let inner = self.lock();
        let oldest = inner
            .open
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|c| c.busy.load(Ordering::Relaxed) == 0 && !c.evicted.is_cancelled())
            .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
        drop(inner);
        match oldest {
            Some(connection) => {
                connection.evicted.cancel();
                true
            }
            None => false,
        }
    }

    /// Connections open from `ip` (for tests and logs).
    pub fn count_for(&self, ip: IpAddr) -> usize {
        self.lock().per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// A socket whose writes fail with `TimedOut` once one has made no progress
/// for `limit`: a client that sends requests but never reads the answers
/// (the kernel's buffers full) loses its connection instead of holding it
/// for ever. Reads pass through (the header-read and request timeouts cover
/// them).
pub struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending; cleared by any progress.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteTimeout<S> {
    /// `inner`, whose writes may wait at most `limit` for the client to read.
    pub fn new(inner: S, limit: Duration) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            limit,
            deadline: None,
        }
    }

    /// Turns a pending write into an error once the deadline passed.
    fn pending_or_timed_out<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.deadline = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read its answer within the write timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        poll: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending_or_timed_out(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table capping each address at `cap`, its address 127.0.0.1 and
    /// `N` connections admitted from it.
    fn admitted<const N: usize>(cap: usize) -> (Arc<Table>, IpAddr, [Arc<Connection>; N]) {
        let table = Table::new(cap);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let connections = std::array::from_fn(|_| table.admit(ip).unwrap());
        (table, ip, connections)
    }

    #[test]
    fn the_per_address_cap_holds_and_frees() {
        let (table, ip, [a, _b]) = admitted(2);
        assert!(table.admit(ip).is_none());
        assert!(table.admit("127.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert_eq!(table.count_for(ip), 1);
        assert!(table.admit(ip).is_some());
    }

    #[test]
    fn eviction_takes_the_longest_idle_and_spares_busy_ones() {
        let (table, _, [old, busy_one, young]) = admitted(10);
        old.last_active_ms.store(0, Ordering::Relaxed);
        busy_one.last_active_ms.store(0, Ordering::Relaxed);
        young.last_active_ms.store(5, Ordering::Relaxed);
        let busy = busy_one.request_started();
        busy_one.last_active_ms.store(0, Ordering::Relaxed);
        assert!(table.evict_oldest_idle());
        assert!(old.evicted().is_cancelled());
        assert!(table.evict_oldest_idle());
        assert!(young.evicted().is_cancelled());
        assert!(!busy_one.evicted().is_cancelled());
        assert!(!table.evict_oldest_idle(), "only a busy one is left");
        drop(busy);
    }
}
