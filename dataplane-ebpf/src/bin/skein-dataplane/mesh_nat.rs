//! The routing mesh's translation and delivery on the ingress node (see `mesh_ingress`):
//! the destination becomes the backend's overlay address and target port (incremental
//! checksums, the client's address kept), a SYN's MSS is clamped so full segments still
//! fit once encapsulated, and the packet goes into a local task (marked for
//! `tc_underlay_ingress`, `XDP_PASS`) or out to the backend's host in VXLAN on the ingress
//! VNI, redirected out of the FIB's interface (see `send`: not `XDP_TX`).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, xdp_action, xdp_md, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_get_prandom_u32, bpf_redirect, bpf_xdp_adjust_head,
        bpf_xdp_adjust_meta,
    },
    programs::XdpContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::{clamp_mss, flow_hash, published_port_mac, MeshConfig, TCP_MAX_OPTIONS},
    overlay::{
        endpoint_mac, outer_ipv4, vxlan_header, vxlan_source_port, DecapMeta, UnderlayValue,
        DECAP_META_MAGIC, ENCAP_LEN, ETH_LEN, IPV4_LEN, UDP_LEN, VXLAN_PORT,
    },
    respond::csum_replace2_at,
};

use crate::{
    decap::inner_ethernet,
    mesh_ingress::{
        decided, drop, zero, Client, Decision, Plan, ANSWER_FRAG_NEEDED, L4, PLAN_ANSWER,
    },
    parse::*,
};

/// Offsets into the IPv4 header of a frame (Ethernet first).
pub(crate) const IP_CHECK: usize = ETH_LEN + 10;
pub(crate) const IP_SRC: usize = ETH_LEN + 12;
pub(crate) const IP_DST: usize = ETH_LEN + 16;
/// Offsets of the L4 ports.
pub(crate) const L4_SPORT: usize = L4;
pub(crate) const L4_DPORT: usize = L4 + 2;
const AF_INET: u8 = 2;
const TCP_SYN: u8 = 0x02;

/// What delivery reads besides the [`Plan`].
struct Delivery<'a> {
    config: &'a MeshConfig,
    underlay: &'a UnderlayValue,
    client: &'a Client,
}

/// Translates the client's packet and delivers it to the plan's backend. Returns the
/// plan's verdict on success; [`PLAN_ANSWER`] (fragmentation needed, the plan says),
/// a drop (too big without DF, no route) or an error otherwise.
#[inline(never)]
pub(crate) fn deliver(
    ctx_ptr: *mut xdp_md,
    config: &MeshConfig,
    underlay: &UnderlayValue,
    c: &Client,
    plan: &mut Plan,
) -> Decision {
    let d = &Delivery {
        config,
        underlay,
        client: c,
    };
    let ip_len = c.l4_len as u32 + IPV4_LEN as u32;
    let local = be32(plan.backend.host_ip) == be32(d.underlay.ip);
    if !local {
        let outer_len = ip_len + (ENCAP_LEN - ETH_LEN) as u32;
        if plan.hop.ifindex == 0 || outer_len > plan.hop.mtu as u32 {
            let host = plan.backend.host_ip;
            match next_hop(ctx_ptr, d.underlay, &host, outer_len, &mut plan.hop) {
                HOP_OK => cache_hop(plan),
                HOP_TOO_BIG => {
                    let mtu = plan.hop.mtu.saturating_sub((ENCAP_LEN - ETH_LEN) as u16);
                    return too_big(c, plan, mtu);
                }
                _ => return drop(Verdict::NO_ROUTE),
            }
        }
    }
    let rewrite = Rewrite {
        addr_at: IP_DST,
        addr: plan.backend.ip,
        port_at: L4_DPORT,
        port: plan.target_port_be,
        protocol: c.key.protocol,
    };
    if !rewrite_packet(ctx_ptr, &rewrite) {
        return drop(Verdict::ERROR);
    }
    if c.key.protocol == IPPROTO_TCP && c.tcp_flags & TCP_SYN != 0 {
        clamp_syn_mss(ctx_ptr, d.config.mss);
    }
    let verdict = Verdict(plan.verdict);
    if local {
        if !into_local(ctx_ptr, plan) {
            return drop(Verdict::ERROR);
        }
        return decided(verdict, xdp_action::XDP_PASS);
    }
    if !push_vxlan(ctx_ptr, d, plan) {
        return drop(Verdict::ERROR);
    }
    decided(verdict, send(&plan.hop, d.underlay))
}

