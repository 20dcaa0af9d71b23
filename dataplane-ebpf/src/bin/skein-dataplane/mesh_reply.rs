//! The routing mesh's replies, where the task runs (ARCHITECTURE.md, packet path 4;
//! MESH-DESIGN.md path 3): what a task sends back to a client of a published port,
//! seen by `tc_endpoint_ingress` before the packet would go to the host's egress NAT.
//!
//! A packet is a mesh reply when its flow (task address and port, client address and
//! port, protocol) has a `MESH_REPLIES` entry: the ingress node wrote it when it balanced
//! the flow to a local task, or this host's decapsulation wrote it when the flow arrived
//! from another ingress node ([`crate::mesh_decap`]). The endpoint program has already
//! checked the source against the endpoint's own address, so a workload can only match
//! an entry of a real flow of its own. Then:
//!
//! - a SYN-ACK's MSS option is clamped to the mesh's (`MeshConfig::mss`), so the client
//!   never sends segments that do not fit the underlay once encapsulated, whatever the
//!   task's own MTU;
//! - flowed through this node (the task is local to its ingress node): translated back
//!   (source → this node's underlay address and the published port) and sent out of the
//!   underlay towards the client, the flow's conntrack state and counters updated;
//! - flowed through another node: encapsulated on the ingress VNI to that node, which
//!   translates it back (a symmetric path: the client only ever hears from the address
//!   it sent to); the inner destination MAC carries the published port back to it
//!   ([`mesh::published_port_mac`]), as the request brought it.
//!
//! Checksums are updated with `bpf_l3_csum_replace`/`bpf_l4_csum_replace`, which keep a
//! `CHECKSUM_PARTIAL` skb (what a task's stack with offloads sends) and a GSO super-packet
//! right: for those the helpers adjust only the pseudo-header seed the kernel completes
//! later.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{
        self, FlowKey, MeshConfig, MeshStatKey, Reply, ReplyKey, TCP_ACK, TCP_MAX_OPTIONS, TCP_SYN,
    },
    overlay::{ETH_LEN, IPV4_LEN},
};

use crate::{
    encap::{to_underlay, Tunnel},
    maps::{underlay_config, MESH_CONFIG, MESH_FLOWS, MESH_REPLIES, MESH_STATS},
    outcome::Outcome,
    parse::*,
};

/// Offsets in a reply (an Ethernet frame with a plain IPv4 header).
const IP: usize = ETH_LEN;
const IP_CHECK: usize = IP + 10;
const IP_SRC: usize = IP + 12;
const L4: usize = IP + IPV4_LEN;
const TCP_FLAGS: usize = L4 + 13;
const TCP_CHECK: usize = L4 + 16;
const TCP_OPTIONS: usize = L4 + 20;
const UDP_CHECK: usize = L4 + 6;
/// Everything the reply path reads: headers up to the longest TCP options.
const HEADERS_LEN: usize = TCP_OPTIONS + TCP_MAX_OPTIONS;

/// A mesh reply found for the endpoint's packet: where it goes, and what it needs.
pub(crate) struct MeshReply {
    reply: Reply,
    config: MeshConfig,
    /// The task's and the client's ports, as in the packet.
    sport: [u8; 2],
    dport: [u8; 2],
}

