//! VXLAN arriving from other hosts (ARCHITECTURE.md, packet path 3): the classification
//! both underlay stages share ([`classify`]: is this VXLAN for a local endpoint, may its
//! sender speak for its inner source) and the inner Ethernet header a decapsulated frame
//! gets.
//!
//! The two stages on the underlay interface:
//!
//! - `xdp_underlay` (`xdp_underlay::xdp_decap`): a frame that is plainly VXLAN for a
//!   local endpoint loses its 50 outer bytes right there and gets a `DecapMeta` in front
//!   (XDP metadata), then goes on (`XDP_PASS`) as the inner Ethernet/IPv4 frame. So the
//!   device's GRO sees the inner TCP segments and aggregates them, as the kernel's VXLAN
//!   device does with its GRO cells; the skb keeps its checksum state (XDP_PASS on a
//!   veth runs on the skb itself; only a native XDP *redirect* loses it).
//! - `tc_underlay_ingress` (`tc_underlay::handle`): a frame with a valid `DecapMeta`
//!   (possibly a GRO aggregate of many) is checked against the maps and delivered with
//!   `bpf_redirect_peer` (single TCP segments through the endpoint's veth instead, for
//!   its GRO: see `tc_underlay::into_endpoint`). Everything else is classified again and
//!   handled on the skb: decapsulated with `bpf_skb_adjust_room` (frames XDP could not
//!   take: generic XDP, headers beyond the first buffer), dropped or passed, each counted.
//!
//! Only UDP to port 4789 addressed to this host's underlay IP is ours; everything else
//! passes untouched. Ours is decapsulated and delivered when it carries a known VNI and
//! an IPv4 packet for a local endpoint of that VNI; a VNI this host does not know passes
//! to the host stack untouched (a kernel VXLAN device may own it); malformed VXLAN and
//! unknown endpoints are dropped. A frame is never delivered to an endpoint of another
//! VNI: the endpoint is looked up by (VNI, address). Nor from an underlay source that may
//! not speak for the inner source (see `sent_by_its_host`): dropped as `spoofed_source`, in
//! XDP already when XDP sees the frame.
//!
//! The mesh's ingress VNI (`MESH_CONFIG`) has rules of its own, in [`crate::mesh_decap`]:
//! a client's packet for a published target of a local task, from a cluster node, is
//! delivered like any decapsulated frame (into the task's network); anything else on that
//! VNI is dropped as `mesh_refused`.

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO},
    maps::lpm_trie::Key,
};
use dataplane_ebpf::overlay::{
    endpoint_mac, vxlan_vni, EndpointKey, VtepKey, ENCAP_LEN, ETH_LEN, GATEWAY_MAC, IPV4_LEN,
    UDP_LEN, VXLAN_LEN, VXLAN_PORT,
};

use crate::{
    maps::{lookup, network, underlay_config, OVERLAY_ENDPOINTS, OVERLAY_VTEPS},
    mesh_decap::{self, ingress_vni, Inner},
    parse::*,
};

/// Offsets into an encapsulated frame with a plain (20-byte) outer IPv4 header.
const OUTER_IP: usize = ETH_LEN;
const OUTER_UDP: usize = OUTER_IP + IPV4_LEN;
const VXLAN: usize = OUTER_UDP + UDP_LEN;
const INNER_ETH: usize = VXLAN + VXLAN_LEN;
const INNER_IP: usize = INNER_ETH + ETH_LEN;
/// Everything read before deciding: outer headers, inner Ethernet and IPv4, and (on the
/// mesh's ingress VNI) the inner ports.
pub(crate) const HEADERS_LEN: usize = INNER_IP + IPV4_LEN + mesh_decap::PORTS_LEN;
/// The smallest UDP length that holds VXLAN, an inner Ethernet and an IPv4 header.
const MIN_UDP_LEN: u16 = (UDP_LEN + VXLAN_LEN + ETH_LEN + IPV4_LEN) as u16;

const _: () = assert!(INNER_IP - ETH_LEN == ENCAP_LEN);

/// Flags of the decapsulating `bpf_skb_adjust_room`. `DECAP_L3_IPV4`: what is left is
/// IPv4 (the kernel sets the skb's protocol from it; in the bindings, kernel 6.3 and
/// later). `FIXED_GSO`: should the skb be a GRO aggregate (a kernel VXLAN socket on the
/// host enables UDP tunnel GRO), its MSS is the inner packets' and must stay; without the
/// flag the kernel would grow it by the 50 bytes removed.
pub(crate) const DECAP_FLAGS: u64 =
    BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_FIXED_GSO as u64;

/// What a frame arriving on the underlay is, as far as the overlay is concerned.
pub(crate) enum Vxlan {
    /// Not VXLAN for this host (or too short to tell): the host stack's.
    NotOurs,
    /// Outer IPv4 header with options: only the slow path can find the UDP port.
    IpOptions { ihl: u8, src: [u8; 4] },
    /// VXLAN for this host that breaks the rules (fragment, short, bad flags, truncated).
    Malformed { src: [u8; 4] },
    /// A VNI this host does not serve.
    UnknownVni,
    /// Inner frame that is not IPv4 (the overlay carries IPv4 only).
    NotIpv4,
    /// Known VNI, but no local endpoint with that address.
    UnknownEndpoint { vni: u32, dst: [u8; 4] },
    /// For a local endpoint, but the outer source is neither the host of the inner
    /// source's endpoint nor the external VTEP registered for it.
    Spoofed { outer: [u8; 4], inner: [u8; 4] },
    /// On the mesh's ingress VNI but not a client's packet for a published target of a
    /// local task from a cluster node (see [`crate::mesh_decap`]): dropped.
    MeshRefused { src: [u8; 4] },
    /// For the local endpoint behind host-side veth `ifindex`.
    Deliver {
        /// The endpoint's network (for a mesh delivery: the task's, not the ingress VNI).
        vni: u32,
        dst: [u8; 4],
        ifindex: u32,
        /// The inner IPv4 protocol (see `tc_underlay::into_endpoint`).
        protocol: u8,
        /// A mesh request from an ingress node (counted as `mesh_deliver`, not `decap`).
        mesh: bool,
    },
}

