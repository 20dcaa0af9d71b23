//! Replies to the host's own connections to tasks on other nodes (`crate::tc_host`), at
//! XDP on the underlay: the task's host sends them back in VXLAN on the ingress VNI (its
//! `mesh_reply` path, as for any mesh flow whose ingress node is this one). Here they lose
//! the outer headers and go up to this host's stack — only when everything agrees: the
//! outer frame is plain IPv4 to this node from a cluster node (`MESH_NODES`) on the
//! ingress VNI, the inner packet is plain IPv4 TCP/UDP to this node's address, and its
//! flow is one this host opened (`HOST_FLOWS`) to a task on that very node. Anything else
//! is not ours ([`NOT_OURS`]): the mesh and the overlay judge it (and refuse it).

use aya_ebpf::{
    bindings::xdp_action, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::ReplyKey,
    overlay::{vxlan_vni, ENCAP_LEN, ETH_LEN, IPV4_LEN, UDP_LEN},
};

use crate::{
    maps::{underlay_config, HOST_FLOWS, MESH_NODES},
    mesh_decap::ingress_vni,
    mesh_ingress::{decided, drop, Decision, NOT_OURS},
    parse::*,
};

const VXLAN: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
const INNER_ETH: usize = VXLAN + 8;
const INNER_IP: usize = INNER_ETH + ETH_LEN;
const INNER_L4: usize = INNER_IP + IPV4_LEN;

/// A reply to one of this host's own connections, handed to the stack, or [`NOT_OURS`].
#[inline(never)]
pub(crate) fn host_reply(ctx_ptr: *mut aya_ebpf::bindings::xdp_md) -> Decision {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(vni) = ingress_vni() else {
        return NOT_OURS;
    };
    let Some(underlay) = underlay_config() else {
        return NOT_OURS;
    };
    let Some(outer) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return NOT_OURS;
    };
    if be32(outer.dst) != be32(underlay.ip) {
        return NOT_OURS;
    }
    if outer.version_ihl != 0x45 {
        return NOT_OURS;
    }
    if be16(outer.frag_off) & (IP_MF | IP_OFFSET_MASK) != 0 {
        return NOT_OURS;
    }
    let Some(vxlan) = read_at::<[u8; 8]>(ctx, VXLAN) else {
        return NOT_OURS;
    };
    if vxlan_vni(&vxlan) != Some(vni) {
        return NOT_OURS;
    }
    if MESH_NODES.get_ptr(&outer.src).is_none() {
        return NOT_OURS;
    }
    let Some(eth) = read_at::<EthHdr>(ctx, INNER_ETH) else {
        return NOT_OURS;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return NOT_OURS;
    }
    let Some(inner) = read_at::<Ipv4Hdr>(ctx, INNER_IP) else {
        return NOT_OURS;
    };
    if inner.version_ihl != 0x45 {
        return NOT_OURS;
    }
    if be16(inner.frag_off) & (IP_MF | IP_OFFSET_MASK) != 0 {
        return NOT_OURS;
    }
    if be32(inner.dst) != be32(underlay.ip) {
        return NOT_OURS;
    }
    if inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP {
        return NOT_OURS;
    }
    let Some(ports) = read_at::<[u8; 4]>(ctx, INNER_L4) else {
        return NOT_OURS;
    };
    let key = ReplyKey {
        backend_ip: inner.src,
        client_ip: inner.dst,
        backend_port_be: [ports[0], ports[1]],
        client_port_be: [ports[2], ports[3]],
        protocol: inner.protocol,
        _pad: [0; 3],
    };
    let Some(flow) = HOST_FLOWS.get_ptr(&key) else {
        return NOT_OURS;
    };
    // SAFETY: a valid map value for this run.
    if be32(unsafe { (*flow).host_ip }) != be32(outer.src) {
        return NOT_OURS;
    }
    // Ours: the inner frame, addressed to the underlay interface, goes up the stack.
    let m = underlay.mac;
    let s = eth.src;
    let header = [
        m[0], m[1], m[2], m[3], m[4], m[5], s[0], s[1], s[2], s[3], s[4], s[5], 0x08, 0x00,
    ];
    if !write_at(ctx, INNER_ETH, &header) {
        return drop(Verdict::ERROR);
    }
    // SAFETY: a helper call on our own context; later accesses are bounds-checked anew.
    if unsafe { bpf_xdp_adjust_head(ctx_ptr, ENCAP_LEN as i32) } != 0 {
        return drop(Verdict::ERROR);
    }
    decided(Verdict::MESH_REPLY, xdp_action::XDP_PASS)
}
