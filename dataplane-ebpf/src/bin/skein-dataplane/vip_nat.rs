//! Service VIPs on the sending host (ABI and rules: [`dataplane_ebpf::vip`]), called by
//! `tc_endpoint_ingress` for what an endpoint sends and by `tc_underlay_ingress` for
//! what is delivered into one.
//!
//! - [`forward`]: a client's packet to a VIP or a node's published port: its tracked
//!   flow's backend, or a new pick from the service's shared rotation (TCP only on a
//!   SYN), destination (and for a hairpin flow the source) rewritten. The caller then
//!   delivers it like any packet to the backend's address.
//! - [`reverse`]: a backend's reply on its way into the client: source written back to
//!   the address and port the client sent to.
//! - [`at_vip`]: both, for a packet to a VIP (a hairpin flow's reply is one).
//!
//!
//! Each returns a status ([`NONE`], [`TRANSLATED`], [`REFUSED`], [`ANSWER`], [`FAILED`]) and leaves
//! the caller to read the rewritten header again: functions that are not inlined return
//! one register, and the endpoint program's stack (512 bytes for the call chain) is
//! mostly taken already. The cost on the paths that are not VIP traffic: one hash lookup
//! for a TCP/UDP packet leaving the overlay (a node address?) and one LRU lookup for a
//! TCP/UDP packet delivered into an endpoint (a reply?).
//!
//! Checksums are updated with `bpf_l3_csum_replace`/`bpf_l4_csum_replace`, which keep a
//! `CHECKSUM_PARTIAL` skb and a GSO super-packet right (as `mesh_reply` does).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_ktime_get_coarse_ns,
    programs::TcContext,
};
use dataplane_ebpf::{
    mesh::{
        opens_flow, pick_index, refresh_after_ns, tcp_next, MeshConfig, TCP_FIN, TCP_RST,
        TCP_SYN_SENT, UDP_OPEN,
    },
    overlay::{EndpointKey, ETH_LEN, IPV4_LEN},
    vip::{
        flow_carries, flow_of_reply, reply_of, VipBackendKey, VipFlow, VipFlowKey, VipPort,
        VipPortKey, VipReply, VipReplyKey, VipServiceKey, ANY_PORT, VIP_CLOSED_PORT, VIP_FLOW,
        VIP_NEW_FLOW, VIP_NO_BACKEND, VIP_NO_FLOW, VIP_REPLY,
    },
};

use crate::{
    maps::{
        lookup, MESH_CONFIG, OVERLAY_ENDPOINTS, VIP_BACKENDS, VIP_EVENTS, VIP_FLOWS, VIP_PORTS,
        VIP_REPLIES, VIP_SERVICES,
    },
    parse::*,
};

/// Not VIP traffic: the caller's path as before.
pub(crate) const NONE: u32 = 0;
/// Translated: deliver to the (new) destination in the header.
pub(crate) const TRANSLATED: u32 = 1;
/// Refused by the balancer (counted in `VIP_EVENTS`): drop as `vip_refused`.
pub(crate) const REFUSED: u32 = 2;
/// A helper failed: drop as an error.
pub(crate) const FAILED: u32 = 3;
/// Refused a connection (no serving task; TCP of no live flow), counted in
/// `VIP_EVENTS`: the client gets the answer of a closed port (`vip_respond::answer`) at once
/// instead of retrying into silence.
pub(crate) const ANSWER: u32 = 5;

const IP: usize = ETH_LEN;
const IP_CHECK: usize = IP + 10;
const IP_SRC: usize = IP + 12;
const IP_DST: usize = IP + 16;
const L4: usize = IP + IPV4_LEN;
const TCP_FLAGS: usize = L4 + 13;
const TCP_CHECK: usize = L4 + 16;
const UDP_CHECK: usize = L4 + 6;
/// The headers the translation reads and writes (IPv4 without options, TCP without).
const HEADERS_LEN: u32 = (L4 + 20) as u32;
/// Backends tried after the cursor's pick when its endpoint is gone (the agent has not
/// caught up yet): bounded, for the verifier.
const PICK_TRIES: u32 = 4;

