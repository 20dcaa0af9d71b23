//! Skein's programs under `BPF_PROG_TEST_RUN`: frames built with etherparse go through
//! the real, verifier-accepted programs; verdicts, output frames and counters are checked.
//! Needs root (loading BPF programs); run by `cargo xtask test`.

mod common;

use common::{classifier_fd, expect};
use std::os::fd::AsFd;

use agent::dataplane::{self, Counters, OverlayMaps, PinDirs};
use aya::programs::{SchedClassifier, Xdp};
use dataplane_ebpf::{
    counters::{Counter, Verdict},
    guard::{GuardedPort, IPPROTO_TCP, IPPROTO_UDP},
    names,
    overlay::{
        endpoint_mac, icmp_frag_needed, ipv4_checksum, vxlan_header, DecapMeta, EndpointKey,
        EndpointValue, NetworkValue, PortValue, SubnetKey, UnderlayValue, VtepKey, VtepValue,
        DECAP_META_MAGIC, GATEWAY_MAC, ICMP_QUOTE_LEN,
    },
};
use dataplane_ebpf_test_run::test_run;
use etherparse::PacketBuilder;
use xtask::testbed::{Host, InNetns, Testbed, TestbedConfig};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// Frames of every kind the underlay will see, plus garbage.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let mac_a = [0x02, 0, 0, 0, 0, 0x0a];
    let mac_b = [0x02, 0, 0, 0, 0, 0x0b];
    let mut out = Vec::new();

    let inner = {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4([10, 0, 1, 2], [10, 0, 1, 3], 64)
            .udp(5000, 53)
            .write(&mut frame, b"inner payload")
            .expect("inner frame");
        frame
    };
    // VXLAN (RFC 7348): flags 0x08, 24-bit VNI 4096, then the inner frame.
    let mut vxlan = vec![0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0];
    vxlan.extend_from_slice(&inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .udp(49152, 4789)
        .write(&mut frame, &vxlan)
        .expect("vxlan frame");
    out.push(("vxlan", frame));

    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([192, 168, 0, 9], [192, 168, 0, 2], 64)
        .tcp(40000, 8080, 1, 65535)
        .syn()
        .write(&mut frame, &[])
        .expect("tcp frame");
    out.push(("tcp syn", frame));

    let mut frame = Vec::new();
    PacketBuilder::ethernet2(mac_a, mac_b)
        .ipv4([192, 168, 0, 9], [192, 168, 0, 2], 64)
        .udp(40000, 7946)
        .write(&mut frame, &[0xab; 1200])
        .expect("udp frame");
    out.push(("large udp", frame));

    // Ethernet header only, and an ARP-typed frame with a truncated body.
    let mut runt = [mac_b, mac_a].concat();
    runt.extend_from_slice(&[0x08, 0x00]);
    out.push(("ethernet header only", runt));
    let mut arp = [[0xff; 6], mac_a].concat();
    arp.extend_from_slice(&[0x08, 0x06, 0x00, 0x01]);
    out.push(("truncated arp", arp));

    // Deterministic garbage (xorshift), so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    out.push(("random bytes", garbage));
    out
}

fn counter(counters: &Counters, program: &str, verdict: Verdict) -> Counter {
    counters
        .read()
        .into_iter()
        .find(|(p, v, _)| *p == program && *v == verdict)
        .map(|(_, _, c)| c)
        .expect("counter exists")
}

fn pass_counter(counters: &Counters, program: &str) -> Counter {
    counter(counters, program, Verdict::PASS)
}

#[test]
/// With empty maps the underlay programs pass every frame unchanged (nothing is VXLAN
/// for this host, no overlay subnet exists), and the endpoint program drops every frame:
/// no veth has a port entry (fail closed).
fn with_empty_maps_underlay_passes_and_endpoint_drops_every_frame_unchanged() {
    let bed = Testbed::new(
        "progrun",
        TestbedConfig {
            hosts: 1,
            ..Default::default()
        },
    )
    .expect("testbed with one host (for its bpffs)");
    let pins = PinDirs::new(bed.host(0).bpf_dir());
    let mut ebpf = dataplane::load(&pins).expect("object loads and passes the verifier");
    let counters = Counters::open(&pins).expect("counters maps are pinned");
    let frames = frames();
    let total_bytes: u64 = frames.iter().map(|(_, f)| f.len() as u64).sum();

    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    let xdp_fd = xdp.fd().expect("loaded");
    for (what, frame) in &frames {
        let out = test_run(xdp_fd.as_fd(), frame, 1).expect("test run");
        assert_eq!(out.retval, XDP_PASS, "xdp_underlay verdict for {what}");
        assert_eq!(
            &out.data_out, frame,
            "xdp_underlay changed the {what} frame"
        );
    }
    let xdp_pass = pass_counter(&counters, names::XDP_UNDERLAY);
    assert_eq!(
        xdp_pass,
        Counter {
            packets: frames.len() as u64,
            bytes: total_bytes
        },
        "xdp_underlay pass counter"
    );

    let tc: &mut SchedClassifier = ebpf
        .program_mut(names::TC_ENDPOINT_INGRESS)
        .expect("tc program")
        .try_into()
        .expect("tc type");
    let tc_fd = tc.fd().expect("loaded");
    // The kernel's skb test runner refuses a bare Ethernet header (EINVAL); such a frame
    // never reaches tc on a real veth either.
    let skb_frames: Vec<_> = frames.iter().filter(|(_, f)| f.len() > 14).collect();
    let skb_bytes: u64 = skb_frames.iter().map(|(_, f)| f.len() as u64).sum();
    for (what, frame) in &skb_frames {
        let out =
            test_run(tc_fd.as_fd(), frame, 1).unwrap_or_else(|e| panic!("test run on {what}: {e}"));
        assert_eq!(
            out.retval, TC_ACT_SHOT,
            "tc_endpoint_ingress verdict for {what}: no port entry"
        );
        assert_eq!(
            &out.data_out, frame,
            "tc_endpoint_ingress changed the {what} frame"
        );
    }
    let no_port = counter(&counters, names::TC_ENDPOINT_INGRESS, Verdict::NO_PORT);
    assert_eq!(
        (no_port.packets, no_port.bytes),
        (skb_frames.len() as u64, skb_bytes),
        "tc_endpoint_ingress no_port counter"
    );

    // With no underlay address configured, no VXLAN is this host's: all passes.
    let tc: &mut SchedClassifier = ebpf
        .program_mut(names::TC_UNDERLAY_INGRESS)
        .expect("tc underlay program")
        .try_into()
        .expect("tc type");
    let tc_fd = tc.fd().expect("loaded");
    for (what, frame) in &skb_frames {
        let out =
            test_run(tc_fd.as_fd(), frame, 1).unwrap_or_else(|e| panic!("test run on {what}: {e}"));
        assert_eq!(
            out.retval, TC_ACT_OK,
            "tc_underlay_ingress verdict for {what}"
        );
        assert_eq!(
            &out.data_out, frame,
            "tc_underlay_ingress changed the {what} frame"
        );
    }
    let tc_pass = pass_counter(&counters, names::TC_UNDERLAY_INGRESS);
    assert_eq!(
        (tc_pass.packets, tc_pass.bytes),
        (skb_frames.len() as u64, skb_bytes),
        "tc_underlay_ingress pass counter"
    );

    // Every other verdict stayed at zero: nothing else was dropped or redirected.
    for (program, verdict, counter) in counters.read() {
        let expected = match program {
            names::TC_ENDPOINT_INGRESS => Verdict::NO_PORT,
            _ => Verdict::PASS,
        };
        if verdict != expected {
            assert_eq!(counter, Counter::default(), "{program} {}", verdict.name());
        }
    }

    // A second load adopts the pinned maps: the counts continue rather than reset.
    drop(ebpf);
    let mut again = dataplane::load(&pins).expect("second load adopts the pins");
    let xdp: &mut Xdp = again
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    test_run(xdp.fd().expect("loaded").as_fd(), &frames[0].1, 1).expect("test run");
    assert_eq!(
        pass_counter(&counters, names::XDP_UNDERLAY).packets,
        frames.len() as u64 + 1,
        "counters continue across loads"
    );
}

