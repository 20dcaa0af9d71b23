//! The model on hand-built frames: each rule once, so the differential test compares
//! the programs against a model that says what the rules say.

extern crate std;

use super::alloc::{vec, vec::Vec};

use super::*;
use crate::overlay::{
    arp_reply, endpoint_mac, icmp_frag_needed, ipv4_checksum, vxlan_header, DECAP_META_MAGIC,
    GATEWAY_MAC,
};

const A: u32 = 4096;
const B: u32 = 4097;
const ME: [u8; 4] = [10, 0, 1, 2];
const LOCAL: [u8; 4] = [10, 0, 1, 3];
const REMOTE: [u8; 4] = [10, 0, 1, 4];
const B_LOCAL: [u8; 4] = [10, 0, 2, 3];
const HOST: [u8; 4] = [10, 200, 0, 11];
const PEER: [u8; 4] = [10, 200, 0, 12];
const VTEP: [u8; 4] = [10, 200, 0, 50];
const VTEP_MAC: [u8; 6] = [2, 0xaa, 0, 0, 0, 0x50];
const NEIGHBOUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
const UNDERLAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const PORT: u32 = 1;

fn cluster() -> Cluster {
    let mut c = Cluster {
        underlay: UnderlayValue {
            ifindex: 2,
            ip: HOST,
            mac: UNDERLAY_MAC,
            _pad: [0; 2],
        },
        ..Default::default()
    };
    for (vni, subnet) in [(A, [10, 0, 1, 0]), (B, [10, 0, 2, 0])] {
        let gateway = [subnet[0], subnet[1], subnet[2], 1];
        c.networks.insert(
            vni,
            NetworkValue {
                subnet,
                prefix_len: 24,
                gateway,
            },
        );
        c.subnets.push((SubnetKey::new(subnet, 24), vni));
    }
    c.ports.insert(PORT, PortValue { vni: A, ip: ME });
    for (vni, ip, host_ip, ifindex) in [
        (A, ME, HOST, PORT),
        (A, LOCAL, HOST, 7),
        (A, REMOTE, PEER, 0),
        (B, B_LOCAL, HOST, 8),
    ] {
        c.endpoints
            .insert(EndpointKey { vni, ip }, EndpointValue { host_ip, ifindex });
    }
    c.vteps.push((
        VtepKey::new(A, [10, 0, 1, 128], 25),
        VtepValue {
            underlay_ip: VTEP,
            mac: VTEP_MAC,
            _pad: [0; 2],
        },
    ));
    c.guarded_hosts.insert(PEER);
    c.guarded_ports.insert(GuardedPort::new(IPPROTO_UDP, 4789));
    c.guarded_ports.insert(GuardedPort::new(IPPROTO_TCP, 7946));
    c
}

fn kernel() -> Kernel {
    let route = |prefix, prefix_len, gateway| Route {
        prefix,
        prefix_len,
        gateway,
    };
    Kernel {
        forwarding: true,
        local_routes: vec![route(HOST, 32, None), route([127, 0, 0, 0], 8, None)],
        routes: vec![
            route([10, 200, 0, 0], 24, None),
            route([198, 51, 100, 0], 24, Some(PEER)),
        ],
        neighbours: [(PEER, NEIGHBOUR_MAC)].into_iter().collect(),
        underlay_mac: UNDERLAY_MAC,
        underlay_mtu: 1500,
    }
}

/// Ethernet + IPv4 (no options, DF) + `l4` (whose first bytes are the ports).
fn ipv4_frame(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = endpoint_mac(src).to_vec();
    f.extend_from_slice(&GATEWAY_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + l4.len() as u16).to_be_bytes();
    let mut ip = [
        0x45, 0, total[0], total[1], 0, 1, 0x40, 0, 64, protocol, 0, 0, src[0], src[1], src[2],
        src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let sum = ipv4_checksum(&ip).to_be_bytes();
    ip[10..12].copy_from_slice(&sum);
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

fn udp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let d = dport.to_be_bytes();
    ipv4_frame(
        src,
        dst,
        IPPROTO_UDP,
        &[0x13, 0x88, d[0], d[1], 0, 12, 0, 0, 1, 2, 3, 4],
    )
}

fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let d = dport.to_be_bytes();
    let mut l4 = vec![0x9c, 0x40, d[0], d[1]];
    l4.resize(20, 0);
    ipv4_frame(src, dst, IPPROTO_TCP, &l4)
}

fn endpoint(frame: &[u8]) -> Outcome {
    run(
        Program::TcEndpointIngress { ifindex: PORT },
        frame,
        &cluster(),
        &kernel(),
    )
}

