//! The one table of pinned maps: name, kernel map type, key and value size, capacity.
//!
//! Everything that needs to know a map reads it here: the programs take their
//! capacities from it (and assert at compile time that their `#[map]` statics have its
//! key/value sizes), the agent checks a pinned map against it before adopting it, and
//! opens its typed handles by its names. Pinned maps keep their size across upgrades, so
//! the capacities are generous; the manager bounds what it allows below them.

use core::mem::size_of;

use crate::{
    counters::{Counter, COUNTER_SLOTS},
    guard::{GuardedHostKey, GuardedHostValue, GuardedPort, GuardedPortValue},
    mesh::{
        Flow, FlowKey, MeshBackend, MeshBackendKey, MeshConfig, MeshPort, MeshPortKey, MeshService,
        MeshStatKey, MeshStats, MeshTarget, MeshTargetKey, Reply, ReplyKey, CT_EVENT_SLOTS,
        MESH_MAX_SERVICES,
    },
    overlay::{
        EndpointKey, EndpointValue, NetworkKey, NetworkValue, PortKey, PortValue, SubnetKey,
        SubnetValue, UnderlayValue, VtepKey, VtepValue,
    },
    sock::{HostFlow, SockAddr, SockConfig, SockKey},
    vip::{
        VipBackend, VipBackendKey, VipFlow, VipFlowKey, VipPort, VipPortKey, VipReply, VipReplyKey,
        VipService, VipServiceKey, VIP_EVENT_SLOTS,
    },
};

/// The kernel's map type of a pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    /// Longest-prefix-match trie; its key is a `u32` prefix length and then the data.
    LpmTrie,
    Array,
    PerCpuArray,
    /// Hash whose least recently used entries are evicted when full (conntrack).
    LruHash,
    PerCpuHash,
}

impl MapKind {
    /// `==` for const contexts (the programs' compile-time checks).
    pub const fn is(self, other: MapKind) -> bool {
        self as u8 == other as u8
    }
}

/// Who fills a pinned map, which decides what an upgrade that changes its layout must
/// do with its entries (see [`crate::migrations`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// Entries the agent writes from the cluster view (or at start): a new map may start
    /// empty, the reconciler refills it.
    Agent,
    /// Counters: a new map may start at zero.
    Counters,
    /// State only the kernel holds (conntrack, NAT, round-robin positions): every entry
    /// must be carried over, or live connections break.
    Kernel,
}

/// One pinned map as both sides must agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the object and its pin's name under `<bpf-dir>/maps`.
    pub name: &'static str,
    pub kind: MapKind,
    /// Bytes, as the kernel reports them (an LPM trie's include the prefix length).
    pub key_size: u32,
    pub value_size: u32,
    /// `max_entries`.
    pub capacity: u32,
    /// This build's layout version: 0 for the first, one more at each change of type or
    /// key/value layout; the earlier ones are in [`crate::migrations::older_layouts`].
    pub layout: u32,
    pub holds: Holds,
}

impl MapSpec {
    /// The spec of a map from `K` to `V` (their sizes taken from the ABI types).
    pub const fn new<K, V>(name: &'static str, kind: MapKind, capacity: u32) -> MapSpec {
        MapSpec {
            name,
            kind,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            capacity,
            layout: 0,
            holds: Holds::Agent,
        }
    }

    /// The same spec for a map whose entries only the kernel holds.
    pub const fn kernel_state(self) -> MapSpec {
        MapSpec {
            holds: Holds::Kernel,
            ..self
        }
    }

    /// The same spec at layout `version` (see [`MapSpec::layout`]).
    pub const fn layout(self, version: u32) -> MapSpec {
        MapSpec {
            layout: version,
            ..self
        }
    }

    /// The same spec for a map of counters.
    pub const fn counts(self) -> MapSpec {
        MapSpec {
            holds: Holds::Counters,
            ..self
        }
    }

    /// Whether a map of `kind` with these key and value sizes has this spec's layout.
    pub const fn matches(&self, kind: MapKind, key_size: usize, value_size: usize) -> bool {
        self.kind.is(kind)
            && self.key_size as usize == key_size
            && self.value_size as usize == value_size
    }
}

