//! VXLAN arriving from other hosts (DESIGN.md path 3), in two stages on the underlay
//! interface:
//!
//! - `xdp_underlay` ([`xdp_decap`]): a frame that is plainly VXLAN for a local endpoint
//!   loses its 50 outer bytes right there and gets a [`DecapMeta`] in front (XDP
//!   metadata), then goes on (`XDP_PASS`) as the inner Ethernet/IPv4 frame. So the
//!   device's GRO sees the inner TCP segments and aggregates them, as the kernel's VXLAN
//!   device does with its GRO cells; the skb keeps its checksum state (XDP_PASS on a
//!   veth runs on the skb itself; only a native XDP *redirect* loses it).
//! - `tc_underlay_ingress` ([`handle`]): a frame with a valid [`DecapMeta`] (possibly a
//!   GRO aggregate of many) is checked against the maps and delivered with
//!   `bpf_redirect_peer` (single TCP segments through the endpoint's veth instead, for its
//!   GRO: see [`into_endpoint`]). Everything else is classified again and handled on the skb:
//!   decapsulated with `bpf_skb_adjust_room` (frames XDP could not take: generic XDP,
//!   headers beyond the first buffer), dropped or passed, each counted.
//!
//! Only UDP to port 4789 addressed to this host's underlay IP is ours; everything else
//! passes untouched. Ours is decapsulated and delivered when it carries a known VNI and
//! an IPv4 packet for a local endpoint of that VNI; a VNI this host does not know passes
//! to the host stack untouched (a kernel VXLAN device may own it); malformed VXLAN and
//! unknown endpoints are dropped. A frame is never delivered to an endpoint of another
//! VNI: the endpoint is looked up by (VNI, address). Nor from an underlay source that may
//! not speak for the inner source (see `sent_by_its_host`): dropped as `spoofed_source`, in
//! XDP already when XDP sees the frame.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use dataplane_ebpf::{
    counters::Verdict,
    overlay::{
        endpoint_mac, vxlan_vni, DecapMeta, EndpointKey, VtepKey, DECAP_META_MAGIC, ENCAP_LEN,
        ETH_LEN, GATEWAY_MAC, IPV4_LEN, UDP_LEN, VXLAN_LEN, VXLAN_PORT,
    },
};

use crate::{
    lookup, network, parse::*, underlay_config, Outcome, OVERLAY_ENDPOINTS, OVERLAY_PORTS,
    OVERLAY_VTEPS,
};

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

/// What a frame arriving on the underlay is, as far as the overlay is concerned.
enum Vxlan {
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
    /// For the local endpoint behind host-side veth `ifindex`.
    Deliver {
        vni: u32,
        dst: [u8; 4],
        ifindex: u32,
        /// The inner IPv4 protocol (see [`into_endpoint`]).
        protocol: u8,
    },
}

