//! The service-discovery DNS server (issue 13), on hickory-server, inside the agent.
//!
//! Every endpoint namespace of this node gets a resolver at `127.0.0.11:53` (UDP and TCP,
//! sockets opened inside the namespace: `netns`), and the operator one at `--dns-addr`
//! on the host. Answers come from the live cluster view, rebuilt into record sets on every
//! view (`records`) and scoped to the asker's networks (`handler`); names that are not
//! Skein's go to the upstream resolvers (`forward`). Tasks get a `resolv.conf` naming
//! 127.0.0.11 (`tasks::process`).
//!
//! Layout:
//! - `records`: view → [`records::Records`] (names, scopes), the naming rules.
//! - `listen`: the listener of one socket pair; the TCP loop (decode, count malformed,
//!   bound the work).
//! - `udp`: the UDP loop, answering in place; `answers`: the replies it keeps encoded;
//!   `mmsg`: datagrams read and sent in batches.
//! - `handler`: the hickory `RequestHandler` per socket pair, and [`Core::answer`], the
//!   one answering path (`skein debug dns` uses it too).
//! - `forward`: upstream forwarding (timeout, bound on queries in flight, SERVFAIL).
//! - `netns`: the sockets inside endpoint namespaces and their lifecycle.
//! - `counters`: the `/metrics` counters.
//! - here: [`Dns`], the wiring: start, the view loop, the plumbing hook, debug.

mod answers;
mod counters;
mod forward;
mod handler;
mod listen;
mod mmsg;
mod netns;
mod records;
#[cfg(test)]
mod tests;
mod udp;

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use hickory_server::proto::{
    op::{LowerQuery, Query},
    rr::{Name, RecordType},
};
use manager::{state::Endpoint, Manager};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

pub(crate) use counters::{DnsCounters, DnsCounts};
pub(crate) use forward::host_upstreams;

use self::{
    forward::Forwarder,
    handler::{Answer, Asker, DnsHandler},
    listen::Listener,
    netns::Namespaces,
    records::{Records, Scope},
};
use crate::reconcile::EndpointWatcher;

/// How often the view loop retries namespaces it could not serve yet.
const RETRY: Duration = Duration::from_secs(2);

/// The DNS settings (`--dns-addr`, `--dns-upstream`, `--dns-ttl`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DnsConfig {
    pub(crate) addr: SocketAddr,
    /// Empty: the host's `/etc/resolv.conf` nameservers, read at start.
    pub(crate) upstreams: Vec<SocketAddr>,
    pub(crate) ttl: Duration,
}

/// What every handler shares: the current records, the forwarder, the counters.
pub(crate) struct Core {
    records: RwLock<Arc<Records>>,
    forwarder: Forwarder,
    counters: Arc<DnsCounters>,
}

impl Core {
    fn records(&self) -> Arc<Records> {
        self.records.read().expect("dns records lock").clone()
    }
}

/// The host listener's sockets, bound before the cluster is joined (a port in use fails
/// the start naming the flag).
pub(crate) struct HostSockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl HostSockets {
    pub(crate) async fn bind(addr: SocketAddr) -> Result<HostSockets> {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("could not bind {addr}/udp for DNS (--dns-addr)"))?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on {addr}/tcp for DNS (--dns-addr)"))?;
        Ok(HostSockets { udp, tcp })
    }
}

/// The running DNS server.
pub(crate) struct Dns {
    core: Arc<Core>,
    namespaces: Namespaces,
    manager: Manager,
    ttl: u32,
    /// The host listener (kept so it runs as long as the agent does).
    _host: Listener,
}

impl Dns {
    /// Starts the host listener; namespaces are served as their endpoints are plumbed and
    /// as [`Dns::run`] sees them. Must run inside the tokio runtime.
    pub(crate) fn start(
        config: &DnsConfig,
        host: HostSockets,
        manager: Manager,
    ) -> Result<Arc<Dns>> {
        let upstreams = if config.upstreams.is_empty() {
            host_upstreams(std::path::Path::new("/etc/resolv.conf"))
        } else {
            config.upstreams.clone()
        };
        if upstreams.is_empty() {
            warn!("no upstream DNS resolver (none in /etc/resolv.conf, no --dns-upstream): names that are not Skein's get SERVFAIL");
        }
        let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
        let core = Arc::new(Core {
            records: RwLock::new(Arc::new(Records::build(&manager.view(), ttl))),
            forwarder: Forwarder::new(upstreams, forward::UPSTREAM_TIMEOUT),
            counters: Arc::new(DnsCounters::default()),
        });
        let host_server = Listener::start(
            DnsHandler {
                core: core.clone(),
                asker: Asker::Host,
            },
            host.udp,
            host.tcp,
        );
        info!(addr = %config.addr, upstreams = ?core.forwarder.upstreams(), ttl, "DNS server running");
        Ok(Arc::new(Dns {
            namespaces: Namespaces::new(core.clone()),
            core,
            manager,
            ttl,
            _host: host_server,
        }))
    }

