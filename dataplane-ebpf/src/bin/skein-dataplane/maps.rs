//! The programs' maps, declared from the ABI's table ([`dataplane_ebpf::maps`]): each
//! takes its name from its static's identifier (the table's name), its capacity from the
//! table, and fails the build if its kernel type or key/value sizes differ from the
//! table's. Every map is pinned by name under `<bpf-dir>/maps`, so a restarted agent
//! keeps the counters counting and the overlay's state in place.
//!
//! Also the typed lookups the programs share.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use dataplane_ebpf::{
    counters::Counter,
    guard::{GuardedHostKey, GuardedHostValue, GuardedPort, GuardedPortValue},
    maps::{self as spec, MapKind},
    mesh::{
        Flow, FlowKey, MeshBackend, MeshBackendKey, MeshConfig, MeshPort, MeshPortKey, MeshService,
        MeshStatKey, MeshStats, MeshTarget, MeshTargetKey, Reply, ReplyKey,
    },
    overlay::{EndpointKey, EndpointValue, NetworkValue, PortValue, UnderlayValue, VtepValue},
    sock::{HostFlow, SockAddr, SockConfig, SockKey},
    vip::{
        VipBackend, VipBackendKey, VipFlow, VipFlowKey, VipPort, VipPortKey, VipReply, VipReplyKey,
        VipService, VipServiceKey,
    },
};

/// The kernel's view of an aya-ebpf map type: its kind and key/value sizes.
trait Layout {
    const KIND: MapKind;
    const KEY: usize;
    const VALUE: usize;
}

impl<K, V> Layout for HashMap<K, V> {
    const KIND: MapKind = MapKind::Hash;
    const KEY: usize = size_of::<K>();
    const VALUE: usize = size_of::<V>();
}

impl<K, V> Layout for LruHashMap<K, V> {
    const KIND: MapKind = MapKind::LruHash;
    const KEY: usize = size_of::<K>();
    const VALUE: usize = size_of::<V>();
}

impl<K, V> Layout for PerCpuHashMap<K, V> {
    const KIND: MapKind = MapKind::PerCpuHash;
    const KEY: usize = size_of::<K>();
    const VALUE: usize = size_of::<V>();
}

impl<K, V> Layout for LpmTrie<K, V> {
    const KIND: MapKind = MapKind::LpmTrie;
    const KEY: usize = size_of::<Key<K>>();
    const VALUE: usize = size_of::<V>();
}

impl<V> Layout for Array<V> {
    const KIND: MapKind = MapKind::Array;
    const KEY: usize = size_of::<u32>();
    const VALUE: usize = size_of::<V>();
}

impl<V> Layout for PerCpuArray<V> {
    const KIND: MapKind = MapKind::PerCpuArray;
    const KEY: usize = size_of::<u32>();
    const VALUE: usize = size_of::<V>();
}

/// Declares the pinned map `$name` (an entry of the ABI's table) as a `$map` of the given
/// types, and checks at compile time that it has the table's layout.
macro_rules! pinned {
    ($name:ident: $map:ident<$($t:ty),+>) => {
        #[map]
        pub(crate) static $name: $map<$($t),+> = $map::pinned(spec::$name.capacity, 0);
        const _: () = assert!(
            spec::$name.matches(
                <$map<$($t),+> as Layout>::KIND,
                <$map<$($t),+> as Layout>::KEY,
                <$map<$($t),+> as Layout>::VALUE,
            ),
            concat!(stringify!($name), ": the static's layout differs from the ABI table's"),
        );
    };
}

pinned!(XDP_UNDERLAY_COUNTERS: PerCpuArray<Counter>);
pinned!(TC_ENDPOINT_COUNTERS: PerCpuArray<Counter>);
pinned!(TC_UNDERLAY_COUNTERS: PerCpuArray<Counter>);
pinned!(OVERLAY_ENDPOINTS: HashMap<EndpointKey, EndpointValue>);
pinned!(OVERLAY_PORTS: HashMap<u32, PortValue>);
pinned!(OVERLAY_NETWORKS: HashMap<u32, NetworkValue>);
// Key data: VNI (network order) then the IPv4 address; see `overlay::VtepKey`.
pinned!(OVERLAY_VTEPS: LpmTrie<[u8; 8], VtepValue>);
// Key data: the IPv4 address; see `overlay::SubnetKey`. Value: the VNI.
pinned!(OVERLAY_SUBNETS: LpmTrie<[u8; 4], u32>);
pinned!(OVERLAY_UNDERLAY: Array<UnderlayValue>);
pinned!(GUARDED_HOSTS: HashMap<GuardedHostKey, GuardedHostValue>);
pinned!(GUARDED_PORTS: HashMap<GuardedPort, GuardedPortValue>);
pinned!(MESH_CONFIG: Array<MeshConfig>);
pinned!(MESH_PORTS: HashMap<MeshPortKey, MeshPort>);
pinned!(MESH_SERVICES: Array<MeshService>);
pinned!(MESH_BACKENDS: HashMap<MeshBackendKey, MeshBackend>);
pinned!(MESH_FLOWS: LruHashMap<FlowKey, Flow>);
pinned!(MESH_REPLIES: LruHashMap<ReplyKey, Reply>);
pinned!(MESH_NODES: HashMap<[u8; 4], u32>);
pinned!(MESH_TARGETS: HashMap<MeshTargetKey, MeshTarget>);
pinned!(MESH_STATS: PerCpuHashMap<MeshStatKey, MeshStats>);
pinned!(MESH_CT_EVENTS: PerCpuArray<u64>);
pinned!(VIP_PORTS: HashMap<VipPortKey, VipPort>);
pinned!(VIP_SERVICES: HashMap<VipServiceKey, VipService>);
pinned!(VIP_BACKENDS: HashMap<VipBackendKey, VipBackend>);
pinned!(VIP_FLOWS: LruHashMap<VipFlowKey, VipFlow>);
pinned!(VIP_REPLIES: LruHashMap<VipReplyKey, VipReply>);
pinned!(VIP_EVENTS: PerCpuArray<u64>);
pinned!(TC_HOST_COUNTERS: PerCpuArray<Counter>);
pinned!(SOCK_CONFIG: Array<SockConfig>);
pinned!(SOCK_REVERSE: LruHashMap<SockKey, SockAddr>);
pinned!(SOCK_PICKS: LruHashMap<SockKey, SockAddr>);
pinned!(HOST_FLOWS: LruHashMap<ReplyKey, HostFlow>);

/// A copy of a hash map value (copied at once: the kernel may reuse the element's memory
/// after an update from userspace).
#[inline(always)]
pub(crate) fn lookup<K, V: Copy>(map: &HashMap<K, V>, key: &K) -> Option<V> {
    // SAFETY: the pointer the kernel returned is valid for this program run.
    map.get_ptr(key).map(|value| unsafe { *value })
}

#[inline(always)]
pub(crate) fn network(vni: u32) -> Option<NetworkValue> {
    lookup(&OVERLAY_NETWORKS, &vni)
}

#[inline(always)]
pub(crate) fn underlay_config() -> Option<UnderlayValue> {
    OVERLAY_UNDERLAY.get(0).copied()
}