/// Per-CPU counters of `xdp_underlay`, indexed by [`crate::counters::Verdict`].
pub const XDP_UNDERLAY_COUNTERS: MapSpec = counters("XDP_UNDERLAY_COUNTERS");
/// Per-CPU counters of `tc_endpoint_ingress`, indexed by [`crate::counters::Verdict`].
pub const TC_ENDPOINT_COUNTERS: MapSpec = counters("TC_ENDPOINT_COUNTERS");
/// Per-CPU counters of `tc_underlay_ingress`, indexed by [`crate::counters::Verdict`].
pub const TC_UNDERLAY_COUNTERS: MapSpec = counters("TC_UNDERLAY_COUNTERS");

const fn counters(name: &'static str) -> MapSpec {
    MapSpec::new::<u32, Counter>(name, MapKind::PerCpuArray, COUNTER_SLOTS).counts()
}

/// Every endpoint of the cluster's live nodes, by (VNI, IP).
pub const OVERLAY_ENDPOINTS: MapSpec =
    MapSpec::new::<EndpointKey, EndpointValue>("OVERLAY_ENDPOINTS", MapKind::Hash, 65_536);
/// This host's endpoints, by the ifindex of their host-side veth.
pub const OVERLAY_PORTS: MapSpec =
    MapSpec::new::<PortKey, PortValue>("OVERLAY_PORTS", MapKind::Hash, 4_096);
/// The cluster's networks, by VNI.
pub const OVERLAY_NETWORKS: MapSpec =
    MapSpec::new::<NetworkKey, NetworkValue>("OVERLAY_NETWORKS", MapKind::Hash, 4_096);
/// External VTEPs by (VNI, prefix).
pub const OVERLAY_VTEPS: MapSpec =
    MapSpec::new::<VtepKey, VtepValue>("OVERLAY_VTEPS", MapKind::LpmTrie, 4_096);
/// Every network's subnet → its VNI, so traffic to another network is dropped
/// (isolation) rather than routed by the host. One subnet per network.
pub const OVERLAY_SUBNETS: MapSpec = MapSpec::new::<SubnetKey, SubnetValue>(
    "OVERLAY_SUBNETS",
    MapKind::LpmTrie,
    OVERLAY_NETWORKS.capacity,
);
/// One slot: this host's underlay.
pub const OVERLAY_UNDERLAY: MapSpec =
    MapSpec::new::<u32, UnderlayValue>("OVERLAY_UNDERLAY", MapKind::Array, 1);

/// Addresses of the cluster's hosts (every node's underlay and gossip address, every
/// external VTEP): workloads may not reach [`GUARDED_PORTS`] there (see [`crate::guard`]).
pub const GUARDED_HOSTS: MapSpec =
    MapSpec::new::<GuardedHostKey, GuardedHostValue>("GUARDED_HOSTS", MapKind::Hash, 8_192);
/// The cluster's own ports, by protocol: VXLAN, every node's gossip port (UDP and TCP),
/// the agent's metrics port (see [`crate::guard`]).
pub const GUARDED_PORTS: MapSpec =
    MapSpec::new::<GuardedPort, GuardedPortValue>("GUARDED_PORTS", MapKind::Hash, 256);

/// One slot: the routing mesh's settings (see [`crate::mesh::MeshConfig`]).
pub const MESH_CONFIG: MapSpec = MapSpec::new::<u32, MeshConfig>("MESH_CONFIG", MapKind::Array, 1);
/// Published ports of `ingress`-mode services → service slot and target port.
pub const MESH_PORTS: MapSpec =
    MapSpec::new::<MeshPortKey, MeshPort>("MESH_PORTS", MapKind::Hash, 4_096);
/// Each service slot's rotation: backend count, shared cursor, VNI.
pub const MESH_SERVICES: MapSpec =
    MapSpec::new::<u32, MeshService>("MESH_SERVICES", MapKind::Array, MESH_MAX_SERVICES)
        .kernel_state();
/// (service slot, index) → serving task (overlay IP, host's underlay IP).
pub const MESH_BACKENDS: MapSpec =
    MapSpec::new::<MeshBackendKey, MeshBackend>("MESH_BACKENDS", MapKind::Hash, 65_536);
