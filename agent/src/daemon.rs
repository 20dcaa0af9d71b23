//! `skein agent`: wires the cluster membership (the embedded manager), the dataplane,
//! the local API, `/metrics` and shutdown.
//!
//! Exiting (SIGTERM, SIGINT, or dying) leaves the programs attached and the maps pinned:
//! the next agent adopts them. Only `skein agent leave` and `skein agent cleanup` take
//! the dataplane down.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr, ToSocketAddrs},
    path::Path,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use manager::{
    gossip::{EngineConfig, Tuning},
    secure::{max_plaintext, JoinToken},
    state::NodeInfo,
    Manager,
};
use tokio::{
    io::unix::AsyncFd,
    net::{TcpListener, UdpSocket},
    sync::{watch, Mutex},
};
use tracing::{info, warn};

use crate::{
    api::{self, Backend, Body, EndpointRow, NetworkRow, NodeRow, Request, Response, VtepRow},
    dataplane::{self, Attachments, Dataplane, OverlayMaps, PinDirs},
    metrics, netif, netlink,
    peer::{self, PeerRequest, PeerResponse, Peers},
    reconcile::{self, Reconciler},
    state_dir::{membership, Membership, StateDir},
    tasks::{self, supervisor::Supervisor},
};
use manager::ops::EndpointRequest;

pub(crate) use crate::config::AgentConfig;

/// `skein agent cleanup`.
pub fn cleanup(bpf_dir: &Path) -> Result<()> {
    if let Err(error) = crate::egress::remove() {
        warn!(error = %format!("{error:#}"), "could not remove the egress NAT rule");
    }
    let removed = dataplane::cleanup(&PinDirs::new(bpf_dir))
        .with_context(|| format!("cleaning up {}", bpf_dir.display()))?;
    println!("removed {removed} pins under {}", bpf_dir.display());
    Ok(())
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Running,
    /// SIGTERM/SIGINT: exit, leave the dataplane for the next agent.
    Signal,
    /// `skein agent leave`: the cluster was told; take the dataplane down too.
    Leave,
}