/// Keeps the FIB's answer in the flow's entry when the conntrack asked for it (see
/// `Flow::hop_dmac`). Field by field: another CPU reading the entry meanwhile sees each
/// field old or new (a MAC half renewed for one packet at worst, once a neighbour
/// changes).
#[inline(always)]
fn cache_hop(plan: &Plan) {
    let entry = plan.entry;
    if entry.is_null() || plan.hop.mtu == 0 {
        return;
    }
    // SAFETY: the conntrack's map value, valid for this run.
    unsafe {
        (*entry).hop_dmac = plan.hop.dmac;
        (*entry).hop_smac = plan.hop.smac;
        (*entry).hop_mtu = plan.hop.mtu;
        (*entry).hop_ifindex = plan.hop.ifindex;
    }
}

/// Too big for the overlay (or the underlay once encapsulated): with DF the client
/// learns the MTU it can use (ICMP fragmentation needed, as a router on the path would
/// send: UDP must fragment, TCP lowers its segment size); without, dropped.
#[inline(always)]
pub(crate) fn too_big(c: &Client, plan: &mut Plan, mtu: u16) -> Decision {
    if !c.df {
        return drop(Verdict::TOO_BIG);
    }
    plan.answer = ANSWER_FRAG_NEEDED;
    plan.mtu = mtu;
    plan.verdict = Verdict::MESH_FRAG_NEEDED.slot();
    PLAN_ANSWER
}

/// Into a local task: the Ethernet header it expects (its MAC, from the gateway's) and
/// the same mark `xdp_underlay` leaves on decapsulated VXLAN, so `tc_underlay_ingress`
/// delivers it unchanged (it checks the mark's port against the destination address).
#[inline(never)]
fn into_local(ctx_ptr: *mut xdp_md, plan: &Plan) -> bool {
    let ctx = &XdpContext::new(ctx_ptr);
    let meta_len = size_of::<DecapMeta>() as i32;
    // SAFETY: a helper call on our own context; bounds checked before every write.
    if unsafe { bpf_xdp_adjust_meta(ctx_ptr, -meta_len) } != 0 {
        return false;
    }
    let (start, data) = (ctx.metadata(), ctx.data());
    if start + size_of::<DecapMeta>() > data {
        return false;
    }
    let meta = DecapMeta {
        magic: DECAP_META_MAGIC,
        ifindex: plan.ifindex,
        vni: plan.vni,
    };
    // SAFETY: [start, start + size) lies in the metadata area (checked above).
    unsafe { *(start as *mut DecapMeta) = meta };
    write_at(ctx, 0, &inner_ethernet(plan.backend.ip))
}

/// Out of the FIB's interface, with a redirect even when that is the interface the frame
/// came in on (where `XDP_TX` would do on a NIC): a veth's `XDP_TX` queues the frame on its
/// peer's ring but wakes the peer only if the peer runs an XDP program itself
/// (`veth_xdp_flush`), so behind a peer with only GRO (NAPI) the frame waits until the
/// host happens to send an ordinary packet; a redirect transmits through `ndo_xdp_xmit`
/// with a flush, which wakes the peer's NAPI at once.
#[inline(always)]
pub(crate) fn send(hop: &NextHop, _underlay: &UnderlayValue) -> u32 {
    // SAFETY: a plain helper call; it records the target for after we return.
    unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
}

/// An address and a port to rewrite, and the checksums that cover them.
pub(crate) struct Rewrite {
    /// [`IP_SRC`] or [`IP_DST`].
    pub(crate) addr_at: usize,
    pub(crate) addr: [u8; 4],
    /// [`L4_SPORT`] or [`L4_DPORT`].
    pub(crate) port_at: usize,
    pub(crate) port: [u8; 2],
    pub(crate) protocol: u8,
}

/// Rewrites an address and a port of the IPv4 packet after the Ethernet header, fixing
/// the IPv4 header checksum and the TCP/UDP checksum (which covers the address through
/// the pseudo-header) incrementally (RFC 1624). A UDP datagram sent without a checksum
/// keeps none.
#[inline(never)]
pub(crate) fn rewrite_packet(ctx_ptr: *mut xdp_md, r: &Rewrite) -> bool {
    let ctx = &XdpContext::new(ctx_ptr);
    let l4_check = if r.protocol == IPPROTO_TCP {
        L4 + 16
    } else {
        L4 + 6
    };
    let Some(old_addr) = read_at::<[u8; 4]>(ctx, r.addr_at) else {
        return false;
    };
    let Some(old_port) = read_at::<[u8; 2]>(ctx, r.port_at) else {
        return false;
    };
    let Some(ip_check) = read_at::<[u8; 2]>(ctx, IP_CHECK) else {
        return false;
    };
    let Some(check) = read_at::<[u8; 2]>(ctx, l4_check) else {
        return false;
    };
    use dataplane_ebpf::mesh::{csum_replace2, csum_replace4, udp_csum_fixup};
    let ip_check = csum_replace4(be16(ip_check), old_addr, r.addr);
    let old_check = be16(check);
    let mut l4 = csum_replace4(old_check, old_addr, r.addr);
    l4 = csum_replace2(l4, be16(old_port), be16(r.port));
    if r.protocol == IPPROTO_UDP {
        l4 = udp_csum_fixup(old_check, l4);
    }
    if !write_at(ctx, r.addr_at, &r.addr) || !write_at(ctx, r.port_at, &r.port) {
        return false;
    }
    if !write_at(ctx, IP_CHECK, &ip_check.to_be_bytes()) {
        return false;
    }
    write_at(ctx, l4_check, &l4.to_be_bytes())
}