/// The ingress node's conntrack: the client's flow → its backend and TCP state.
pub const MESH_FLOWS: MapSpec =
    MapSpec::new::<FlowKey, Flow>("MESH_FLOWS", MapKind::LruHash, 262_144)
        .kernel_state()
        .layout(1);
/// A flow as replies carry it → the ingress node it came through.
pub const MESH_REPLIES: MapSpec =
    MapSpec::new::<ReplyKey, Reply>("MESH_REPLIES", MapKind::LruHash, 262_144).kernel_state();
/// Every cluster node's underlay address: the only senders of mesh VXLAN.
pub const MESH_NODES: MapSpec = MapSpec::new::<[u8; 4], u32>("MESH_NODES", MapKind::Hash, 4_096);
/// This node's tasks × their service's target ports: where mesh VXLAN may deliver.
pub const MESH_TARGETS: MapSpec =
    MapSpec::new::<MeshTargetKey, MeshTarget>("MESH_TARGETS", MapKind::Hash, 16_384);
/// Per service and backend: new flows, packets, bytes (per CPU).
pub const MESH_STATS: MapSpec =
    MapSpec::new::<MeshStatKey, MeshStats>("MESH_STATS", MapKind::PerCpuHash, 65_536).counts();
/// Conntrack entries created and deleted by the programs (per CPU; see
/// [`crate::mesh::CT_INSERTED`]).
pub const MESH_CT_EVENTS: MapSpec =
    MapSpec::new::<u32, u64>("MESH_CT_EVENTS", MapKind::PerCpuArray, CT_EVENT_SLOTS).counts();

/// Service VIPs (see [`crate::vip`]): destinations an endpoint balances to.
pub const VIP_PORTS: MapSpec =
    MapSpec::new::<VipPortKey, VipPort>("VIP_PORTS", MapKind::Hash, 65_536);
/// Each VIP service's rotation (backend count, shared cursor).
pub const VIP_SERVICES: MapSpec =
    MapSpec::new::<VipServiceKey, VipService>("VIP_SERVICES", MapKind::Hash, 4_096).kernel_state();
/// Each VIP service's serving tasks on its network.
pub const VIP_BACKENDS: MapSpec =
    MapSpec::new::<VipBackendKey, VipBackend>("VIP_BACKENDS", MapKind::Hash, 65_536);
/// The sending host's VIP conntrack.
pub const VIP_FLOWS: MapSpec =
    MapSpec::new::<VipFlowKey, VipFlow>("VIP_FLOWS", MapKind::LruHash, 262_144)
        .kernel_state()
        .layout(1);
/// The reverse translation of VIP flows' replies.
pub const VIP_REPLIES: MapSpec =
    MapSpec::new::<VipReplyKey, VipReply>("VIP_REPLIES", MapKind::LruHash, 262_144).kernel_state();
/// What the VIP balancer did, per event (`vip::VIP_*`), per CPU.
pub const VIP_EVENTS: MapSpec =
    MapSpec::new::<u32, u64>("VIP_EVENTS", MapKind::PerCpuArray, VIP_EVENT_SLOTS).counts();
/// Per-CPU counters of `tc_host_egress`, indexed by [`crate::counters::Verdict`].
pub const TC_HOST_COUNTERS: MapSpec = counters("TC_HOST_COUNTERS");
/// One slot: whose host namespace the socket hooks act for (see [`crate::sock`]).
pub const SOCK_CONFIG: MapSpec = MapSpec::new::<u32, SockConfig>("SOCK_CONFIG", MapKind::Array, 1);
/// (socket, backend address) → the service address it stands for (`recvmsg`,
/// `getpeername`). LRU: a socket's entry ends with it or with the least recent use.
pub const SOCK_REVERSE: MapSpec =
    MapSpec::new::<SockKey, SockAddr>("SOCK_REVERSE", MapKind::LruHash, 262_144).kernel_state();
/// (unconnected UDP socket, service address) → the backend picked for it.
pub const SOCK_PICKS: MapSpec =
    MapSpec::new::<SockKey, SockAddr>("SOCK_PICKS", MapKind::LruHash, 65_536).kernel_state();
/// Connections this host opened to tasks on other nodes (see [`crate::sock::HostFlow`]).
pub const HOST_FLOWS: MapSpec =
    MapSpec::new::<ReplyKey, HostFlow>("HOST_FLOWS", MapKind::LruHash, 65_536).kernel_state();

