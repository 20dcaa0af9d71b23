//! What a refused VIP connection gets back (`vip_nat::ANSWER`): the answer of a closed
//! port, built in the packet's own skb and sent back into the endpoint.

use aya_ebpf::{helpers::generated::bpf_skb_change_tail, programs::TcContext};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    overlay::{ETH_LEN, GATEWAY_MAC, IPV4_LEN},
    respond::{fold, pseudo_header_sum},
};

use crate::{outcome::Outcome, parse::*};

const IP: usize = ETH_LEN;
const IP_SRC: usize = IP + 12;
const IP_DST: usize = IP + 16;
const L4: usize = IP + IPV4_LEN;

/// Answers a refused TCP segment (still as the client sent it) like a closed port would:
/// a reset from the address and port it was sent to (none for a reset) — the routing
/// mesh's answer (`mesh_respond`, the rules of `dataplane_ebpf::respond::tcp_rst`), here
/// on an skb. The packet becomes the reset and goes back into the endpoint it came from;
/// counted `vip_refused` either way. UDP is still only dropped (ICMP port unreachable
/// needs the 28-byte quote on this frame's stack, which the call chain has no room for).
///
/// Written in place field by field, not through `respond`'s array builder: that is a
/// frame of its own, and this program's call chain has no room for it (the verifier
/// counted 592 of 512 bytes).
#[inline(never)]
pub(crate) fn answer(ctx: &TcContext) -> Outcome {
    let dropped = Outcome::drop(Verdict::VIP_REFUSED);
    let Some(protocol) = read_at::<u8>(ctx, IP + 9) else {
        return dropped;
    };
    if protocol != IPPROTO_TCP || !reset(ctx) {
        return dropped;
    }
    // SAFETY: at tc ingress `ifindex` is the endpoint's host-side veth.
    let port = unsafe { (*ctx.skb.skb).ifindex };
    Outcome::redirect_peer(Verdict::VIP_REFUSED, port)
}

/// The segment rewritten into its reset (RFC 793 "Reset Generation", as
/// `respond::tcp_rst`): 40 bytes of IPv4 and TCP, from the address and port the client
/// sent to, in a frame from the gateway to the endpoint.
#[inline(always)]
fn reset(ctx: &TcContext) -> bool {
    let Some(t) = read_at::<[u8; 14]>(ctx, L4) else {
        return false;
    };
    let Some(total) = read_at::<[u8; 2]>(ctx, IP + 2) else {
        return false;
    };
    let Some(addresses) = read_at::<[u8; 8]>(ctx, IP_SRC) else {
        return false;
    };
    let flags = t[13];
    if flags & TCP_RST != 0 {
        return false;
    }
    let (seq, ack, out_flags) = if flags & TCP_ACK != 0 {
        (u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 0, TCP_RST)
    } else {
        let payload = be16(total)
            .saturating_sub(IPV4_LEN as u16)
            .saturating_sub(u16::from(t[12] >> 4) * 4);
        let mut len = u32::from(payload);
        if flags & TCP_SYN != 0 {
            len += 1;
        }
        if flags & TCP_FIN != 0 {
            len += 1;
        }
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        (0, seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    let a = addresses;
    let (to, from) = ([a[0], a[1], a[2], a[3]], [a[4], a[5], a[6], a[7]]);
    let (sport, dport) = (
        u16::from_be_bytes([t[2], t[3]]),
        u16::from_be_bytes([t[0], t[1]]),
    );
    let control = 0x5000 | u16::from(out_flags);
    let tcp_sum = pseudo_header_sum(from, to, IPPROTO_TCP, 20)
        + u32::from(sport)
        + u32::from(dport)
        + (seq >> 16)
        + (seq & 0xffff)
        + (ack >> 16)
        + (ack & 0xffff)
        + u32::from(control);
    let Some(endpoint_mac) = read_at::<[u8; 6]>(ctx, 6) else {
        return false;
    };
    resize(ctx, ETH_LEN + 40)
        && write_at(ctx, 0, &endpoint_mac)
        && write_at(ctx, 6, &GATEWAY_MAC)
        && ip_header(ctx, 40, IPPROTO_TCP, from, to)
        && write_at(ctx, L4, &sport.to_be_bytes())
        && write_at(ctx, L4 + 2, &dport.to_be_bytes())
        && write_at(ctx, L4 + 4, &seq.to_be_bytes())
        && write_at(ctx, L4 + 8, &ack.to_be_bytes())
        && write_at(ctx, L4 + 12, &control.to_be_bytes())
        && write_at(ctx, L4 + 14, &0u16)
        && write_at(ctx, L4 + 16, &fold(tcp_sum).to_be_bytes())
        && write_at(ctx, L4 + 18, &0u16)
}

/// Writes an IPv4 header without options at `IP` (ID 0, DF, TTL 64) with its checksum.
#[inline(always)]
fn ip_header(ctx: &TcContext, total: u16, protocol: u8, from: [u8; 4], to: [u8; 4]) -> bool {
    let ttl_protocol = 64u16 << 8 | u16::from(protocol);
    // The pseudo-header sum without protocol and length is the addresses' words.
    let sum = pseudo_header_sum(from, to, 0, 0)
        + 0x4500
        + u32::from(total)
        + 0x4000
        + u32::from(ttl_protocol);
    write_at(ctx, IP, &0x4500u16.to_be_bytes())
        && write_at(ctx, IP + 2, &total.to_be_bytes())
        && write_at(ctx, IP + 4, &0u16)
        && write_at(ctx, IP + 6, &0x4000u16.to_be_bytes())
        && write_at(ctx, IP + 8, &ttl_protocol.to_be_bytes())
        && write_at(ctx, IP + 10, &fold(sum).to_be_bytes())
        && write_at(ctx, IP_SRC, &from)
        && write_at(ctx, IP_DST, &to)
}

/// Makes the packet `len` bytes long, all of it in the linear area.
#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> bool {
    // SAFETY: a plain helper call on our own skb.
    let changed = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } == 0;
    changed && ctx.pull_data(len as u32).is_ok()
}
