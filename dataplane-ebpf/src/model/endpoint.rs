//! `tc_endpoint_ingress`: what an endpoint sends (ARCHITECTURE.md, packet paths 1 and 2).
//!
//! Rules, as restated here:
//! - no port entry for the veth → dropped (`no_port`);
//! - shorter than an Ethernet header → malformed; neither IPv4 nor ARP → dropped;
//! - ARP (IPv4 over Ethernet only, else dropped; cut short → malformed): the endpoint's
//!   reply about its own address → the host; a request for another address of its
//!   network (not its own, not the asker's) → answered in place with the gateway's MAC
//!   and sent back out of the veth; anything else → dropped;
//! - IPv4 (cut short or not version 4 → malformed): a source other than the endpoint's
//!   own → spoofed; a port whose network is missing → dropped; outside the network: in
//!   another network's subnet → isolated (`other_network`), else → the host; the
//!   gateway → the host; a local endpoint → MACs rewritten, into its veth; a remote one
//!   or an external VTEP's prefix → VXLAN to its host (next hop from the FIB), unless
//!   too big once encapsulated (→ ICMP "fragmentation needed" back, with DF and a plain
//!   header not carrying an ICMP error; else dropped); no one → `unknown_endpoint`;
//! - to the host: UDP/TCP to a guarded destination (the gateway, a GUARDED_HOSTS address,
//!   anything the FIB does not forward) on a guarded port, or whose port cannot be seen
//!   (a later fragment, IHL below 5, a header cut short) → `cluster_port`.

use super::alloc::vec::Vec;

use super::{bytes, u16_at, Action, Cluster, Fib, Ipv4, Kernel, Outcome};
use super::{ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP};
use crate::{
    counters::Verdict,
    guard::{self, ToHost},
    overlay::{
        arp_reply, encap_headers, endpoint_mac, icmp_frag_needed, Encap, PortValue, ARP_FRAME_LEN,
        ENCAP_LEN, GATEWAY_MAC, ICMP_QUOTE_LEN,
    },
};

pub(super) fn tc_endpoint_ingress(
    frame: &[u8],
    ifindex: u32,
    cluster: &Cluster,
    kernel: &Kernel,
) -> Outcome {
    let Some(port) = cluster.ports.get(&ifindex) else {
        return dropped(frame, Verdict::NO_PORT);
    };
    match u16_at(frame, 12) {
        None => dropped(frame, Verdict::MALFORMED),
        Some(ETHERTYPE_IPV4) => ipv4(frame, ifindex, port, cluster, kernel),
        Some(ETHERTYPE_ARP) => arp(frame, ifindex, port, cluster),
        Some(_) => dropped(frame, Verdict::DROP),
    }
}

fn dropped(frame: &[u8], verdict: Verdict) -> Outcome {
    Outcome::new(verdict, Action::Drop, frame.to_vec())
}

fn arp(frame: &[u8], ifindex: u32, port: &PortValue, cluster: &Cluster) -> Outcome {
    let Some(a) = bytes::<28>(frame, 14) else {
        return dropped(frame, Verdict::MALFORMED);
    };
    let field = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let ip = |i: usize| [a[i], a[i + 1], a[i + 2], a[i + 3]];
    if field(0) != 1 || field(2) != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return dropped(frame, Verdict::DROP);
    }
    let (op, sha, spa, tpa) = (
        field(6),
        [a[8], a[9], a[10], a[11], a[12], a[13]],
        ip(14),
        ip(24),
    );
    if op == 2 && spa == port.ip {
        return Outcome::new(Verdict::PASS, Action::Pass, frame.to_vec());
    }
    if op != 1 {
        return dropped(frame, Verdict::DROP);
    }
    let Some(net) = cluster.networks.get(&port.vni) else {
        return dropped(frame, Verdict::DROP);
    };
    if !net.contains(tpa) || tpa == spa || tpa == port.ip {
        return dropped(frame, Verdict::DROP);
    }
    let mut out = frame.to_vec();
    out[..ARP_FRAME_LEN].copy_from_slice(&arp_reply(sha, spa, tpa));
    Outcome::new(Verdict::ARP_REPLY, Action::Redirect { ifindex }, out)
}

