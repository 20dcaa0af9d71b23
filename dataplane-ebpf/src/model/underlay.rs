//! The underlay's two programs: VXLAN from other hosts (ARCHITECTURE.md, packet path 3)
//! and plain IPv4 routed into the overlay.
//!
//! Rules, as restated here: only UDP to 4789 addressed to this host's underlay address,
//! with a plain 20-byte outer header and not a later fragment, is "ours". Ours is
//! malformed (dropped) if it is a first fragment, its UDP length cannot hold VXLAN + an
//! inner Ethernet + IPv4 header, the VXLAN I flag is clear, or the inner headers are cut
//! short; a VNI without a network passes untouched; a non-IPv4 inner frame is dropped;
//! it is delivered only to a local endpoint (`ifindex != 0`) of that VNI with the inner
//! destination address, and only if the outer source is the host of the inner source's
//! endpoint or, for an address no endpoint has, the external VTEP of its prefix
//! (else spoofed). An outer header with options is for `tc_underlay_ingress` to look at
//! more closely (malformed if it is UDP 4789 with a real options area); XDP leaves it
//! alone. Anything not ours that is IPv4 to an overlay subnet is dropped as routed into
//! the overlay; the rest passes.

use super::alloc::vec::Vec;

use super::{bytes, u16_at, Action, Cluster, Ipv4, Outcome, ETHERTYPE_IPV4, IPPROTO_UDP};
use crate::{
    counters::Verdict,
    overlay::{endpoint_mac, vxlan_vni, DECAP_META_MAGIC, GATEWAY_MAC, VXLAN_PORT},
};

const OUTER_IP: usize = 14;
const OUTER_UDP: usize = OUTER_IP + 20;
const VXLAN: usize = OUTER_UDP + 8;
const INNER_ETH: usize = VXLAN + 8;
const INNER_IP: usize = INNER_ETH + 14;
/// UDP header + VXLAN + inner Ethernet + inner IPv4 header.
const MIN_UDP_LEN: u16 = 8 + 8 + 14 + 20;

/// What a frame on the underlay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    NotOurs,
    /// Outer header with options (IHL `ihl`, not 5).
    IpOptions {
        ihl: u8,
    },
    Malformed,
    UnknownVni,
    NotIpv4,
    UnknownEndpoint,
    Spoofed,
    Deliver {
        vni: u32,
        dst: [u8; 4],
        ifindex: u32,
    },
}

fn classify(frame: &[u8], cluster: &Cluster) -> Class {
    let Some(ethertype) = u16_at(frame, 12) else {
        return Class::NotOurs;
    };
    if ethertype != ETHERTYPE_IPV4 {
        return Class::NotOurs;
    }
    let Some(ip) = Ipv4::at(frame, OUTER_IP) else {
        return Class::NotOurs;
    };
    if ip.protocol != IPPROTO_UDP || ip.dst != cluster.underlay.ip {
        return Class::NotOurs;
    }
    if ip.frag_off & 0x1fff != 0 {
        return Class::NotOurs;
    }
    if ip.ihl() != 5 {
        return Class::IpOptions { ihl: ip.ihl() };
    }
    let Some(udp) = bytes::<8>(frame, OUTER_UDP) else {
        return Class::NotOurs;
    };
    let (dst_port, udp_len) = (
        u16::from_be_bytes([udp[2], udp[3]]),
        u16::from_be_bytes([udp[4], udp[5]]),
    );
    if dst_port != VXLAN_PORT {
        return Class::NotOurs;
    }
    if ip.frag_off & 0x2000 != 0 || udp_len < MIN_UDP_LEN {
        return Class::Malformed;
    }
    let Some(header) = bytes::<8>(frame, VXLAN) else {
        return Class::Malformed;
    };
    let Some(vni) = vxlan_vni(&header) else {
        return Class::Malformed;
    };
    if !cluster.networks.contains_key(&vni) {
        return Class::UnknownVni;
    }
    let Some(inner_type) = u16_at(frame, INNER_ETH + 12) else {
        return Class::Malformed;
    };
    if inner_type != ETHERTYPE_IPV4 {
        return Class::NotIpv4;
    }
    let Some(inner) = Ipv4::at(frame, INNER_IP) else {
        return Class::Malformed;
    };
    match cluster.endpoint(vni, inner.dst) {
        Some(ep) if ep.ifindex != 0 => {
            let may_send = match cluster.endpoint(vni, inner.src) {
                Some(source) => source.host_ip == ip.src,
                None => cluster
                    .vtep_for(vni, inner.src)
                    .is_some_and(|vtep| vtep.underlay_ip == ip.src),
            };
            if may_send {
                Class::Deliver {
                    vni,
                    dst: inner.dst,
                    ifindex: ep.ifindex,
                }
            } else {
                Class::Spoofed
            }
        }
        _ => Class::UnknownEndpoint,
    }
}

