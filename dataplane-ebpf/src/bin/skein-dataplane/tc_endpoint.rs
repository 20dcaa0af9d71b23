//! `tc_endpoint_ingress`: what an endpoint sends, seen at tc ingress of its host-side
//! veth, tc ingress (ARCHITECTURE.md, packet paths 1 and 2); the encapsulation itself is in
//! [`crate::encap`].
//!
//! - ARP: requests for other addresses of the endpoint's network are answered in place
//!   with the gateway's MAC (the overlay is routed: nothing is ever bridged); replies
//!   the endpoint gives about itself go to the host (which resolves the endpoint to
//!   reach it); any other ARP is dropped.
//! - IPv4 inside the endpoint's network: the gateway → the host; a local endpoint →
//!   redirected to its veth; a remote one → VXLAN to its host (or, if too big for the
//!   underlay once encapsulated, ICMP "fragmentation needed" back); an external VTEP's
//!   prefix → VXLAN to the VTEP; anything else → dropped.
//! - IPv4 to another overlay network's subnet → dropped (networks are isolated); a
//!   task's reply to a client of the routing mesh → back the way its flow came
//!   ([`crate::mesh_reply`]); to anywhere else → the host, which routes (and NATs) it — except UDP/TCP to one of the
//!   cluster's own ports on this host or a cluster host (VXLAN, gossip, peer RPC,
//!   metrics: [`crate::guard::cluster_port`]) → dropped.
//! - Everything else from an endpoint (IPv6, other EtherTypes) → dropped.
//! - Packets from a veth without its port entry (`OVERLAY_PORTS`) → dropped: the agent
//!   writes the entry before the veth comes up, so this is a veth it lost track of.
//!
//! Encapsulation happens on the skb (`bpf_skb_adjust_room` with the tunnel flags), so
//! a TCP super-packet stays one GSO skb with a partial checksum: the kernel segments it
//! and completes the inner checksums later, on the underlay (ARCHITECTURE.md: native XDP
//! loses both).

use aya_ebpf::{macros::classifier, maps::lpm_trie::Key, programs::TcContext};
use aya_log_ebpf::debug;
use dataplane_ebpf::{
    counters::Verdict,
    overlay::{
        arp_reply, endpoint_mac, EndpointKey, PortValue, SubnetKey, VtepKey, ARP_OP_REPLY,
        ARP_OP_REQUEST, ETH_LEN, GATEWAY_MAC,
    },
};

use crate::{
    encap::{encap, frag_needed, too_big, Tunnel},
    guard::cluster_port,
    maps::{
        lookup, network, underlay_config, OVERLAY_ENDPOINTS, OVERLAY_PORTS, OVERLAY_SUBNETS,
        OVERLAY_VTEPS, TC_ENDPOINT_COUNTERS,
    },
    mesh_reply::{self, Route},
    outcome::{count, Outcome},
    parse::*,
    vip_nat, vip_respond,
};

/// `skb->pkt_type` of a frame for this host (include/uapi/linux/if_packet.h).
const PACKET_HOST: u32 = 0;

/// Host side of an endpoint's veth, tc ingress: the packets the endpoint sends.
#[classifier]
pub fn tc_endpoint_ingress(ctx: TcContext) -> i32 {
    let len = u64::from(ctx.len());
    let outcome = handle(&ctx);
    count(&TC_ENDPOINT_COUNTERS, outcome.verdict, len);
    outcome.action
}

fn handle(ctx: &TcContext) -> Outcome {
    // SAFETY: the kernel hands every program a valid `__sk_buff`; at tc ingress
    // `ifindex` is the device the packet arrived on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(port) = lookup(&OVERLAY_PORTS, &ifindex) else {
        return Outcome::drop(Verdict::NO_PORT);
    };
    pull_headers(ctx, (ETH_LEN + size_of::<ArpHdr>()) as u32);
    let Some(eth) = read_at::<EthHdr>(ctx, 0) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    match be16(eth.ether_type) {
        ETHERTYPE_IPV4 => ipv4(ctx, ifindex, &port),
        ETHERTYPE_ARP => arp(ctx, ifindex, &port),
        _ => Outcome::drop(Verdict::DROP),
    }
}

