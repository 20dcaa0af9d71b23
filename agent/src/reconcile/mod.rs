//! Converges the kernel to the cluster's state: endpoint plumbing (namespaces, veths,
//! attached programs) for this node's endpoints, and the overlay maps for every live
//! endpoint, network and external VTEP of the cluster.
//!
//! Layout: `desired` (the maps' desired content from a snapshot: `desired_maps`),
//! `plumbing` (this node's endpoints: `plumb`, `unplumb`, `remove_unwanted`), `maps`
//! (`sync_map`, the one desired-vs-current sync every map goes through, and
//! `sync_overlay`, which runs it for each overlay map, and `sync_mesh` for the routing
//! mesh's), `mesh` (the mesh maps' desired content, service slots, the conntrack sweep);
//! this file holds the [`Reconciler`] and its loop.
//!
//! Idempotent: a sync computes the desired state from a snapshot and changes only what
//! differs, so running it twice changes nothing and running it after a restart adopts
//! what an earlier run made. It runs on every new snapshot and every 30 s (to repair
//! anything changed behind its back).

mod desired;
mod host_path;
mod maps;
mod mesh;
mod plumbing;
mod sync_errors;
mod vip;

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::Duration};

use anyhow::Result;
use manager::{ops::EndpointRequest, state::Endpoint, view::ClusterView, Manager};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use dataplane_ebpf::guard::GuardedPort;

use crate::{
    config::MeshTimeouts,
    dataplane::{Dataplane, MapHandle, MeshMaps, OverlayMaps, VipMaps},
};

use desired::desired_maps;
pub(crate) use mesh::monotonic_ns;
pub use mesh::MeshStatus;
pub use plumbing::netns_path;
pub use sync_errors::{MapSyncErrors, SyncErrorReason};

/// The hint of host-side veth names (`sk` + hash of the endpoint ID).
pub const IFNAME_HINT: &str = "sk";
/// Used until the cluster's MTU is known (every node publishes its underlay MTU).
const FALLBACK_MTU: u32 = 1450;
const RESYNC: Duration = Duration::from_secs(30);

/// Keeps the kernel in step with the cluster.
pub struct Reconciler {
    manager: Manager,
    /// Host-side veths attached by `--endpoint-iface`: the operator's, never removed.
    static_ifaces: Vec<String>,
    dataplane: Arc<std::sync::Mutex<Dataplane>>,
    maps: std::sync::Mutex<OverlayMaps>,
    /// Serializes syncs with the API's endpoint plumbing.
    busy: Mutex<()>,
    /// Until then, syncs add and update but remove nothing: right after a restart this
    /// node does not know yet which peers are alive, and tearing down their endpoints'
    /// entries (or local plumbing) would drop the traffic the adopted dataplane carries.
    removals_from: std::time::Instant,
    /// The overlay subnets the egress NAT rule was last written for.
    egress: std::sync::Mutex<Option<Vec<ipnet::Ipv4Net>>>,
    /// Every map's sync errors, shared with `/metrics`.
    sync_errors: Arc<MapSyncErrors>,
    /// This agent's listening ports besides gossip (its metrics), kept from workloads.
    own_ports: Vec<GuardedPort>,
    /// Set by [`NO_MAP_SYNC_ENV`]: the overlay maps are never synced, so only what endpoint
    /// plumbing writes itself is there (a test of that).
    map_sync_disabled: bool,
    /// The routing mesh's maps, slots and sweep.
    mesh: std::sync::Mutex<MeshState>,
    /// What `/metrics`, the API and the peer RPC read of the mesh.
    mesh_status: Arc<MeshStatus>,
    mesh_timeouts: MeshTimeouts,
    /// The service VIPs' maps (`vip`).
    vip: std::sync::Mutex<VipMaps>,
    /// Told of every endpoint plumbed and unplumbed (the DNS server's sockets).
    watcher: std::sync::OnceLock<Arc<dyn EndpointWatcher>>,
}

/// Told when this node's endpoints are plumbed (every sync pass too: must be cheap when
/// nothing changed) and unplumbed: the DNS server opens and closes its sockets in their
/// namespaces.
pub(crate) trait EndpointWatcher: Send + Sync {
    fn plumbed(&self, endpoint: &Endpoint);
    fn unplumbed(&self, endpoint: &Endpoint);
}

/// What the reconciler needs for the routing mesh: its maps and conntrack timeouts.
pub(crate) struct MeshSetup {
    pub(crate) maps: MeshMaps,
    pub(crate) timeouts: MeshTimeouts,
    /// The service VIPs' maps (east-west balancing on the sending host).
    pub(crate) vip: VipMaps,
}

/// The reconciler's own mesh state.
struct MeshState {
    maps: MeshMaps,
    slots: mesh::MeshSlots,
    /// Whether the slots were taken over from the maps yet (first pass only).
    slots_adopted: bool,
    sweeper: mesh::Sweeper,
}

