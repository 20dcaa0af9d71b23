//! `skein agent`: wires the cluster membership (the embedded manager), the dataplane,
//! the local API, `/metrics` and shutdown.
//!
//! Exiting (SIGTERM, SIGINT, or dying) leaves the programs attached and the maps pinned:
//! the next agent adopts them. Only `skein agent leave` and `skein agent cleanup` take
//! the dataplane down.
//!
//! Layout:
//! - this file: the composition root, [`run`]: check, bind, join, start, wait, drain.
//! - `startup`: checks a user can fail, binding the listeners, joining the cluster.
//! - `backend`: the local API's dispatch to the handlers per object: `node`, `network`,
//!   `vtep`, `endpoint`, `service` (each with the rows it projects for the CLI).
//! - `loops`: the background loops and the one shutdown signal that drains them.
//! - `stop`: why the agent stops, OS signals, taking the dataplane down.

mod backend;
mod endpoint;
mod loops;
mod mesh;
mod network;
mod node;
mod rollout;
mod rotate;
mod service;
mod startup;
mod stop;
mod vtep;

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use dataplane_ebpf::guard::{GuardedPort, IPPROTO_TCP};
use manager::{
    state::{service::ReservedPort, NodeInfo, Protocol},
    Manager,
};
use tokio::{
    net::TcpListener,
    sync::{watch, Mutex},
    task::JoinHandle,
};
use tracing::{info, warn};

pub(crate) use self::stop::cleanup;
use self::{
    backend::{AgentBackend, PeerHandler},
    endpoint::Endpoints,
    loops::Background,
    rotate::Keys,
    startup::{Listeners, Member, Underlay},
    stop::Stop,
};
use crate::{
    api,
    config::AgentConfig,
    dataplane::{
        AttachedMode, Attachments, Counters, Dataplane, MeshMaps, OverlayMaps, PinDirs, VipMaps,
    },
    dns::Dns,
    metrics,
    peer::Peers,
    reconcile::{MapSyncErrors, MeshSetup, Reconciler},
    state_dir::{membership, StateDir},
    tasks::supervisor::Supervisor,
};

/// How long requests in progress get to be answered once the API stops accepting.
const API_GRACE: Duration = Duration::from_secs(5);
/// How long the background loops get, in all, to stop at shutdown.
const LOOPS_GRACE: Duration = Duration::from_secs(5);

/// Runs `skein agent` until it is stopped.
pub(crate) fn run(config: AgentConfig) -> Result<()> {
    let underlay = startup::check_underlay(&config)?;
    let state = Arc::new(StateDir::open(&config.state_dir)?);
    let node = state.node_id()?;
    let token = config.token.as_ref().map(|t| t.read()).transpose()?;
    let membership = membership(&state, config.init, &config.join, token.as_deref())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (gossip, listeners) = Listeners::bind(&config, underlay).await?;
        let member = startup::join_cluster(
            &config,
            &state,
            node,
            membership,
            underlay,
            listeners.gossip_addr,
            gossip,
        )
        .await?;
        let agent = start(&config, state, member, listeners, underlay)?;
        let stop = agent.stopped().await;
        agent.shut_down(stop).await
    })
}

/// The running agent: what shutdown needs.
struct Agent {
    manager: Manager,
    info: NodeInfo,
    state: Arc<StateDir>,
    pins: PinDirs,
    dataplane: Arc<std::sync::Mutex<Dataplane>>,
    reconciler: Arc<Reconciler>,
    supervisor: Arc<Supervisor>,
    background: Background,
    api: JoinHandle<()>,
    stop: watch::Sender<Stop>,
}