fn arp(ctx: &TcContext, ifindex: u32, port: &PortValue) -> Outcome {
    let Some(arp) = read_at::<ArpHdr>(ctx, ETH_LEN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    if be16(arp.htype) != 1 || be16(arp.ptype) != ETHERTYPE_IPV4 || arp.hlen != 6 || arp.plen != 4 {
        return Outcome::drop(Verdict::DROP);
    }
    let op = be16(arp.op);
    if op == be16(ARP_OP_REPLY) && be32(arp.spa) == be32(port.ip) {
        // The endpoint telling the host where it is (the host asked, to reach it).
        return Outcome::pass(Verdict::PASS);
    }
    if op != be16(ARP_OP_REQUEST) {
        return Outcome::drop(Verdict::DROP);
    }
    let Some(net) = network(port.vni) else {
        return Outcome::drop(Verdict::DROP);
    };
    // Not for addresses outside the network (the endpoint routes those via the
    // gateway), nor its own (gratuitous ARP, duplicate address detection).
    let tpa = arp.tpa;
    if !net.contains(tpa) || be32(tpa) == be32(arp.spa) || be32(tpa) == be32(port.ip) {
        return Outcome::drop(Verdict::DROP);
    }
    let reply = arp_reply(arp.sha, arp.spa, tpa);
    if ctx.store(0, &reply, 0).is_err() {
        return Outcome::error();
    }
    Outcome::redirect(Verdict::ARP_REPLY, ifindex)
}

fn ipv4(ctx: &TcContext, ifindex: u32, port: &PortValue) -> Outcome {
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Outcome::drop(Verdict::MALFORMED);
    };
    if ip.version_ihl >> 4 != 4 {
        return Outcome::drop(Verdict::MALFORMED);
    }
    let (src, dst) = (ip.src, ip.dst);
    if be32(src) != be32(port.ip) {
        debug!(ctx, "endpoint {:i} sent from {:i}: dropped", port.ip, src);
        return Outcome::drop(Verdict::SPOOFED);
    }
    let Some(net) = network(port.vni) else {
        debug!(
            ctx,
            "port of {:i} has no network {}: dropped", port.ip, port.vni
        );
        return Outcome::drop(Verdict::DROP);
    };

    let tunnel = if !net.contains(dst) {
        let subnet = SubnetKey::lookup(dst);
        if let Some(vni) = OVERLAY_SUBNETS.get(Key::new(subnet.prefix_len, subnet.ip)) {
            if *vni != port.vni {
                debug!(
                    ctx,
                    "{:i} -> {:i}: other network {}: dropped", src, dst, *vni
                );
                return Outcome::drop(Verdict::OTHER_NETWORK);
            }
        }
        // A node's published port: balanced here like the service's VIP (vip_nat).
        match vip_nat::forward(ctx, port.vni) {
            vip_nat::NONE => {
                // A task's reply to a client of the routing mesh goes back the way its
                // flow came: translated back here, or encapsulated to the flow's ingress
                // node below.
                let Some(reply) = mesh_reply::find(ctx, &ip) else {
                    // Outside the overlay: the host routes it (egress, NAT).
                    return to_host(ctx, ifindex, &ip, net.gateway);
                };
                match mesh_reply::route(ctx, &ip, &reply) {
                    Route::Done(outcome) => return outcome,
                    Route::Tunnel(tunnel) => tunnel,
                }
            }
            status => match translated(ctx, port.vni, status) {
                Ok(tunnel) => tunnel,
                Err(outcome) => return outcome,
            },
        }
    } else {
        if be32(dst) == be32(net.gateway) {
            return to_host(ctx, ifindex, &ip, net.gateway);
        }
        let key = EndpointKey {
            vni: port.vni,
            ip: dst,
        };
        if let Some(ep) = lookup(&OVERLAY_ENDPOINTS, &key) {
            if ep.ifindex != 0 {
                // A local backend's reply to a VIP flow is translated back here.
                if vip_nat::reverse(ctx, port.vni) == vip_nat::FAILED {
                    return Outcome::error();
                }
                return local(ctx, ep.ifindex, dst);
            }
            Tunnel {
                vni: port.vni,
                src,
                dst,
                remote: ep.host_ip,
                inner_dst_mac: endpoint_mac(dst),
                verdict: Verdict::ENCAP,
            }
        } else {
            // A service's VIP (or a hairpin flow's reply to it).
            match vip_nat::at_vip(ctx, port.vni) {
                vip_nat::NONE => {
                    let vtep = VtepKey::lookup(port.vni, dst);
                    let Some(v) = OVERLAY_VTEPS.get(Key::new(vtep.prefix_len, vtep.data())) else {
                        debug!(ctx, "{:i} -> {:i}: no such endpoint: dropped", src, dst);
                        return Outcome::drop(Verdict::UNKNOWN_ENDPOINT);
                    };
                    Tunnel {
                        vni: port.vni,
                        src,
                        dst,
                        remote: v.underlay_ip,
                        inner_dst_mac: v.mac,
                        verdict: Verdict::ENCAP,
                    }
                }
                status => match translated(ctx, port.vni, status) {
                    Ok(tunnel) => tunnel,
                    Err(outcome) => return outcome,
                },
            }
        }
    };
    send(ctx, &ip, net.gateway, &tunnel)
}