/// Runs `skein agent` until it is stopped.
pub fn run(config: AgentConfig) -> Result<()> {
    // Checks a user can fail, before anything is bound or attached.
    for (flag, iface) in std::iter::once(("--underlay-iface", &config.underlay_iface)).chain(
        config
            .endpoint_ifaces
            .iter()
            .map(|i| ("--endpoint-iface", i)),
    ) {
        if dataplane::if_index(iface).is_err() {
            bail!("interface {iface:?} given to {flag} does not exist in this network namespace (see `ip link`)");
        }
    }
    let underlay_addrs = netif::ipv4_addrs(&config.underlay_iface)
        .context("reading the underlay interface's addresses")?;
    let advertise = match config.advertise_addr {
        Some(addr) if underlay_addrs.contains(&addr) => addr,
        Some(addr) => bail!(
            "--advertise-addr {addr} is not an address of the underlay interface {} (it has: {})",
            config.underlay_iface,
            list(&underlay_addrs)
        ),
        None => *underlay_addrs.first().with_context(|| {
            format!(
                "the underlay interface {} has no IPv4 address; give it one, or pick another with --underlay-iface",
                config.underlay_iface
            )
        })?,
    };
    let underlay_mtu = netif::mtu(&config.underlay_iface).context("reading the underlay MTU")?;
    if max_plaintext(underlay_mtu) < 512 {
        bail!(
            "the underlay MTU {underlay_mtu} of {} is too small for gossip (needs at least 613)",
            config.underlay_iface
        );
    }

    let state = Arc::new(StateDir::open(&config.state_dir)?);
    let node = state.node_id()?;
    let membership = membership(&state, config.init, &config.join, config.token.as_deref())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let gossip_addr = SocketAddr::from((advertise, config.gossip_port));
        let gossip_socket = UdpSocket::bind(gossip_addr).await.with_context(|| {
            format!("could not bind the gossip port {gossip_addr} (--gossip-port)")
        })?;
        // The peer RPC (remote `service logs`) on the same address and port, over TCP.
        let peer_listener = TcpListener::bind(gossip_addr).await.with_context(|| {
            format!("could not listen on {gossip_addr}/tcp for peer requests (--gossip-port)")
        })?;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| {
                format!(
                    "could not listen on {} for /metrics (--metrics-addr)",
                    config.metrics_addr
                )
            })?;
        let api_listener = api::bind(&config.socket)
            .with_context(|| format!("could not serve the API on {}", config.socket.display()))?;

        let (token, seeds, created, first_join) = match membership {
            Membership::Create(token) => {
                state.save_token(&token)?;
                (token, Vec::new(), true, false)
            }
            Membership::Join { token, seeds, first } => {
                let mut seeds = resolve_seeds(&seeds)?;
                for peer in state.peers() {
                    if !seeds.contains(&peer) {
                        seeds.push(peer);
                    }
                }
                (token, seeds, false, first)
            }
            Membership::Rejoin { token, peers } => (token, peers, false, false),
        };
        let boot_epoch = state.next_boot_epoch(manager::driver::wall_ms())?;
        let engine = EngineConfig {
            node,
            addr: gossip_addr,
            boot_epoch,
            token: token.clone(),
            underlay_mtu,
            tuning: Tuning::default(),
            rng_seed: rand_seed(),
            initial_records: if created { Vec::new() } else { state.records() },
        };
        let manager = Manager::start(engine, gossip_socket, seeds.clone());
        let info = NodeInfo {
            hostname: config.hostname.clone(),
            addr: gossip_addr,
            underlay_ip: advertise,
            underlay_mtu,
            boot_epoch,
            started_at_ms: manager::driver::wall_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            leaving: false,
            restart_grace_until_ms: 0,
        };
        manager.publish_self(&info).await?;

        if first_join {
            wait_for_cluster(&manager, &seeds, config.join_timeout).await?;
            state.save_token(&token)?;
        }
        if created {
            println!("{}", join_instructions(&token, gossip_addr));
        }
        info!(node = %node.short(), %gossip_addr, "member of the cluster");

        let want = Attachments {
            underlay_iface: config.underlay_iface.clone(),
            underlay_ip: advertise,
            xdp_mode: config.xdp_mode,
            endpoint_ifaces: config.endpoint_ifaces.clone(),
        };
        let pins = PinDirs::new(&config.bpf_dir);
        let mut dataplane =
            Dataplane::start(pins.clone(), &want).context("starting the dataplane")?;
        let logs = dataplane
            .take_logger()
            .map(|logger| tokio::spawn(forward_ebpf_logs(logger)));
        let counters = Arc::new(Mutex::new(dataplane.counters()?));
        let peer_rpc = Peers::new(&token);
        let metrics_addr = metrics_listener.local_addr()?;
        let metrics = tokio::spawn(metrics::serve(
            metrics_listener,
            counters,
            Some(manager.clone()),
            Some(peer_rpc.clone()),
            Arc::new(crate::sync_errors::MapSyncErrors::default()),
        ));

        let xdp_attached_mode = dataplane.xdp_attached_mode;
        let maps = OverlayMaps::open(&pins).context("opening the overlay maps")?;
        let dataplane = Arc::new(std::sync::Mutex::new(dataplane));
        // Shared with /metrics (skein_dataplane_sync_errors_total) once it renders them.
        let sync_errors = Arc::new(crate::sync_errors::MapSyncErrors::default());
        let reconciler = Arc::new(Reconciler::new(
            manager.clone(),
            dataplane.clone(),
            maps,
            config.endpoint_ifaces.clone(),
            sync_errors.clone(),
        ));
        let reconcile_task = tokio::spawn(reconciler.clone().run());
        let supervisor = Arc::new(Supervisor::new(
            manager.clone(),
            reconciler.clone(),
            state.path().join("tasks"),
            config.resource_prefix.clone(),
        ));
        let supervise_task = tokio::spawn(supervisor.clone().run());
        let peer_server = tokio::spawn(peer_rpc.clone().serve(
            peer_listener,
            Arc::new(PeerHandler {
                manager: manager.clone(),
                supervisor: supervisor.clone(),
            }),
        ));

        let (stop_tx, mut stop_rx) = watch::channel(Stop::Running);
        let backend = Arc::new(AgentBackend {
            manager: manager.clone(),
            token,
            stop: stop_tx.clone(),
            reconciler: reconciler.clone(),
            supervisor: supervisor.clone(),
            peers: peer_rpc,
            resource_prefix: config.resource_prefix.clone(),
        });
        let api_shutdown = {
            let mut stop_rx = stop_rx.clone();
            async move {
                let _ = stop_rx.wait_for(|s| *s != Stop::Running).await;
            }
        };
        let api = tokio::spawn(api::serve(api_listener, backend, api_shutdown));
        let peers = tokio::spawn(remember_peers(manager.clone(), state.clone()));
        let saver = tokio::spawn(save_store(manager.clone(), state.clone()));
        info!(
            underlay = %config.underlay_iface,
            xdp_mode = %xdp_attached_mode,
            metrics = %metrics_addr,
            socket = %config.socket.display(),
            bpf_dir = %config.bpf_dir.display(),
            "agent running"
        );

        tokio::select! {
            _ = shutdown_signal() => { let _ = stop_tx.send(Stop::Signal); }
            _ = stop_rx.wait_for(|s| *s != Stop::Running) => {}
        }
        let stop = *stop_rx.borrow();
        // Let the API answer the request that stopped us.
        let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
        metrics.abort();
        peer_server.abort();
        peers.abort();
        saver.abort();
        supervise_task.abort();
        let _ = supervise_task.await;
        if stop == Stop::Signal {
            // Tell peers to keep this node's tasks placed here while it restarts; the tasks
            // keep running meanwhile, and the next agent adopts them.
            let grace = NodeInfo {
                restart_grace_until_ms: manager::driver::wall_ms()
                    + manager::placement::RESTART_GRACE_MS,
                ..info.clone()
            };
            if manager.publish_self(&grace).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if stop != Stop::Leave {
            // The latest state, for the next start.
            if let Ok(records) = manager.records().await {
                let _ = state.save_records(&records);
            }
        }
        if let Some(logs) = logs {
            logs.abort();
        }
        reconcile_task.abort();
        let _ = reconcile_task.await;
        if stop == Stop::Leave {
            supervisor.stop_all().await;
            // Remove this node's endpoints' plumbing, then the programs: our program fds
            // must close before unpinning, or they keep the links alive.
            let view = manager.view();
            for endpoint in view.own_endpoints() {
                if let Err(error) = reconciler.unplumb(endpoint).await {
                    warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not remove an endpoint");
                }
            }
            drop(reconciler);
            drop(dataplane);
            let removed = dataplane::cleanup(&pins).context("removing the dataplane")?;
            if let Err(error) = crate::egress::remove() {
                warn!(error = %format!("{error:#}"), "could not remove the egress NAT rule");
            }
            state.forget_cluster()?;
            info!(removed, "left the cluster; dataplane removed");
        } else {
            info!("shutting down; the dataplane stays attached for the next agent");
        }
        Ok(())
    })
}