/// Classifies the frame at the start of `ctx`: the same rules for both stages.
#[inline(always)]
fn classify<P: Packet>(ctx: &P) -> Vxlan {
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
fn inner_ethernet(dst: [u8; 4]) -> [u8; ETH_LEN] {
    let (m, g) = (endpoint_mac(dst), GATEWAY_MAC);
    [
        m[0], m[1], m[2], m[3], m[4], m[5], g[0], g[1], g[2], g[3], g[4], g[5], 0x08, 0x00,
    ]
}

/// What `xdp_underlay` did with a frame.
pub enum XdpDecap {
    /// Decapsulated and marked.
    Decapsulated,
    /// Left whole for tc to judge.
    Untouched,
    /// VXLAN for a local endpoint from an underlay source that may not send for its
    /// inner source: to be dropped right here.
    Spoofed,
}

/// `xdp_underlay`'s part: decapsulates a frame for a local endpoint in place and marks it
/// with a [`DecapMeta`]. Spoofed frames are dropped; anything else is left untouched for tc.
#[inline(always)]
pub fn xdp_decap(ctx: &XdpContext) -> XdpDecap {
    let (vni, dst, ifindex) = match classify(ctx) {
        Vxlan::Deliver {
            vni, dst, ifindex, ..
        } => (vni, dst, ifindex),
        Vxlan::Spoofed { outer, inner } => {
            debug!(
                ctx,
                "VXLAN from {:i} claiming inner source {:i}: dropped", outer, inner
            );
            return XdpDecap::Spoofed;
        }
        _ => return XdpDecap::Untouched,
    };
    if !xdp_pop(ctx, vni, dst, ifindex) {
        return XdpDecap::Untouched;
    }
    XdpDecap::Decapsulated
}

/// Pops the outer headers of a frame [`classify`] found deliverable and writes the mark;
/// false (and no mark) if it could not.
#[inline(always)]
fn xdp_pop(ctx: &XdpContext, vni: u32, dst: [u8; 4], ifindex: u32) -> bool {
    let meta_len = size_of::<DecapMeta>() as i32;
    // Room for the metadata first, zeroed at once: should popping the headers fail, no
    // stale bytes there may look like a mark. A driver without metadata support refuses,
    // and the frame goes to tc whole.
    // SAFETY: helper calls on our own context; every pointer is bounds-checked below.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -meta_len) } != 0 {
        return false;
    }
    if !write_meta(ctx, &DecapMeta::default()) {
        return false;
    }
    // The inner frame's new Ethernet header goes right before its IPv4 header; then the
    // 50 bytes in front of it (outer Ethernet, IPv4, UDP, VXLAN) are popped. The
    // metadata moves along with the start of the frame.
    if !write_at(ctx, ENCAP_LEN, &inner_ethernet(dst)) {
        return false;
    }
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, ENCAP_LEN as i32) } != 0 {
        return false;
    }
    write_meta(
        ctx,
        &DecapMeta {
            magic: DECAP_META_MAGIC,
            ifindex,
            vni,
        },
    )
}

/// Writes the XDP metadata in front of the frame (`data_meta .. data`).
#[inline(always)]
fn write_meta(ctx: &XdpContext, meta: &DecapMeta) -> bool {
    let (start, data) = (ctx.metadata(), ctx.data());
    if start + size_of::<DecapMeta>() > data {
        return false;
    }
    // SAFETY: [start, start + size) lies in the metadata area (checked above).
    unsafe { *(start as *mut DecapMeta) = *meta };
    true
}

/// The skb's XDP metadata, if `xdp_underlay` left a decapsulation mark.
#[inline(always)]
fn decap_meta(ctx: &TcContext) -> Option<DecapMeta> {
    // SAFETY: reading `data_meta` of the context the kernel handed us.
    let start = unsafe { (*ctx.skb.skb).data_meta } as usize;
    let data = ctx.data();
    if start + size_of::<DecapMeta>() > data {
        return None;
    }
    // SAFETY: [start, start + size) lies in the metadata area (checked above); the
    // struct is plain integers, valid for any bytes; read unaligned to be safe.
    let meta = unsafe { core::ptr::read_unaligned(start as *const DecapMeta) };
    (meta.magic == DECAP_META_MAGIC).then_some(meta)
}

/// `tc_underlay_ingress`.
pub fn handle(ctx: &TcContext) -> Outcome {
    if let Some(meta) = decap_meta(ctx) {
        return deliver_marked(ctx, &meta);
    }
    pull_headers(ctx, HEADERS_LEN as u32);
    match classify(ctx) {
        Vxlan::NotOurs => Outcome::pass(Verdict::PASS),
        Vxlan::IpOptions { ihl, src } => {
            // Find the port the slow way (a variable offset, through
            // `bpf_skb_load_bytes`), only to tell malformed VXLAN from other UDP.
            let port_offset = ETH_LEN + usize::from(ihl) * 4 + 2;
            match ctx.load::<[u8; 2]>(port_offset) {
                Ok(port) if be16(port) == VXLAN_PORT && ihl > 5 => {
                    debug!(ctx, "VXLAN with IP options from {:i}: dropped", src);
                    Outcome::drop(Verdict::MALFORMED)
                }
                _ => Outcome::pass(Verdict::PASS),
            }
        }
        Vxlan::Malformed { src } => {
            debug!(ctx, "malformed VXLAN from {:i}: dropped", src);
            Outcome::drop(Verdict::MALFORMED)
        }
        Vxlan::UnknownVni => Outcome::pass(Verdict::UNKNOWN_VNI),
        Vxlan::NotIpv4 => Outcome::drop(Verdict::DROP),
        Vxlan::UnknownEndpoint { vni, dst } => {
            debug!(
                ctx,
                "VXLAN {} for {:i}: no such local endpoint: dropped", vni, dst
            );
            Outcome::drop(Verdict::UNKNOWN_ENDPOINT)
        }
        Vxlan::Spoofed { outer, inner } => {
            debug!(
                ctx,
                "VXLAN from {:i} claiming inner source {:i}: dropped", outer, inner
            );
            Outcome::drop(Verdict::SPOOFED)
        }
        Vxlan::Deliver {
            dst,
            ifindex,
            protocol,
            ..
        } => decap(ctx, ifindex, dst, protocol),
    }
}

