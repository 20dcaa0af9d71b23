//! Replies at the ingress node (MESH-DESIGN.md path 4): a remote backend's host sends
//! its task's replies back in VXLAN on the ingress VNI; here they lose the outer headers,
//! are translated back (source → this node's address and the published port, so the
//! client sees the address it sent to) and leave towards the client.
//!
//! Taken only when everything agrees: the VNI is the ingress VNI, the outer source is a
//! cluster node (`MESH_NODES`) other than this one, the inner packet is plain IPv4
//! TCP/UDP, its inner destination MAC carries the published port
//! (`mesh::published_port_mac`: the backend's host echoes what this node sent), and the
//! conntrack entry of the flow so named (client address and port, published port) names
//! that very backend address and port on that very host. No reply entry is needed here:
//! the conntrack entry is the proof that this node sent that flow to that backend. Anything else on the ingress VNI is not
//! ours here: the overlay's decapsulation judges it (a backend host's requests are
//! delivered there, the rest dropped).

use aya_ebpf::{bindings::xdp_md, helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{published_port_of, tcp_next, Flow, FlowKey, MeshConfig},
    overlay::{vxlan_vni, UnderlayValue, ENCAP_LEN, ETH_LEN, IPV4_LEN, UDP_LEN},
};

use crate::{
    maps::{underlay_config, MESH_CONFIG, MESH_FLOWS, MESH_NODES},
    mesh_conntrack::{stat_backend, touch},
    mesh_ingress::{decided, drop, zero, Decision, NOT_OURS},
    mesh_nat::{
        clamp_syn_mss, next_hop, rewrite_packet, send, NextHop, Rewrite, HOP_OK, IP_SRC, L4_SPORT,
    },
    parse::*,
};

const VXLAN: usize = ETH_LEN + IPV4_LEN + UDP_LEN;
const INNER_ETH: usize = VXLAN + 8;
const INNER_IP: usize = INNER_ETH + ETH_LEN;
const INNER_L4: usize = INNER_IP + IPV4_LEN;
const TCP_SYN: u8 = 0x02;

/// A reply from a backend's host, or [`NOT_OURS`]. `len`: the whole frame.
#[inline(never)]
pub(crate) fn reply(ctx_ptr: *mut xdp_md, len: u64) -> Decision {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(config) = MESH_CONFIG.get(0) else {
        return NOT_OURS;
    };
    if config.ingress_vni == 0 {
        return NOT_OURS;
    }
    let Some(underlay) = underlay_config() else {
        return NOT_OURS;
    };
    let underlay = &underlay;
    // The checks and lookups in a function of their own: their temporaries are off this
    // frame while the FIB is asked (512 bytes of stack for the whole chain).
    let mut m = Matched {
        entry: core::ptr::null_mut(),
        client_ip: [0; 4],
        published_port_be: [0; 2],
        protocol: 0,
        tcp_flags: 0,
    };
    if !match_reply(ctx_ptr, config, underlay, &mut m) || m.entry.is_null() {
        return NOT_OURS;
    }
    let mut hop = NextHop::default();
    if next_hop(ctx_ptr, underlay, &m.client_ip, 0, &mut hop) != HOP_OK {
        return drop(Verdict::NO_ROUTE);
    }
    // Ours from here on: the inner frame gets the client's Ethernet header, then the 50
    // bytes before it go.
    let (d, s) = (hop.dmac, hop.smac);
    let header = [
        d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5], 0x08, 0x00,
    ];
    if !write_at(ctx, INNER_ETH, &header) {
        return drop(Verdict::ERROR);
    }
    // SAFETY: a helper call on our own context; later accesses are bounds-checked anew.
    if unsafe { bpf_xdp_adjust_head(ctx_ptr, ENCAP_LEN as i32) } != 0 {
        return drop(Verdict::ERROR);
    }
    let rewrite = Rewrite {
        addr_at: IP_SRC,
        addr: underlay.ip,
        port_at: L4_SPORT,
        port: m.published_port_be,
        protocol: m.protocol,
    };
    if !rewrite_packet(ctx_ptr, &rewrite) {
        return drop(Verdict::ERROR);
    }
    if m.tcp_flags & TCP_SYN != 0 {
        clamp_syn_mss(ctx_ptr, config.mss);
    }
    // The tick's time, as on the client path (`mesh_ingress::parse`).
    // SAFETY: a plain helper call.
    let now = unsafe { aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns() };
    // SAFETY: the map value `match_reply` found, valid for this run; copied at once.
    let flow = unsafe { *m.entry };
    let (state, flags) = if m.protocol == IPPROTO_TCP {
        tcp_next(flow.state, flow.flags, m.tcp_flags, false)
    } else {
        (flow.state, flow.flags)
    };
    let _ = touch(
        m.entry,
        &flow,
        state,
        flags,
        config,
        m.protocol,
        now,
        |_| {},
    );
    let inner_len = len.saturating_sub(ENCAP_LEN as u64);
    stat_backend(flow.slot, flow.backend_ip, 0, inner_len);
    decided(Verdict::MESH_REPLY, send(&hop, underlay))
}

