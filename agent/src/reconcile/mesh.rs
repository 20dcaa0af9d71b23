//! The routing mesh's desired maps, computed from a cluster snapshot ([`desired_mesh`]),
//! the service slots the agent assigns ([`MeshSlots`]), and the conntrack sweep
//! ([`Sweeper`]).
//!
//! What each map holds (see `dataplane_ebpf::mesh` and MESH-DESIGN.md):
//! - `MESH_CONFIG`: the ingress VNI ([`INGRESS_VNI`]), the MSS clamp (overlay MTU − 40),
//!   the conntrack timeouts;
//! - `MESH_PORTS`: every published port of every `ingress`-mode service, and of every
//!   `host`-mode service with a task on this node (`opens_here`) → its slot and target
//!   port;
//! - `MESH_SERVICES[slot]`: how many backends, and the VNI of the service's network (the
//!   cursor is the programs');
//! - `MESH_BACKENDS[(slot, i)]`: the service's serving tasks (running, healthy, not
//!   draining, on an up node, endpoint live) — cluster-wide in ingress mode, this node's
//!   own in host mode —, ordered by task slot then ID;
//! - `MESH_NODES`: every known node's underlay address (up or down);
//! - `MESH_TARGETS`: this node's own tasks of ingress services in any state whose
//!   endpoint exists × the target ports (a draining task still receives its established
//!   flows); never a host-mode task's, since no other node forwards to one;
//! - `MESH_STATS`: a zeroed row for (slot, 0) and for (slot, task) of every live task
//!   the slot balances over (a backend that leaves the rotation keeps counting its flows).
//!
//! **Host mode** (`--publish-mode host`) reuses the ingress path unchanged: on a node
//! holding a task of the service the port is in `MESH_PORTS` with only that node's tasks
//! as backends, so every flow is a local delivery; on any other node the port is simply
//! not there, and the packet goes to the host stack untouched, like any port Skein does
//! not publish (closed unless the host itself listens). The port stays open while the
//! node's last task drains (its established flows go on; new ones are refused in XDP
//! like a service without a serving task) and closes when that task's endpoint goes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use dataplane_ebpf::{
    guard::{IPPROTO_TCP, IPPROTO_UDP},
    mesh::{
        expired, FlowKey, MeshBackend, MeshBackendKey, MeshConfig, MeshPort, MeshPortKey,
        MeshService, MeshStatKey, MeshTarget, MeshTargetKey, ReplyKey, MESH_MAX_SERVICES,
    },
};
use manager::{
    state::{network::INGRESS_VNI, Endpoint, Protocol, PublishMode, Service, Stamp},
    view::ClusterView,
    NodeId,
};
use tracing::warn;

use crate::{config::MeshTimeouts, dataplane::MeshMaps};

// What the manager allows stays below what the mesh's maps hold, so the desired state
// always fits: a slot per service, a backend entry per task, a stats row per task and
// one per service.
const _: () = {
    use dataplane_ebpf::maps;
    use manager::limits;
    assert!(limits::MAX_SERVICES <= MESH_MAX_SERVICES as usize);
    assert!(maps::MESH_SERVICES.capacity == MESH_MAX_SERVICES);
    // Every task has an endpoint: at most MAX_ENDPOINTS backends, and stats rows.
    assert!(limits::MAX_ENDPOINTS <= maps::MESH_BACKENDS.capacity as usize);
    assert!(limits::MAX_ENDPOINTS + limits::MAX_SERVICES <= maps::MESH_STATS.capacity as usize);
    // This node's tasks × target ports: a service publishes a handful of ports.
    assert!(limits::MAX_NODE_ENDPOINTS * 4 <= maps::MESH_TARGETS.capacity as usize);
    // Every node's address (known nodes are far fewer than endpoints per node).
    assert!(maps::MESH_NODES.capacity as usize >= 4_096);
};

/// Bytes of IPv4 + TCP headers without options: the MSS clamp is the overlay MTU less
/// them, so a full segment still fits the underlay once encapsulated.
const IPV4_TCP_HEADERS: u32 = 40;

/// The mesh maps' desired content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DesiredMesh {
    pub(crate) config: MeshConfig,
    pub(crate) ports: BTreeMap<MeshPortKey, MeshPort>,
    pub(crate) services: BTreeMap<u32, MeshService>,
    pub(crate) backends: BTreeMap<MeshBackendKey, MeshBackend>,
    pub(crate) nodes: BTreeMap<[u8; 4], u32>,
    pub(crate) targets: BTreeMap<MeshTargetKey, MeshTarget>,
    pub(crate) stats: BTreeMap<MeshStatKey, ()>,
}