/// A frame `xdp_underlay` decapsulated (perhaps many, aggregated by GRO since): delivered
/// only if the mark names a port of an endpoint on that VNI with the frame's destination
/// address, so even a forged mark could not cross networks.
fn deliver_marked(ctx: &TcContext, meta: &DecapMeta) -> Outcome {
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    match lookup(&OVERLAY_PORTS, &meta.ifindex) {
        Some(port) if port.vni == meta.vni && be32(port.ip) == be32(ip.dst) => {
            into_endpoint(ctx, meta.ifindex, ip.protocol)
        }
        _ => {
            // The endpoint went away between the two programs, or the mark is not ours.
            debug!(
                ctx,
                "decapsulated frame for {:i}: no such port: dropped", ip.dst
            );
            Outcome::drop(Verdict::UNKNOWN_ENDPOINT)
        }
    }
}

/// Removes outer IPv4 + UDP + VXLAN + inner Ethernet (the 50 bytes after the outer
/// Ethernet header, which stays and is rewritten), then delivers into the endpoint.
fn decap(ctx: &TcContext, ifindex: u32, dst: [u8; 4], protocol: u8) -> Outcome {
    if ctx
        .adjust_room(-(ENCAP_LEN as i32), BPF_ADJ_ROOM_MAC, DECAP_FLAGS)
        .is_err()
    {
        debug!(ctx, "VXLAN for {:i}: adjust_room failed: dropped", dst);
        return Outcome::error();
    }
    if ctx.store(0, &inner_ethernet(dst), 0).is_err() {
        return Outcome::error();
    }
    into_endpoint(ctx, ifindex, protocol)
}

/// Delivers a decapsulated skb with inner IPv4 `protocol` into the endpoint behind
/// host-side veth `ifindex`.
///
/// A single TCP segment (no `gso_size`: the underlay's GRO did not merge it) goes out of
/// the host-side veth (`bpf_redirect`, its egress), so it crosses the veth into the
/// endpoint's `eth0`, whose GRO (the agent turns it on, and TSO off on the host side, see
/// `agent/src/netlink/offload.rs`) merges consecutive segments of the flow, as the
/// kernel's VXLAN device does in its GRO cells. Without that the receiver acknowledges
/// every other segment, the sender answers those ACKs from softirq on the other CPU, and
/// its two transmit streams overtake each other in the per-CPU backlogs: reordering,
/// spurious retransmits, a third less throughput. Everything else — GRO aggregates, UDP,
/// ICMP — goes straight into the endpoint's namespace with `bpf_redirect_peer`, which
/// skips the veth's transmit path and its 256-entry ring (64-byte UDP through the ring
/// arrived at half the rate).
#[inline(always)]
fn into_endpoint(ctx: &TcContext, ifindex: u32, protocol: u8) -> Outcome {
    // SAFETY: reading a field of the context the kernel handed us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if protocol == IPPROTO_TCP && gso_size == 0 {
        Outcome::redirect(Verdict::DECAP, ifindex)
    } else {
        Outcome::redirect_peer(Verdict::DECAP, ifindex)
    }
}