/// Starts the dataplane, the reconciler, the supervisor, the servers (API, peer RPC,
/// `/metrics`) and the background loops.
fn start(
    config: &AgentConfig,
    state: Arc<StateDir>,
    member: Member,
    listeners: Listeners,
    underlay: Underlay,
) -> Result<Agent> {
    let Member {
        manager,
        token,
        info,
        secret,
    } = member;
    let keys = Arc::new(Keys {
        token: token.clone(),
        secret,
        state: state.clone(),
    });
    let mut background = Background::new();
    let pins = PinDirs::new(&config.bpf_dir);
    let peers = Peers::new(&token);
    let metrics_addr = listeners.metrics.local_addr()?;
    // Written by the reconciler's map sync, read by /metrics and `skein debug maps`.
    let sync_errors = Arc::new(MapSyncErrors::default());

    let (dataplane, xdp_attached_mode, counters) =
        start_dataplane(config, underlay, &pins, &mut background)?;
    let maps = OverlayMaps::open(&pins).context("opening the overlay maps")?;
    let mesh_maps = MeshMaps::open(&pins).context("opening the mesh maps")?;
    let reconciler = Arc::new(Reconciler::new(
        manager.clone(),
        dataplane.clone(),
        maps,
        config.endpoint_ifaces.clone(),
        sync_errors.clone(),
        // Workloads may not reach the metrics either (the guard: dataplane_ebpf::guard).
        vec![GuardedPort::new(IPPROTO_TCP, metrics_addr.port())],
        MeshSetup {
            maps: mesh_maps,
            timeouts: config.mesh,
            vip: VipMaps::open(&pins).context("opening the VIP maps")?,
        },
    ));
    let dns = Dns::start(&config.dns, listeners.dns, manager.clone())
        .context("starting the DNS server")?;
    reconciler.set_watcher(dns.clone());
    background.spawn_until_shutdown("dns", dns.clone().run());
    let metrics_mesh = metrics::MeshSource::new(
        MeshMaps::open(&pins).context("opening the mesh maps")?,
        reconciler.mesh_status(),
    );
    background.spawn_until_shutdown(
        "metrics",
        metrics::serve(
            listeners.metrics,
            Arc::new(Mutex::new(counters)),
            Some(manager.clone()),
            Some(peers.clone()),
            sync_errors,
            Some(metrics_mesh),
            Some(dns.counters()),
        ),
    );
    background.spawn_until_shutdown("reconciler", reconciler.clone().run());
    let supervisor = Arc::new(
        Supervisor::new(
            manager.clone(),
            reconciler.clone(),
            state.path().join("tasks"),
            config.resource_prefix.clone(),
            config.drain_window,
        )
        .hiding(hidden_from_tasks(config, state.path())),
    );
    background.spawn_until_shutdown("supervisor", supervisor.clone().run());
    background.spawn_until_shutdown(
        "rollout",
        rollout::advance(manager.clone(), std::time::Duration::from_millis(500)),
    );
    start_cluster_loops(
        &manager,
        &peers,
        &supervisor,
        &reconciler,
        &keys,
        listeners.peer,
        &mut background,
    );

    let (stop, _) = watch::channel(Stop::Running);
    let backend = Arc::new(AgentBackend {
        manager: manager.clone(),
        token,
        keys,
        stop: stop.clone(),
        endpoints: Endpoints {
            manager: manager.clone(),
            reconciler: reconciler.clone(),
            resource_prefix: config.resource_prefix.clone(),
        },
        supervisor: supervisor.clone(),
        peers,
        dns,
        reserved_ports: vec![ReservedPort::new(
            metrics_addr.port(),
            Some(Protocol::Tcp),
            "this node's metrics (--metrics-addr)",
        )],
    });
    let mut stopping = stop.subscribe();
    let api = tokio::spawn(api::serve(listeners.api, backend, async move {
        let _ = stopping.wait_for(|s| *s != Stop::Running).await;
    }));
    let build = crate::build_info::BuildInfo::current();
    info!(
        version = %build.version,
        commit = %build.commit,
        ebpf_sha256 = %build.ebpf_sha256,
        underlay = %config.underlay_iface,
        xdp_mode = %xdp_attached_mode,
        metrics = %metrics_addr,
        socket = %config.socket.display(),
        bpf_dir = %config.bpf_dir.display(),
        "agent running"
    );
    Ok(Agent {
        manager,
        info,
        state,
        pins,
        dataplane,
        reconciler,
        supervisor,
        background,
        api,
        stop,
    })
}

/// Loads and attaches (or adopts) the programs and forwards their logs; the counters are
/// for `/metrics`.
fn start_dataplane(
    config: &AgentConfig,
    underlay: Underlay,
    pins: &PinDirs,
    background: &mut Background,
) -> Result<(Arc<std::sync::Mutex<Dataplane>>, AttachedMode, Counters)> {
    let want = Attachments {
        underlay_iface: config.underlay_iface.clone(),
        underlay_ip: underlay.advertise,
        xdp_mode: config.xdp_mode,
        endpoint_ifaces: config.endpoint_ifaces.clone(),
    };
    let mut dataplane = Dataplane::start(pins.clone(), &want).context("starting the dataplane")?;
    if let Some(logs) = dataplane.take_logs() {
        background.spawn_until_shutdown("forward_ebpf_logs", logs.forward());
    }
    let counters = dataplane.counters()?;
    let mode = dataplane.xdp_attached_mode;
    Ok((Arc::new(std::sync::Mutex::new(dataplane)), mode, counters))
}