/// Classifies the frame at the start of `ctx`: the same rules for both stages.
#[inline(always)]
pub(crate) fn classify<P: Packet>(ctx: &P) -> Vxlan {
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return Vxlan::NotOurs;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return Vxlan::NotOurs;
    }
    // A truncated IPv4 header is the host stack's to drop.
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, OUTER_IP) else {
        return Vxlan::NotOurs;
    };
    if ip.protocol != IPPROTO_UDP {
        return Vxlan::NotOurs;
    }
    let Some(underlay) = underlay_config() else {
        return Vxlan::NotOurs;
    };
    if be32(ip.dst) != be32(underlay.ip) {
        return Vxlan::NotOurs;
    }
    let frag = be16(ip.frag_off);
    if frag & IP_OFFSET_MASK != 0 {
        // A later fragment has no UDP header to tell VXLAN from other UDP: the host
        // reassembles (the first fragment, if VXLAN, is dropped below) or drops it.
        return Vxlan::NotOurs;
    }
    let ihl = ip.version_ihl & 0x0f;
    if ihl != 5 {
        return Vxlan::IpOptions { ihl, src: ip.src };
    }
    let Some(udp) = read_at::<UdpHdr>(ctx, OUTER_UDP) else {
        return Vxlan::NotOurs;
    };
    if be16(udp.dst_port) != VXLAN_PORT {
        return Vxlan::NotOurs;
    }

    // VXLAN for this host from here on.
    let malformed = Vxlan::Malformed { src: ip.src };
    if frag & IP_MF != 0 || be16(udp.len) < MIN_UDP_LEN {
        return malformed;
    }
    let Some(vxlan) = read_at::<[u8; VXLAN_LEN]>(ctx, VXLAN) else {
        return malformed;
    };
    let Some(vni) = vxlan_vni(&vxlan) else {
        return malformed;
    };
    if network(vni).is_none() {
        // The ingress VNI is never a network's (`network create --vni` refuses it), so
        // the overlay's own frames pay nothing for the mesh's check.
        if ingress_vni() == Some(vni) {
            return mesh_decap::classify(
                ctx,
                ip.src,
                underlay.ip,
                Inner {
                    eth: INNER_ETH,
                    ip: INNER_IP,
                },
            );
        }
        return Vxlan::UnknownVni;
    }
    let Some(inner_eth) = read_at::<EthHdr>(ctx, INNER_ETH) else {
        return malformed;
    };
    if be16(inner_eth.ether_type) != ETHERTYPE_IPV4 {
        return Vxlan::NotIpv4;
    }
    let Some(inner_ip) = read_at::<Ipv4Hdr>(ctx, INNER_IP) else {
        return malformed;
    };
    let dst = inner_ip.dst;
    match lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip: dst }) {
        Some(ep) if ep.ifindex != 0 => {
            if !sent_by_its_host(vni, inner_ip.src, ip.src) {
                return Vxlan::Spoofed {
                    outer: ip.src,
                    inner: inner_ip.src,
                };
            }
            Vxlan::Deliver {
                vni,
                dst,
                ifindex: ep.ifindex,
                protocol: inner_ip.protocol,
                mesh: false,
            }
        }
        _ => Vxlan::UnknownEndpoint { vni, dst },
    }
}

/// Whether `outer`, the underlay source of a VXLAN frame of `vni`, may speak for the
/// inner source `inner`: it must be the host of the endpoint with that address (every
/// endpoint of the cluster is in OVERLAY_ENDPOINTS, with its host's underlay address) or,
/// for an address outside Skein's endpoints, the external VTEP registered for it. So a
/// host on the underlay cannot inject traffic that claims to come from another host's
/// endpoint (which the endpoint program on its own host would refuse as spoofed).
#[inline(always)]
fn sent_by_its_host(vni: u32, inner: [u8; 4], outer: [u8; 4]) -> bool {
    if let Some(ep) = lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip: inner }) {
        return be32(ep.host_ip) == be32(outer);
    }
    let key = VtepKey::lookup(vni, inner);
    match OVERLAY_VTEPS.get(Key::new(key.prefix_len, key.data())) {
        Some(vtep) => be32(vtep.underlay_ip) == be32(outer),
        None => false,
    }
}

/// The Ethernet header of a frame delivered to the endpoint with address `dst`.
#[inline(always)]
pub(crate) fn inner_ethernet(dst: [u8; 4]) -> [u8; ETH_LEN] {
    let (m, g) = (endpoint_mac(dst), GATEWAY_MAC);
    [
        m[0], m[1], m[2], m[3], m[4], m[5], g[0], g[1], g[2], g[3], g[4], g[5], 0x08, 0x00,
    ]
}
