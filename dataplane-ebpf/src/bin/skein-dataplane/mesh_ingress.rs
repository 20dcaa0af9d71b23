//! The routing mesh on the ingress node, in `xdp_underlay` (ARCHITECTURE.md, packet path
//! 4; MESH-DESIGN.md paths 1 and 4): clients' packets to a published port of this node,
//! and the backends' replies coming back through it.
//!
//! A client's packet (TCP or UDP to this node's underlay address, a port in `MESH_PORTS`)
//! is checked (no IP options, no fragments, a valid header checksum, TCP flags a real
//! stack sends), looked up in the conntrack (`MESH_FLOWS`), balanced when it opens a
//! flow (one shared atomic cursor per service: exact round robin across CPUs), translated
//! (destination → the backend's overlay address and target port; the client's address
//! stays) and delivered: into a local task through `tc_underlay_ingress` (a `DecapMeta`
//! mark, as for decapsulated VXLAN), or in VXLAN on the ingress VNI to the backend's host
//! (`mesh_nat`). TCP that no live flow can take is reset, a service without a serving
//! task refuses like a closed port (`mesh_respond`). Replies from a remote backend's host
//! are `mesh_return`'s.
//!
//! Everything else returns `None` and the overlay's path runs as before; with
//! `MESH_CONFIG.ingress_vni == 0` (the mesh off) that is every frame.
//!
//! Stack: the heavy parts are separate BPF functions (`#[inline(never)]`) that take the
//! raw context pointer, so no frame holds more than its own part (512 bytes for the
//! whole call chain).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::generated::{bpf_csum_diff, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{tcp_flags_valid, Flow, FlowKey, MeshBackend},
    overlay::{UnderlayValue, ETH_LEN, IPV4_LEN, VXLAN_PORT},
    respond::{fold, pseudo_header_sum},
};

use crate::{
    maps::{lookup, underlay_config, MESH_CONFIG, MESH_PORTS},
    mesh_conntrack::{conntrack, new_flow, stat_service},
    mesh_nat::{deliver, too_big, NextHop},
    mesh_respond, mesh_return,
    parse::*,
};

/// Where the L4 header starts in a client's frame (IP options are refused).
pub(crate) const L4: usize = ETH_LEN + IPV4_LEN;
/// The longest flow-opening SYN whose TCP checksum is verified before it may create an
/// entry or advance the rotation (20-byte header + 40 bytes of options: every SYN a real
/// stack sends without data).
const SYN_CHECKED_LEN: usize = 60;

/// A decision of the mesh, as `(verdict, XDP action)` packed in one register (a BPF
/// function returns one): the verdict's slot in the high half. [`NOT_OURS`]: no decision.
pub(crate) type Decision = u64;
pub(crate) const NOT_OURS: Decision = u64::MAX;

#[inline(always)]
pub(crate) fn decided(verdict: Verdict, action: u32) -> Decision {
    ((verdict.slot() as u64) << 32) | action as u64
}

#[inline(always)]
pub(crate) fn drop(verdict: Verdict) -> Decision {
    decided(verdict, xdp_action::XDP_DROP)
}

/// `slot` filled with zero bytes, in place, by volatile stores as wide as `T`'s
/// alignment. `Default`, `mem::zeroed` and `[0; N]` become calls to `memset`, which this
/// target links as a loop storing one byte per turn (measured: a fifth of the
/// pass-through's time and of a conntrack hit's). Volatile, so LLVM cannot merge the
/// stores back into a `memset`; in place, because a zeroed value copied into its
/// variable is a `memset` again.
///
/// # Safety
/// All zero bytes must be a valid `T` (integers and arrays of them).
#[inline(always)]
pub(crate) unsafe fn zero<T>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    let at = slot.as_mut_ptr();
    // SAFETY: every store lies inside `slot`, at `T`'s alignment; the caller vouches
    // that zero bytes are a `T`.
    unsafe {
        match align_of::<T>() {
            1 => zero_words::<u8>(at.cast(), size_of::<T>()),
            2 => zero_words::<u16>(at.cast(), size_of::<T>() / 2),
            4 => zero_words::<u32>(at.cast(), size_of::<T>() / 4),
            _ => zero_words::<u64>(at.cast(), size_of::<T>() / 8),
        }
        slot.assume_init_mut()
    }
}