/// A plain IPv4 TCP or UDP packet (no options, not a fragment) and its ports, headers
/// pulled into the linear area.
#[inline(always)]
fn balanced(ctx: &TcContext) -> Option<(Ipv4Hdr, [u8; 2], [u8; 2])> {
    let ip = read_at::<Ipv4Hdr>(ctx, IP)?;
    if ip.version_ihl != 0x45
        || be16(ip.frag_off) & (IP_MF | IP_OFFSET_MASK) != 0
        || (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
    {
        return None;
    }
    pull_headers(ctx, HEADERS_LEN);
    let ports = read_at::<[u8; 4]>(ctx, L4)?;
    Some((ip, [ports[0], ports[1]], [ports[2], ports[3]]))
}

#[inline(always)]
fn event(slot: u32) {
    if let Some(n) = VIP_EVENTS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot: no other program instance writes it concurrently.
        unsafe { *n = (*n).wrapping_add(1) };
    }
}

/// Whether `ip` has a live endpoint on network `vni` (a backend whose task is gone is
/// never sent to).
#[inline(always)]
fn alive(vni: u32, ip: [u8; 4]) -> bool {
    OVERLAY_ENDPOINTS
        .get_ptr(&EndpointKey { vni, ip })
        .is_some()
}

/// A packet to an address of the endpoint's network that is not an endpoint: a reply of
/// a hairpin flow (to the VIP), or a client's packet to a VIP. Anything else to a VIP is
/// refused; to an address that is no VIP, [`NONE`]. Inlined: a call level of its own
/// would cost the endpoint program's call chain 32 bytes of stack.
#[inline(always)]
pub(crate) fn at_vip(ctx: &TcContext, vni: u32) -> u32 {
    let status = reverse(ctx, vni);
    if status != NONE {
        return status;
    }
    let status = forward(ctx, vni);
    if status != NONE {
        return status;
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, IP) else {
        return NONE;
    };
    let service = VipServiceKey { vni, vip: ip.dst };
    if VIP_SERVICES.get_ptr(&service).is_some() {
        event(VIP_CLOSED_PORT);
        return REFUSED;
    }
    NONE
}

/// A client's packet to a balanced destination (`VIP_PORTS`): translated to its flow's
/// backend, or a new flow opened first; [`NONE`] when the destination is not balanced.
/// The new flow is opened by a separate call between two tries, so no one frame holds
/// both the translation's and the new flow's keys (the endpoint program's call chain
/// has 512 bytes of stack, most of them its own).
#[inline(always)]
pub(crate) fn forward(ctx: &TcContext, vni: u32) -> u32 {
    let status = translate(ctx, vni);
    if status != OPEN {
        return status;
    }
    let status = open(ctx, vni);
    if status != TRANSLATED {
        return status;
    }
    match translate(ctx, vni) {
        // Opened a moment ago: only a map that refused the write gets here.
        OPEN => FAILED,
        status => status,
    }
}

/// [`translate`]: no live flow; [`open`] one.
const OPEN: u32 = 4;

/// The port entry and flow key of a client's packet to a balanced destination.
#[inline(always)]
fn flow_of(ctx: &TcContext, vni: u32) -> Option<(VipPort, VipFlowKey)> {
    let (ip, sport, dport) = balanced(ctx)?;
    let port_key = VipPortKey {
        vni,
        ip: ip.dst,
        port_be: dport,
        protocol: ip.protocol,
        _pad: 0,
    };
    let port = match lookup(&VIP_PORTS, &port_key) {
        Some(port) => port,
        None => {
            // A VIP takes every port and keeps it.
            let any = VipPortKey {
                port_be: ANY_PORT.to_be_bytes(),
                ..port_key
            };
            let mut port = lookup(&VIP_PORTS, &any)?;
            port.target_port_be = dport;
            port
        }
    };
    Some((
        port,
        VipFlowKey {
            vni,
            client_ip: ip.src,
            dst_ip: ip.dst,
            client_port_be: sport,
            dst_port_be: dport,
            protocol: ip.protocol,
            _pad: [0; 3],
        },
    ))
}