fn vxlan(outer_src: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan_header(vni).to_vec();
    payload.extend_from_slice(inner);
    let mut l4 = vec![0xc0, 0, 0x12, 0xb5];
    l4.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(&payload);
    let mut f = ipv4_frame(outer_src, HOST, IPPROTO_UDP, &l4);
    f[20] = 0; // no DF on the underlay
    f
}

#[test]
fn no_port_drops_everything() {
    let mut c = cluster();
    c.ports.clear();
    let out = run(
        Program::TcEndpointIngress { ifindex: PORT },
        &udp(ME, LOCAL, 53),
        &c,
        &kernel(),
    );
    assert_eq!((out.verdict, out.action), (Verdict::NO_PORT, Action::Drop));
}

#[test]
fn arp_requests_are_answered_with_the_gateway_mac() {
    let mut req = endpoint_mac(ME).to_vec();
    req.extend_from_slice(&endpoint_mac(ME));
    req.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    req.extend_from_slice(&endpoint_mac(ME));
    req.extend_from_slice(&ME);
    req.extend_from_slice(&[0; 6]);
    req.extend_from_slice(&LOCAL);
    req.resize(60, 0);
    let out = endpoint(&req);
    assert_eq!(out.verdict, Verdict::ARP_REPLY);
    assert_eq!(out.action, Action::Redirect { ifindex: PORT });
    assert_eq!(out.frame[..42], arp_reply(endpoint_mac(ME), ME, LOCAL));
    assert_eq!(out.frame.len(), 60);
    // For its own address: dropped.
    req[38..42].copy_from_slice(&ME);
    assert_eq!(endpoint(&req).verdict, Verdict::DROP);
    // Cut short: malformed.
    assert_eq!(endpoint(&req[..30]).verdict, Verdict::MALFORMED);
}

#[test]
fn ipv4_paths() {
    let out = endpoint(&udp(ME, LOCAL, 53));
    assert_eq!(out.verdict, Verdict::LOCAL);
    assert_eq!(out.action, Action::RedirectPeer { ifindex: 7 });
    assert_eq!(out.frame[..6], endpoint_mac(LOCAL));
    assert_eq!(
        endpoint(&udp([10, 0, 1, 9], LOCAL, 53)).verdict,
        Verdict::SPOOFED
    );
    assert_eq!(
        endpoint(&udp(ME, B_LOCAL, 53)).verdict,
        Verdict::OTHER_NETWORK
    );
    assert_eq!(
        endpoint(&udp(ME, [10, 0, 1, 77], 53)).verdict,
        Verdict::UNKNOWN_ENDPOINT
    );
    assert_eq!(
        endpoint(&udp(ME, [1, 1, 1, 1], 53)).verdict,
        Verdict::TO_HOST
    );

    // Encapsulated to the peer, whose MAC the FIB knows.
    let frame = udp(ME, REMOTE, 53);
    let out = endpoint(&frame);
    assert_eq!(out.verdict, Verdict::ENCAP);
    assert_eq!(out.action, Action::Redirect { ifindex: 2 });
    assert_eq!(out.frame.len(), frame.len() + 50);
    assert_eq!(out.frame[..6], NEIGHBOUR_MAC);
    assert_eq!(out.frame[6..12], UNDERLAY_MAC);
    assert_eq!(out.frame[30..34], PEER);
    assert_eq!(out.frame[42..50], vxlan_header(A));
    assert_eq!(out.frame[64..], frame[14..]);
    let mut other = out.frame.clone();
    other[34] ^= 0xff;
    assert!(
        out.matches(&other),
        "the source port is not the model's to know"
    );
    other[30] ^= 0xff;
    assert!(!out.matches(&other));
    // To the VTEP: not resolved, so the kernel's neighbour lookup.
    let out = endpoint(&udp(ME, [10, 0, 1, 200], 53));
    assert_eq!(out.action, Action::RedirectNeigh { ifindex: 2 });
    assert_eq!(out.frame[50..56], VTEP_MAC);

    // Too big with DF: ICMP from the gateway.
    let mut l4 = vec![0u8; 1480];
    l4[..4].copy_from_slice(&[0x13, 0x88, 0, 53]);
    let big = ipv4_frame(ME, REMOTE, IPPROTO_UDP, &l4);
    let out = endpoint(&big);
    assert_eq!(out.verdict, Verdict::TOO_BIG);
    assert_eq!(out.action, Action::RedirectPeer { ifindex: PORT });
    assert_eq!(
        out.frame[14..],
        icmp_frag_needed([10, 0, 1, 1], ME, 1450, &big[14..42].try_into().unwrap())
    );
}