/// `n` volatile zero stores of `W` from `at`.
#[inline(always)]
unsafe fn zero_words<W: Copy + Default>(at: *mut W, n: usize) {
    for i in 0..n {
        // SAFETY: the caller's: `n` words from `at` are writable and aligned.
        unsafe { core::ptr::write_volatile(at.add(i), W::default()) };
    }
}

/// The mesh's decision on a frame arriving on the underlay, or `None` when the frame is
/// not the mesh's (then the overlay's decapsulation judges it). `len` is the whole
/// frame's length (all buffers of a multi-buffer frame).
#[inline(always)]
pub(crate) fn handle(ctx: &XdpContext, len: u64) -> Option<(Verdict, u32)> {
    // Two separate paths, each called straight from the program: BPF's 512 bytes of
    // stack are for the whole call chain.
    let d = if maybe_vxlan(ctx) {
        match mesh_return::reply(ctx.ctx, len) {
            // Not a mesh client's reply: perhaps one to this host's own connection.
            NOT_OURS => crate::sock_return::host_reply(ctx.ctx),
            d => d,
        }
    } else {
        client(ctx.ctx, len)
    };
    if d == NOT_OURS {
        return None;
    }
    Some((Verdict((d >> 32) as u32), d as u32))
}

/// What the client path knows about a packet once its headers passed.
#[derive(Clone, Copy, Default)]
pub(crate) struct Client {
    pub(crate) key: FlowKey,
    /// The IPv4 header's `frag_off` had DF set.
    pub(crate) df: bool,
    pub(crate) tcp_flags: u8,
    /// IPv4 total length minus the header: the L4 header and payload.
    pub(crate) l4_len: u16,
    /// The whole frame (for the counters).
    pub(crate) len: u64,
    /// The published port's service slot and target port (`MESH_PORTS`).
    pub(crate) slot: u32,
    pub(crate) target_port_be: [u8; 2],
    /// `bpf_ktime_get_coarse_ns` when the packet arrived.
    pub(crate) now: u64,
}

/// Whether the frame looks like VXLAN (IPv4 without options, UDP to 4789): a reply's
/// shape. `mesh_return` checks the rest.
#[inline(always)]
fn maybe_vxlan(ctx: &XdpContext) -> bool {
    let Some(head) = read_at::<[u8; L4 + 4]>(ctx, 0) else {
        return false;
    };
    head[ETH_LEN] == 0x45
        && head[ETH_LEN + 9] == IPPROTO_UDP
        && be16([head[L4 + 2], head[L4 + 3]]) == VXLAN_PORT
}

/// A client's packet to a published port of this node, or [`NOT_OURS`].
#[inline(never)]
fn client(ctx_ptr: *mut xdp_md, len: u64) -> Decision {
    let Some(config) = MESH_CONFIG.get(0) else {
        return NOT_OURS;
    };
    if config.ingress_vni == 0 {
        return NOT_OURS;
    }
    let Some(underlay) = underlay_config() else {
        return NOT_OURS;
    };
    let mut client = MaybeUninit::uninit();
    // SAFETY: integers and arrays of them.
    let client: &mut Client = unsafe { zero(&mut client) };
    let d = parse(ctx_ptr, &underlay, len, client);
    if d != PARSED {
        return d;
    }
    // One call site each for delivery and answers: the verifier walks a BPF function
    // once per call site.
    let mut plan = MaybeUninit::uninit();
    // SAFETY: as above.
    let plan: &mut Plan = unsafe { zero(&mut plan) };
    // The packet must fit the overlay (MSS + 40 = the overlay MTU: a local task's veth
    // has it, a remote one's host drops anything larger), checked before the conntrack
    // so a datagram too big opens no flow and takes no pick.
    let ip_len = client.l4_len as u32 + IPV4_LEN as u32;
    let mut d = if config.mss != 0 && ip_len > config.mss as u32 + 40 {
        too_big(client, plan, config.mss + 40)
    } else {
        conntrack(config, client, plan)
    };
    if d == NEW_FLOW || d == NEW_FLOW_REPLACING {
        if client.key.protocol == IPPROTO_TCP && !syn_checksum_ok(ctx_ptr, client) {
            stat_service(client.slot, 0, client.len);
            return drop(Verdict::MESH_INVALID);
        }
        d = new_flow(client, plan, d == NEW_FLOW);
    }
    if d == PLAN_DELIVER {
        d = deliver(ctx_ptr, config, &underlay, client, plan);
    }
    if d == PLAN_ANSWER {
        d = mesh_respond::answer(ctx_ptr, client, plan);
    }
    d
}