/// The loops that talk to the cluster: the peer RPC server and the state directory's
/// peers list and store copy.
fn start_cluster_loops(
    manager: &Manager,
    peers: &Arc<Peers>,
    supervisor: &Arc<Supervisor>,
    reconciler: &Arc<Reconciler>,
    keys: &Arc<Keys>,
    peer_listener: TcpListener,
    background: &mut Background,
) {
    let state = &keys.state;
    let mut shutdown = background.shutdown();
    background.spawn(
        "peer_server",
        peers.clone().serve(
            peer_listener,
            Arc::new(PeerHandler {
                manager: manager.clone(),
                supervisor: supervisor.clone(),
                reconciler: reconciler.clone(),
                keys: keys.clone(),
            }),
            async move { shutdown.requested().await },
        ),
    );
    background.spawn(
        "save_token_on_switch",
        rotate::save_on_switch(keys.token.clone(), state.clone(), background.shutdown()),
    );
    background.spawn(
        "remember_peers",
        loops::remember_peers(manager.clone(), state.clone(), background.shutdown()),
    );
    background.spawn(
        "save_store",
        loops::save_store(manager.clone(), state.clone(), background.shutdown()),
    );
}

impl Agent {
    /// Waits for SIGTERM/SIGINT or `agent leave`; either way the API stops accepting.
    async fn stopped(&self) -> Stop {
        let mut stopping = self.stop.subscribe();
        tokio::select! {
            _ = stop::os_signal() => { self.stop.send_replace(Stop::Signal); }
            _ = stopping.wait_for(|s| *s != Stop::Running) => {}
        }
        *self.stop.borrow()
    }

    /// Drains: the API answers the requests in progress (the one that stopped us
    /// included), every background loop stops, the store is saved; then, for `leave`,
    /// this node's tasks, endpoints and dataplane are removed.
    async fn shut_down(self, stop: Stop) -> Result<()> {
        if tokio::time::timeout(API_GRACE, self.api).await.is_err() {
            warn!(grace = ?API_GRACE, "the API server did not stop in time");
        }
        let late = self.background.drain(LOOPS_GRACE).await;
        if !late.is_empty() {
            warn!(tasks = ?late, "background tasks aborted at shutdown");
        }
        if stop == Stop::Signal {
            // Tell peers to keep this node's tasks placed here while it restarts; the tasks
            // keep running meanwhile, and the next agent adopts them.
            let grace = NodeInfo {
                restart_grace_until_ms: manager::driver::wall_ms()
                    + manager::placement::RESTART_GRACE_MS,
                ..self.info.clone()
            };
            if self.manager.publish_self(&grace).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if stop != Stop::Leave {
            // The latest state, for the next start.
            match self.manager.records().await {
                Ok(records) => {
                    if let Err(error) = self.state.save_records(&records) {
                        warn!(error = %format!("{error:#}"), "could not save the cluster state");
                    }
                }
                Err(error) => warn!(%error, "could not read the cluster state to save it"),
            }
            info!("shutting down; the dataplane stays attached for the next agent");
            return Ok(());
        }

        self.supervisor.stop_all().await;
        // Remove this node's endpoints' plumbing, then the programs: our program fds
        // must close before unpinning, or they keep the links alive.
        let view = self.manager.view();
        for endpoint in view.own_endpoints() {
            if let Err(error) = self.reconciler.unplumb(endpoint).await {
                warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not remove an endpoint");
            }
        }
        drop(self.supervisor);
        drop(self.reconciler);
        drop(self.dataplane);
        let removed = stop::remove_dataplane(&self.pins)?;
        self.state.forget_cluster()?;
        info!(removed, "left the cluster; dataplane removed");
        Ok(())
    }
}

/// What tasks must not reach besides every agent's defaults: this agent's state
/// directory, the directory of its socket and its bpffs, wherever its flags put them.
fn hidden_from_tasks(config: &AgentConfig, state_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths = vec![state_dir.to_path_buf(), config.bpf_dir.clone()];
    paths.extend(config.socket.parent().map(std::path::Path::to_path_buf));
    // The cluster key, wherever the operator keeps it.
    if let Some(crate::config::TokenSource::File(path)) = &config.token {
        paths.push(path.clone());
    }
    paths
}
