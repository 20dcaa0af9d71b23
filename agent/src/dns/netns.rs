//! The server inside each endpoint namespace: a UDP socket and a TCP listener bound to
//! `127.0.0.11:53` there, as Docker's resolver has, served by one [`Listener`] per
//! namespace whose handler knows the namespace (so answers are scoped to its networks).
//!
//! A socket belongs to the network namespace it was created in, whichever thread uses it
//! later: a short-lived thread `setns`es into the namespace, binds both, and ends; tokio
//! then drives them like any other socket. Traffic to 127.0.0.11 stays on the namespace's
//! loopback (up since plumbing), so it never meets the endpoint's veth program.
//!
//! Sockets follow endpoints: opened when an endpoint is plumbed (tasks, `endpoint
//! create|attach`, `service attach`) and by the view loop for every endpoint namespace of
//! this node (an agent restart re-opens them); closed when the endpoint is unplumbed or
//! the namespace has no endpoint of this node any more. An open socket keeps its namespace
//! alive after `ip netns del`, so closing promptly matters.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracing::{debug, info};

use super::{
    handler::{Asker, DnsHandler},
    listen::Listener,
    Core,
};
use crate::netlink;

/// Where endpoints find the resolver, as in Docker (`nameserver 127.0.0.11`).
pub(crate) const RESOLVER_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);

/// A namespace opened less than this long ago is not closed by the view loop: the view it
/// looked at may predate the endpoint (plumbing opens before the view shows it).
const YOUNG: Duration = Duration::from_secs(10);

/// Binds UDP and TCP on [`RESOLVER_ADDR`] inside the network namespace at `path`.
pub(crate) fn bind_in_netns(path: &Path) -> Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let ns = netlink::open_netns_blocking(path)
        .with_context(|| format!("opening the namespace {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<_> {
                // SAFETY: setns on a namespace descriptor we own; it moves only this
                // short-lived thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).context("entering the namespace");
                }
                // Plumbing brings lo up; a socket bound to 127.0.0.11 before that was
                // seen answering from 127.0.0.1 (which resolvers drop), so wait for it.
                if !loopback_is_up()? {
                    anyhow::bail!("lo is down in the namespace (not plumbed yet)");
                }
                let udp = std::net::UdpSocket::bind(RESOLVER_ADDR)
                    .with_context(|| format!("binding {RESOLVER_ADDR}/udp"))?;
                let tcp = std::net::TcpListener::bind(RESOLVER_ADDR)
                    .with_context(|| format!("binding {RESOLVER_ADDR}/tcp"))?;
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                Ok((udp, tcp))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread binding in {} panicked", path.display()))?
    })
}

/// Whether `lo` is up in the calling thread's network namespace.
fn loopback_is_up() -> Result<bool> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .context("opening a socket to read lo's flags")?;
    // SAFETY: a zeroed ifreq with a NUL-terminated name, filled by the kernel.
    let flags = unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(probe.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading lo's flags");
        }
        request.ifr_ifru.ifru_flags
    };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

/// Serves one socket pair; dropping the listener stops it and closes the sockets.
pub(crate) fn serve(
    core: &Arc<Core>,
    asker: Asker,
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
) -> Result<Listener> {
    let handler = DnsHandler {
        core: core.clone(),
        asker,
    };
    Ok(Listener::start(
        handler,
        tokio::net::UdpSocket::from_std(udp)?,
        tokio::net::TcpListener::from_std(tcp)?,
    ))
}

struct Open {
    _listener: Listener,
    since: Instant,
}

/// The namespaces served, by the `netns` their endpoints record.
pub(crate) struct Namespaces {
    core: Arc<Core>,
    open: Mutex<HashMap<String, Open>>,
}

impl Namespaces {
    pub(crate) fn new(core: Arc<Core>) -> Namespaces {
        Namespaces {
            core,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Serves `netns` (a name under /run/netns or a path) unless it is served already;
    /// `networks` is its scope until the next view says otherwise. Must run inside the
    /// tokio runtime; blocks for the bind (a thread start, ~0.1 ms).
    pub(crate) fn ensure(&self, netns: &str, networks: &[String]) -> Result<()> {
        let mut open = self.open.lock().expect("dns namespaces lock");
        if open.contains_key(netns) {
            return Ok(());
        }
        let started = Instant::now();
        let path = crate::reconcile::netns_path(netns);
        let (udp, tcp) = bind_in_netns(&path)?;
        let asker = Asker::Netns {
            netns: netns.to_owned(),
            networks: networks.to_vec(),
        };
        let listener = serve(&self.core, asker, udp, tcp)?;
        info!(
            netns,
            took_us = started.elapsed().as_micros() as u64,
            "DNS served in the namespace at {RESOLVER_ADDR}"
        );
        open.insert(
            netns.to_owned(),
            Open {
                _listener: listener,
                since: Instant::now(),
            },
        );
        Ok(())
    }

    pub(crate) fn close(&self, netns: &str) {
        if self
            .open
            .lock()
            .expect("dns namespaces lock")
            .remove(netns)
            .is_some()
        {
            info!(netns, "DNS no longer served in the namespace");
        }
    }

    /// Serves every namespace of `wanted` (with its networks), and closes the others
    /// (those opened in the last [`YOUNG`] excepted).
    pub(crate) fn sync(&self, wanted: &HashMap<String, Vec<String>>) {
        for (netns, networks) in wanted {
            if let Err(error) = self.ensure(netns, networks) {
                debug!(netns, error = %format!("{error:#}"), "could not serve DNS in the namespace yet");
            }
        }
        let mut open = self.open.lock().expect("dns namespaces lock");
        let gone: Vec<String> = open
            .iter()
            .filter(|(netns, o)| !wanted.contains_key(*netns) && o.since.elapsed() >= YOUNG)
            .map(|(netns, _)| netns.clone())
            .collect();
        for netns in gone {
            open.remove(&netns);
            info!(
                netns,
                "DNS no longer served in the namespace: no endpoint of this node there"
            );
        }
    }
}