/// [`conntrack`]'s outcome when the packet is to be delivered as [`Plan`] says.
pub(crate) const PLAN_DELIVER: Decision = u64::MAX - 1;
/// ... when it is to be answered as [`Plan::answer`] says.
pub(crate) const PLAN_ANSWER: Decision = u64::MAX - 2;
/// ... when it opens a new flow (no entry; an entry to replace).
pub(crate) const NEW_FLOW: Decision = u64::MAX - 3;
pub(crate) const NEW_FLOW_REPLACING: Decision = u64::MAX - 4;
/// [`Plan::answer`] values.
pub(crate) const ANSWER_RESET: u8 = 1;
pub(crate) const ANSWER_REFUSE: u8 = 2;
pub(crate) const ANSWER_FRAG_NEEDED: u8 = 3;

/// Where a client's packet goes (or what answers it), as the conntrack decided.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) backend: MeshBackend,
    /// The backend's network.
    pub(crate) vni: u32,
    pub(crate) target_port_be: [u8; 2],
    /// The backend's host-side veth if it is local; `u32::MAX` if remote.
    pub(crate) ifindex: u32,
    /// The verdict slot a successful delivery or answer is counted in.
    pub(crate) verdict: u32,
    pub(crate) answer: u8,
    /// For [`ANSWER_FRAG_NEEDED`].
    pub(crate) mtu: u16,
    /// The next hop to a remote backend's host: the flow's cached one, or (`ifindex`
    /// 0) `mesh_nat::deliver` asks the FIB.
    pub(crate) hop: NextHop,
    /// The flow's conntrack entry when its cached next hop is to be (re)written; null
    /// otherwise.
    pub(crate) entry: *mut Flow,
}

#[inline(always)]
pub(crate) fn answer(plan: &mut Plan, answer: u8, verdict: Verdict) -> Decision {
    plan.answer = answer;
    plan.verdict = verdict.slot();
    PLAN_ANSWER
}

/// [`parse`]'s answer when `c` holds a valid client packet to a published port.
const PARSED: Decision = u64::MAX - 5;

/// Reads a client's packet into `c`: [`PARSED`] if it is to a published port of this
/// node and valid, [`NOT_OURS`] if it is not the mesh's, a drop if it is invalid.
#[inline(never)]
fn parse(ctx_ptr: *mut xdp_md, underlay: &UnderlayValue, len: u64, c: &mut Client) -> Decision {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return NOT_OURS;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return NOT_OURS;
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return NOT_OURS;
    };
    if ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP {
        return NOT_OURS;
    }
    if be32(ip.dst) != be32(underlay.ip) {
        return NOT_OURS;
    }
    // A later fragment carries no ports: the host reassembles (or drops) it; the first
    // fragment of a packet to a published port is dropped below, so none completes.
    if be16(ip.frag_off) & IP_OFFSET_MASK != 0 {
        return NOT_OURS;
    }
    let ihl = (ip.version_ihl & 0x0f) as usize;
    if ip.version_ihl >> 4 != 4 || ihl < 5 {
        return NOT_OURS;
    }
    // The ports lie after the options, if any: a published port with options is
    // refused, so it must be found first.
    let Some(ports) = read_at::<[u8; 4]>(ctx, ETH_LEN + ihl * 4) else {
        return NOT_OURS;
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let port_key = dataplane_ebpf::mesh::MeshPortKey {
        port_be: dport,
        protocol: ip.protocol,
        _pad: 0,
    };
    let Some(port) = lookup(&MESH_PORTS, &port_key) else {
        return NOT_OURS;
    };
    let Some(valid) = valid_client(ctx, &ip, ihl, sport, dport, len) else {
        stat_service(port.slot, 0, len);
        return drop(Verdict::MESH_INVALID);
    };
    *c = valid;
    c.slot = port.slot;
    c.target_port_be = port.target_port_be;
    // The tick's time (CLOCK_MONOTONIC_COARSE: the same clock as `bpf_ktime_get_ns`, at
    // most a tick behind): timeouts are seconds (tests: tens of milliseconds), and the
    // fine clock's TSC read was a sixteenth of a conntrack hit.
    // SAFETY: a plain helper call.
    c.now = unsafe { bpf_ktime_get_coarse_ns() };
    PARSED
}

