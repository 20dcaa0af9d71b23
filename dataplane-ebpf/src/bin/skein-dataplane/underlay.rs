//! `tc_underlay_ingress`: VXLAN arriving from other hosts, at tc ingress of the
//! underlay interface (DESIGN.md path 3, on the skb rather than in XDP: the decapsulated
//! frame keeps its checksum state, which native XDP redirection into a veth loses).
//!
//! Only UDP to port 4789 addressed to this host's underlay IP is ours; everything else
//! passes untouched. Ours is decapsulated and delivered when it carries a known VNI and
//! an IPv4 packet for a local endpoint of that VNI; a VNI this host does not know passes
//! to the host stack untouched (a kernel VXLAN device may own it); malformed VXLAN and
//! unknown endpoints are dropped. A frame is never delivered to an endpoint of another
//! VNI: the endpoint is looked up by (VNI, address).

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    programs::TcContext,
};
use aya_log_ebpf::debug;
use dataplane_ebpf::{
    counters::Verdict,
    overlay::{
        endpoint_mac, vxlan_vni, EndpointKey, ENCAP_LEN, ETH_LEN, GATEWAY_MAC, IPV4_LEN, UDP_LEN,
        VXLAN_LEN, VXLAN_PORT,
    },
};

use crate::{lookup, network, parse::*, underlay_config, Outcome, OVERLAY_ENDPOINTS};

/// Offsets into an encapsulated frame with a plain (20-byte) outer IPv4 header.
const OUTER_IP: usize = ETH_LEN;
const OUTER_UDP: usize = OUTER_IP + IPV4_LEN;
const VXLAN: usize = OUTER_UDP + UDP_LEN;
const INNER_ETH: usize = VXLAN + VXLAN_LEN;
const INNER_IP: usize = INNER_ETH + ETH_LEN;
/// Everything read before deciding: outer headers, inner Ethernet and IPv4.
const HEADERS_LEN: usize = INNER_IP + IPV4_LEN;
/// The smallest UDP length that holds VXLAN, an inner Ethernet and an IPv4 header.
const MIN_UDP_LEN: u16 = (UDP_LEN + VXLAN_LEN + ETH_LEN + IPV4_LEN) as u16;

const _: () = assert!(INNER_IP - ETH_LEN == ENCAP_LEN);

/// Flags of the decapsulating `bpf_skb_adjust_room`. `DECAP_L3_IPV4`: what is left is
/// IPv4 (the kernel sets the skb's protocol from it; in the bindings, kernel 6.3 and
/// later). `FIXED_GSO`: should the skb be a GRO aggregate (a kernel VXLAN socket on the
/// host enables UDP tunnel GRO), its MSS is the inner packets' and must stay; without the
/// flag the kernel would grow it by the 50 bytes removed.
const DECAP_FLAGS: u64 = BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_FIXED_GSO as u64;

pub fn handle(ctx: &TcContext) -> Outcome {
    pull_headers(ctx, HEADERS_LEN as u32);
    let not_ours = Outcome::pass(Verdict::PASS);
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return not_ours;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return not_ours;
    }
    // A truncated IPv4 header is the host stack's to drop.
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, OUTER_IP) else {
        return not_ours;
    };
    if ip.protocol != IPPROTO_UDP {
        return not_ours;
    }
    let Some(underlay) = underlay_config() else {
        return not_ours;
    };
    if be32(ip.dst) != be32(underlay.ip) {
        return not_ours;
    }
    let frag = be16(ip.frag_off);
    if frag & IP_OFFSET_MASK != 0 {
        // A later fragment has no UDP header to tell VXLAN from other UDP: the host
        // reassembles (the first fragment, if VXLAN, is dropped below) or drops it.
        return not_ours;
    }
    let ihl = ip.version_ihl & 0x0f;
    if ihl != 5 {
        // IP options: find the port the slow way (a variable offset, through
        // `bpf_skb_load_bytes`), only to tell malformed VXLAN from other UDP.
        let port_offset = ETH_LEN + usize::from(ihl) * 4 + 2;
        return match ctx.load::<[u8; 2]>(port_offset) {
            Ok(port) if be16(port) == VXLAN_PORT && ihl > 5 => {
                debug!(ctx, "VXLAN with IP options from {:i}: dropped", ip.src);
                Outcome::drop(Verdict::MALFORMED)
            }
            _ => not_ours,
        };
    }
    let Some(udp) = read_at::<UdpHdr>(ctx, OUTER_UDP) else {
        return not_ours;
    };
    if be16(udp.dst_port) != VXLAN_PORT {
        return not_ours;
    }

    // VXLAN for this host from here on.
    if frag & IP_MF != 0 {
        debug!(ctx, "fragmented VXLAN from {:i}: dropped", ip.src);
        return Outcome::drop(Verdict::MALFORMED);
    }
    if be16(udp.len) < MIN_UDP_LEN {
        debug!(ctx, "short VXLAN from {:i}: dropped", ip.src);
        return Outcome::drop(Verdict::MALFORMED);
    }
    let Some(vxlan) = read_at::<[u8; VXLAN_LEN]>(ctx, VXLAN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    let Some(vni) = vxlan_vni(&vxlan) else {
        debug!(ctx, "VXLAN without the I flag from {:i}: dropped", ip.src);
        return Outcome::drop(Verdict::MALFORMED);
    };
    if network(vni).is_none() {
        return Outcome::pass(Verdict::UNKNOWN_VNI);
    }
    let Some(inner_eth) = read_at::<EthHdr>(ctx, INNER_ETH) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    if be16(inner_eth.ether_type) != ETHERTYPE_IPV4 {
        // The overlay carries IPv4 only (no ARP crosses it: every host answers its own).
        return Outcome::drop(Verdict::DROP);
    }
    let Some(inner_ip) = read_at::<Ipv4Hdr>(ctx, INNER_IP) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    let dst = inner_ip.dst;
    let key = EndpointKey { vni, ip: dst };
    let ifindex = match lookup(&OVERLAY_ENDPOINTS, &key) {
        Some(ep) if ep.ifindex != 0 => ep.ifindex,
        _ => {
            debug!(
                ctx,
                "VXLAN {} for {:i}: no such local endpoint: dropped", vni, dst
            );
            return Outcome::drop(Verdict::UNKNOWN_ENDPOINT);
        }
    };
    decap(ctx, ifindex, dst)
}

/// Removes outer IPv4 + UDP + VXLAN + inner Ethernet (the 50 bytes after the outer
/// Ethernet header, which stays and is rewritten), then delivers into the endpoint.
fn decap(ctx: &TcContext, ifindex: u32, dst: [u8; 4]) -> Outcome {
    if ctx
        .adjust_room(-(ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .is_err()
    {
        debug!(ctx, "VXLAN for {:i}: adjust_room failed: dropped", dst);
        return Outcome::error();
    }
    let (m, g) = (endpoint_mac(dst), GATEWAY_MAC);
    let eth = [
        m[0], m[1], m[2], m[3], m[4], m[5], g[0], g[1], g[2], g[3], g[4], g[5], 0x08, 0x00,
    ];
    if ctx.store(0, &eth, 0).is_err() {
        return Outcome::error();
    }
    Outcome::redirect(Verdict::DECAP, ifindex)
}
