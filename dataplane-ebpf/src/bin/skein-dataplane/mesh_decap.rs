//! The routing mesh on a backend host (ARCHITECTURE.md, packet path 4; MESH-DESIGN.md
//! path 2): VXLAN on the cluster's ingress VNI carries a client's packet, already
//! translated by its ingress node, to one of this host's tasks. [`classify`] is the
//! branch of [`crate::decap::classify`] for that VNI, so both underlay stages apply the
//! same rules.
//!
//! The inner source is a client, not an endpoint, so the overlay's "the outer source is
//! the host of the inner source" check cannot apply; these rules replace it: the outer
//! source is a cluster node (`MESH_NODES`, never this host itself), the inner packet is
//! plain IPv4 TCP or UDP (no options, no fragment: the ports must be there), and its
//! destination (address, port, protocol) is a published target of one of this host's own
//! tasks (`MESH_TARGETS`), which names the task's network. Everything else on the ingress
//! VNI is refused (dropped, `mesh_refused`); nothing on it ever reaches the host stack.
//!
//! An accepted packet records which ingress node the flow came through, and the
//! published port that node carried in the inner Ethernet source
//! ([`mesh::published_port_mac`]), in `MESH_REPLIES`, so the task's replies go back the
//! same way with the port (`crate::mesh_reply`).

use aya_ebpf::helpers::bpf_ktime_get_ns;
use dataplane_ebpf::{
    mesh::{self, MeshTargetKey, Reply, ReplyKey},
    overlay::{EndpointKey, IPV4_LEN},
};

use crate::{
    decap::Vxlan,
    maps::{lookup, MESH_CONFIG, MESH_NODES, MESH_REPLIES, MESH_TARGETS, OVERLAY_ENDPOINTS},
    parse::*,
};

/// The inner frame's headers, as offsets from the start of the encapsulated frame.
pub(crate) struct Inner {
    pub(crate) eth: usize,
    pub(crate) ip: usize,
}

/// Bytes past the inner IPv4 header that [`classify`] reads: the two ports.
pub(crate) const PORTS_LEN: usize = 4;

/// The cluster's ingress VNI, or `None` while the mesh is off (`MESH_CONFIG` zero).
#[inline(always)]
pub(crate) fn ingress_vni() -> Option<u32> {
    match MESH_CONFIG.get(0) {
        Some(config) if config.ingress_vni != 0 => Some(config.ingress_vni),
        _ => None,
    }
}

/// The mesh's decision on VXLAN of the ingress VNI from underlay address `outer_src` to
/// this host (`own_ip`), with the inner frame at `inner`.
#[inline(always)]
pub(crate) fn classify<P: Packet>(
    ctx: &P,
    outer_src: [u8; 4],
    own_ip: [u8; 4],
    inner: Inner,
) -> Vxlan {
    let refused = Vxlan::MeshRefused { src: outer_src };
    // A node never sends itself mesh VXLAN: such a frame is forged, and its reply entry
    // would send the task's answers out un-translated.
    if be32(outer_src) == be32(own_ip) || lookup(&MESH_NODES, &outer_src).is_none() {
        return refused;
    }
    let Some(eth) = read_at::<EthHdr>(ctx, inner.eth) else {
        return refused;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return refused;
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, inner.ip) else {
        return refused;
    };
    // Plain header (the ports at a fixed offset), not a fragment of any kind: a later
    // fragment has no ports to check, and a first one would let the rest through.
    if ip.version_ihl != 0x45
        || be16(ip.frag_off) & (IP_MF | IP_OFFSET_MASK) != 0
        || !mesh::balanced_protocol(ip.protocol)
    {
        return refused;
    }
    let Some(ports) = read_at::<[u8; PORTS_LEN]>(ctx, inner.ip + IPV4_LEN) else {
        return refused;
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let target_key = MeshTargetKey {
        ip: ip.dst,
        port_be: dport,
        protocol: ip.protocol,
        _pad: 0,
    };
    let Some(target) = lookup(&MESH_TARGETS, &target_key) else {
        return refused;
    };
    let endpoint = EndpointKey {
        vni: target.vni,
        ip: ip.dst,
    };
    let ifindex = match lookup(&OVERLAY_ENDPOINTS, &endpoint) {
        Some(ep) if ep.ifindex != 0 => ep.ifindex,
        _ => return refused,
    };
    // Read again here, not kept from the header above: held across the lookups it
    // would take the underlay program's stack that every call chain shares.
    let Some(src_mac) = read_at::<[u8; 6]>(ctx, inner.eth + 6) else {
        return refused;
    };
    let published_port_be = mesh::published_port_of(&src_mac).unwrap_or([0; 2]);
    remember_ingress(
        &ReplyKey {
            backend_ip: ip.dst,
            client_ip: ip.src,
            backend_port_be: dport,
            client_port_be: sport,
            protocol: ip.protocol,
            _pad: [0; 3],
        },
        outer_src,
        published_port_be,
    );
    Vxlan::Deliver {
        vni: target.vni,
        dst: ip.dst,
        ifindex,
        protocol: ip.protocol,
        mesh: true,
    }
}

/// Records that the flow `key` came through the ingress node `ingress_ip` for
/// `published_port_be`, writing only when the entry is missing, names another node or
/// port, or is due for a refresh ([`mesh::reply_needs_write`]): most packets of a flow
/// only read it. A BPF function of its own: inlined, its key and entry would sit in the
/// underlay program's frame, under every call chain (512 bytes of stack in all).
#[inline(never)]
fn remember_ingress(key: &ReplyKey, ingress_ip: [u8; 4], published_port_be: [u8; 2]) {
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: copied at once; the kernel may reuse the element's memory later.
    let current = unsafe { MESH_REPLIES.get(key).copied() };
    if !mesh::reply_needs_write(current.as_ref(), ingress_ip, published_port_be, now) {
        return;
    }
    let reply = Reply {
        ingress_ip,
        published_port_be,
        _pad: [0; 2],
        seen_ns: now,
    };
    // A full LRU map evicts its oldest entry; a failure leaves the flow's replies to the
    // host's egress NAT, which the ingress node then resets: nothing to do here.
    let _ = MESH_REPLIES.insert(key, &reply, 0);
}
