//! VXLAN encapsulation of what an endpoint sends to a remote endpoint or an external
//! VTEP (used by `tc_endpoint_ingress`): the outer headers, the next hop from the FIB,
//! and ICMP "fragmentation needed" for packets that would not fit the underlay.
//!
//! Encapsulation happens on the skb (`bpf_skb_adjust_room` with the tunnel flags), so a
//! TCP super-packet stays one GSO skb with a partial checksum: the kernel segments it and
//! completes the inner checksums later, on the underlay.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED,
        bpf_fib_lookup, bpf_redir_neigh, BPF_ADJ_ROOM_ENCAP_L2_SHIFT, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::generated::{
        bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_get_hash_recalc, bpf_get_prandom_u32,
        bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail,
    },
    programs::TcContext,
};
use aya_log_ebpf::debug;
use dataplane_ebpf::{
    counters::Verdict,
    overlay::{
        encap_headers, endpoint_mac, icmp_error_ipv4, vxlan_source_port, Encap, UnderlayValue,
        ENCAP_LEN, ETH_LEN, GATEWAY_MAC, ICMP_QUOTE_LEN, IPV4_LEN,
    },
};

use crate::{outcome::Outcome, parse::*};

const AF_INET: u8 = 2;

/// Flags of the encapsulating `bpf_skb_adjust_room`: the 50 bytes inserted after the
/// Ethernet header are outer IPv4 + UDP + VXLAN + a 14-byte inner Ethernet header. The
/// kernel then marks the skb as a UDP tunnel (inner header offsets, `SKB_GSO_UDP_TUNNEL`)
/// so GSO segments it correctly. `FIXED_GSO` keeps the MSS: the endpoint's MTU already
/// leaves room for the 50 bytes, so segments need no shrinking (without it the kernel
/// would lower the MSS by 50 and every segment would be 50 bytes short of the MTU).
const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | ((ETH_LEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT)
    | BPF_F_ADJ_ROOM_FIXED_GSO as u64;

/// Where an encapsulated packet goes. (A struct because BPF functions take at most five
/// arguments, all in registers.)
pub(crate) struct Tunnel {
    pub(crate) vni: u32,
    /// Inner source and destination (the endpoints' overlay addresses).
    pub(crate) src: [u8; 4],
    pub(crate) dst: [u8; 4],
    /// Underlay address of the destination's host or external VTEP.
    pub(crate) remote: [u8; 4],
    pub(crate) inner_dst_mac: [u8; 6],
    /// What a sent frame is counted as: `encap` for the overlay, `mesh_reply` for a
    /// task's reply on its way back to the flow's ingress node.
    pub(crate) verdict: Verdict,
}

/// VXLAN to `t.remote` (a Skein host or an external VTEP), then out of the underlay.
/// Inlined into each caller: an outlined frame on top of `tc_endpoint_ingress`'s would
/// exceed BPF's 512 bytes of stack.
#[inline(always)]
pub(crate) fn encap(ctx: &TcContext, underlay: &UnderlayValue, t: &Tunnel) -> Outcome {
    // The inner flow's hash, taken before the outer headers exist, so each flow keeps
    // one UDP source port (and so one ECMP path) and flows spread across ports.
    // SAFETY: plain helper calls on our own skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let ip_id = unsafe { bpf_get_prandom_u32() } as u16;
    if ctx
        .adjust_room(ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .is_err()
    {
        debug!(
            ctx,
            "{:i} -> {:i}: adjust_room failed: dropped", t.src, t.dst
        );
        return Outcome::error();
    }
    let outer_ip_len = ctx.len().saturating_sub(ETH_LEN as u32);
    let headers = encap_headers(&Encap {
        outer_src: underlay.ip,
        outer_dst: t.remote,
        outer_ip_len: if outer_ip_len > 0xffff {
            0xffff
        } else {
            outer_ip_len as u16
        },
        ip_id,
        udp_src_port: vxlan_source_port(hash),
        vni: t.vni,
        inner_dst_mac: t.inner_dst_mac,
        inner_src_mac: endpoint_mac(t.src),
    });
    if ctx.store(ETH_LEN, &headers, 0).is_err() {
        return Outcome::error();
    }
    to_underlay(ctx, underlay, t.remote, t.verdict)
}

/// Sends the frame (an encapsulated one, or a mesh reply translated back for its client)
/// out of the underlay towards `remote`, its outer IPv4 destination, next hop from the
/// kernel's FIB (so a host on another underlay subnet, behind a router, is reached
/// through it); counted as `verdict` when sent.
pub(crate) fn to_underlay(
    ctx: &TcContext,
    underlay: &UnderlayValue,
    remote: [u8; 4],
    verdict: Verdict,
) -> Outcome {
    // SAFETY: an all-zero `bpf_fib_lookup` is valid (plain integers and unions of them).
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    // Only multipath routing looks at it, with the ports (unset here): any value does.
    fib.l4_protocol = IPPROTO_UDP;
    fib.ifindex = underlay.ifindex;
    // `__be32` fields: the address's wire bytes as they lie in memory.
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(underlay.ip);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(remote);
    // With `tot_len` 0 the kernel checks the skb itself against the egress MTU (GSO skbs
    // pass: they are segmented to size later).
    // SAFETY: `fib` is a stack struct of the size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc < 0 {
        debug!(ctx, "fib lookup for {:i} failed: {}", remote, rc);
        return Outcome::drop(Verdict::NO_ROUTE);
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let (d, s) = (fib.dmac, fib.smac);
            let macs = [
                d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5],
            ];
            if ctx.store(0, &macs, 0).is_err() {
                return Outcome::error();
            }
            // SAFETY: plain helper call.
            let action = unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
            Outcome { verdict, action }
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            // The route is known but the next hop's MAC is not (yet): let the kernel
            // resolve it (and queue the frame meanwhile).
            // SAFETY: zeroed is valid for this plain struct.
            let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            nh.nh_family = u32::from(AF_INET);
            // After the lookup, `ipv4_dst` holds the next hop (the gateway if routed).
            // SAFETY: union fields of plain integers.
            nh.__bindgen_anon_1.ipv4_nh = unsafe { fib.__bindgen_anon_4.ipv4_dst };
            // SAFETY: `nh` is a stack struct of the size we pass.
            let action = unsafe {
                bpf_redirect_neigh(fib.ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0)
            } as i32;
            Outcome { verdict, action }
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => {
            // `bpf_fib_lookup` answers only where IPv4 forwarding is enabled on the
            // underlay (it models a forwarded packet). Without it, let the kernel do the
            // whole output route and neighbour lookup itself: `bpf_redirect_neigh` with
            // no next hop routes the (outer) packet as if sent locally from the
            // underlay. An unroutable destination is then dropped by the kernel,
            // uncounted.
            // SAFETY: a null next hop is the documented "look it up" form.
            let action =
                unsafe { bpf_redirect_neigh(underlay.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
            Outcome { verdict, action }
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            debug!(
                ctx,
                "to {:i}: frame exceeds the underlay MTU: dropped", remote
            );
            Outcome::drop(Verdict::TOO_BIG)
        }
        _ => {
            debug!(ctx, "no route to {:i} ({}): dropped", remote, rc);
            Outcome::drop(Verdict::NO_ROUTE)
        }
    }
}

/// The underlay's MTU if `ip`'s packet (the skb) would exceed it once encapsulated: a
/// single packet by its length, a GSO super-packet by the segments it will be cut into
/// (headers + `gso_size`; TCP and UDP). `None` if it fits or cannot be told.
///
/// The endpoint's MTU leaves room for the 50 bytes, so this happens only when it does
/// not: an MTU raised inside the endpoint, or a smaller underlay that joined the cluster
/// before the endpoint's MTU followed. Without the answer, such packets would vanish at
/// the underlay (a black hole for TCP); with it, the sender learns the path MTU.
#[inline(always)]
pub(crate) fn too_big(ctx: &TcContext, underlay_ifindex: u32, ip: &Ipv4Hdr) -> Option<u16> {
    let mut mtu: u32 = 0;
    // SAFETY: a plain helper call on our own skb; `mtu` is a stack u32 it writes.
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb.cast(),
            underlay_ifindex,
            &mut mtu,
            ENCAP_LEN as i32,
            0,
        )
    };
    let mtu16 = if mtu > 0xffff { 0xffff } else { mtu as u16 };
    if rc == i64::from(BPF_MTU_CHK_RET_FRAG_NEEDED) {
        return Some(mtu16);
    }
    // SAFETY: reading a field of the context the kernel handed us.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if rc != 0 || gso_size == 0 {
        return None;
    }
    // A GSO skb passes the helper whatever its segments' size: work that out.
    let l3_header = u32::from(ip.version_ihl & 0x0f) * 4;
    let l4_header = match ip.protocol {
        IPPROTO_TCP => {
            let offset = ETH_LEN + l3_header as usize + 12;
            // The data offset: the high nibble, in 32-bit words.
            let doff = ctx.load::<u8>(offset).ok()?;
            u32::from(doff >> 4) * 4
        }
        IPPROTO_UDP => 8,
        _ => return None,
    };
    let segment = l3_header + l4_header + gso_size + ENCAP_LEN as u32;
    (segment > mtu).then_some(mtu16)
}