/// Lowers the MSS option of the SYN (or SYN-ACK) after the Ethernet and IPv4 headers to
/// `mss` if it announces more, fixing the TCP checksum; inserts none. So segments in both
/// directions fit the overlay, whatever MTU the client or the backend has. Read and
/// written where it lies in the packet (no copies, no helper calls).
#[inline(never)]
pub(crate) fn clamp_syn_mss(ctx_ptr: *mut xdp_md, mss: u16) {
    let ctx = &XdpContext::new(ctx_ptr);
    let Some(doff) = read_at::<u8>(ctx, L4 + 12) else {
        return;
    };
    let options_len = usize::from(doff >> 4) * 4;
    if options_len <= 20 || mss == 0 {
        return;
    }
    let options_len = options_len - 20;
    let Some(at) = mss_in_first_options(ctx, options_len) else {
        return;
    };
    let Some(old) = read_at::<[u8; 2]>(ctx, at) else {
        return;
    };
    let Some(new) = clamp_mss(be16(old), mss) else {
        return;
    };
    let Some(check) = read_at::<[u8; 2]>(ctx, L4 + 16) else {
        return;
    };
    if !write_at(ctx, at, &new.to_be_bytes()) {
        return;
    }
    let check = csum_replace2_at(be16(check), at - L4, be16(old), new);
    write_at(ctx, L4 + 16, &check.to_be_bytes());
}

/// The next hop towards an underlay address.
#[derive(Clone, Copy, Default)]
pub(crate) struct NextHop {
    pub(crate) dmac: [u8; 6],
    pub(crate) smac: [u8; 6],
    pub(crate) ifindex: u32,
    /// The route's MTU: what the packet was too big for, or (found) what it fits.
    pub(crate) mtu: u16,
}

pub(crate) const HOP_OK: u32 = 0;
pub(crate) const HOP_TOO_BIG: u32 = 1;
pub(crate) const HOP_NONE: u32 = 2;

/// Asks the kernel's FIB for the next hop to `dst` from this host's underlay address
/// (so a host behind a router is reached through it). `tot_len` (the IPv4 packet that
/// will leave, 0: unchecked) is checked against the route's MTU. The FIB answers only
/// with forwarding on for the underlay (the agent turns it on); an unresolved neighbour
/// (`NO_NEIGH`) is no route here: XDP cannot have the kernel resolve it, and passing the
/// packet up would deliver it to this host's own sockets. Underlay neighbours stay
/// resolved by the gossip between nodes and by the clients' own ARP.
#[inline(never)]
pub(crate) fn next_hop(
    ctx_ptr: *mut xdp_md,
    underlay: &UnderlayValue,
    dst: &[u8; 4],
    tot_len: u32,
    out: &mut NextHop,
) -> u32 {
    // SAFETY: an all-zero `bpf_fib_lookup` is valid (plain integers and unions of them).
    let mut fib = MaybeUninit::uninit();
    // SAFETY: as said.
    let fib: &mut bpf_fib_lookup = unsafe { zero(&mut fib) };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_UDP;
    fib.ifindex = underlay.ifindex;
    fib.__bindgen_anon_1.tot_len = if tot_len > 0xffff {
        0xffff
    } else {
        tot_len as u16
    };
    // `__be32` fields: the address's wire bytes as they lie in memory.
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(underlay.ip);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*dst);
    // SAFETY: `fib` is a stack struct of the size we pass.
    let rc = unsafe { fib_lookup(ctx_ptr.cast(), fib, size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc < 0 {
        return HOP_NONE;
    }
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            out.dmac = fib.dmac;
            out.smac = fib.smac;
            out.ifindex = fib.ifindex;
            // SAFETY: on success with a length to check, the kernel writes the route's
            // MTU into the union (`bpf_fib_set_fwd_params`); 0 when unchecked.
            out.mtu = if tot_len > 0 {
                unsafe { fib.__bindgen_anon_1.mtu_result }
            } else {
                0
            };
            HOP_OK
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            // SAFETY: the kernel wrote the MTU into the union on this answer.
            out.mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
            HOP_TOO_BIG
        }
        _ => HOP_NONE,
    }
}