/// One service incarnation: its name and creation stamp.
pub(crate) type ServiceRef = (String, Stamp);

/// Service slots (indices of `MESH_SERVICES`), assigned by this agent: a service keeps
/// its slot while the agent runs (its cursor and its flows' counters live there); a new
/// service takes the lowest free slot; a slot is freed when its service goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MeshSlots {
    by_service: BTreeMap<ServiceRef, u32>,
}

impl MeshSlots {
    /// Frees the slots of services not in `wanted`, then gives each wanted service
    /// without one the lowest free slot (none once all [`MESH_MAX_SERVICES`] are taken,
    /// which the manager's limit keeps from happening).
    pub(crate) fn assign(&mut self, wanted: &[ServiceRef]) {
        let keep: BTreeSet<&ServiceRef> = wanted.iter().collect();
        self.by_service.retain(|service, _| keep.contains(service));
        let mut used: BTreeSet<u32> = self.by_service.values().copied().collect();
        let mut next = 0u32;
        for service in wanted {
            if self.by_service.contains_key(service) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= MESH_MAX_SERVICES {
                warn!(service = %service.0, "no mesh slot left; its published ports stay closed");
                continue;
            }
            used.insert(next);
            self.by_service.insert(service.clone(), next);
        }
    }

    /// Takes over the slots a previous agent gave the services in `view`, as its
    /// `MESH_PORTS` shows them (`ports`: every published port of a service leads to one
    /// slot), so a restarted agent keeps every service's slot — and so its rotation,
    /// its backends' indices and its counters — instead of renumbering under live
    /// traffic. Call once, before the first [`MeshSlots::assign`].
    pub(crate) fn adopt(&mut self, view: &ClusterView, ports: &[(MeshPortKey, MeshPort)]) {
        let by_port: HashMap<MeshPortKey, u32> =
            ports.iter().map(|(key, port)| (*key, port.slot)).collect();
        for service in mesh_services(view) {
            let found: BTreeSet<u32> = service
                .ports
                .iter()
                .filter_map(|p| {
                    by_port
                        .get(&MeshPortKey::new(protocol_number(p.protocol), p.published))
                        .copied()
                })
                .collect();
            let (Some(&slot), 1) = (found.first(), found.len()) else {
                continue;
            };
            let taken = self.by_service.values().any(|s| *s == slot);
            if slot < MESH_MAX_SERVICES && !taken {
                self.by_service
                    .entry((service.name.clone(), service.created))
                    .or_insert(slot);
            }
        }
    }

    pub(crate) fn slot(&self, name: &str, created: Stamp) -> Option<u32> {
        self.by_service.get(&(name.to_owned(), created)).copied()
    }

