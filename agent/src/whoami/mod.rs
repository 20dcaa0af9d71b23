//! `skein whoami`: a diagnostic server to run as a service's task, like traefik/whoami.
//! It tells a client which task answered: hostname (the task ID), task, service, node,
//! the namespace's addresses and the client's address as the socket sees it, then echoes
//! the request.
//!
//! - HTTP/1.1 on TCP (hyper, bounded by [`crate::http_server`]): any request gets `200 OK`
//!   and a `text/plain` body of lines `Hostname:`, `Task:`, `Service:`, `Node:`, one `IP:`
//!   per non-loopback IPv4 address, `RemoteAddr:`, then the request line and the headers
//!   (names title-cased: `User-Agent`). Keep-alive and pipelining; `Connection: close` and
//!   HTTP/1.0 honoured; a request body (`Content-Length` or chunked, of any size) is read
//!   and dropped as it streams in. `POST /upload` ([`http::UPLOAD_PATH`]) answers the
//!   identity, `RemoteAddr:`, then `Length:` and `SHA256:` of the body, hashed as it
//!   streams in (never held): the routing mesh's upload test compares them. Malformed
//!   requests (and a missing or repeated `Host`) get 400, heads over [`MAX_HEAD`] 431,
//!   each closing the connection; a connection that sends no complete head, or stalls a
//!   body or the response, for [`IDLE_TIMEOUT`] is closed; at most [`MAX_CONNECTIONS`]
//!   are served at once.
//! - UDP (`--udp`), same port ([`udp`]): each datagram is answered with the line
//!   `Hostname: H Task: T Node: N RemoteAddr: A`, `\n`, then the payload echoed.
//!
//! On SIGTERM (or SIGINT) it stops accepting, answers the requests in flight, closes
//! keep-alive connections cleanly and exits 0, within [`SHUTDOWN_GRACE`].
//!
//! [`Whoami::run`] takes bound sockets and a shutdown future, so tests bind port 0.

mod counter;
mod http;
mod identity;
mod udp;

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use hyper::service::service_fn;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

use crate::http_server::{self, Limits};
use counter::Counter;
use identity::Identity;

/// The largest request head (request line and headers) accepted; larger gets 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// How long a connection may take to send a whole request head (or stay idle between
/// requests), or stall inside a body or a response, before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// How long requests in flight may take to finish after SIGTERM: under the agent's
/// 5 s stop grace, so whoami exits by itself (status 0) before a SIGKILL.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// `skein whoami`: answer HTTP (and UDP) with who this is.
#[derive(Args, Debug, Clone)]
#[command(after_help = "\
Every HTTP request gets 200 and text lines: Hostname, Task, Service, Node, IP (one per \
address), RemoteAddr, then the request line and headers. Request bodies (chunked or not, \
any size) are read and dropped.

POST /upload answers Length and SHA256 of the body (hashed as it streams in, never held), \
after the Hostname..RemoteAddr lines.

With --udp, each datagram is answered with one line `Hostname: H Task: T Node: N \
RemoteAddr: A` and the payload echoed after it.