fn list(addrs: &[Ipv4Addr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    addrs
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

fn resolve_seeds(entries: &[String]) -> Result<Vec<SocketAddr>> {
    let mut seeds = Vec::new();
    for entry in entries {
        let addr = entry
            .to_socket_addrs()
            .with_context(|| format!("--join {entry}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("--join {entry} has no IPv4 address"))?;
        seeds.push(addr);
    }
    Ok(seeds)
}

/// Waits for the first authenticated datagram from the cluster, or fails saying why
/// it probably did not come.
async fn wait_for_cluster(
    manager: &Manager,
    seeds: &[SocketAddr],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if manager.heard_from_cluster().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
    bail!(
        "could not join the cluster: no authenticated answer from {} within {:?} (a wrong --token, or the address is unreachable)",
        seeds.join(", "),
        timeout
    )
}

fn join_instructions(token: &JoinToken, addr: SocketAddr) -> String {
    format!(
        "Cluster created; this node is its first member.\nTo add a node, run on it:\n\n    skein agent --underlay-iface IFACE --join {addr} --token {token}\n"
    )
}

/// Keeps the live peers in the state directory, so a restart can rejoin without `--join`.
async fn remember_peers(manager: Manager, state: Arc<StateDir>) {
    let mut views = manager.subscribe();
    let mut saved: Vec<SocketAddr> = Vec::new();
    loop {
        let mut peers: Vec<SocketAddr> = views
            .borrow()
            .nodes
            .iter()
            .filter(|n| n.up && !n.is_self)
            .filter_map(|n| n.addr)
            .collect();
        peers.sort();
        if peers != saved && !peers.is_empty() {
            if let Err(error) = state.save_peers(&peers) {
                warn!(error = %format!("{error:#}"), "could not save the peers list");
            }
            saved = peers;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// Saves the store to the state directory when it changes (at most once a second).
async fn save_store(manager: Manager, state: Arc<StateDir>) {
    let mut views = manager.subscribe();
    let mut saved_version = None;
    loop {
        let version = views.borrow_and_update().store_version;
        if saved_version != Some(version) {
            match manager.records().await {
                Ok(records) => match state.save_records(&records) {
                    Ok(()) => saved_version = Some(version),
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "could not save the cluster state")
                    }
                },
                Err(_) => return,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// The local API, on top of the manager.
struct AgentBackend {
    manager: Manager,
    token: JoinToken,
    stop: watch::Sender<Stop>,
    reconciler: Arc<Reconciler>,
    supervisor: Arc<Supervisor>,
    peers: Arc<Peers>,
    resource_prefix: String,
}

/// Answers other agents' peer requests from this node's task log files.
struct PeerHandler {
    manager: Manager,
    supervisor: Arc<Supervisor>,
}

impl peer::Handler for PeerHandler {
    fn handle(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Logs {
                service,
                created,
                from,
            } => PeerResponse::Logs(tasks::api::answer_peer_logs(
                &self.manager.view(),
                &self.supervisor,
                &service,
                created,
                &from,
            )),
        }
    }
}

impl Backend for AgentBackend {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            match self.serve(request).await {
                Ok(body) => Response::Ok { body },
                Err(error) => Response::Error {
                    message: format!("{error:#}"),
                },
            }
        })
    }
}

impl AgentBackend {
    async fn serve(&self, request: Request) -> Result<Body> {
        Ok(match request {
            Request::NodeLs => {
                let view = self.manager.view();
                Body::Nodes(
                    view.nodes
                        .iter()
                        .map(|n| NodeRow {
                            id: n.id.to_string(),
                            hostname: n
                                .info
                                .as_ref()
                                .map(|i| i.hostname.clone())
                                .unwrap_or_default(),
                            address: n.addr.map(|a| a.to_string()).unwrap_or_default(),
                            status: if n.up { "ready" } else { "down" }.to_owned(),
                            is_self: n.is_self,
                            started_at_ms: n.info.as_ref().map(|i| i.started_at_ms).unwrap_or(0),
                        })
                        .collect(),
                )
            }
            Request::NodeRm { id } => {
                let removed = self.manager.remove_node(&id).await?;
                Body::Done(format!("removed node {}", removed.short()))
            }
            Request::Leave => {
                self.manager.leave().await?;
                let _ = self.stop.send(Stop::Leave);
                Body::Done("left the cluster; the agent removes its dataplane and exits".to_owned())
            }
            Request::JoinToken => Body::Token(self.token.to_string()),
            Request::NetworkCreate { name, subnet, vni } => {
                let subnet =
                    match subnet {
                        Some(text) => Some(text.parse().map_err(|_| {
                            anyhow::anyhow!("--subnet {text:?} is not an IPv4 CIDR")
                        })?),
                        None => None,
                    };
                let network = self.manager.create_network(&name, subnet, vni).await?;
                Body::Network(network_row(&network))
            }
            Request::NetworkLs => Body::Networks(
                self.manager
                    .view()
                    .networks
                    .valid
                    .iter()
                    .map(network_row)
                    .collect(),
            ),
            Request::NetworkRm { name } => {
                self.manager.remove_network(&name).await?;
                Body::Done(format!("removed network {name}"))
            }
            Request::EndpointCreate { network, name } => {
                Body::Endpoint(self.add_endpoint(network, name, None).await?)
            }
            Request::EndpointAttach {
                network,
                netns,
                name,
            } => Body::Endpoint(self.add_endpoint(network, name, Some(netns)).await?),
            Request::EndpointLs => Body::Endpoints(endpoint_rows(&self.manager.view())),
            Request::EndpointRm { id } => {
                let endpoint = self.manager.remove_endpoint(&id).await?;
                self.reconciler.unplumb(&endpoint).await?;
                Body::Done(format!(
                    "removed endpoint {} ({})",
                    endpoint.name, endpoint.ip
                ))
            }
            Request::VtepAdd {
                network,
                underlay,
                mac,
                cidr,
            } => {
                let underlay = underlay.parse().map_err(|_| {
                    anyhow::anyhow!("--underlay {underlay:?} is not an IPv4 address")
                })?;
                let mac = netif::parse_mac(&mac)
                    .ok_or_else(|| anyhow::anyhow!("--mac {mac:?} is not a MAC address"))?;
                let cidr = cidr
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--cidr {cidr:?} is not an IPv4 CIDR"))?;
                let vtep = self.manager.add_vtep(&network, underlay, mac, cidr).await?;
                Body::Vteps(vec![vtep_row(&vtep)])
            }
            Request::VtepRm { network, cidr } => {
                let cidr = cidr
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--cidr {cidr:?} is not an IPv4 CIDR"))?;
                self.manager.remove_vtep(&network, cidr).await?;
                Body::Done(format!(
                    "removed the VTEP for {cidr} from network {network}"
                ))
            }
            Request::VtepLs { network } => Body::Vteps(
                self.manager
                    .view()
                    .vteps
                    .iter()
                    .filter(|v| network.as_ref().is_none_or(|n| *n == v.network))
                    .map(vtep_row)
                    .collect(),
            ),
            Request::DebugMaps => Body::Text(self.reconciler.dump_maps()?),
            Request::ServiceCreate(spec) => tasks::api::create(&self.manager, spec).await?,
            Request::ServiceLs => tasks::api::ls(&self.manager.view()),
            Request::ServicePs { name } => tasks::api::ps(&self.manager.view(), &name)?,
            Request::ServiceInspect { name } => tasks::api::inspect(&self.manager.view(), &name)?,
            Request::ServiceScale { name, replicas } => {
                tasks::api::scale(&self.manager, &name, replicas).await?
            }
            Request::ServiceRm { name } => tasks::api::rm(&self.manager, &name).await?,
            Request::ServiceLogs { name, from } => {
                tasks::api::logs(
                    &self.manager.view(),
                    &self.supervisor,
                    &self.peers,
                    &name,
                    &from,
                )
                .await?
            }
            Request::ServiceAttach { name, netns } => self.attach_to_service(&name, netns).await?,
        })
    }

    /// `service attach`: an existing namespace becomes an endpoint on the service's network
    /// and a task of the service (counted as one replica, never moved).
    async fn attach_to_service(&self, name: &str, netns: String) -> Result<Body> {
        let service = tasks::api::find(&self.manager.view(), name)?.clone();
        let row = self
            .add_endpoint(service.network.clone(), None, Some(netns))
            .await?;
        let endpoint = self
            .manager
            .view()
            .own_endpoints()
            .find(|e| e.id == row.id)
            .cloned()
            .context("the endpoint vanished while attaching")?;
        let task = manager::state::Task {
            id: endpoint.id.clone(),
            service: service.name.clone(),
            service_created: service.created,
            slot: 0,
            endpoint: endpoint.id.clone(),
            ip: endpoint.ip,
            state: manager::state::TaskState::Running,
            since_ms: manager::driver::wall_ms(),
            message: String::new(),
            restarts: 0,
            created: endpoint.created,
            attached: true,
        };
        self.manager
            .write(
                manager::state::Scope::Node(self.manager.node()),
                manager::state::Kind::Task,
                task.id.clone(),
                Some(task.encode()),
            )
            .await?;
        Ok(Body::Done(format!(
            "attached {} to service {} as task {} ({})",
            endpoint.netns, service.name, task.id, endpoint.ip
        )))
    }

    /// `endpoint create` (no `netns`: a fresh namespace) or `endpoint attach`.
    async fn add_endpoint(
        &self,
        network: String,
        name: Option<String>,
        netns: Option<String>,
    ) -> Result<EndpointRow> {
        let id = crate::random_id();
        let name = name.unwrap_or_else(|| id.clone());
        let (netns, owns_netns) = match netns {
            Some(netns) => {
                if !reconcile::netns_path(&netns).exists() {
                    bail!("network namespace {netns:?} does not exist (give a name under /run/netns or a path like /proc/PID/ns/net)");
                }
                (netns, false)
            }
            None => (format!("{}-{name}", self.resource_prefix), true),
        };
        let endpoint = self
            .reconciler
            .add_endpoint(EndpointRequest {
                id: id.clone(),
                name,
                network,
                netns,
                host_ifname: netlink::host_ifname(reconcile::IFNAME_HINT, &id),
                owns_netns,
                settle: true,
            })
            .await?;
        Ok(endpoint_rows(&self.manager.view())
            .into_iter()
            .find(|row| row.id == endpoint.id)
            .unwrap_or_else(|| endpoint_row(&endpoint, self.manager.node(), "ready")))
    }
}

fn endpoint_row(
    endpoint: &manager::state::Endpoint,
    node: manager::NodeId,
    status: &str,
) -> EndpointRow {
    EndpointRow {
        id: endpoint.id.clone(),
        name: endpoint.name.clone(),
        network: endpoint.network.clone(),
        ip: endpoint.ip.to_string(),
        node: node.to_string(),
        netns: endpoint.netns.clone(),
        status: status.to_owned(),
    }
}

fn endpoint_rows(view: &manager::view::ClusterView) -> Vec<EndpointRow> {
    let up = |node: &manager::NodeId| view.node(node).is_some_and(|n| n.up);
    let mut rows: Vec<EndpointRow> = view
        .endpoints
        .valid
        .iter()
        .map(|(node, e)| endpoint_row(e, *node, if up(node) { "ready" } else { "down" }))
        .chain(
            view.endpoints
                .collided
                .iter()
                .map(|(node, e, _)| endpoint_row(e, *node, "collided")),
        )
        .collect();
    rows.sort_by(|a, b| (&a.network, &a.ip).cmp(&(&b.network, &b.ip)));
    rows
}

fn vtep_row(vtep: &manager::state::Vtep) -> VtepRow {
    VtepRow {
        network: vtep.network.clone(),
        cidr: vtep.cidr.to_string(),
        underlay: vtep.underlay.to_string(),
        mac: netif::format_mac(vtep.mac),
    }
}

fn network_row(network: &manager::state::Network) -> NetworkRow {
    NetworkRow {
        name: network.name.clone(),
        subnet: network.subnet.to_string(),
        vni: network.vni,
        created_by: network.created.writer.short(),
        created_at_ms: manager::hlc::physical_ms(network.created.hlc),
    }
}

/// Copies the programs' aya-log records into `tracing` as they arrive.
async fn forward_ebpf_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, for as
    // long as it lives inside the AsyncFd.
    let mut logger = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(error) => {
            warn!(error = %error, "eBPF logs unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = logger.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