// ---------------------------------------------------------------------------------------
// The overlay's programs on crafted frames.
//
// The skb test runner hands the program a packet "received" on the loopback device of
// the calling thread's network namespace: `ifindex` 1. So the test enters a testbed
// host's namespace (where it controls forwarding, neighbours and routes for the FIB
// lookups) and makes ifindex 1 an endpoint's port. Redirects are not carried out by the
// test runner: the verdict says where the packet would go, `data_out` what it became.

/// Network A (VNI 4096, 10.0.1.0/24) and B (VNI 4097, 10.0.2.0/24).
const VNI_A: u32 = 4096;
const VNI_B: u32 = 4097;
/// The endpoint behind the "port" ifindex 1, on network A.
const ME: [u8; 4] = [10, 0, 1, 2];
/// A local endpoint of A, on ifindex 7; a remote one on host 10.200.0.12.
const LOCAL: [u8; 4] = [10, 0, 1, 3];
const LOCAL_IFINDEX: u32 = 7;
const REMOTE: [u8; 4] = [10, 0, 1, 4];
const REMOTE_HOST: [u8; 4] = [10, 200, 0, 12];
/// A local endpoint of B, on ifindex 8.
const B_LOCAL: [u8; 4] = [10, 0, 2, 3];
/// Network B's endpoint on `REMOTE_HOST`.
const B_REMOTE: [u8; 4] = [10, 0, 2, 4];
/// An external VTEP for 10.0.1.128/25 of A.
const VTEP_HOST: [u8; 4] = [10, 200, 0, 50];
const VTEP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x50];

fn underlay_ifindex(host: &Host) -> u32 {
    host.run("cat", ["/sys/class/net/eth0/ifindex"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn underlay_mac(host: &Host) -> [u8; 6] {
    let text = host.run("cat", ["/sys/class/net/eth0/address"]).unwrap();
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Programs the maps as a reconciler would for the constants above.
fn program_overlay(pins: &PinDirs, host: &Host) {
    let mut maps = OverlayMaps::open(pins).expect("overlay maps");
    maps.set_underlay(UnderlayValue {
        ifindex: underlay_ifindex(host),
        ip: host.underlay_ip().octets(),
        mac: underlay_mac(host),
        _pad: [0; 2],
    })
    .unwrap();
    for (vni, subnet) in [(VNI_A, [10, 0, 1, 0]), (VNI_B, [10, 0, 2, 0])] {
        let gateway = [subnet[0], subnet[1], subnet[2], 1];
        maps.put_network(
            vni,
            NetworkValue {
                subnet,
                prefix_len: 24,
                gateway,
            },
        )
        .unwrap();
        maps.put_subnet(SubnetKey::new(subnet, 24), vni).unwrap();
    }
    maps.put_port(1, PortValue { vni: VNI_A, ip: ME }).unwrap();
    for (vni, ip, host_ip, ifindex) in [
        (VNI_A, ME, host.underlay_ip().octets(), 1),
        (VNI_A, LOCAL, host.underlay_ip().octets(), LOCAL_IFINDEX),
        (VNI_A, REMOTE, REMOTE_HOST, 0),
        (VNI_B, B_LOCAL, host.underlay_ip().octets(), 8),
        (VNI_B, B_REMOTE, REMOTE_HOST, 0),
    ] {
        maps.put_endpoint(EndpointKey { vni, ip }, EndpointValue { host_ip, ifindex })
            .unwrap();
    }
    maps.put_vtep(
        VtepKey::new(VNI_A, [10, 0, 1, 128], 25),
        VtepValue {
            underlay_ip: VTEP_HOST,
            mac: VTEP_MAC,
            _pad: [0; 2],
        },
    )
    .unwrap();
}

/// An Ethernet + IPv4 + UDP frame.
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, 7000)
        .write(&mut frame, b"overlay payload bytes")
        .expect("udp frame");
    frame
}

/// What an endpoint sends to `dst`: from its own MAC to the gateway's.
fn from_me(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    udp_frame(endpoint_mac(src), GATEWAY_MAC, src, dst, 5000)
}

/// An ARP packet for IPv4 over Ethernet, written out byte by byte.
fn arp_frame(
    eth_dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    // Padded to Ethernet's minimum, as on a wire.
    f.resize(60, 0);
    f
}

/// VXLAN from `REMOTE_HOST` to `to`: outer Ethernet/IPv4/UDP 4789, then `vxlan` (the
/// 8-byte header, or whatever a test puts there) and `inner`.
fn vxlan_frame(to: [u8; 4], vxlan: &[u8], inner: &[u8]) -> Vec<u8> {
    vxlan_frame_from(REMOTE_HOST, to, vxlan, inner)
}

/// VXLAN as [`vxlan_frame`], from the underlay address `from`.
fn vxlan_frame_from(from: [u8; 4], to: [u8; 4], vxlan: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan.to_vec();
    payload.extend_from_slice(inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x12], [0x02, 0, 0, 0, 0, 0x11])
        .ipv4(from, to, 64)
        .udp(50000, 4789)
        .write(&mut frame, &payload)
        .expect("vxlan frame");
    frame
}

/// Sets the outer IPv4 header's fragment field and fixes its checksum.
fn with_frag(mut frame: Vec<u8>, frag: u16) -> Vec<u8> {
    frame[20..22].copy_from_slice(&frag.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let header: [u8; 20] = frame[14..34].try_into().unwrap();
    frame[24..26].copy_from_slice(&ipv4_checksum(&header).to_be_bytes());
    frame
}

/// Inserts 4 bytes of IPv4 options (NOP NOP NOP EOL) into the outer header.
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&frame[34..]);
    out
}