/// The mesh reply the endpoint's IPv4 packet `ip` (source already checked) is, if any:
/// the mesh is on, the packet is plain IPv4 TCP or UDP with its ports (no options, not a
/// later fragment), and its flow has a `MESH_REPLIES` entry.
#[inline(always)]
pub(crate) fn find(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<MeshReply> {
    let config = *MESH_CONFIG.get(0)?;
    if config.ingress_vni == 0
        || ip.version_ihl != 0x45
        || be16(ip.frag_off) & IP_OFFSET_MASK != 0
        || !mesh::balanced_protocol(ip.protocol)
    {
        return None;
    }
    pull_headers(ctx, HEADERS_LEN as u32);
    let ports = read_at::<[u8; 4]>(ctx, L4)?;
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let key = ReplyKey {
        backend_ip: ip.src,
        client_ip: ip.dst,
        backend_port_be: sport,
        client_port_be: dport,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    // SAFETY: copied at once; the kernel may reuse the element's memory later.
    let reply = unsafe { MESH_REPLIES.get(&key).copied() }?;
    Some(MeshReply {
        reply,
        config,
        sport,
        dport,
    })
}

/// Where a mesh reply goes once [`route`] has looked at it.
pub(crate) enum Route {
    /// Decided already (translated back and to be sent to the client, or dropped).
    Done(Outcome),
    /// Through another node: to be encapsulated as the overlay's own packets are (the
    /// caller's path, so the encapsulation's stack is not stacked on this one's).
    Tunnel(Tunnel),
}

/// Routes the mesh reply `m` (the endpoint's packet `ip`): a SYN-ACK's MSS clamped,
/// then back to the client from this node, or to the flow's ingress node.
///
/// The work is split into functions that are not inlined and return to the caller
/// before the next step (the MSS clamp, the translation, then the FIB lookup the
/// caller does), because BPF allows 512 bytes of stack for a whole call chain and the
/// endpoint program's own frame already holds most of it.
#[inline(always)]
pub(crate) fn route(ctx: &TcContext, ip: &Ipv4Hdr, m: &MeshReply) -> Route {
    let tcp_flags = if ip.protocol == IPPROTO_TCP {
        let Some(flags) = read_at::<u8>(ctx, TCP_FLAGS) else {
            return Route::Done(Outcome::drop(Verdict::MALFORMED));
        };
        flags
    } else {
        0
    };
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && !clamp_mss(ctx, m.config.mss) {
        return Route::Done(Outcome::error());
    }
    let Some(underlay) = underlay_config() else {
        return Route::Done(Outcome::drop(Verdict::NO_ROUTE));
    };
    if underlay.ifindex == 0 {
        return Route::Done(Outcome::drop(Verdict::NO_ROUTE));
    }
    if be32(m.reply.ingress_ip) == be32(underlay.ip) {
        // The task is local to the flow's ingress node (this one): the reply leaves as
        // the client expects it, from this node's underlay address and the published
        // port, out of the underlay (next hop from the FIB).
        if !translate_back(ctx, ip, m, underlay.ip, tcp_flags) {
            return Route::Done(Outcome::error());
        }
        return Route::Done(to_underlay(ctx, &underlay, ip.dst, Verdict::MESH_REPLY));
    }
    Route::Tunnel(Tunnel {
        vni: m.config.ingress_vni,
        src: ip.src,
        dst: ip.dst,
        remote: m.reply.ingress_ip,
        // The ingress node finds the flow by this port (it keeps no reply entry of its
        // own for a remote backend) and overwrites the header.
        inner_dst_mac: mesh::published_port_mac(m.reply.published_port_be),
        verdict: Verdict::MESH_REPLY,
    })
}

/// Clamps a SYN-ACK's MSS option to `clamp` (`MeshConfig::mss`; 0: no clamp), if it
/// carries one above it; false if the packet could not be read or written. No option is
/// inserted: without one the client assumes 536.
#[inline(never)]
fn clamp_mss(ctx: &TcContext, clamp: u16) -> bool {
    clamp_mss_option(ctx, clamp).is_ok()
}

#[inline(always)]
fn clamp_mss_option(ctx: &TcContext, clamp: u16) -> Result<(), ()> {
    let Some(doff) = read_at::<u8>(ctx, L4 + 12) else {
        return Err(());
    };
    let header_len = usize::from(doff >> 4) * 4;
    if header_len <= 20 || clamp == 0 {
        return Ok(());
    }
    let options_len = header_len - 20;
    let mut options = [0u8; TCP_MAX_OPTIONS];
    for (i, byte) in options.iter_mut().enumerate() {
        if i >= options_len {
            break;
        }
        match read_at::<u8>(ctx, TCP_OPTIONS + i) {
            Some(b) => *byte = b,
            None => return Err(()),
        }
    }
    let Some(at) = mesh::mss_offset(&options, options_len) else {
        return Ok(());
    };
    // The value is read again from the packet: a variable offset into the stack copy
    // is more than the verifier tracks well.
    if at > TCP_MAX_OPTIONS - 2 {
        return Ok(());
    }
    let Some(old) = read_at::<[u8; 2]>(ctx, TCP_OPTIONS + at) else {
        return Err(());
    };
    let Some(new) = mesh::clamp_mss(u16::from_be_bytes(old), clamp) else {
        return Ok(());
    };
    let new = new.to_be_bytes();
    ctx.l4_csum_replace(
        TCP_CHECK,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .map_err(|_| ())?;
    ctx.store(TCP_OPTIONS + at, &new, 0).map_err(|_| ())
}

/// Translates the reply back (source → `node_ip`, this node's underlay address, and the
/// published port), checksums updated, and notes it in the flow's conntrack entry and
/// counters; false if a helper failed.
#[inline(never)]
fn translate_back(
    ctx: &TcContext,
    ip: &Ipv4Hdr,
    m: &MeshReply,
    node_ip: [u8; 4],
    tcp_flags: u8,
) -> bool {
    let (check, mangled_0) = if ip.protocol == IPPROTO_TCP {
        (TCP_CHECK, 0)
    } else {
        // A UDP datagram sent without a checksum keeps none, and a computed 0 goes out
        // as 0xffff.
        (UDP_CHECK, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let (old_ip, new_ip) = (
        u64::from(u32::from_ne_bytes(ip.src)),
        u64::from(u32::from_ne_bytes(node_ip)),
    );
    let (old_port, new_port) = (
        u64::from(u16::from_ne_bytes(m.sport)),
        u64::from(u16::from_ne_bytes(m.reply.published_port_be)),
    );
    let rewritten = ctx.l3_csum_replace(IP_CHECK, old_ip, new_ip, 4).is_ok()
        && ctx
            .l4_csum_replace(
                check,
                old_ip,
                new_ip,
                u64::from(BPF_F_PSEUDO_HDR) | mangled_0 | 4,
            )
            .is_ok()
        && ctx
            .l4_csum_replace(check, old_port, new_port, mangled_0 | 2)
            .is_ok()
        && ctx.store(IP_SRC, &node_ip, 0).is_ok()
        && ctx.store(L4, &m.reply.published_port_be, 0).is_ok();
    if rewritten {
        track(ctx, ip, m, node_ip, tcp_flags);
    }
    rewritten
}

/// The reply's effect on its flow's conntrack entry (TCP state, last seen) and counters.
/// A flow the LRU evicted is not recreated: the client's next packet finds no flow and
/// is reset by the ingress program.
#[inline(always)]
fn track(ctx: &TcContext, ip: &Ipv4Hdr, m: &MeshReply, node_ip: [u8; 4], tcp_flags: u8) {
    let key = FlowKey {
        client_ip: ip.dst,
        node_ip,
        client_port_be: m.dport,
        published_port_be: m.reply.published_port_be,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    let Some(flow) = MESH_FLOWS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the element stays valid for this run; another CPU may write it at the same
    // time, and a lost update of the state or the timestamp is harmless (the next packet
    // writes it again).
    let stat_key = unsafe {
        if ip.protocol == IPPROTO_TCP {
            let (state, flags) = mesh::tcp_next((*flow).state, (*flow).flags, tcp_flags, false);
            (*flow).state = state;
            (*flow).flags = flags;
        }
        (*flow).last_seen_ns = now;
        MeshStatKey {
            slot: (*flow).slot,
            backend_ip: (*flow).backend_ip,
        }
    };
    if let Some(stats) = MESH_STATS.get_ptr_mut(&stat_key) {
        // SAFETY: per-CPU value: no other program instance writes it concurrently.
        unsafe {
            (*stats).packets = (*stats).packets.wrapping_add(1);
            (*stats).bytes = (*stats).bytes.wrapping_add(u64::from(ctx.len()));
        }
    }
}
