//! The one way the agent serves HTTP/1.1 (`/metrics`, `skein whoami`): hyper drives each
//! connection; this module bounds what a client can hold. At most
//! [`Limits::max_connections`] connections are served at once (the next ones wait in the
//! listen backlog, not in memory); a request head must arrive within the idle timeout
//! and stay under [`Limits::max_head`] bytes (431 otherwise); a connection idle between
//! requests, or whose body or reads stall for the idle timeout, is closed.
//! [`serve_until`] also stops gracefully: in-flight requests answered, keep-alive
//! connections closed cleanly.

use std::{error::Error as StdError, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{body::Incoming, service::Service, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    task::JoinSet,
};
use tokio_io_timeout::TimeoutStream;
use tracing::{debug, warn};

/// What one server allows its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// How long a request head may take to arrive (from the connection's start or the end
    /// of the previous response), and how long any read or write may stall.
    pub(crate) idle_timeout: Duration,
    /// The largest request head (request line and headers), in bytes; at least 8 KiB.
    pub(crate) max_head: usize,
}

/// The smallest head limit hyper supports (its minimum read buffer).
const MIN_HEAD: usize = 8 * 1024;

/// Serves `listener` until the returned future is dropped; connections end with it.
/// `service_for` makes the service of one connection from the client's address.
pub(crate) async fn serve<F, S, B>(listener: TcpListener, limits: Limits, service_for: F)
where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_until(
        listener,
        limits,
        service_for,
        std::future::pending(),
        Duration::ZERO,
    )
    .await;
}

/// [`serve`], and once `shutdown` resolves, stops gracefully: the listener closes (new
/// connections are refused), idle keep-alive connections close, requests in flight are
/// answered (with `Connection: close`) and their connections closed; returns when all
/// are done, or after `grace`, dropping what is left.
pub(crate) async fn serve_until<F, S, B>(
    listener: TcpListener,
    limits: Limits,
    service_for: F,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_header_size(limits.max_head)
        .max_buf_size(limits.max_head.max(MIN_HEAD));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Raised on shutdown: every connection finishes what is in flight and closes.
    let (stopping, stop) = watch::channel(false);
    // Connection tasks live in this set, so they end when the server's future is dropped.
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = async {
            // A slot first: past the limit, connections wait in the kernel's backlog.
            let slot = slots.clone().acquire_owned().await;
            (slot, listener.accept().await)
        };
        let (slot, accepted) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accepted => accepted,
        };
        let Ok(slot) = slot else {
            return; // never closed
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection =
            http.serve_connection(timed(stream, limits.idle_timeout), service_for(remote));
        let mut stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // Raised once, after the last connection is spawned.
                Ok(()) = stop.changed() => {
                    // Idle: closes now; mid-request: after its response.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                debug!(%error, %remote, "connection ended");
            }
            drop(slot);
        });
        // Collect finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stopping.send(true);
    let open = connections.len();
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open,
            left = connections.len(),
            ?grace,
            "connections still open after the shutdown grace; dropping them"
        );
    }
}

/// `stream` for hyper, with reads and writes that fail once stalled for `idle_timeout`.
fn timed(
    stream: TcpStream,
    idle_timeout: Duration,
) -> TokioIo<std::pin::Pin<Box<TimeoutStream<TcpStream>>>> {
    let _ = stream.set_nodelay(true);
    let mut stream = TimeoutStream::new(stream);
    stream.set_read_timeout(Some(idle_timeout));
    stream.set_write_timeout(Some(idle_timeout));
    TokioIo::new(Box::pin(stream))
}