/// An IPv4 packet too big for the underlay once encapsulated: with DF set, the endpoint
/// gets ICMP "fragmentation needed" (type 3 code 4, RFC 1191) from its gateway — the
/// router that cannot forward, as the endpoint sees it — announcing the MTU that fits
/// (underlay MTU − 50); the packet itself is dropped either way, counted as `too_big`.
///
/// The skb becomes the ICMP in place: cut to 70 bytes (Ethernet, IPv4, ICMP header, the
/// quoted IPv4 header + 8 bytes), rewritten through direct packet access, and sent back
/// into the endpoint it came from. Written to need little stack (a separate function,
/// never inlined, with no buffers beyond one 20-byte header), since the encapsulation
/// path of this program already uses most of the 512 bytes.
#[inline(never)]
pub(crate) fn frag_needed(ctx: &TcContext, gateway: [u8; 4], underlay_mtu: u16) -> Outcome {
    let dropped = Outcome::drop(Verdict::TOO_BIG);
    const QUOTE: usize = ETH_LEN;
    const ICMP: usize = ETH_LEN + IPV4_LEN;
    const QUOTE_TO: usize = ICMP + 8;
    const LEN: usize = QUOTE_TO + ICMP_QUOTE_LEN;
    pull_headers(ctx, LEN as u32);
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, QUOTE) else {
        return dropped;
    };
    // A plain IPv4 header (so the quote is the header + 8 bytes) with DF set: without DF
    // the sender expects routers to fragment, which this program does not.
    if ip.version_ihl != 0x45 || ip.frag_off[0] & 0x40 == 0 {
        return dropped;
    }
    // Never about an ICMP error (no errors about errors, RFC 1122 3.2.2); echo requests
    // and other queries get one, so `ping -M do` learns the MTU too.
    if ip.protocol == IPPROTO_ICMP {
        match read_at::<u8>(ctx, QUOTE + IPV4_LEN) {
            Some(3 | 4 | 5 | 11 | 12) | None => return dropped,
            Some(_) => {}
        }
    }
    let Some(endpoint_mac) = read_at::<[u8; 6]>(ctx, 6) else {
        return dropped;
    };
    let sender = ip.src;
    // SAFETY: plain helper calls on our own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, LEN as u32, 0) } != 0 {
        return dropped;
    }
    if ctx.pull_data(LEN as u32).is_err() {
        return dropped;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + LEN > end {
        return dropped;
    }
    let p = start as *mut u8;
    // SAFETY: every offset below is under LEN, and [start, start + LEN) is in the packet.
    unsafe {
        // The quote moves behind where the ICMP header goes (the ranges do not overlap).
        for i in 0..ICMP_QUOTE_LEN {
            *p.add(QUOTE_TO + i) = *p.add(QUOTE + i);
        }
        let mtu = underlay_mtu.saturating_sub(ENCAP_LEN as u16).to_be_bytes();
        let header = [3u8, 4, 0, 0, 0, 0, mtu[0], mtu[1]];
        for (i, b) in header.iter().enumerate() {
            *p.add(ICMP + i) = *b;
        }
        // The ICMP checksum covers its header and the quote.
        let mut sum = 0u32;
        let mut i = ICMP;
        while i < LEN {
            sum += u32::from(u16::from_be_bytes([*p.add(i), *p.add(i + 1)]));
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let check = (!(sum as u16)).to_be_bytes();
        *p.add(ICMP + 2) = check[0];
        *p.add(ICMP + 3) = check[1];
        let ip = icmp_error_ipv4(gateway, sender);
        for (i, b) in ip.iter().enumerate() {
            *p.add(QUOTE + i) = *b;
        }
        let (m, g) = (endpoint_mac, GATEWAY_MAC);
        let eth = [
            m[0], m[1], m[2], m[3], m[4], m[5], g[0], g[1], g[2], g[3], g[4], g[5], 0x08, 0x00,
        ];
        for (i, b) in eth.iter().enumerate() {
            *p.add(i) = *b;
        }
    }
    // SAFETY: at tc ingress `ifindex` is the endpoint's host-side veth.
    let port = unsafe { (*ctx.skb.skb).ifindex };
    Outcome::redirect_peer(Verdict::TOO_BIG, port)
}