/// Translates a client's packet of a live flow to its backend: [`TRANSLATED`], or
/// [`OPEN`] without one, [`NONE`] if the destination is not balanced. A flow whose
/// backend is gone, that sat idle past its timeout, or that a SYN finds closed (a client
/// port reused) is no live flow: the packet opens a new one (the mesh's rules,
/// [`flow_carries`]). The state follows the client's segments here and the backend's
/// FIN and RST in [`reverse`].
#[inline(never)]
fn translate(ctx: &TcContext, vni: u32) -> u32 {
    let Some((_, key)) = flow_of(ctx, vni) else {
        return NONE;
    };
    let Some(entry) = VIP_FLOWS.get_ptr_mut(&key) else {
        return OPEN;
    };
    // SAFETY: a valid map value for this run; copied at once.
    let flow = unsafe { *entry };
    if !alive(vni, flow.backend_ip) {
        return OPEN;
    }
    let tcp_flags = if key.protocol == IPPROTO_TCP {
        let Some(flags) = read_at::<u8>(ctx, TCP_FLAGS) else {
            return NONE;
        };
        flags
    } else {
        0
    };
    let now = now_ns();
    let Some(config) = MESH_CONFIG.get(0) else {
        return FAILED;
    };
    let opens = key.protocol == IPPROTO_TCP && opens_flow(tcp_flags);
    if !flow_carries(config, key.protocol, &flow, opens, now) {
        return OPEN;
    }
    let (state, flags) = if key.protocol == IPPROTO_TCP {
        tcp_next(flow.state, flow.flags, tcp_flags, true)
    } else {
        (flow.state, flow.flags)
    };
    touch(entry, &flow, state, flags, config, key.protocol, now);
    let check = checksum_offset(key.protocol);
    let ok = set_addr(ctx, check, IP_DST, key.dst_ip, flow.backend_ip)
        && set_port(ctx, check, L4 + 2, key.dst_port_be, flow.target_port_be)
        && (be32(flow.source_ip) == be32(key.client_ip)
            || set_addr(ctx, check, IP_SRC, key.client_ip, flow.source_ip));
    if !ok {
        return FAILED;
    }
    event(VIP_FLOW);
    TRANSLATED
}

/// `bpf_ktime_get_coarse_ns`: the flows' clock (a tick behind at most, as the mesh's).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Writes a flow's new state, and its last-seen time when the state changed or the time
/// is older than [`refresh_after_ns`] allows (a busy flow writes its entry about once a
/// second, not per packet).
#[inline(always)]
fn touch(
    entry: *mut VipFlow,
    flow: &VipFlow,
    state: u8,
    flags: u8,
    config: &MeshConfig,
    protocol: u8,
    now: u64,
) {
    let changed = state != flow.state || flags != flow.flags;
    let stale = now.saturating_sub(flow.last_seen_ns) > refresh_after_ns(config, protocol, state);
    // SAFETY: a valid map value; plain stores of whole fields (another CPU reading the
    // entry meanwhile sees each field old or new).
    unsafe {
        if changed {
            (*entry).state = state;
            (*entry).flags = flags;
        }
        if changed || stale {
            (*entry).last_seen_ns = now;
        }
    }
}

/// Opens a flow for a client's packet that has none (or whose backend is gone): TCP only
/// on a SYN; the next backend of the rotation; the flow and its reply entry written.
/// [`TRANSLATED`] means opened (the packet is not rewritten yet).
#[inline(never)]
fn open(ctx: &TcContext, vni: u32) -> u32 {
    let Some((port, key)) = flow_of(ctx, vni) else {
        return NONE;
    };
    if key.protocol == IPPROTO_TCP {
        let Some(flags) = read_at::<u8>(ctx, TCP_FLAGS) else {
            return NONE;
        };
        if !opens_flow(flags) {
            event(VIP_NO_FLOW);
            return ANSWER;
        }
    }
    let Some(backend) = pick(vni, port.vip) else {
        event(VIP_NO_BACKEND);
        return ANSWER;
    };
    let (reply_key, reply) = reply_of(&key, backend, port.target_port_be, port.vip);
    if VIP_REPLIES.insert(&reply_key, &reply, 0).is_err() {
        return FAILED;
    }
    let flow = VipFlow {
        backend_ip: backend,
        source_ip: reply_key.client_ip,
        target_port_be: port.target_port_be,
        state: if key.protocol == IPPROTO_TCP {
            TCP_SYN_SENT
        } else {
            UDP_OPEN
        },
        flags: 0,
        _pad: [0; 4],
        last_seen_ns: now_ns(),
    };
    if VIP_FLOWS.insert(&key, &flow, 0).is_err() {
        return FAILED;
    }
    event(VIP_NEW_FLOW);
    TRANSLATED
}

/// The next backend of the service (`vni`, `vip`) from its shared cursor, skipping
/// (a few) whose endpoint is gone.
#[inline(always)]
fn pick(vni: u32, vip: [u8; 4]) -> Option<[u8; 4]> {
    let service = VIP_SERVICES.get_ptr_mut(&VipServiceKey { vni, vip })?;
    // SAFETY: the element stays valid for this run; `backends` is only written by the
    // agent (a torn read is impossible for an aligned u32).
    let backends = unsafe { (*service).backends };
    if backends == 0 {
        return None;
    }
    // One cursor for every CPU: the fetch-add hands each new flow the next number.
    // SAFETY: an aligned u32 inside the map element; the kernel's atomic add.
    let cursor = unsafe {
        atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(
            core::ptr::addr_of_mut!((*service).cursor),
            1,
        )
    };
    let mut index = pick_index(cursor, backends);
    for _ in 0..PICK_TRIES {
        if let Some(b) = lookup(&VIP_BACKENDS, &VipBackendKey { vni, vip, index }) {
            if alive(vni, b.ip) {
                return Some(b.ip);
            }
        }
        index = pick_index(index + 1, backends);
    }
    None
}