With --counter (the seeds' tutorial counter), every request other than POST /upload counts \
a hit for this hostname in Redis at --redis-host and is answered with one `HOSTNAME > \
COUNT` line per task that was hit, then `RemoteAddr:`; 503 while Redis cannot be reached.")]
pub struct WhoamiArgs {
    /// The TCP (and UDP) port to listen on, on all addresses.
    #[arg(long, default_value_t = 80, env = "SKEIN_WHOAMI_PORT")]
    pub port: u16,
    /// Also answer UDP datagrams on the same port.
    #[arg(long)]
    pub udp: bool,
    /// Count every request in Redis and answer with each task's count, like the
    /// tutorial's `subicura/counter`.
    #[arg(long)]
    pub counter: bool,
    /// Where --counter finds Redis: NAME or NAME:PORT (port 6379 by default), resolved
    /// through the task's resolver.
    #[arg(long, env = "REDIS_HOST", default_value = "redis")]
    pub redis_host: String,
}

/// Entry point of `skein whoami`: listens on the port on all addresses and serves until
/// SIGINT or SIGTERM. A current-thread runtime: one core is plenty.
pub fn main(args: &WhoamiArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let port = args.port;
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .await
            .with_context(|| format!("listening on TCP port {port}"))?;
        let udp = if args.udp {
            Some(
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
                    .await
                    .with_context(|| format!("binding UDP port {port}"))?,
            )
        } else {
            None
        };
        let mut whoami = Whoami::new(Identity::from_env());
        if args.counter {
            whoami.counter = Some(Counter::new(&args.redis_host)?);
        }
        info!(
            port,
            udp = args.udp,
            counter = args.counter,
            hostname = whoami.identity.hostname,
            "whoami listening"
        );
        whoami.run(listener, udp, shutdown_signal()).await;
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            warn!(%error, "cannot handle SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The server: who it is and what it allows its clients.
#[derive(Debug, Clone)]
pub(crate) struct Whoami {
    identity: Identity,
    limits: Limits,
    /// The body lines that never change, from `Hostname:` to the last `IP:`.
    prefix: String,
    /// [`SHUTDOWN_GRACE`].
    shutdown_grace: Duration,
    /// `--counter`: requests count hits in Redis.
    counter: Option<Counter>,
}

impl Whoami {
    pub(crate) fn new(identity: Identity) -> Whoami {
        let mut prefix = format!(
            "Hostname: {}\nTask: {}\nService: {}\nNode: {}\n",
            identity.hostname, identity.task, identity.service, identity.node
        );
        for ip in &identity.ips {
            prefix.push_str(&format!("IP: {ip}\n"));
        }
        Whoami {
            identity,
            limits: Limits {
                max_connections: MAX_CONNECTIONS,
                idle_timeout: IDLE_TIMEOUT,
                max_head: MAX_HEAD,
            },
            prefix,
            shutdown_grace: SHUTDOWN_GRACE,
            counter: None,
        }
    }

    /// Replaces [`SHUTDOWN_GRACE`] (tests).
    #[cfg(test)]
    fn with_shutdown_grace(mut self, grace: Duration) -> Whoami {
        self.shutdown_grace = grace;
        self
    }

    /// Replaces [`IDLE_TIMEOUT`] (tests).
    #[cfg(test)]
    fn with_idle_timeout(mut self, idle_timeout: Duration) -> Whoami {
        self.limits.idle_timeout = idle_timeout;
        self
    }

    /// Replaces [`MAX_CONNECTIONS`] (tests).
    #[cfg(test)]
    fn with_max_connections(mut self, max_connections: usize) -> Whoami {
        self.limits.max_connections = max_connections;
        self
    }

    /// Serves HTTP on `listener` (and UDP on `udp`) until `shutdown` resolves, then stops
    /// gracefully (SIGTERM, or a drained task being stopped): no new connections, requests
    /// in flight answered, keep-alive connections closed cleanly; returns once they are
    /// all done, or after the shutdown grace, before the agent's SIGKILL.
    pub(crate) async fn run(
        self,
        listener: TcpListener,
        udp: Option<UdpSocket>,
        shutdown: impl Future<Output = ()>,
    ) {
        let this = Arc::new(self);
        let udp_loop = async {
            match udp {
                Some(socket) => udp::serve(&this.identity, socket).await,
                None => std::future::pending().await,
            }
        };
        let shutdown = async {
            shutdown.await;
            info!("whoami shutting down: finishing the requests in flight");
        };
        let http = http_server::serve_until(
            listener,
            this.limits,
            |remote: SocketAddr| {
                let this = this.clone();
                service_fn(move |request| {
                    let this = this.clone();
                    async move { this.answer(remote, request).await }
                })
            },
            shutdown,
            this.shutdown_grace,
        );
        // UDP answers until HTTP is done: a datagram has no connection to finish.
        tokio::select! {
            () = http => info!("whoami stopped"),
            () = udp_loop => {}
        }
    }
}

#[cfg(test)]
mod tests;