    /// slot → service, for labelling counters.
    pub(crate) fn by_slot(&self) -> BTreeMap<u32, ServiceRef> {
        self.by_service
            .iter()
            .map(|(service, slot)| (*slot, service.clone()))
            .collect()
    }
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// The services the mesh balances: valid, at least one published port, their network
/// known; either publish mode (each gets a slot on every node, so its slot stays put
/// while host-mode tasks come and go; a host-mode service's slot stays empty on a node
/// without its tasks).
pub(crate) fn mesh_services(view: &ClusterView) -> Vec<&Service> {
    view.services
        .valid
        .iter()
        .filter(|s| !s.ports.is_empty())
        .filter(|s| view.network(&s.network).is_some())
        .collect()
}

/// Whether `service`'s published ports open on this node: always in ingress mode; in
/// host mode while this node holds a task of it (in any state: starting, serving,
/// unhealthy, exited and awaiting its restart, draining) whose endpoint (`own`: this
/// node's endpoints by ID) is on the service's network (`vni`). Keeping the port through
/// a drain matters: the programs look the port up before the conntrack, so closing it
/// early would cut the draining task's established flows.
fn opens_here(
    view: &ClusterView,
    own: &HashMap<&str, &Endpoint>,
    service: &Service,
    vni: u32,
) -> bool {
    if service.publish_mode == PublishMode::Ingress {
        return true;
    }
    view.tasks_of(service)
        .filter(|(node, _)| *node == view.self_id)
        .any(|(_, task)| {
            own.get(task.endpoint.as_str())
                .is_some_and(|e| e.vni == vni)
        })
}

/// The mesh maps for `view` with the slots in `slots` (assigned by the caller from
/// [`mesh_services`]).
pub(crate) fn desired_mesh(
    view: &ClusterView,
    slots: &MeshSlots,
    timeouts: &MeshTimeouts,
    overlay_mtu: u32,
) -> DesiredMesh {
    let mut desired = DesiredMesh {
        config: timeouts.apply(MeshConfig {
            ingress_vni: INGRESS_VNI,
            mss: u16::try_from(overlay_mtu.saturating_sub(IPV4_TCP_HEADERS)).unwrap_or(u16::MAX),
            ..MeshConfig::default()
        }),
        ..DesiredMesh::default()
    };
    let underlay: HashMap<NodeId, [u8; 4]> = view
        .nodes
        .iter()
        .filter_map(|n| Some((n.id, n.info.as_ref()?.underlay_ip.octets())))
        .collect();
    desired.nodes = underlay.values().map(|ip| (*ip, 0)).collect();
    let live: HashMap<(NodeId, &str), &Endpoint> = view
        .live_endpoints()
        .map(|(node, e)| ((*node, e.id.as_str()), e))
        .collect();
    let own: HashMap<&str, &Endpoint> = view
        .endpoints
        .valid
        .iter()
        .filter(|(node, _)| *node == view.self_id)
        .map(|(_, e)| (e.id.as_str(), e))
        .collect();
    for service in mesh_services(view) {
        let Some(slot) = slots.slot(&service.name, service.created) else {
            continue;
        };
        let Some(network) = view.network(&service.network) else {
            continue;
        };
        let vni = network.vni;
        if !opens_here(view, &own, service, vni) {
            continue;
        }
        // Host mode balances over this node's tasks only.
        let host_mode = service.publish_mode == PublishMode::Host;
        let balanced = |node: &NodeId| !host_mode || *node == view.self_id;
        // A task's endpoint, if live on the service's network, with its host's address.
        let placed = |node: &NodeId, endpoint: &str| {
            let e = live.get(&(*node, endpoint)).filter(|e| e.vni == vni)?;
            Some((e.ip.octets(), *underlay.get(node)?))
        };
        let mut backends: Vec<(u32, &str, [u8; 4], [u8; 4])> = view
            .tasks_of(service)
            .serving()
            .filter(|(node, _)| balanced(node))
            .filter_map(|(node, task)| {
                let (ip, host) = placed(node, &task.endpoint)?;
                Some((task.slot, task.id.as_str(), ip, host))
            })
            .collect();
        backends.sort();
        for (index, (_, _, ip, host_ip)) in backends.iter().enumerate() {
            desired.backends.insert(
                MeshBackendKey {
                    slot,
                    index: index as u32,
                },
                MeshBackend {
                    ip: *ip,
                    host_ip: *host_ip,
                },
            );
        }
        desired.services.insert(
            slot,
            MeshService {
                backends: backends.len() as u32,
                cursor: 0,
                vni,
            },
        );
        desired.stats.insert(
            MeshStatKey {
                slot,
                backend_ip: [0; 4],
            },
            (),
        );
        for (node, task) in view.tasks_of(service).live() {
            if !balanced(node) {
                continue;
            }
            if let Some((ip, _)) = placed(node, &task.endpoint) {
                desired.stats.insert(
                    MeshStatKey {
                        slot,
                        backend_ip: ip,
                    },
                    (),
                );
            }
        }
        for port in &service.ports {
            let protocol = protocol_number(port.protocol);
            desired.ports.insert(
                MeshPortKey::new(protocol, port.published),
                MeshPort {
                    slot,
                    target_port_be: port.target.to_be_bytes(),
                    _pad: [0; 2],
                },
            );
        }
        // This node's tasks of the service, draining or not, while their endpoint exists:
        // what other nodes may forward to. Nothing in host mode (fail closed: no other
        // node's frames on the ingress VNI reach a host-mode task).
        if host_mode {
            continue;
        }
        for (node, task) in view.tasks_of(service) {
            if *node != view.self_id {
                continue;
            }
            let Some(endpoint) = own.get(task.endpoint.as_str()).filter(|e| e.vni == vni) else {
                continue;
            };
            for port in &service.ports {
                desired.targets.insert(
                    MeshTargetKey {
                        ip: endpoint.ip.octets(),
                        port_be: port.target.to_be_bytes(),
                        protocol: protocol_number(port.protocol),
                        _pad: 0,
                    },
                    MeshTarget { vni },
                );
            }
        }
    }
    desired
}

/// What the reconciler shares with `/metrics`, the API and the peer RPC: which service
/// each slot belongs to, and how many conntrack entries the agent swept.
#[derive(Debug, Default)]
pub struct MeshStatus {
    slots: Mutex<BTreeMap<u32, ServiceRef>>,
    flows_swept: AtomicU64,
    replies_swept: AtomicU64,
}

impl MeshStatus {
    pub(crate) fn set_slots(&self, slots: &MeshSlots) {
        *self.slots.lock().unwrap_or_else(|e| e.into_inner()) = slots.by_slot();
    }

