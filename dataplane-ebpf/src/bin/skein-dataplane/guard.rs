//! The fail-closed checks the programs share (rules in [`dataplane_ebpf::guard`]):
//! nothing routed into the overlay from the underlay ([`into_overlay`]), and no
//! workload traffic to the cluster's own ports ([`cluster_port`]).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use dataplane_ebpf::{
    guard::{self, GuardedPort, ToHost},
    overlay::{SubnetKey, ETH_LEN},
};

use crate::{
    maps::{GUARDED_HOSTS, GUARDED_PORTS, OVERLAY_SUBNETS},
    parse::*,
};

const AF_INET: u8 = 2;

/// Whether the frame at the start of `ctx` is plain IPv4 addressed into an overlay
/// subnet. Called for what arrives on the underlay and is not VXLAN for this host: such
/// a packet was routed here around the overlay, and no endpoint may receive it.
#[inline(always)]
pub(crate) fn into_overlay<P: Packet>(ctx: &P) -> bool {
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return false;
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return false;
    };
    let subnet = SubnetKey::lookup(ip.dst);
    OVERLAY_SUBNETS
        .get(Key::new(subnet.prefix_len, subnet.ip))
        .is_some()
}

/// Whether a packet an endpoint sends to the host stack (IPv4 header `ip` right after
/// the Ethernet header, arriving on host-side veth `ifindex`) is for one of the cluster's
/// own ports on this host or a cluster host: to be dropped.
#[inline(always)]
pub(crate) fn cluster_port(ctx: &TcContext, ifindex: u32, ip: &Ipv4Hdr, gateway: [u8; 4]) -> bool {
    let protocol = ip.protocol;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return false;
    }
    let dst = ip.dst;
    let guarded_destination = be32(dst) == be32(gateway)
        || GUARDED_HOSTS.get_ptr(&dst).is_some()
        || is_local(ctx, ifindex, ip);
    let packet = ToHost {
        guarded_destination,
        protocol,
        dst_port: dst_port(ctx, ip),
    };
    guard::drops(&packet, |key: GuardedPort| {
        GUARDED_PORTS.get_ptr(&key).is_some()
    })
}

/// The destination port of a UDP or TCP packet: `None` for a later fragment, or when the
/// first fragment is too short to hold it.
#[inline(always)]
fn dst_port(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<u16> {
    if be16(ip.frag_off) & IP_OFFSET_MASK != 0 {
        return None;
    }
    let ihl = usize::from(ip.version_ihl & 0x0f);
    if ihl < 5 {
        return None;
    }
    // Options make the offset variable: read through `bpf_skb_load_bytes`.
    let offset = ETH_LEN + ihl * 4 + 2;
    ctx.load::<[u8; 2]>(offset).ok().map(be16)
}

/// Whether the kernel would deliver `ip`'s destination locally (any address of this
/// host, broadcast, multicast) rather than forward it. With forwarding off on the veth
/// nothing is forwarded, so everything counts as local; so does a failed lookup (fail
/// closed).
#[inline(always)]
fn is_local(ctx: &TcContext, ifindex: u32, ip: &Ipv4Hdr) -> bool {
    // SAFETY: an all-zero `bpf_fib_lookup` is valid (plain integers and unions of them).
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.protocol;
    fib.ifindex = ifindex;
    // `__be32` fields: the address's wire bytes as they lie in memory.
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    // SAFETY: `fib` is a stack struct of the size we pass.
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    rc < 0
        || rc == i64::from(BPF_FIB_LKUP_RET_NOT_FWDED)
        || rc == i64::from(BPF_FIB_LKUP_RET_FWD_DISABLED)
}