/// The parts of an encapsulated frame, checked against what `inner` (the frame the
/// endpoint sent) must become. Returns the outer UDP source port.
fn check_encap(
    out: &[u8],
    inner: &[u8],
    outer_dst: [u8; 4],
    outer_src: [u8; 4],
    inner_dst_mac: [u8; 6],
) -> u16 {
    assert_eq!(out.len(), inner.len() + 50, "50 bytes pushed");
    let ip: [u8; 20] = out[14..34].try_into().unwrap();
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        out.len() - 14,
        "outer total length"
    );
    assert_eq!(ip[9], 17, "outer protocol UDP");
    assert_eq!(&ip[12..16], &outer_src);
    assert_eq!(&ip[16..20], &outer_dst);
    assert_eq!(ipv4_checksum(&ip), 0, "outer IPv4 checksum verifies");
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(
        sport >= 49152,
        "UDP source port {sport} in the dynamic range"
    );
    assert_eq!(&out[36..38], &4789u16.to_be_bytes());
    assert_eq!(
        u16::from_be_bytes([out[38], out[39]]) as usize,
        out.len() - 34,
        "UDP length"
    );
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum 0");
    assert_eq!(&out[42..50], &vxlan_header(VNI_A));
    assert_eq!(&out[50..56], &inner_dst_mac, "inner destination MAC");
    assert_eq!(&out[56..62], &endpoint_mac(ME), "inner source MAC");
    assert_eq!(&out[62..64], &[0x08, 0x00]);
    assert_eq!(
        &out[64..],
        &inner[14..],
        "the endpoint's IPv4 packet, unchanged"
    );
    sport
}