/// Every map the agent pins under `<bpf-dir>/maps`, so a restarted agent adopts them.
pub const PINNED: &[MapSpec] = &[
    XDP_UNDERLAY_COUNTERS,
    TC_ENDPOINT_COUNTERS,
    TC_UNDERLAY_COUNTERS,
    OVERLAY_ENDPOINTS,
    OVERLAY_PORTS,
    OVERLAY_NETWORKS,
    OVERLAY_VTEPS,
    OVERLAY_UNDERLAY,
    OVERLAY_SUBNETS,
    GUARDED_HOSTS,
    GUARDED_PORTS,
    MESH_CONFIG,
    MESH_PORTS,
    MESH_SERVICES,
    MESH_BACKENDS,
    MESH_FLOWS,
    MESH_REPLIES,
    MESH_NODES,
    MESH_TARGETS,
    MESH_STATS,
    MESH_CT_EVENTS,
    VIP_PORTS,
    VIP_SERVICES,
    VIP_BACKENDS,
    VIP_FLOWS,
    VIP_REPLIES,
    VIP_EVENTS,
    TC_HOST_COUNTERS,
    SOCK_CONFIG,
    SOCK_REVERSE,
    SOCK_PICKS,
    HOST_FLOWS,
];

/// Every counters map, with the program it counts for.
pub const COUNTERS: &[(&str, MapSpec)] = &[
    (crate::names::XDP_UNDERLAY, XDP_UNDERLAY_COUNTERS),
    (crate::names::TC_ENDPOINT_INGRESS, TC_ENDPOINT_COUNTERS),
    (crate::names::TC_UNDERLAY_INGRESS, TC_UNDERLAY_COUNTERS),
    (crate::names::TC_HOST_EGRESS, TC_HOST_COUNTERS),
];

/// The table entry named `name`.
pub fn by_name(name: &str) -> Option<&'static MapSpec> {
    PINNED.iter().find(|spec| spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The programs' map declarations (`pinned!` in the eBPF binary, which cannot be
    /// built for the host): each asserts its key/value sizes against this table at
    /// compile time; this checks that every table entry is declared there once and
    /// nothing else is.
    const PROGRAM_MAPS: &str = include_str!("bin/skein-dataplane/maps.rs");

    fn declared() -> std::vec::Vec<std::string::String> {
        PROGRAM_MAPS
            .lines()
            .filter_map(|line| line.trim().strip_prefix("pinned!("))
            .filter_map(|rest| rest.split(':').next())
            .map(|name| name.trim().into())
            .collect()
    }

    extern crate std;

    #[test]
    fn names_are_unique_and_every_map_is_declared_by_the_programs() {
        let declared = declared();
        for spec in PINNED {
            assert_eq!(
                PINNED.iter().filter(|s| s.name == spec.name).count(),
                1,
                "{}",
                spec.name
            );
            assert_eq!(
                declared.iter().filter(|d| *d == spec.name).count(),
                1,
                "{} declared once with pinned! in the programs' maps.rs",
                spec.name
            );
        }
        assert_eq!(declared.len(), PINNED.len(), "{declared:?}");
        assert!(
            PROGRAM_MAPS.matches("#[map").count() == 1,
            "maps are declared only through pinned!"
        );
    }

    #[test]
    fn layouts_are_what_the_kernel_reports() {
        // A port is a u32 ifindex → (VNI, IP).
        assert_eq!(
            (
                OVERLAY_PORTS.kind,
                OVERLAY_PORTS.key_size,
                OVERLAY_PORTS.value_size
            ),
            (MapKind::Hash, 4, 8)
        );
        // LPM keys carry their prefix length: 4 + 8 and 4 + 4 bytes.
        assert_eq!(OVERLAY_VTEPS.key_size, 12);
        assert_eq!(OVERLAY_SUBNETS.key_size, 8);
        assert_eq!(OVERLAY_ENDPOINTS.capacity, 65_536);
        assert_eq!(by_name("OVERLAY_NETWORKS"), Some(&OVERLAY_NETWORKS));
        assert!(OVERLAY_PORTS.matches(MapKind::Hash, 4, 8));
        assert!(!OVERLAY_PORTS.matches(MapKind::LpmTrie, 4, 8));
    }
}