/// What [`match_reply`] found.
struct Matched {
    /// The flow's conntrack entry.
    entry: *mut Flow,
    client_ip: [u8; 4],
    published_port_be: [u8; 2],
    protocol: u8,
    tcp_flags: u8,
}

/// Whether the frame is a reply this node must translate back (see the module doc);
/// fills `m` if so.
#[inline(never)]
fn match_reply(
    ctx_ptr: *mut xdp_md,
    config: &MeshConfig,
    underlay: &UnderlayValue,
    m: &mut Matched,
) -> bool {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(outer) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return false;
    };
    if be32(outer.dst) != be32(underlay.ip) {
        return false;
    }
    if outer.version_ihl != 0x45 {
        return false;
    }
    if be16(outer.frag_off) & (IP_MF | IP_OFFSET_MASK) != 0 {
        return false;
    }
    let Some(vxlan) = read_at::<[u8; 8]>(ctx, VXLAN) else {
        return false;
    };
    if vxlan_vni(&vxlan) != Some(config.ingress_vni) {
        return false;
    }
    if be32(outer.src) == be32(underlay.ip) || MESH_NODES.get_ptr(&outer.src).is_none() {
        return false;
    }
    // One check at a time: merged conditions compile to arithmetic on the packet
    // pointers, which the verifier refuses.
    let Some(ether_type) = read_at::<[u8; 2]>(ctx, INNER_ETH + 12) else {
        return false;
    };
    if be16(ether_type) != ETHERTYPE_IPV4 {
        return false;
    }
    let Some(inner) = read_at::<Ipv4Hdr>(ctx, INNER_IP) else {
        return false;
    };
    if inner.version_ihl != 0x45 {
        return false;
    }
    if be16(inner.frag_off) & (IP_MF | IP_OFFSET_MASK) != 0 {
        return false;
    }
    if inner.protocol != IPPROTO_TCP && inner.protocol != IPPROTO_UDP {
        return false;
    }
    let Some(ports) = read_at::<[u8; 4]>(ctx, INNER_L4) else {
        return false;
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    // Read here, not kept from the header above (stack: see `reply`).
    let Some(port_mac) = read_at::<[u8; 6]>(ctx, INNER_ETH) else {
        return false;
    };
    let Some(published_port_be) = published_port_of(&port_mac) else {
        return false;
    };
    // Zeroed in place and filled field by field: a struct literal's zero padding is a
    // `memset` call, across which every byte of the key would be spilled to the stack.
    let mut flow_key = core::mem::MaybeUninit::uninit();
    // SAFETY: integers and arrays of them.
    let flow_key: &mut FlowKey = unsafe { zero(&mut flow_key) };
    flow_key.client_ip = inner.dst;
    flow_key.node_ip = underlay.ip;
    flow_key.client_port_be = dport;
    flow_key.published_port_be = published_port_be;
    flow_key.protocol = inner.protocol;
    let Some(entry) = MESH_FLOWS.get_ptr_mut(flow_key) else {
        return false;
    };
    // SAFETY: a valid map value for this run; copied at once.
    let flow = unsafe { *entry };
    if be32(flow.backend_host) != be32(outer.src)
        || be32(flow.backend_ip) != be32(inner.src)
        || be16(flow.target_port_be) != be16(sport)
    {
        return false;
    }
    let tcp_flags = if inner.protocol == IPPROTO_TCP {
        match read_at::<[u8; 14]>(ctx, INNER_L4) {
            Some(h) => h[13],
            None => return false,
        }
    } else {
        0
    };
    *m = Matched {
        entry,
        client_ip: inner.dst,
        published_port_be,
        protocol: inner.protocol,
        tcp_flags,
    };
    true
}
