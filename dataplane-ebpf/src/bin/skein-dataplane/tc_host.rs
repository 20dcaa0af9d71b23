//! `tc_host_egress` (tcx egress of the host-path veth, `dataplane_ebpf::sock::HOST_PATH_IFACE`):
//! the host's own connections to tasks on other nodes, which the socket hooks
//! (`crate::sock_hooks`) gave a remote backend. The agent routes the overlay's subnets
//! through that veth, so this program sees everything the host would send there.
//!
//! Only what the host itself originates, on a connection the hooks redirected, goes on:
//! the packet must carry a socket (forwarded packets have none: an underlay machine
//! routing into the overlay through this host gets nothing through), come from this
//! host's underlay address, and its (socket, destination) must have a reverse entry in
//! `SOCK_REVERSE`. Such a packet travels like the routing mesh's: VXLAN on the ingress
//! VNI to the task's host, whose `mesh_decap` accepts it for the task's published target
//! port and sends the replies back here (`crate::sock_return` hands them to the stack,
//! only for flows recorded in `HOST_FLOWS` by this program). Everything else is dropped:
//! nothing ever leaves the veth itself (its peer is down).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
    EbpfContext,
};
use dataplane_ebpf::{
    counters::Verdict,
    mesh::ReplyKey,
    overlay::{endpoint_mac, EndpointKey, SubnetKey, ETH_LEN, IPV4_LEN},
    sock::{HostFlow, SockKey},
};

use crate::{
    encap::{encap, Tunnel},
    maps::{
        lookup, underlay_config, HOST_FLOWS, OVERLAY_ENDPOINTS, OVERLAY_SUBNETS, SOCK_REVERSE,
        TC_HOST_COUNTERS,
    },
    mesh_decap::ingress_vni,
    outcome::{count, Outcome},
    parse::*,
};

#[classifier]
pub fn tc_host_egress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    let outcome = handle(&ctx);
    count(&TC_HOST_COUNTERS, outcome.verdict, len);
    outcome.action
}

fn handle(ctx: &TcContext) -> Outcome {
    // SAFETY: a plain helper call on our own skb: 0 when no socket sent it.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return Outcome::drop(Verdict::INTO_OVERLAY);
    }
    let Some(vni) = ingress_vni() else {
        return Outcome::drop(Verdict::DROP);
    };
    let Some(underlay) = underlay_config() else {
        return Outcome::drop(Verdict::NO_ROUTE);
    };
    if underlay.ifindex == 0 {
        return Outcome::drop(Verdict::NO_ROUTE);
    }
    pull_headers(ctx, (ETH_LEN + IPV4_LEN + 4) as u32);
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    if be16(eth.ether_type) != ETHERTYPE_IPV4 {
        return Outcome::drop(Verdict::DROP);
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    if ip.version_ihl != 0x45 || be32(ip.src) != be32(underlay.ip) {
        return Outcome::drop(Verdict::DROP);
    }
    if ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP {
        return Outcome::drop(Verdict::DROP);
    }
    let Some(ports) = read_at::<[u8; 4]>(ctx, ETH_LEN + IPV4_LEN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    let (sport, dport) = ([ports[0], ports[1]], [ports[2], ports[3]]);
    let redirected = SockKey {
        cookie,
        ip: ip.dst,
        port_be: dport,
        protocol: ip.protocol,
        _pad: 0,
    };
    if SOCK_REVERSE.get_ptr(&redirected).is_none() {
        return Outcome::drop(Verdict::INTO_OVERLAY);
    }
    let subnet = SubnetKey::lookup(ip.dst);
    let Some(task_vni) = OVERLAY_SUBNETS.get(Key::new(subnet.prefix_len, subnet.ip)) else {
        return Outcome::drop(Verdict::UNKNOWN_ENDPOINT);
    };
    let Some(ep) = lookup(
        &OVERLAY_ENDPOINTS,
        &EndpointKey {
            vni: *task_vni,
            ip: ip.dst,
        },
    ) else {
        return Outcome::drop(Verdict::UNKNOWN_ENDPOINT);
    };
    if ep.ifindex != 0 {
        // A local task is routed straight to its veth; this one is not there.
        return Outcome::drop(Verdict::NO_ROUTE);
    }
    let key = ReplyKey {
        backend_ip: ip.dst,
        client_ip: ip.src,
        backend_port_be: dport,
        client_port_be: sport,
        protocol: ip.protocol,
        _pad: [0; 3],
    };
    let known = match HOST_FLOWS.get_ptr(&key) {
        // SAFETY: a valid map value for this run.
        Some(f) => be32(unsafe { (*f).host_ip }) == be32(ep.host_ip),
        None => false,
    };
    if !known {
        let flow = HostFlow {
            host_ip: ep.host_ip,
            _pad: [0; 4],
            // SAFETY: a plain helper call.
            seen_ns: unsafe { bpf_ktime_get_ns() },
        };
        if HOST_FLOWS.insert(&key, &flow, 0).is_err() {
            return Outcome::error();
        }
    }
    let tunnel = Tunnel {
        vni,
        src: ip.src,
        dst: ip.dst,
        remote: ep.host_ip,
        inner_dst_mac: endpoint_mac(ip.dst),
        verdict: Verdict::ENCAP,
    };
    encap(ctx, &underlay, &tunnel)
}