#[test]
fn endpoint_program_answers_arp_forwards_encapsulates_and_isolates() {
    let bed = Testbed::new("progrun-endpoint", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let _netns = InNetns::enter(host);
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_overlay(&pins, host);
    let counters = Counters::open(&pins).unwrap();
    let fd = classifier_fd(&mut ebpf, names::TC_ENDPOINT_INGRESS);
    let run = |what, frame: &[u8], action, verdict| {
        expect(
            &counters,
            names::TC_ENDPOINT_INGRESS,
            fd,
            what,
            frame,
            action,
            verdict,
        )
    };
    let my_mac = endpoint_mac(ME);

    // ARP: "who has 10.0.1.3? tell 10.0.1.2" is answered with the gateway's MAC and sent
    // back out of the port.
    let request = arp_frame([0xff; 6], 1, my_mac, ME, [0; 6], LOCAL);
    let reply = run("arp request", &request, TC_ACT_REDIRECT, Verdict::ARP_REPLY);
    let mut expected = Vec::new();
    expected.extend_from_slice(&my_mac); // to the asker
    expected.extend_from_slice(&GATEWAY_MAC); // from the gateway
    expected.extend_from_slice(&[0x08, 0x06, 0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02]);
    expected.extend_from_slice(&GATEWAY_MAC); // sender: 10.0.1.3 is at the gateway MAC
    expected.extend_from_slice(&LOCAL);
    expected.extend_from_slice(&my_mac); // target: the asker
    expected.extend_from_slice(&ME);
    expected.resize(60, 0); // the request's padding, untouched
    assert_eq!(reply, expected, "ARP reply bytes");
    // The gateway and unknown addresses of the network resolve the same way.
    for tpa in [[10, 0, 1, 1], [10, 0, 1, 99]] {
        run(
            "arp for another address",
            &arp_frame([0xff; 6], 1, my_mac, ME, [0; 6], tpa),
            TC_ACT_REDIRECT,
            Verdict::ARP_REPLY,
        );
    }
    // Its own address (gratuitous, duplicate address detection), outside the network,
    // replies it did not send about itself, and other operations: dropped.
    for (what, frame) in [
        (
            "gratuitous arp",
            arp_frame([0xff; 6], 1, my_mac, ME, [0; 6], ME),
        ),
        (
            "duplicate address probe",
            arp_frame([0xff; 6], 1, my_mac, [0; 4], [0; 6], ME),
        ),
        (
            "arp outside the network",
            arp_frame([0xff; 6], 1, my_mac, ME, [0; 6], [10, 0, 2, 3]),
        ),
        (
            "spoofed arp reply",
            arp_frame(GATEWAY_MAC, 2, my_mac, LOCAL, GATEWAY_MAC, [10, 0, 1, 1]),
        ),
        (
            "rarp-style op",
            arp_frame([0xff; 6], 3, my_mac, ME, [0; 6], LOCAL),
        ),
    ] {
        run(what, &frame, TC_ACT_SHOT, Verdict::DROP);
    }
    // Its answer to the host asking for it goes to the host.
    let answer = arp_frame(GATEWAY_MAC, 2, my_mac, ME, GATEWAY_MAC, [10, 0, 1, 1]);
    let out = run("arp reply about itself", &answer, TC_ACT_OK, Verdict::PASS);
    assert_eq!(out, answer);

    // A local endpoint: new MACs, redirected; nothing else changes.
    let frame = from_me(ME, LOCAL);
    let out = run(
        "to a local endpoint",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::LOCAL,
    );
    assert_eq!(&out[..6], &endpoint_mac(LOCAL));
    assert_eq!(&out[6..12], &GATEWAY_MAC);
    assert_eq!(&out[12..], &frame[12..]);

    // The host: the gateway, and anything outside every overlay network.
    for (what, dst) in [
        ("to the gateway", [10, 0, 1, 1]),
        ("to the internet", [1, 1, 1, 1]),
    ] {
        let frame = from_me(ME, dst);
        assert_eq!(run(what, &frame, TC_ACT_OK, Verdict::TO_HOST), frame);
    }
    // Dropped: a spoofed source, another network (isolation, before any host routing),
    // an address of the network nobody has, IPv6, a bad header.
    run(
        "spoofed source",
        &from_me([10, 0, 1, 66], LOCAL),
        TC_ACT_SHOT,
        Verdict::SPOOFED,
    );
    run(
        "to network B",
        &from_me(ME, B_LOCAL),
        TC_ACT_SHOT,
        Verdict::OTHER_NETWORK,
    );
    run(
        "to network B's gateway",
        &from_me(ME, [10, 0, 2, 1]),
        TC_ACT_SHOT,
        Verdict::OTHER_NETWORK,
    );
    run(
        "to nobody",
        &from_me(ME, [10, 0, 1, 77]),
        TC_ACT_SHOT,
        Verdict::UNKNOWN_ENDPOINT,
    );
    let mut ipv6 = Vec::new();
    PacketBuilder::ethernet2(my_mac, GATEWAY_MAC)
        .ipv6([0xfe; 16], [0xfd; 16], 64)
        .udp(1, 2)
        .write(&mut ipv6, b"x")
        .unwrap();
    run("ipv6", &ipv6, TC_ACT_SHOT, Verdict::DROP);
    // (The skb test runner refuses truncated IPv4 itself, EINVAL.)
    let mut bad_version = from_me(ME, LOCAL);
    bad_version[14] = 0x65;
    run(
        "ipv4 ethertype, version 6",
        &bad_version,
        TC_ACT_SHOT,
        Verdict::MALFORMED,
    );

    // A remote endpoint, forwarding off on the underlay: `bpf_fib_lookup` refuses
    // (FWD_DISABLED), `bpf_redirect_neigh` routes it; outer MACs are the kernel's to fill.
    let frame = from_me(ME, REMOTE);
    let out = run(
        "to a remote endpoint",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::ENCAP,
    );
    let underlay_ip = host.underlay_ip().octets();
    let sport = check_encap(&out, &frame, REMOTE_HOST, underlay_ip, endpoint_mac(REMOTE));
    let again = run(
        "the same flow again",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::ENCAP,
    );
    assert_eq!(
        check_encap(
            &again,
            &frame,
            REMOTE_HOST,
            underlay_ip,
            endpoint_mac(REMOTE)
        ),
        sport,
        "one flow, one source port"
    );
    // An external VTEP's prefix: to the VTEP, with its MAC inside.
    let frame = from_me(ME, [10, 0, 1, 200]);
    let out = run(
        "to an external VTEP",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::ENCAP,
    );
    check_encap(&out, &frame, VTEP_HOST, underlay_ip, VTEP_MAC);

    // Forwarding on: the FIB answers. A resolved next hop gives the outer MACs.
    host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])
        .unwrap();
    let neighbour_mac = [0x02, 0, 0, 0, 0, 0x12];
    host.run(
        "ip",
        [
            "neigh",
            "replace",
            "10.200.0.12",
            "lladdr",
            "02:00:00:00:00:12",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let frame = from_me(ME, REMOTE);
    let out = run(
        "remote, next hop resolved",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::ENCAP,
    );
    check_encap(&out, &frame, REMOTE_HOST, underlay_ip, endpoint_mac(REMOTE));
    assert_eq!(
        &out[..6],
        &neighbour_mac,
        "outer destination MAC from the FIB"
    );
    assert_eq!(
        &out[6..12],
        &underlay_mac(host),
        "outer source MAC: the underlay's"
    );
    // Too big for the underlay once encapsulated (1500-byte IPv4 + 50 > MTU 1500): with
    // DF, the endpoint gets ICMP "fragmentation needed" from its gateway, MTU 1450,
    // quoting its packet's header; without DF, only dropped.
    // A 1500-byte IPv4 packet from the endpoint: UDP (17), or another `protocol` whose
    // first payload byte is `first` (for ICMP, the type), DF as asked.
    let big_with = |df: bool, protocol: u8, first: u8| {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(endpoint_mac(ME), GATEWAY_MAC)
            .ipv4(ME, REMOTE, 64)
            .udp(5000, 7000)
            .write(&mut frame, &[0x5a; 1472])
            .unwrap();
        if df {
            frame[20] |= 0x40;
        } else {
            frame[20] &= !0x40;
        }
        if protocol != 17 {
            frame[23] = protocol;
            frame[34] = first;
        }
        frame[24..26].copy_from_slice(&[0, 0]);
        let header: [u8; 20] = frame[14..34].try_into().unwrap();
        frame[24..26].copy_from_slice(&ipv4_checksum(&header).to_be_bytes());
        frame
    };
    let big = |df: bool| big_with(df, 17, 0);
    let icmp_reply = |frame: &[u8]| {
        let mut expected = endpoint_mac(ME).to_vec();
        expected.extend_from_slice(&GATEWAY_MAC);
        expected.extend_from_slice(&[0x08, 0x00]);
        expected.extend_from_slice(&icmp_frag_needed(
            [10, 0, 1, 1],
            ME,
            1450,
            &frame[14..14 + ICMP_QUOTE_LEN].try_into().unwrap(),
        ));
        expected
    };
    // An echo request (ping -M do) learns the MTU too; an ICMP error gets no error.
    let echo = big_with(true, 1, 8);
    let out = run(
        "too big echo request, DF set",
        &echo,
        TC_ACT_REDIRECT,
        Verdict::TOO_BIG,
    );
    assert_eq!(out, icmp_reply(&echo), "ICMP about an echo request");
    run(
        "too big ICMP error, DF set",
        &big_with(true, 1, 3),
        TC_ACT_SHOT,
        Verdict::TOO_BIG,
    );
    let frame = big(true);
    let out = run("too big, DF set", &frame, TC_ACT_REDIRECT, Verdict::TOO_BIG);
    assert_eq!(
        out,
        icmp_reply(&frame),
        "ICMP fragmentation needed back to the endpoint"
    );
    run("too big, no DF", &big(false), TC_ACT_SHOT, Verdict::TOO_BIG);
    // An unresolved next hop: `bpf_redirect_neigh` resolves it.
    let mut maps = OverlayMaps::open(&pins).unwrap();
    let unresolved = [10, 0, 1, 5];
    maps.put_endpoint(
        EndpointKey {
            vni: VNI_A,
            ip: unresolved,
        },
        EndpointValue {
            host_ip: [10, 200, 0, 99],
            ifindex: 0,
        },
    )
    .unwrap();
    let frame = from_me(ME, unresolved);
    let out = run(
        "remote, next hop unresolved",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::ENCAP,
    );
    check_encap(
        &out,
        &frame,
        [10, 200, 0, 99],
        underlay_ip,
        endpoint_mac(unresolved),
    );
    // No route to the remote host: dropped.
    maps.put_endpoint(
        EndpointKey {
            vni: VNI_A,
            ip: unresolved,
        },
        EndpointValue {
            host_ip: [172, 31, 9, 9],
            ifindex: 0,
        },
    )
    .unwrap();
    run(
        "remote, no route",
        &from_me(ME, unresolved),
        TC_ACT_SHOT,
        Verdict::NO_ROUTE,
    );

    // No port entry for the veth (fail closed): everything dropped, untouched.
    assert!(maps.remove_port(1).unwrap());
    for (what, frame) in [
        ("not a port", from_me([10, 9, 9, 9], LOCAL)),
        ("not a port, its former address", from_me(ME, LOCAL)),
        ("not a port, to the host", from_me(ME, [1, 1, 1, 1])),
        ("arp, not a port", request.clone()),
        ("ipv6, not a port", ipv6.clone()),
    ] {
        assert_eq!(
            run(what, &frame, TC_ACT_SHOT, Verdict::NO_PORT),
            frame,
            "{what} untouched"
        );
    }
}

/// The guard's maps as an agent would fill them for a cluster of this host and
/// `REMOTE_HOST` (gossip on 7946, this agent's metrics on TCP 9464).
fn program_guard(pins: &PinDirs, host: &Host) {
    let mut maps = OverlayMaps::open(pins).expect("overlay maps");
    for ip in [host.underlay_ip().octets(), REMOTE_HOST, VTEP_HOST] {
        maps.put_guarded_host(ip).unwrap();
    }
    for port in [
        GuardedPort::new(IPPROTO_UDP, 4789),
        GuardedPort::new(IPPROTO_UDP, GOSSIP_PORT),
        GuardedPort::new(IPPROTO_TCP, GOSSIP_PORT),
        GuardedPort::new(IPPROTO_TCP, METRICS_PORT),
    ] {
        maps.put_guarded_port(port).unwrap();
    }
}

const GOSSIP_PORT: u16 = 7946;
const METRICS_PORT: u16 = 9464;

/// What the endpoint sends to `dst`: UDP or TCP to `port`, or an ICMP echo request.
fn from_me_to(dst: [u8; 4], protocol: u8, port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    let builder = PacketBuilder::ethernet2(endpoint_mac(ME), GATEWAY_MAC).ipv4(ME, dst, 64);
    match protocol {
        IPPROTO_UDP => builder.udp(5000, port).write(&mut frame, b"hello"),
        IPPROTO_TCP => builder
            .tcp(40000, port, 1, 1000)
            .syn()
            .write(&mut frame, b""),
        _ => builder.icmpv4_echo_request(1, 1).write(&mut frame, b"ping"),
    }
    .expect("frame");
    frame
}

/// A later fragment (offset 8 bytes, no ports visible) of UDP from the endpoint to `dst`.
fn later_fragment(dst: [u8; 4]) -> Vec<u8> {
    let mut frame = from_me_to(dst, IPPROTO_UDP, 53);
    frame[20..22].copy_from_slice(&1u16.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let header: [u8; 20] = frame[14..34].try_into().unwrap();
    frame[24..26].copy_from_slice(&ipv4_checksum(&header).to_be_bytes());
    frame
}

#[test]
fn endpoint_program_keeps_workloads_off_the_cluster_ports() {
    let bed = Testbed::new("progrun-guard", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let _netns = InNetns::enter(host);
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_overlay(&pins, host);
    program_guard(&pins, host);
    let counters = Counters::open(&pins).unwrap();
    let fd = classifier_fd(&mut ebpf, names::TC_ENDPOINT_INGRESS);
    let run = |what: &str, frame: &[u8], action, verdict| {
        expect(
            &counters,
            names::TC_ENDPOINT_INGRESS,
            fd,
            what,
            frame,
            action,
            verdict,
        )
    };
    // Forwarding on, and a prefix routed via the other host: the FIB tells local from
    // forwarded destinations.
    host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])
        .unwrap();
    host.run(
        "ip",
        ["route", "replace", "198.51.100.0/24", "via", "10.200.0.12"],
    )
    .unwrap();
    let gateway = [10, 0, 1, 1];
    let routed = [198, 51, 100, 7];
    let guarded = [
        ("udp 4789", IPPROTO_UDP, 4789),
        ("udp gossip", IPPROTO_UDP, GOSSIP_PORT),
        ("tcp gossip", IPPROTO_TCP, GOSSIP_PORT),
        ("tcp metrics", IPPROTO_TCP, METRICS_PORT),
    ];
    let open = [
        ("udp 53", IPPROTO_UDP, 53),
        ("tcp 80", IPPROTO_TCP, 80),
        ("udp on the metrics port", IPPROTO_UDP, METRICS_PORT),
        ("tcp 4789", IPPROTO_TCP, 4789),
        ("icmp echo", 1, 0),
    ];
    // Guarded destinations: the gateway, a GUARDED_HOSTS address (the other host; the
    // external VTEP), this host's own addresses (local in the FIB, guarded or not).
    for (to, dst) in [
        ("the gateway", gateway),
        ("the other host", REMOTE_HOST),
        ("the external vtep", VTEP_HOST),
        ("this host's underlay address", host.underlay_ip().octets()),
        ("this host's loopback", [127, 0, 0, 1]),
    ] {
        for (what, protocol, port) in guarded {
            let frame = from_me_to(dst, protocol, port);
            let out = run(
                &format!("{what} to {to}"),
                &frame,
                TC_ACT_SHOT,
                Verdict::CLUSTER_PORT,
            );
            assert_eq!(out, frame, "{what} to {to} untouched");
        }
        for (what, protocol, port) in open {
            let frame = from_me_to(dst, protocol, port);
            let out = run(
                &format!("{what} to {to}"),
                &frame,
                TC_ACT_OK,
                Verdict::TO_HOST,
            );
            assert_eq!(out, frame, "{what} to {to} untouched");
        }
    }
    // Not guarded: a destination the host forwards, not a cluster host. Every port goes.
    for (to, dst) in [
        ("a routed address", routed),
        ("an underlay neighbour", [10, 200, 0, 13]),
    ] {
        for (what, protocol, port) in guarded.iter().chain(&open) {
            run(
                &format!("{what} to {to}"),
                &from_me_to(dst, *protocol, *port),
                TC_ACT_OK,
                Verdict::TO_HOST,
            );
        }
    }
    // A later fragment has no ports to check: to a guarded host it may not pass.
    for (to, dst) in [("the other host", REMOTE_HOST), ("the gateway", gateway)] {
        run(
            &format!("later udp fragment to {to}"),
            &later_fragment(dst),
            TC_ACT_SHOT,
            Verdict::CLUSTER_PORT,
        );
    }
    run(
        "later udp fragment to a routed address",
        &later_fragment(routed),
        TC_ACT_OK,
        Verdict::TO_HOST,
    );
    // Forwarding off: the FIB forwards nothing, so every destination counts as this
    // host's (fail closed).
    host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=0"])
        .unwrap();
    run(
        "udp 4789 to a routed address, forwarding off",
        &from_me_to(routed, IPPROTO_UDP, 4789),
        TC_ACT_SHOT,
        Verdict::CLUSTER_PORT,
    );
    run(
        "udp 53 to a routed address, forwarding off",
        &from_me_to(routed, IPPROTO_UDP, 53),
        TC_ACT_OK,
        Verdict::TO_HOST,
    );
}

/// An address inside the external VTEP's prefix (10.0.1.128/25 on VNI A).
const VTEP_INNER: [u8; 4] = [10, 0, 1, 200];

/// VXLAN for the local endpoint `LOCAL` whose outer source may not send for its inner
/// source: (what, outer source, VNI, inner frame).
fn spoof_cases() -> Vec<(&'static str, [u8; 4], u32, Vec<u8>)> {
    let inner_from =
        |src: [u8; 4]| udp_frame(endpoint_mac(src), endpoint_mac(LOCAL), src, LOCAL, 6000);
    vec![
        (
            "a remote endpoint's traffic from the vtep's address",
            VTEP_HOST,
            VNI_A,
            inner_from(REMOTE),
        ),
        (
            "a remote endpoint's traffic from an unknown host",
            [10, 200, 0, 99],
            VNI_A,
            inner_from(REMOTE),
        ),
        (
            "a local endpoint's address from another host",
            REMOTE_HOST,
            VNI_A,
            inner_from(ME),
        ),
        (
            "an unknown inner source",
            REMOTE_HOST,
            VNI_A,
            inner_from([10, 0, 1, 77]),
        ),
        (
            "the vtep's prefix from a skein host",
            REMOTE_HOST,
            VNI_A,
            inner_from(VTEP_INNER),
        ),
        (
            "network B's endpoint as source under A's VNI",
            REMOTE_HOST,
            VNI_A,
            inner_from(B_REMOTE),
        ),
    ]
}

#[test]
fn underlay_program_decapsulates_for_local_endpoints_only_and_drops_malformed_vxlan() {
    let bed = Testbed::new("progrun-underlay", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_overlay(&pins, host);
    let counters = Counters::open(&pins).unwrap();
    let fd = classifier_fd(&mut ebpf, names::TC_UNDERLAY_INGRESS);
    let run = |what, frame: &[u8], action, verdict| {
        expect(
            &counters,
            names::TC_UNDERLAY_INGRESS,
            fd,
            what,
            frame,
            action,
            verdict,
        )
    };
    let me = host.underlay_ip().octets();
    let inner_to = |vni_dst: [u8; 4]| {
        udp_frame(
            endpoint_mac(REMOTE),
            endpoint_mac(vni_dst),
            REMOTE,
            vni_dst,
            6000,
        )
    };

    // For a local endpoint of the VNI: outer headers and inner Ethernet gone, the
    // Ethernet header rewritten, redirected.
    let inner = inner_to(LOCAL);
    let frame = vxlan_frame(me, &vxlan_header(VNI_A), &inner);
    let out = run(
        "vxlan for a local endpoint",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::DECAP,
    );
    let mut expected = endpoint_mac(LOCAL).to_vec();
    expected.extend_from_slice(&GATEWAY_MAC);
    expected.extend_from_slice(&[0x08, 0x00]);
    expected.extend_from_slice(&inner[14..]);
    assert_eq!(out, expected, "decapsulated frame");
    let inner_b = udp_frame(
        endpoint_mac(B_REMOTE),
        endpoint_mac(B_LOCAL),
        B_REMOTE,
        B_LOCAL,
        6000,
    );
    run(
        "vxlan for network B's endpoint",
        &vxlan_frame(me, &vxlan_header(VNI_B), &inner_b),
        TC_ACT_REDIRECT,
        Verdict::DECAP,
    );

    // Never to an endpoint of another VNI, nor to a remote or unknown one.
    for (what, vni, dst) in [
        ("A's endpoint under B's VNI", VNI_B, LOCAL),
        ("B's endpoint under A's VNI", VNI_A, B_LOCAL),
        ("a remote endpoint", VNI_A, REMOTE),
        ("an unknown endpoint", VNI_A, [10, 0, 1, 77]),
    ] {
        let frame = vxlan_frame(me, &vxlan_header(vni), &inner_to(dst));
        run(what, &frame, TC_ACT_SHOT, Verdict::UNKNOWN_ENDPOINT);
    }
    // The outer source must be the host of the inner source's endpoint, or the external
    // VTEP registered for its prefix: anything else is dropped as spoofed.
    for (what, outer, vni, inner) in spoof_cases() {
        let frame = vxlan_frame_from(outer, me, &vxlan_header(vni), &inner);
        run(what, &frame, TC_ACT_SHOT, Verdict::SPOOFED);
    }
    let from_vtep = udp_frame(VTEP_MAC, endpoint_mac(LOCAL), VTEP_INNER, LOCAL, 6000);
    run(
        "vxlan from the external vtep for its prefix",
        &vxlan_frame_from(VTEP_HOST, me, &vxlan_header(VNI_A), &from_vtep),
        TC_ACT_REDIRECT,
        Verdict::DECAP,
    );

    // A VNI this host does not serve: to the host stack, untouched.
    let frame = vxlan_frame(me, &vxlan_header(5000), &inner);
    assert_eq!(
        run("unknown vni", &frame, TC_ACT_OK, Verdict::UNKNOWN_VNI),
        frame
    );
    // Inner frames that are not IPv4: dropped.
    let arp = arp_frame([0xff; 6], 1, endpoint_mac(REMOTE), REMOTE, [0; 6], LOCAL);
    run(
        "arp inside vxlan",
        &vxlan_frame(me, &vxlan_header(VNI_A), &arp),
        TC_ACT_SHOT,
        Verdict::DROP,
    );

    // Malformed VXLAN: dropped and counted.
    let good = vxlan_frame(me, &vxlan_header(VNI_A), &inner);
    let mut garbage = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        garbage.push(state as u8);
    }
    garbage[0] &= !0x08; // no I flag
    for (what, frame) in [
        (
            "truncated vxlan header",
            vxlan_frame(me, &[0x08, 0, 0, 0], &[]),
        ),
        (
            "vxlan header only",
            vxlan_frame(me, &vxlan_header(VNI_A), &[]),
        ),
        (
            "truncated inner frame",
            vxlan_frame(me, &vxlan_header(VNI_A), &inner[..20]),
        ),
        (
            "garbage after the udp header",
            vxlan_frame(me, &garbage, &[]),
        ),
        (
            "wrong flags",
            vxlan_frame(me, &[0x00, 0, 0, 0, 0, 0x10, 0, 0], &inner),
        ),
        ("ip options", with_ip_options(&good)),
        ("first fragment", with_frag(good.clone(), 0x2000)),
    ] {
        run(what, &frame, TC_ACT_SHOT, Verdict::MALFORMED);
    }

    // Not this host's VXLAN: passed untouched.
    let later_fragment = with_frag(good.clone(), 0x0010);
    let mut other_port = good.clone();
    other_port[36..38].copy_from_slice(&4790u16.to_be_bytes());
    let mut tcp = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(REMOTE_HOST, me, 64)
        .tcp(40000, 4789, 1, 1000)
        .write(&mut tcp, b"")
        .unwrap();
    for (what, frame) in [
        (
            "vxlan for another address",
            vxlan_frame([10, 200, 0, 13], &vxlan_header(VNI_A), &inner),
        ),
        ("a later fragment", later_fragment),
        ("udp to another port", other_port),
        ("tcp", tcp),
    ] {
        assert_eq!(
            run(what, &frame, TC_ACT_OK, Verdict::PASS),
            frame,
            "{what} untouched"
        );
    }

    // Plain IPv4 routed here into an overlay subnet, around VXLAN: dropped (this stage
    // sees it where XDP does not run); the host's other forwarding passes.
    for (what, frame) in routed_into_overlay() {
        assert_eq!(
            run(what, &frame, TC_ACT_SHOT, Verdict::INTO_OVERLAY),
            frame,
            "{what} untouched"
        );
    }
    for (what, frame) in routed_elsewhere(me) {
        assert_eq!(
            run(what, &frame, TC_ACT_OK, Verdict::PASS),
            frame,
            "{what} untouched"
        );
    }
}

/// Plain (not VXLAN) IPv4 from the underlay addressed into an overlay subnet: what a
/// host with `ip route add <overlay subnet> via <host>` sends.
fn routed_into_overlay() -> Vec<(&'static str, Vec<u8>)> {
    let from = [10, 200, 0, 2];
    let (mac_a, mac_b) = ([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x02]);
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(mac_b, mac_a)
        .ipv4(from, LOCAL, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut ping, b"ping")
        .unwrap();
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(mac_b, mac_a)
        .ipv4(from, ME, 64)
        .tcp(40000, 80, 1, 1000)
        .syn()
        .write(&mut syn, b"")
        .unwrap();
    let mut to_vxlan_port = udp_frame(mac_b, mac_a, from, B_LOCAL, 5000);
    to_vxlan_port[36..38].copy_from_slice(&4789u16.to_be_bytes());
    vec![
        ("ping to a local endpoint", ping),
        ("tcp syn to a local endpoint", syn),
        (
            "udp to network B's endpoint",
            udp_frame(mac_b, mac_a, from, B_LOCAL, 5000),
        ),
        (
            "udp to nobody in a subnet",
            udp_frame(mac_b, mac_a, from, [10, 0, 1, 77], 5000),
        ),
        ("udp 4789 to an endpoint", to_vxlan_port),
        (
            "to network B's gateway",
            udp_frame(mac_b, mac_a, from, [10, 0, 2, 1], 5000),
        ),
    ]
}

/// Plain IPv4 from the underlay to anywhere but an overlay subnet: the host's business.
fn routed_elsewhere(me: [u8; 4]) -> Vec<(&'static str, Vec<u8>)> {
    let from = [10, 200, 0, 2];
    let (mac_a, mac_b) = ([0x02, 0, 0, 0, 0, 0x11], [0x02, 0, 0, 0, 0, 0x02]);
    vec![
        ("udp to the host", udp_frame(mac_b, mac_a, from, me, 5000)),
        (
            "udp routed on",
            udp_frame(mac_b, mac_a, from, [198, 51, 100, 7], 5000),
        ),
        (
            "udp next to a subnet",
            udp_frame(mac_b, mac_a, from, [10, 0, 5, 1], 5000),
        ),
    ]
}

#[test]
fn underlay_xdp_decapsulates_for_local_endpoints_only_and_marks_what_it_did() {
    let bed = Testbed::new("progrun-xdp", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_overlay(&pins, host);
    let counters = Counters::open(&pins).unwrap();
    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    let fd = xdp.fd().expect("loaded").as_fd();
    let slot = |v: Verdict| {
        counters
            .read()
            .into_iter()
            .filter(|(p, w, _)| *p == names::XDP_UNDERLAY && *w == v)
            .map(|(_, _, c)| c.packets)
            .sum::<u64>()
    };
    let me = host.underlay_ip().octets();
    let inner_to =
        |dst: [u8; 4]| udp_frame(endpoint_mac(REMOTE), endpoint_mac(dst), REMOTE, dst, 6000);

    // For a local endpoint: the output is the metadata (what tc trusts: magic, the
    // endpoint's port, the VNI) followed by the inner frame with its new Ethernet header.
    let inner = inner_to(LOCAL);
    let before = slot(Verdict::DECAP);
    let out = test_run(fd, &vxlan_frame(me, &vxlan_header(VNI_A), &inner), 1).unwrap();
    assert_eq!(out.retval, XDP_PASS);
    let meta = DecapMeta {
        magic: DECAP_META_MAGIC,
        ifindex: LOCAL_IFINDEX,
        vni: VNI_A,
    };
    let mut expected = [meta.magic, meta.ifindex, meta.vni]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect::<Vec<u8>>();
    expected.extend_from_slice(&endpoint_mac(LOCAL));
    expected.extend_from_slice(&GATEWAY_MAC);
    expected.extend_from_slice(&[0x08, 0x00]);
    expected.extend_from_slice(&inner[14..]);
    assert_eq!(out.data_out, expected, "metadata + decapsulated frame");
    assert_eq!(slot(Verdict::DECAP) - before, 1, "counted as decap");
    let from_vtep = udp_frame(VTEP_MAC, endpoint_mac(LOCAL), VTEP_INNER, LOCAL, 6000);
    let before = slot(Verdict::DECAP);
    let frame = vxlan_frame_from(VTEP_HOST, me, &vxlan_header(VNI_A), &from_vtep);
    assert_eq!(test_run(fd, &frame, 1).unwrap().retval, XDP_PASS);
    assert_eq!(slot(Verdict::DECAP) - before, 1, "from the vtep: decap");

    // Spoofed outer sources: dropped right here, counted.
    for (what, outer, vni, inner) in spoof_cases() {
        let before = slot(Verdict::SPOOFED);
        let frame = vxlan_frame_from(outer, me, &vxlan_header(vni), &inner);
        assert_eq!(test_run(fd, &frame, 1).unwrap().retval, XDP_DROP, "{what}");
        assert_eq!(slot(Verdict::SPOOFED) - before, 1, "{what} counted");
    }

    // Everything else is left whole for tc to judge (and count): no metadata, no change.
    let good = vxlan_frame(me, &vxlan_header(VNI_A), &inner);
    for (what, frame) in [
        (
            "A's endpoint under B's VNI",
            vxlan_frame(me, &vxlan_header(VNI_B), &inner),
        ),
        (
            "a remote endpoint",
            vxlan_frame(me, &vxlan_header(VNI_A), &inner_to(REMOTE)),
        ),
        (
            "an unknown vni",
            vxlan_frame(me, &vxlan_header(5000), &inner),
        ),
        (
            "another host's vxlan",
            vxlan_frame([10, 200, 0, 13], &vxlan_header(VNI_A), &inner),
        ),
        (
            "wrong flags",
            vxlan_frame(me, &[0, 0, 0, 0, 0, 0x10, 0, 0], &inner),
        ),
        (
            "truncated inner frame",
            vxlan_frame(me, &vxlan_header(VNI_A), &inner[..20]),
        ),
        ("ip options", with_ip_options(&good)),
        ("first fragment", with_frag(good.clone(), 0x2000)),
    ] {
        let before = slot(Verdict::PASS);
        let out = test_run(fd, &frame, 1).unwrap();
        assert_eq!(out.retval, XDP_PASS, "{what}");
        assert_eq!(out.data_out, frame, "{what} untouched");
        assert_eq!(slot(Verdict::PASS) - before, 1, "{what} counted as pass");
    }

    // Plain IPv4 routed into an overlay subnet: dropped right here; the rest passes.
    for (what, frame) in routed_into_overlay() {
        let before = slot(Verdict::INTO_OVERLAY);
        let out = test_run(fd, &frame, 1).unwrap();
        assert_eq!(out.retval, XDP_DROP, "{what}");
        assert_eq!(slot(Verdict::INTO_OVERLAY) - before, 1, "{what} counted");
    }
    for (what, frame) in routed_elsewhere(me) {
        let before = slot(Verdict::PASS);
        let out = test_run(fd, &frame, 1).unwrap();
        assert_eq!(out.retval, XDP_PASS, "{what}");
        assert_eq!(out.data_out, frame, "{what} untouched");
        assert_eq!(slot(Verdict::PASS) - before, 1, "{what} counted as pass");
    }
}

#[test]
fn a_pinned_map_with_another_layout_is_refused_by_name() {
    let bed = Testbed::new("progrun-layout", TestbedConfig::with_hosts(1)).expect("testbed");
    let pins = PinDirs::new(bed.host(0).bpf_dir());
    drop(dataplane::load(&pins).expect("first load pins the maps"));
    // A counters map where the ports map should be: same name, other type and sizes.
    let ports = pins.maps().join(dataplane_ebpf::maps::OVERLAY_PORTS.name);
    std::fs::remove_file(&ports).unwrap();
    aya::maps::MapData::from_pin(
        pins.maps()
            .join(dataplane_ebpf::maps::TC_ENDPOINT_COUNTERS.name),
    )
    .unwrap()
    .pin(&ports)
    .unwrap();
    match dataplane::load(&pins) {
        Err(dataplane::DataplaneError::IncompatiblePin { path, .. }) => assert_eq!(path, ports),
        Err(other) => panic!("expected IncompatiblePin, got {other}"),
        Ok(_) => panic!(
            "a counters map was adopted as {}",
            dataplane_ebpf::maps::OVERLAY_PORTS.name
        ),
    }
    // After a cleanup the agent starts afresh.
    dataplane::cleanup(&pins).unwrap();
    dataplane::load(&pins).expect("loads after cleanup");
}