/// VXLAN to another host (or, if too big for the underlay once encapsulated, ICMP
/// "fragmentation needed" back from `gateway`). One call site for `encap`, which stays
/// inlined: the call chain's stack has no room for it as a separate frame.
#[inline(always)]
fn send(ctx: &TcContext, ip: &Ipv4Hdr, gateway: [u8; 4], tunnel: &Tunnel) -> Outcome {
    let Some(underlay) = underlay_config() else {
        return Outcome::drop(Verdict::NO_ROUTE);
    };
    if underlay.ifindex == 0 {
        debug!(ctx, "no underlay configured: dropped");
        return Outcome::drop(Verdict::NO_ROUTE);
    }
    if let Some(mtu) = too_big(ctx, underlay.ifindex, ip) {
        return frag_needed(ctx, gateway, mtu);
    }
    encap(ctx, &underlay, tunnel)
}

/// Where a packet [`vip_nat`] translated goes (to its backend on the endpoint's network
/// `vni`): `Err` with the outcome if decided here (refused, failed, or delivered to a
/// local backend), else the tunnel to the backend's host.
#[inline(always)]
fn translated(ctx: &TcContext, vni: u32, status: u32) -> Result<Tunnel, Outcome> {
    match status {
        vip_nat::TRANSLATED => {}
        vip_nat::REFUSED => return Err(Outcome::drop(Verdict::VIP_REFUSED)),
        vip_nat::ANSWER => return Err(vip_respond::answer(ctx)),
        _ => return Err(Outcome::error()),
    }
    let Some(ip) = read_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Err(Outcome::error());
    };
    let Some(ep) = lookup(&OVERLAY_ENDPOINTS, &EndpointKey { vni, ip: ip.dst }) else {
        return Err(Outcome::drop(Verdict::UNKNOWN_ENDPOINT));
    };
    if ep.ifindex != 0 {
        return Err(local(ctx, ep.ifindex, ip.dst));
    }
    Ok(Tunnel {
        vni,
        src: ip.src,
        dst: ip.dst,
        remote: ep.host_ip,
        inner_dst_mac: endpoint_mac(ip.dst),
        verdict: Verdict::ENCAP,
    })
}

/// To the host's stack, unless it is for one of the cluster's own ports. The endpoint
/// addressed the frame to the gateway's MAC (its ARP answer), which need not be the
/// host-side veth's own, so the kernel has already marked it as for another host and
/// IPv4 would drop it: mark it as for this host.
fn to_host(ctx: &TcContext, ifindex: u32, ip: &Ipv4Hdr, gateway: [u8; 4]) -> Outcome {
    if cluster_port(ctx, ifindex, ip, gateway) {
        debug!(ctx, "{:i} -> {:i}: a cluster port: dropped", ip.src, ip.dst);
        return Outcome::drop(Verdict::CLUSTER_PORT);
    }
    let _ = ctx.change_type(PACKET_HOST);
    Outcome::pass(Verdict::TO_HOST)
}

/// Another endpoint on this host: new MACs (from the gateway, to the endpoint's
/// IP-derived MAC), then out of its veth.
fn local(ctx: &TcContext, ifindex: u32, dst: [u8; 4]) -> Outcome {
    let mac = endpoint_mac(dst);
    let g = GATEWAY_MAC;
    let macs = [
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], g[0], g[1], g[2], g[3], g[4], g[5],
    ];
    if ctx.store(0, &macs, 0).is_err() {
        return Outcome::error();
    }
    Outcome::redirect_peer(Verdict::LOCAL, ifindex)
}