    /// slot → (service name, created).
    pub fn slots(&self) -> BTreeMap<u32, (String, Stamp)> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The slot of the service `name` created at `created`, if it has one.
    pub fn slot_of(&self, name: &str, created: Stamp) -> Option<u32> {
        self.slots()
            .into_iter()
            .find(|(_, (n, c))| n == name && *c == created)
            .map(|(slot, _)| slot)
    }

    /// `MESH_FLOWS` entries the agent deleted (expired).
    pub fn flows_swept(&self) -> u64 {
        self.flows_swept.load(Ordering::Relaxed)
    }

    /// `MESH_REPLIES` entries the agent deleted (stale).
    pub fn replies_swept(&self) -> u64 {
        self.replies_swept.load(Ordering::Relaxed)
    }
}

/// Entries of each conntrack map the sweep looks at per pass: bounded work (two
/// syscalls an entry, some tens of milliseconds), the whole 262,144-entry map in four
/// passes.
pub(crate) const SWEEP_BATCH: usize = 65_536;

/// The conntrack sweep's place in each map, so consecutive passes cover all of it.
#[derive(Debug, Default)]
pub(crate) struct Sweeper {
    flows_after: Option<FlowKey>,
    replies_after: Option<ReplyKey>,
}

/// Now on `CLOCK_MONOTONIC`, the programs' `bpf_ktime_get_ns` clock.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl Sweeper {
    /// One bounded step of the sweep: deletes `MESH_FLOWS` entries past their timeout,
    /// and `MESH_REPLIES` entries idle longer than the established timeout whose flow is
    /// gone (on the ingress node: no live `MESH_FLOWS` entry; on a backend host, where the
    /// flow is another node's: `seen_ns` alone). Each is re-read just before deletion, so
    /// a flow a packet refreshed meanwhile stays. Returns (flows, replies) deleted.
    pub(crate) fn sweep(
        &mut self,
        maps: &mut MeshMaps,
        config: &MeshConfig,
        own_ip: [u8; 4],
        status: &MeshStatus,
    ) -> (u64, u64) {
        let mut flows = 0;
        match maps.flows_page(self.flows_after, SWEEP_BATCH) {
            Ok((page, next)) => {
                self.flows_after = next;
                let now = monotonic_ns();
                for (key, flow) in page {
                    if !expired(config, key.protocol, &flow, now) {
                        continue;
                    }
                    let still = maps
                        .flow(&key)
                        .is_some_and(|f| expired(config, key.protocol, &f, monotonic_ns()));
                    if still && maps.remove_flow(&key).unwrap_or(false) {
                        flows += 1;
                    }
                }
            }
            Err(error) => {
                self.flows_after = None;
                warn!(%error, "could not sweep the mesh conntrack");
            }
        }
        let mut replies = 0;
        match maps.replies_page(self.replies_after, SWEEP_BATCH) {
            Ok((page, next)) => {
                self.replies_after = next;
                let stale = |maps: &MeshMaps, key: &ReplyKey| -> bool {
                    let Some(reply) = maps.reply(key) else {
                        return false;
                    };
                    let now = monotonic_ns();
                    if now.saturating_sub(reply.seen_ns) <= config.established_timeout_ns {
                        return false;
                    }
                    if reply.ingress_ip != own_ip {
                        return true;
                    }
                    let flow = FlowKey {
                        client_ip: key.client_ip,
                        node_ip: own_ip,
                        client_port_be: key.client_port_be,
                        published_port_be: reply.published_port_be,
                        protocol: key.protocol,
                        _pad: [0; 3],
                    };
                    maps.flow(&flow)
                        .is_none_or(|f| expired(config, key.protocol, &f, now))
                };
                for (key, _) in page {
                    if stale(maps, &key) && maps.remove_reply(&key).unwrap_or(false) {
                        replies += 1;
                    }
                }
            }
            Err(error) => {
                self.replies_after = None;
                warn!(%error, "could not sweep the mesh reply map");
            }
        }
        status.flows_swept.fetch_add(flows, Ordering::Relaxed);
        status.replies_swept.fetch_add(replies, Ordering::Relaxed);
        (flows, replies)
    }
}

#[cfg(test)]
mod tests;