/// The packet's headers if the mesh may take it: no IP options, not a fragment, a valid
/// IPv4 header checksum, lengths that hold together, TCP flags a real stack sends.
#[inline(always)]
fn valid_client(
    ctx: &XdpContext,
    ip: &Ipv4Hdr,
    ihl: usize,
    sport: [u8; 2],
    dport: [u8; 2],
    len: u64,
) -> Option<Client> {
    let frag = be16(ip.frag_off);
    if ihl != 5 || frag & IP_MF != 0 {
        return None;
    }
    let raw = read_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN)?;
    if dataplane_ebpf::overlay::ipv4_checksum(&raw) != 0 {
        return None;
    }
    let total = be16(ip.tot_len) as u64;
    if total < (IPV4_LEN + UDP_HDR_LEN) as u64 || total + ETH_LEN as u64 > len {
        return None;
    }
    let l4_len = (total - IPV4_LEN as u64) as u16;
    let mut tcp_flags = 0;
    if ip.protocol == IPPROTO_TCP {
        let tcp = read_at::<[u8; 20]>(ctx, L4)?;
        let doff = (tcp[12] >> 4) as u16 * 4;
        if doff < 20 || doff > l4_len {
            return None;
        }
        tcp_flags = tcp[13];
        if !tcp_flags_valid(tcp_flags) {
            return None;
        }
    } else {
        let udp = read_at::<UdpHdr>(ctx, L4)?;
        let udp_len = be16(udp.len);
        if (udp_len as usize) < UDP_HDR_LEN || udp_len > l4_len {
            return None;
        }
    }
    Some(Client {
        key: FlowKey {
            client_ip: ip.src,
            node_ip: ip.dst,
            client_port_be: sport,
            published_port_be: dport,
            protocol: ip.protocol,
            _pad: [0; 3],
        },
        df: frag & IP_DF != 0,
        tcp_flags,
        l4_len,
        len,
        slot: 0,
        target_port_be: [0; 2],
        now: 0,
    })
}

const UDP_HDR_LEN: usize = 8;
const IP_DF: u16 = 0x4000;

/// Whether a flow-opening segment's TCP checksum verifies (segments longer than
/// [`SYN_CHECKED_LEN`], or with a payload that is not a multiple of 4 bytes, are left to
/// the backend's stack). So a flood of SYNs with bad checksums creates no entries and
/// does not advance the rotation. The kernel sums the segment where it lies in the
/// packet (`bpf_csum_diff`): no copy, no loop for the verifier to walk. A segment not
/// wholly in the frame's first buffer (never for a frame this short) fails.
#[inline(never)]
fn syn_checksum_ok(ctx_ptr: *mut xdp_md, c: &Client) -> bool {
    let len = c.l4_len as usize;
    if len > SYN_CHECKED_LEN || len % 4 != 0 {
        return true;
    }
    // The kernel sums 16-bit words in host order (little-endian): a byte-swapped sum,
    // which folds to "valid" exactly when the network-order one does, given a seed
    // swapped the same way.
    let pseudo = pseudo_header_sum(c.key.client_ip, c.key.node_ip, IPPROTO_TCP, c.l4_len);
    let seed = (!fold(pseudo)).swap_bytes() as u32;
    let ctx = &XdpContext::new(ctx_ptr);
    // One arm per length: the helper's size must be a constant the verifier has checked
    // against the packet's end (a variable one it cannot bound from below).
    let sum = match len {
        20 => segment_sum::<20>(ctx, seed),
        24 => segment_sum::<24>(ctx, seed),
        28 => segment_sum::<28>(ctx, seed),
        32 => segment_sum::<32>(ctx, seed),
        36 => segment_sum::<36>(ctx, seed),
        40 => segment_sum::<40>(ctx, seed),
        44 => segment_sum::<44>(ctx, seed),
        48 => segment_sum::<48>(ctx, seed),
        52 => segment_sum::<52>(ctx, seed),
        56 => segment_sum::<56>(ctx, seed),
        60 => segment_sum::<60>(ctx, seed),
        _ => -1,
    };
    sum >= 0 && fold(sum as u32) == 0
}

/// `bpf_csum_diff` of the `N` bytes at the L4 header, seeded with `seed`; negative if
/// they are not all in the packet's first buffer.
#[inline(always)]
fn segment_sum<const N: usize>(ctx: &XdpContext, seed: u32) -> i64 {
    let at = ctx.data() + L4;
    if at + N > ctx.data_end() {
        return -1;
    }
    // SAFETY: no "from" buffer; "to" is `N` bytes of the packet (checked above), which
    // the helper only reads.
    unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at as *mut u32, N as u32, seed) }
}