#[test]
fn the_guard_drops_cluster_ports_of_guarded_destinations_only() {
    let cases = [
        (udp(ME, [10, 0, 1, 1], 4789), Verdict::CLUSTER_PORT),
        (tcp(ME, [10, 0, 1, 1], 7946), Verdict::CLUSTER_PORT),
        (udp(ME, PEER, 4789), Verdict::CLUSTER_PORT),
        (udp(ME, HOST, 4789), Verdict::CLUSTER_PORT),
        // Unroutable: the FIB does not forward it, so it counts as local.
        (udp(ME, [1, 1, 1, 1], 4789), Verdict::CLUSTER_PORT),
        (udp(ME, [198, 51, 100, 7], 4789), Verdict::TO_HOST),
        (udp(ME, PEER, 53), Verdict::TO_HOST),
        (tcp(ME, PEER, 4789), Verdict::TO_HOST),
        (
            ipv4_frame(ME, PEER, IPPROTO_ICMP, &[8, 0, 0, 0]),
            Verdict::TO_HOST,
        ),
    ];
    for (frame, verdict) in cases {
        assert_eq!(endpoint(&frame).verdict, verdict, "{frame:02x?}");
    }
    // A later fragment of UDP to a guarded host: no ports, dropped.
    let mut frag = udp(ME, PEER, 53);
    frag[20..22].copy_from_slice(&[0x00, 0x10]);
    assert_eq!(endpoint(&frag).verdict, Verdict::CLUSTER_PORT);
    frag[30..34].copy_from_slice(&[198, 51, 100, 7]);
    assert_eq!(endpoint(&frag).verdict, Verdict::TO_HOST);
}

#[test]
fn underlay_decapsulates_checks_sources_and_keeps_the_overlay_closed() {
    let (c, k) = (cluster(), kernel());
    let inner = udp(REMOTE, LOCAL, 53);
    let frame = vxlan(PEER, A, &inner);
    let out = run(Program::XdpUnderlay, &frame, &c, &k);
    assert_eq!((out.verdict, out.action), (Verdict::DECAP, Action::XdpPass));
    assert_eq!(out.frame[..4], DECAP_META_MAGIC.to_ne_bytes());
    assert_eq!(out.frame[4..8], 7u32.to_ne_bytes());
    assert_eq!(out.frame[12..18], endpoint_mac(LOCAL));
    assert_eq!(out.frame[26..], inner[14..]);
    let out = run(Program::TcUnderlayIngress, &frame, &c, &k);
    assert_eq!(out.action, Action::RedirectPeer { ifindex: 7 });
    assert_eq!(out.frame[..6], endpoint_mac(LOCAL));
    assert_eq!(out.frame[14..], inner[14..]);

    let spoofed = vxlan(VTEP, A, &inner);
    assert_eq!(
        run(Program::XdpUnderlay, &spoofed, &c, &k).action,
        Action::XdpDrop
    );
    assert_eq!(
        run(Program::TcUnderlayIngress, &spoofed, &c, &k).verdict,
        Verdict::SPOOFED
    );

    let unknown_vni = vxlan(PEER, 77, &inner);
    let out = run(Program::TcUnderlayIngress, &unknown_vni, &c, &k);
    assert_eq!(
        (out.verdict, out.action),
        (Verdict::UNKNOWN_VNI, Action::Pass)
    );
    let mut bad_flags = frame.clone();
    bad_flags[42] = 0;
    assert_eq!(
        run(Program::TcUnderlayIngress, &bad_flags, &c, &k).verdict,
        Verdict::MALFORMED
    );
    assert_eq!(
        run(Program::XdpUnderlay, &bad_flags, &c, &k).verdict,
        Verdict::PASS
    );

    // Plain IPv4 routed to an endpoint: dropped on both stages.
    let routed = udp([10, 200, 0, 2], LOCAL, 53);
    let out = run(Program::XdpUnderlay, &routed, &c, &k);
    assert_eq!(
        (out.verdict, out.action),
        (Verdict::INTO_OVERLAY, Action::XdpDrop)
    );
    let out = run(Program::TcUnderlayIngress, &routed, &c, &k);
    assert_eq!(
        (out.verdict, out.action),
        (Verdict::INTO_OVERLAY, Action::Drop)
    );
    let elsewhere = udp([10, 200, 0, 2], [192, 0, 2, 1], 53);
    assert_eq!(
        run(Program::XdpUnderlay, &elsewhere, &c, &k).verdict,
        Verdict::PASS
    );
}
