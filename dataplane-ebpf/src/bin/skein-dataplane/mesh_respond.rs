//! What the mesh sends back to a client in place of its packet, built in the packet's own
//! buffer and sent out of the interface it came in on (a redirect, see `back_out`), addressed from the
//! address and port the client tried: a TCP reset (no live flow, or no serving task: a
//! closed port's answer), ICMP port unreachable (UDP to a service without a serving task)
//! and ICMP fragmentation needed (too big for the overlay). The bytes come from the pure
//! builders in `dataplane_ebpf::respond`.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_redirect, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    overlay::{ETH_LEN, ICMP_FRAG_NEEDED_LEN, ICMP_QUOTE_LEN, IPV4_LEN},
    respond::{
        icmp_ipv4, icmp_unreachable_header, tcp_rst, Segment, ICMP_FRAG_NEEDED,
        ICMP_PORT_UNREACHABLE, TCP_RST_LEN,
    },
};

use crate::{
    maps::underlay_config,
    mesh_ingress::{decided, drop, Client, Decision, Plan, ANSWER_FRAG_NEEDED, L4},
    parse::*,
};

const TCP_RST: u8 = 0x04;

/// Answers the client's packet as the plan says: a reset (no live flow can take the
/// segment), a refusal like a closed port (TCP reset, ICMP port unreachable for UDP), or
/// ICMP fragmentation needed announcing the plan's MTU. A reset itself is never
/// answered: dropped.
#[inline(never)]
pub(crate) fn answer(ctx_ptr: *mut xdp_md, c: &Client, plan: &Plan) -> Decision {
    let verdict = Verdict(plan.verdict);
    if plan.answer == ANSWER_FRAG_NEEDED {
        return answer_icmp(ctx_ptr, c, ICMP_FRAG_NEEDED, plan.mtu, verdict);
    }
    if c.key.protocol == IPPROTO_TCP {
        return answer_tcp(ctx_ptr, c, verdict);
    }
    answer_icmp(ctx_ptr, c, ICMP_PORT_UNREACHABLE, 0, verdict)
}

#[inline(never)]
fn answer_tcp(ctx_ptr: *mut xdp_md, c: &Client, verdict: Verdict) -> Decision {
    if c.tcp_flags & TCP_RST != 0 {
        return drop(Verdict::DROP);
    }
    let ctx = &XdpContext::new(ctx_ptr);
    // Sequence and acknowledgement numbers, then the data offset.
    let Some(numbers) = read_at::<[u8; 9]>(ctx, L4 + 4) else {
        return drop(Verdict::ERROR);
    };
    let doff = (numbers[8] >> 4) as u16 * 4;
    let n = numbers;
    let seg = Segment {
        src: c.key.client_ip,
        dst: c.key.node_ip,
        sport_be: c.key.client_port_be,
        dport_be: c.key.published_port_be,
        seq: u32::from_be_bytes([n[0], n[1], n[2], n[3]]),
        ack: u32::from_be_bytes([n[4], n[5], n[6], n[7]]),
        flags: c.tcp_flags,
        payload_len: c.l4_len.saturating_sub(doff),
    };
    let rst = tcp_rst(&seg);
    if !resize_and_address(ctx_ptr, c, (ETH_LEN + TCP_RST_LEN) as u64) {
        return drop(Verdict::ERROR);
    }
    if !write_at(ctx, ETH_LEN, &rst) {
        return drop(Verdict::ERROR);
    }
    decided(verdict, back_out(ctx_ptr))
}

#[inline(never)]
fn answer_icmp(ctx_ptr: *mut xdp_md, c: &Client, code: u8, mtu: u16, verdict: Verdict) -> Decision {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(quoted) = read_at::<[u8; ICMP_QUOTE_LEN]>(ctx, ETH_LEN) else {
        return drop(Verdict::ERROR);
    };
    let ip = icmp_ipv4(c.key.node_ip, c.key.client_ip);
    let icmp = icmp_unreachable_header(code, mtu, &quoted);
    if !resize_and_address(ctx_ptr, c, (ETH_LEN + ICMP_FRAG_NEEDED_LEN) as u64) {
        return drop(Verdict::ERROR);
    }
    if !(write_at(ctx, ETH_LEN, &ip)
        && write_at(ctx, ETH_LEN + IPV4_LEN, &icmp)
        && write_at(ctx, ETH_LEN + IPV4_LEN + 8, &quoted))
    {
        return drop(Verdict::ERROR);
    }
    decided(verdict, back_out(ctx_ptr))
}

/// Out of the interface the packet came in on: a redirect rather than `XDP_TX`, for the
/// reason `mesh_nat::send` gives.
#[inline(always)]
fn back_out(ctx_ptr: *mut xdp_md) -> u32 {
    // SAFETY: the context the kernel handed us; `ingress_ifindex` is a plain field, and
    // the helper only records the target for after we return.
    unsafe { bpf_redirect((*ctx_ptr).ingress_ifindex, 0) as u32 }
}

/// Makes the frame `len` bytes long (the answer replaces the packet) and addresses its
/// Ethernet header back to the sender (the client, or the router it came through), from
/// the underlay's own MAC.
#[inline(never)]
fn resize_and_address(ctx_ptr: *mut xdp_md, c: &Client, len: u64) -> bool {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    let Some(underlay) = underlay_config() else {
        return false;
    };
    let delta = len as i64 - c.len as i64;
    // SAFETY: a helper call on our own context; writes after it are bounds-checked anew.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx_ptr, delta as i32) } != 0 {
        return false;
    }
    let (d, s) = (eth.src, underlay.mac);
    let header = [
        d[0], d[1], d[2], d[3], d[4], d[5], s[0], s[1], s[2], s[3], s[4], s[5], 0x08, 0x00,
    ];
    write_at(ctx, 0, &header)
}