/// Pushes outer Ethernet (from the FIB), IPv4 (DF clear, TTL 64), UDP (to 4789, checksum
/// 0 as the kernel's VXLAN device sends), VXLAN (the ingress VNI) and the inner Ethernet
/// header (its source: the published port), in front of the translated IPv4 packet. Written
/// piece by piece: the whole 64 bytes at once would not fit the stack beside the rest.
#[inline(never)]
fn push_vxlan(ctx_ptr: *mut xdp_md, d: &Delivery, plan: &Plan) -> bool {
    let ctx = &XdpContext::new(ctx_ptr);
    // SAFETY: a helper call on our own context; writes are bounds-checked below.
    if unsafe { bpf_xdp_adjust_head(ctx_ptr, -(ENCAP_LEN as i32)) } != 0 {
        return false;
    }
    let (m, s) = (plan.hop.dmac, plan.hop.smac);
    let eth = [
        m[0], m[1], m[2], m[3], m[4], m[5], s[0], s[1], s[2], s[3], s[4], s[5], 0x08, 0x00,
    ];
    if !write_at(ctx, 0, &eth) {
        return false;
    }
    let outer_ip_len = d.client.len + (ENCAP_LEN - ETH_LEN) as u64;
    let udp_len = if outer_ip_len > 0xffff {
        0xffff - IPV4_LEN as u16
    } else {
        outer_ip_len as u16 - IPV4_LEN as u16
    };
    // SAFETY: a plain helper call.
    let ip_id = unsafe { bpf_get_prandom_u32() } as u16;
    let ip = outer_ipv4(d.underlay.ip, plan.backend.host_ip, udp_len, ip_id);
    if !write_at(ctx, ETH_LEN, &ip) {
        return false;
    }
    let sport = vxlan_source_port(flow_hash(&d.client.key)).to_be_bytes();
    let (dport, len) = (VXLAN_PORT.to_be_bytes(), udp_len.to_be_bytes());
    let udp = [sport[0], sport[1], dport[0], dport[1], len[0], len[1], 0, 0];
    if !write_at(ctx, ETH_LEN + IPV4_LEN, &udp) {
        return false;
    }
    let vxlan = vxlan_header(d.config.ingress_vni);
    if !write_at(ctx, ETH_LEN + IPV4_LEN + UDP_LEN, &vxlan) {
        return false;
    }
    // The inner source carries the published port to the backend's host (in place of
    // the gateway's MAC, which its decapsulation writes back): its replies bring it back,
    // so this node keeps no reply entry for the flow.
    let (m, p) = (
        endpoint_mac(plan.backend.ip),
        published_port_mac(d.client.key.published_port_be),
    );
    let inner = [
        m[0], m[1], m[2], m[3], m[4], m[5], p[0], p[1], p[2], p[3], p[4], p[5], 0x08, 0x00,
    ];
    write_at(ctx, ENCAP_LEN, &inner)
}

/// Options looked at for the MSS: every stack in use puts it first in a SYN (Linux,
/// Windows, the BSDs, macOS); a few steps allow NOPs or another option before it. The
/// full scan (`mesh::mss_offset`, 40 steps over unknown bytes) is more than the verifier
/// can walk in this program (a million instructions).
const MSS_SCAN_STEPS: usize = 4;

/// The packet offset of the MSS value if its option is among the first
/// [`MSS_SCAN_STEPS`] of the `len` bytes of TCP options (NOPs counted).
#[inline(always)]
fn mss_in_first_options(ctx: &XdpContext, len: usize) -> Option<usize> {
    let mut i = 0usize;
    for _ in 0..MSS_SCAN_STEPS {
        if i + 1 >= len || i + 1 >= TCP_MAX_OPTIONS {
            return None;
        }
        let [kind, opt_len] = read_at::<[u8; 2]>(ctx, L4 + 20 + i)?;
        if kind == 0 {
            return None;
        }
        if kind == 1 {
            i += 1;
            continue;
        }
        let opt_len = opt_len as usize;
        if kind == 2 {
            return if opt_len == 4 && i + 4 <= len {
                Some(L4 + 20 + i + 2)
            } else {
                None
            };
        }
        if opt_len < 2 || opt_len > TCP_MAX_OPTIONS {
            return None;
        }
        i += opt_len;
    }
    None
}
