//! `tc_underlay_ingress`, attached (tcx ingress) to the underlay interface: the second
//! stage of VXLAN from other hosts (see [`crate::decap`]). A frame `xdp_underlay` marked is
//! checked against the maps and delivered into its endpoint; anything else is classified
//! again and decapsulated on the skb, dropped or passed, each counted.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, macros::classifier, programs::TcContext,
};
use aya_log_ebpf::debug;
use dataplane_ebpf::{
    counters::Verdict,
    mesh::MESH_DECAP_META_MAGIC,
    overlay::{DecapMeta, DECAP_META_MAGIC, ENCAP_LEN, ETH_LEN, VXLAN_PORT},
};

use crate::{
    decap::{classify, inner_ethernet, Vxlan, DECAP_FLAGS, HEADERS_LEN},
    guard::into_overlay,
    maps::{lookup, OVERLAY_PORTS, TC_UNDERLAY_COUNTERS},
    outcome::{count, Outcome},
    parse::*,
    vip_nat,
};

/// Underlay interface, tc ingress: VXLAN for this host's endpoints.
#[classifier]
pub fn tc_underlay_ingress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    let outcome = handle(&ctx);
    count(&TC_UNDERLAY_COUNTERS, outcome.verdict, len);
    outcome.action
}

/// The skb's XDP metadata, if `xdp_underlay` left a decapsulation mark: an overlay
/// decapsulation ([`DECAP_META_MAGIC`]) or a mesh delivery ([`MESH_DECAP_META_MAGIC`]),
/// checked and delivered alike.
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
    (meta.magic == DECAP_META_MAGIC || meta.magic == MESH_DECAP_META_MAGIC).then_some(meta)
}

/// `tc_underlay_ingress`'s decision.
fn handle(ctx: &TcContext) -> Outcome {
    if let Some(meta) = decap_meta(ctx) {
        return deliver_marked(ctx, &meta);
    }
    pull_headers(ctx, HEADERS_LEN as u32);
    match classify(ctx) {
        // Plain IPv4 routed into an overlay subnet (XDP drops it first where it runs).
        Vxlan::NotOurs if into_overlay(ctx) => Outcome::drop(Verdict::INTO_OVERLAY),
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
        Vxlan::MeshRefused { src } => {
            debug!(ctx, "mesh VXLAN from {:i} refused: dropped", src);
            Outcome::drop(Verdict::MESH_REFUSED)
        }
        Vxlan::Deliver {
            vni,
            dst,
            ifindex,
            protocol,
            mesh,
        } => decap(ctx, ifindex, (vni, dst), protocol, delivered(mesh)),
    }
}

/// The verdict of a delivery: a mesh request or an overlay decapsulation.
#[inline(always)]
fn delivered(mesh: bool) -> Verdict {
    if mesh {
        Verdict::MESH_DELIVER
    } else {
        Verdict::DECAP
    }
}

/// A frame `xdp_underlay` decapsulated (perhaps many, aggregated by GRO since): delivered
/// only if the mark names a port of an endpoint on that VNI with the frame's destination
/// address, so even a forged mark could not cross networks. A mesh delivery's inner
/// source is a client, which this check does not look at: the mark's VNI is the task's
/// own network and its address the destination, as for any other delivery.
fn deliver_marked(ctx: &TcContext, meta: &DecapMeta) -> Outcome {
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    match lookup(&OVERLAY_PORTS, &meta.ifindex) {
        Some(port) if port.vni == meta.vni && be32(port.ip) == be32(ip.dst) => {
            let verdict = delivered(meta.magic == MESH_DECAP_META_MAGIC);
            // A remote backend's reply to a VIP flow of this endpoint: translated back.
            if vip_nat::reverse(ctx, meta.vni) == vip_nat::FAILED {
                return Outcome::error();
            }
            into_endpoint(ctx, meta.ifindex, ip.protocol, verdict)
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
fn decap(
    ctx: &TcContext,
    ifindex: u32,
    (vni, dst): (u32, [u8; 4]),
    protocol: u8,
    verdict: Verdict,
) -> Outcome {
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
    if vip_nat::reverse(ctx, vni) == vip_nat::FAILED {
        return Outcome::error();
    }
    into_endpoint(ctx, ifindex, protocol, verdict)
}

/// Delivers a decapsulated skb with inner IPv4 `protocol` into the endpoint behind
/// host-side veth `ifindex`, counted as `verdict`.
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
fn into_endpoint(ctx: &TcContext, ifindex: u32, protocol: u8, verdict: Verdict) -> Outcome {
    // SAFETY: reading a field of the context the kernel handed us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if protocol == IPPROTO_TCP && gso_size == 0 {
        Outcome::redirect(verdict, ifindex)
    } else {
        Outcome::redirect_peer(verdict, ifindex)
    }
}