/// A test setting (`SKEIN_TEST_NO_MAP_SYNC=1` in the agent's environment): the reconciler
/// never syncs the overlay maps, so a test sees what endpoint plumbing alone writes
/// before an endpoint can send. Never set in production: remote endpoints would get no
/// entries.
pub const NO_MAP_SYNC_ENV: &str = "SKEIN_TEST_NO_MAP_SYNC";

/// How long after start the reconciler only adds: membership converges in a second or two.
const WARMUP: Duration = Duration::from_secs(10);

impl Reconciler {
    pub(crate) fn new(
        manager: Manager,
        dataplane: Arc<std::sync::Mutex<Dataplane>>,
        maps: OverlayMaps,
        static_ifaces: Vec<String>,
        sync_errors: Arc<MapSyncErrors>,
        own_ports: Vec<GuardedPort>,
        mesh: MeshSetup,
    ) -> Reconciler {
        let map_sync_disabled = std::env::var_os(NO_MAP_SYNC_ENV).is_some_and(|v| v == "1");
        if map_sync_disabled {
            warn!("{NO_MAP_SYNC_ENV}=1: the overlay maps are not synced (a test setting)");
        }
        Reconciler {
            manager,
            static_ifaces,
            dataplane,
            maps: std::sync::Mutex::new(maps),
            busy: Mutex::new(()),
            removals_from: std::time::Instant::now() + WARMUP,
            egress: std::sync::Mutex::new(None),
            sync_errors,
            own_ports,
            map_sync_disabled,
            mesh: std::sync::Mutex::new(MeshState {
                maps: mesh.maps,
                slots: mesh::MeshSlots::default(),
                slots_adopted: false,
                sweeper: mesh::Sweeper::default(),
            }),
            mesh_status: Arc::new(MeshStatus::default()),
            mesh_timeouts: mesh.timeouts,
            vip: std::sync::Mutex::new(mesh.vip),
            watcher: std::sync::OnceLock::new(),
        }
    }

    /// Sets the one [`EndpointWatcher`] (later calls are ignored).
    pub(crate) fn set_watcher(&self, watcher: Arc<dyn EndpointWatcher>) {
        let _ = self.watcher.set(watcher);
    }

    /// The mesh's slots and sweep counts, for `/metrics`, the API and the peer RPC.
    pub fn mesh_status(&self) -> Arc<MeshStatus> {
        self.mesh_status.clone()
    }