    pub(crate) fn counters(&self) -> Arc<DnsCounters> {
        self.core.counters.clone()
    }

    /// Rebuilds the records on every view (and every [`RETRY`]), and keeps the namespaces
    /// served in step with this node's endpoints.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut views = self.manager.subscribe();
        loop {
            let view = views.borrow_and_update().clone();
            let wanted = self.refresh(&view);
            self.namespaces.sync(&wanted);
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// Records of `view` become the answers; returns the namespaces to serve.
    fn refresh(&self, view: &manager::view::ClusterView) -> HashMap<String, Vec<String>> {
        let records = Records::build(view, self.ttl);
        let wanted = records
            .namespaces()
            .map(|netns| {
                let networks = match records.scope_of(netns) {
                    Some(Scope::Networks(networks)) => networks,
                    _ => Vec::new(),
                };
                (netns.to_owned(), networks)
            })
            .collect();
        *self.core.records.write().expect("dns records lock") = Arc::new(records);
        wanted
    }

    /// `skein debug dns`: what a client in `netns` (an endpoint namespace of this node, by
    /// name or path; `None`: the operator on the host) gets for `name`/`qtype`, by the
    /// servers' own answering path, as text.
    pub(crate) async fn debug(
        &self,
        name: &str,
        qtype: &str,
        netns: Option<&str>,
    ) -> Result<String> {
        let qtype = RecordType::from_str(&qtype.to_ascii_uppercase())
            .ok()
            .filter(|t| !matches!(t, RecordType::Unknown(_)))
            .with_context(|| {
                format!("unknown record type {qtype:?}; use A, AAAA, SRV, PTR, ...")
            })?;
        let mut qname =
            Name::from_utf8(name).with_context(|| format!("{name:?} is not a DNS name"))?;
        qname.set_fqdn(true);
        let records = self.core.records();
        let scope = match netns {
            None => Scope::All,
            Some(netns) => {
                let path = crate::reconcile::netns_path(netns);
                let by_path = records
                    .namespaces()
                    .find(|n| crate::reconcile::netns_path(n) == path)
                    .map(str::to_owned);
                match by_path.and_then(|n| records.scope_of(&n)) {
                    Some(scope) => scope,
                    None => bail!("no endpoint of this node is in the namespace {netns}; `skein endpoint ls` lists them"),
                }
            }
        };
        let query = LowerQuery::from(Query::query(qname.clone(), qtype));
        let answer = self.core.answer(&records, &scope, &query).await;
        let mut out = String::new();
        let _ = writeln!(
            out,
            ";; {qname} {qtype}: {}",
            counters::rcode_name(answer.rcode())
        );
        match &answer {
            Answer::Local {
                answers,
                additionals,
                ..
            } => {
                let _ = writeln!(out, ";; answered by Skein (TTL {} s)", self.ttl);
                for record in answers.iter() {
                    let _ = writeln!(out, "{record}");
                }
                if !additionals.is_empty() {
                    let _ = writeln!(out, ";; additional:");
                    for record in additionals.iter() {
                        let _ = writeln!(out, "{record}");
                    }
                }
            }
            Answer::Forwarded(message) => {
                let _ = writeln!(out, ";; forwarded to {:?}", self.core.forwarder.upstreams());
                for record in &message.answers {
                    let _ = writeln!(out, "{record}");
                }
            }
            Answer::Failed(error) => {
                let _ = writeln!(out, ";; forwarding failed: {error}");
            }
        }
        Ok(out)
    }
}

impl EndpointWatcher for Dns {
    fn plumbed(&self, endpoint: &Endpoint) {
        if let Err(error) = self
            .namespaces
            .ensure(&endpoint.netns, std::slice::from_ref(&endpoint.network))
        {
            warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not serve DNS in the endpoint's namespace; retrying");
        }
    }

    fn unplumbed(&self, endpoint: &Endpoint) {
        // A namespace may hold other endpoints of this node (attached ones): it stays
        // served while one is left.
        let view = self.manager.view();
        let others = view
            .own_endpoints()
            .any(|e| e.netns == endpoint.netns && e.id != endpoint.id);
        if !others {
            self.namespaces.close(&endpoint.netns);
        }
    }
}