/// Plain IPv4 whose destination lies in an overlay subnet.
fn into_overlay(frame: &[u8], cluster: &Cluster) -> bool {
    u16_at(frame, 12) == Some(ETHERTYPE_IPV4)
        && Ipv4::at(frame, OUTER_IP).is_some_and(|ip| cluster.subnet_of(ip.dst).is_some())
}

/// The inner frame as delivered to the endpoint `dst`: its own Ethernet header (to the
/// endpoint's MAC, from the gateway's), then the inner IPv4 packet as it came.
fn decapsulated(frame: &[u8], dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() - INNER_IP + 14);
    out.extend_from_slice(&endpoint_mac(dst));
    out.extend_from_slice(&GATEWAY_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&frame[INNER_IP..]);
    out
}

pub(super) fn xdp_underlay(frame: &[u8], cluster: &Cluster) -> Outcome {
    let untouched = |verdict, action| Outcome::new(verdict, action, frame.to_vec());
    match classify(frame, cluster) {
        Class::Deliver { vni, dst, ifindex } => {
            // XDP metadata first: magic, port, VNI (host order, as the struct lies).
            let mut out = Vec::new();
            for word in [DECAP_META_MAGIC, ifindex, vni] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
            out.extend_from_slice(&decapsulated(frame, dst));
            Outcome::new(Verdict::DECAP, Action::XdpPass, out)
        }
        Class::Spoofed => untouched(Verdict::SPOOFED, Action::XdpDrop),
        Class::NotOurs if into_overlay(frame, cluster) => {
            untouched(Verdict::INTO_OVERLAY, Action::XdpDrop)
        }
        _ => untouched(Verdict::PASS, Action::XdpPass),
    }
}

/// `tc_underlay_ingress` on a frame without a decapsulation mark (the mark is XDP
/// metadata, which `BPF_PROG_TEST_RUN` cannot hand a tc program).
pub(super) fn tc_underlay_ingress(frame: &[u8], cluster: &Cluster) -> Outcome {
    let untouched = |verdict, action| Outcome::new(verdict, action, frame.to_vec());
    match classify(frame, cluster) {
        Class::NotOurs if into_overlay(frame, cluster) => {
            untouched(Verdict::INTO_OVERLAY, Action::Drop)
        }
        Class::NotOurs => untouched(Verdict::PASS, Action::Pass),
        Class::IpOptions { ihl } => {
            let port = u16_at(frame, OUTER_IP + usize::from(ihl) * 4 + 2);
            if port == Some(VXLAN_PORT) && ihl > 5 {
                untouched(Verdict::MALFORMED, Action::Drop)
            } else {
                untouched(Verdict::PASS, Action::Pass)
            }
        }
        Class::Malformed => untouched(Verdict::MALFORMED, Action::Drop),
        Class::UnknownVni => untouched(Verdict::UNKNOWN_VNI, Action::Pass),
        Class::NotIpv4 => untouched(Verdict::DROP, Action::Drop),
        Class::UnknownEndpoint => untouched(Verdict::UNKNOWN_ENDPOINT, Action::Drop),
        Class::Spoofed => untouched(Verdict::SPOOFED, Action::Drop),
        Class::Deliver { dst, ifindex, .. } => {
            let protocol = frame[INNER_IP + 9];
            // A single TCP segment through the veth (for the endpoint's GRO); the rest
            // straight into the namespace.
            let action = if protocol == super::IPPROTO_TCP {
                Action::Redirect { ifindex }
            } else {
                Action::RedirectPeer { ifindex }
            };
            Outcome::new(Verdict::DECAP, action, decapsulated(frame, dst))
        }
    }
}