    /// Syncs on every snapshot and every 30 s, until the manager stops.
    pub async fn run(self: Arc<Self>) {
        let mut views = self.manager.subscribe();
        loop {
            let view = views.borrow_and_update().clone();
            if let Err(error) = self.sync(&view).await {
                warn!(error = %format!("{error:#}"), "reconcile failed; retrying on the next change");
            }
            // Resync periodically, and once right after the warm-up so removals held back
            // during it happen at once.
            let now = std::time::Instant::now();
            let next = if now < self.removals_from {
                self.removals_from - now
            } else {
                RESYNC
            };
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// One pass: plumb this node's endpoints, remove what no entry wants, fill the maps.
    pub async fn sync(&self, view: &ClusterView) -> Result<()> {
        let _busy = self.busy.lock().await;
        let mtu = view.overlay_mtu.unwrap_or(FALLBACK_MTU);
        let mut local: BTreeMap<String, u32> = BTreeMap::new();
        let wanted: Vec<Endpoint> = view
            .own_endpoints()
            .filter(|e| view.network(&e.network).is_some_and(|n| n.vni == e.vni))
            .filter(|e| !view.endpoints.collided.iter().any(|(_, c, _)| c.id == e.id))
            .cloned()
            .collect();
        for endpoint in &wanted {
            match self.plumb_unlocked(view, endpoint, mtu).await {
                Ok(ifindex) => {
                    local.insert(endpoint.id.clone(), ifindex);
                }
                Err(error) => {
                    warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not plumb an endpoint")
                }
            }
        }
        let removals = std::time::Instant::now() >= self.removals_from;
        // Plumbing that cannot be removed must not keep the maps from converging.
        let removed = if removals {
            self.remove_unwanted(&wanted).await
        } else {
            Ok(())
        };
        self.sync_egress(view);
        self.sync_host_path(view);
        if self.map_sync_disabled {
            return removed;
        }
        let desired = desired_maps(view, |e| local.get(&e.id).copied(), &self.own_ports);
        let changes = {
            let mut maps = self.maps.lock().expect("maps lock");
            maps::sync_overlay(&mut maps, &desired, removals, &self.sync_errors)
        };
        if changes > 0 {
            debug!(changes, "overlay maps updated");
        }
        self.sync_mesh(view, mtu, removals);
        let desired = vip::desired_vip(view);
        let mut vip_maps = self.vip.lock().expect("vip lock");
        let changes = vip::sync_vip(&mut vip_maps, &desired, removals, &self.sync_errors);
        if changes > 0 {
            debug!(changes, "vip maps updated");
        }
        removed
    }

    /// Fills the mesh's maps from `view` (slots assigned first), then sweeps one bounded
    /// step of its conntrack.
    fn sync_mesh(&self, view: &ClusterView, mtu: u32, removals: bool) {
        let mut state = self.mesh.lock().expect("mesh lock");
        let state = &mut *state;
        let wanted: Vec<(String, manager::state::Stamp)> = mesh::mesh_services(view)
            .iter()
            .map(|s| (s.name.clone(), s.created))
            .collect();
        if !state.slots_adopted {
            match state.maps.ports.entries() {
                Ok(ports) => state.slots.adopt(view, &ports),
                Err(error) => {
                    warn!(%error, "could not read the published ports a previous agent left; services get new slots")
                }
            }
            state.slots_adopted = true;
        }
        state.slots.assign(&wanted);
        self.mesh_status.set_slots(&state.slots);
        let desired = mesh::desired_mesh(view, &state.slots, &self.mesh_timeouts, mtu);
        let changes = maps::sync_mesh(&mut state.maps, &desired, removals, &self.sync_errors);
        if changes > 0 {
            debug!(changes, "mesh maps updated");
        }
        let own_ip = view
            .node(&view.self_id)
            .and_then(|n| n.info.as_ref())
            .map(|i| i.underlay_ip.octets());
        if let Some(own_ip) = own_ip {
            let (flows, replies) =
                state
                    .sweeper
                    .sweep(&mut state.maps, &desired.config, own_ip, &self.mesh_status);
            if flows + replies > 0 {
                debug!(flows, replies, "mesh conntrack swept");
            }
        }
    }

    /// Runs `read` on the mesh's maps (the conntrack listing, the peer RPC's counts).
    pub(crate) fn with_mesh_maps<T>(&self, read: impl FnOnce(&MeshMaps) -> T) -> T {
        read(&self.mesh.lock().expect("mesh lock").maps)
    }

    /// Records an endpoint of this node ([`Manager::create_endpoint`]) and plumbs it at once
    /// (`endpoint create|attach`, tasks); if the plumbing fails, the record and whatever was
    /// made go again, so nothing is left half-made.
    pub async fn add_endpoint(&self, request: EndpointRequest) -> Result<Endpoint> {
        let endpoint = self.manager.create_endpoint(request).await?;
        let view = self.manager.view();
        let mtu = view.overlay_mtu.unwrap_or(FALLBACK_MTU);
        if let Err(error) = self.plumb(&view, &endpoint, mtu).await {
            let _ = self.manager.remove_endpoint(&endpoint.id).await;
            let _ = self.unplumb(&endpoint).await;
            return Err(error.context("plumbing the endpoint"));
        }
        Ok(endpoint)
    }

    /// Keeps the egress NAT rule in step with the overlay subnets (only when they change).
    fn sync_egress(&self, view: &ClusterView) {
        let mut subnets: Vec<ipnet::Ipv4Net> =
            view.networks.valid.iter().map(|n| n.subnet).collect();
        subnets.sort();
        let mut applied = self.egress.lock().expect("egress lock");
        if applied.as_ref() == Some(&subnets) {
            return;
        }
        match crate::egress::apply(&subnets) {
            Ok(()) => {
                debug!(subnets = subnets.len(), "egress NAT updated");
                *applied = Some(subnets);
            }
            Err(error) => warn!(error = %format!("{error:#}"), "endpoints have no egress"),
        }
    }

    /// `skein debug maps`: every map's entries, a line for every map that did not
    /// converge on its latest sync, with its last error, and every program's counters
    /// that are not zero (verdicts and drop reasons, as `/metrics` has them).
    pub fn dump_maps(&self) -> Result<String> {
        let mut out = self.maps.lock().expect("maps lock").dump();
        self.with_mesh_maps(|mesh| mesh.dump(&mut out));
        self.vip.lock().expect("vip lock").dump(&mut out);
        for (map, error) in self.sync_errors.unconverged() {
            let _ = writeln!(out, "not converged: {map}: {error}");
        }
        let counters = self
            .dataplane
            .lock()
            .expect("dataplane lock")
            .counters()?
            .read();
        let _ = writeln!(out, "counters (non-zero):");
        for (program, verdict, counter) in counters.iter().filter(|(_, _, c)| c.packets > 0) {
            let reason = verdict
                .reason()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {program} {}{reason}: {} packets, {} bytes",
                verdict.name(),
                counter.packets,
                counter.bytes
            );
        }
        Ok(out)
    }
}