fn ipv4(
    frame: &[u8],
    ifindex: u32,
    port: &PortValue,
    cluster: &Cluster,
    kernel: &Kernel,
) -> Outcome {
    let Some(ip) = Ipv4::at(frame, 14) else {
        return dropped(frame, Verdict::MALFORMED);
    };
    if ip.version_ihl >> 4 != 4 {
        return dropped(frame, Verdict::MALFORMED);
    }
    if ip.src != port.ip {
        return dropped(frame, Verdict::SPOOFED);
    }
    let Some(net) = cluster.networks.get(&port.vni) else {
        return dropped(frame, Verdict::DROP);
    };
    if !net.contains(ip.dst) {
        if cluster.subnet_of(ip.dst).is_some_and(|vni| vni != port.vni) {
            return dropped(frame, Verdict::OTHER_NETWORK);
        }
        return to_host(frame, &ip, net.gateway, cluster, kernel);
    }
    if ip.dst == net.gateway {
        return to_host(frame, &ip, net.gateway, cluster, kernel);
    }
    let (remote, inner_dst_mac) = match cluster.endpoint(port.vni, ip.dst) {
        Some(ep) if ep.ifindex != 0 => {
            let mut out = frame.to_vec();
            out[..6].copy_from_slice(&endpoint_mac(ip.dst));
            out[6..12].copy_from_slice(&GATEWAY_MAC);
            return Outcome::new(
                Verdict::LOCAL,
                Action::RedirectPeer {
                    ifindex: ep.ifindex,
                },
                out,
            );
        }
        Some(ep) => (ep.host_ip, endpoint_mac(ip.dst)),
        None => match cluster.vtep_for(port.vni, ip.dst) {
            Some(vtep) => (vtep.underlay_ip, vtep.mac),
            None => return dropped(frame, Verdict::UNKNOWN_ENDPOINT),
        },
    };
    let underlay = cluster.underlay;
    if underlay.ifindex == 0 {
        return dropped(frame, Verdict::NO_ROUTE);
    }
    // `bpf_check_mtu` on the underlay: the frame (its Ethernet header counts against the
    // device's hard header length) plus the 50 bytes must fit.
    if frame.len() + ENCAP_LEN > kernel.underlay_mtu as usize + 14 {
        let mtu = kernel.underlay_mtu.min(0xffff) as u16;
        return frag_needed(frame, ifindex, &ip, net.gateway, mtu);
    }
    let len = frame.len() + ENCAP_LEN;
    let headers = encap_headers(&Encap {
        outer_src: underlay.ip,
        outer_dst: remote,
        outer_ip_len: (len - 14).min(0xffff) as u16,
        ip_id: 0,
        udp_src_port: 0,
        vni: port.vni,
        inner_dst_mac,
        inner_src_mac: endpoint_mac(ip.src),
    });
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&frame[..14]);
    out.extend_from_slice(&headers);
    out.extend_from_slice(&frame[14..]);
    let encapsulated = |verdict, action, frame| Outcome {
        verdict,
        action,
        frame,
        // Outer IP ID (random), its checksum, the UDP source port (the flow hash).
        unknown: super::alloc::vec![18..20, 24..26, 34..36],
    };
    match kernel.fib(remote) {
        Fib::Success { dmac } => {
            out[..6].copy_from_slice(&dmac);
            out[6..12].copy_from_slice(&kernel.underlay_mac);
            let action = Action::Redirect {
                ifindex: underlay.ifindex,
            };
            encapsulated(Verdict::ENCAP, action, out)
        }
        Fib::NoNeighbour | Fib::ForwardingDisabled => {
            let action = Action::RedirectNeigh {
                ifindex: underlay.ifindex,
            };
            encapsulated(Verdict::ENCAP, action, out)
        }
        Fib::NotForwarded => encapsulated(Verdict::NO_ROUTE, Action::Drop, out),
    }
}

/// Too big for the underlay once encapsulated: ICMP "fragmentation needed" from the
/// gateway back into the endpoint, for a plain IPv4 header with DF that is not an ICMP
/// error; otherwise dropped.
fn frag_needed(frame: &[u8], ifindex: u32, ip: &Ipv4, gateway: [u8; 4], mtu: u16) -> Outcome {
    let too_big = || dropped(frame, Verdict::TOO_BIG);
    if ip.version_ihl != 0x45 || ip.frag_off & 0x4000 == 0 {
        return too_big();
    }
    if ip.protocol == IPPROTO_ICMP && matches!(frame.get(34), Some(3 | 4 | 5 | 11 | 12) | None) {
        return too_big();
    }
    let Some(quote) = bytes::<ICMP_QUOTE_LEN>(frame, 14) else {
        return too_big();
    };
    let mut out = Vec::new();
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&GATEWAY_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&icmp_frag_needed(
        gateway,
        ip.src,
        mtu.saturating_sub(ENCAP_LEN as u16),
        &quote,
    ));
    Outcome::new(Verdict::TOO_BIG, Action::RedirectPeer { ifindex }, out)
}

/// To the host stack, unless the guard drops it.
fn to_host(
    frame: &[u8],
    ip: &Ipv4,
    gateway: [u8; 4],
    cluster: &Cluster,
    kernel: &Kernel,
) -> Outcome {
    let guarded_destination = ip.dst == gateway
        || cluster.guarded_hosts.contains(&ip.dst)
        || matches!(
            kernel.fib(ip.dst),
            Fib::ForwardingDisabled | Fib::NotForwarded
        );
    let dst_port = if ip.frag_off & 0x1fff != 0 || ip.ihl() < 5 {
        None
    } else {
        u16_at(frame, 14 + usize::from(ip.ihl()) * 4 + 2)
    };
    let packet = ToHost {
        guarded_destination,
        protocol: ip.protocol,
        dst_port,
    };
    if guard::drops(&packet, |key| cluster.guarded_ports.contains(&key)) {
        return dropped(frame, Verdict::CLUSTER_PORT);
    }
    Outcome::new(Verdict::TO_HOST, Action::Pass, frame.to_vec())
}