/// A packet going into a client endpoint that is a VIP flow's reply: source written
/// back to the address and port the client sent to (and, for a hairpin flow, the
/// destination back to the client's own address); [`NONE`] if it is not one.
#[inline(never)]
pub(crate) fn reverse(ctx: &TcContext, vni: u32) -> u32 {
    let Some((ip, sport, dport)) = balanced(ctx) else {
        return NONE;
    };
    let key = VipReplyKey {
        vni,
        backend_ip: ip.src,
        client_ip: ip.dst,
        backend_port_be: sport,
        client_port_be: dport,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    // SAFETY: copied at once; the kernel may reuse the element's memory later.
    let Some(reply) = (unsafe { VIP_REPLIES.get(&key).copied() }) else {
        return NONE;
    };
    if ip.protocol == IPPROTO_TCP {
        backend_closes(ctx, &key, &reply);
    }
    let check = checksum_offset(ip.protocol);
    let ok = set_addr(ctx, check, IP_SRC, ip.src, reply.dst_ip)
        && set_port(ctx, check, L4, sport, reply.dst_port_be)
        && (be32(reply.client_ip) == be32(ip.dst)
            || set_addr(ctx, check, IP_DST, ip.dst, reply.client_ip));
    if !ok {
        return FAILED;
    }
    event(VIP_REPLY);
    TRANSLATED
}

/// A backend's FIN or RST moves its flow's state (both FINs or a RST: closing, so the
/// client's next SYN from that port is balanced afresh). Only when the flow still
/// leads to this backend: a late segment of an old connection leaves a new one alone.
#[inline(always)]
fn backend_closes(ctx: &TcContext, key: &VipReplyKey, reply: &VipReply) {
    let Some(tcp_flags) = read_at::<u8>(ctx, TCP_FLAGS) else {
        return;
    };
    if tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    let Some(entry) = VIP_FLOWS.get_ptr_mut(&flow_of_reply(key, reply)) else {
        return;
    };
    // SAFETY: a valid map value for this run; plain loads and stores of whole fields.
    unsafe {
        if be32((*entry).backend_ip) != be32(key.backend_ip) {
            return;
        }
        let (state, flags) = tcp_next((*entry).state, (*entry).flags, tcp_flags, false);
        (*entry).state = state;
        (*entry).flags = flags;
        (*entry).last_seen_ns = now_ns();
    }
}

#[inline(always)]
fn checksum_offset(protocol: u8) -> usize {
    if protocol == IPPROTO_TCP {
        TCP_CHECK
    } else {
        UDP_CHECK
    }
}

/// A UDP datagram sent without a checksum keeps none (and a computed 0 goes out as
/// 0xffff): the helpers' flag for it.
#[inline(always)]
fn mangled_0(check: usize) -> u64 {
    if check == UDP_CHECK {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Rewrites the IPv4 address at `at` from `old` to `new`, with the IP checksum and the
/// L4 checksum (at `check`, pseudo-header) updated.
#[inline(always)]
fn set_addr(ctx: &TcContext, check: usize, at: usize, old: [u8; 4], new: [u8; 4]) -> bool {
    let (old, new_word) = (
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
    );
    ctx.l3_csum_replace(IP_CHECK, old, new_word, 4).is_ok()
        && ctx
            .l4_csum_replace(
                check,
                old,
                new_word,
                u64::from(BPF_F_PSEUDO_HDR) | mangled_0(check) | 4,
            )
            .is_ok()
        && ctx.store(at, &new, 0).is_ok()
}

/// Rewrites the port at `at` from `old` to `new`, with the L4 checksum updated.
#[inline(always)]
fn set_port(ctx: &TcContext, check: usize, at: usize, old: [u8; 2], new: [u8; 2]) -> bool {
    if be16(old) == be16(new) {
        return true;
    }
    ctx.l4_csum_replace(
        check,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        mangled_0(check) | 2,
    )
    .is_ok()
        && ctx.store(at, &new, 0).is_ok()
}
