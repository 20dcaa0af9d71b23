//! The routing mesh on a backend host, under `BPF_PROG_TEST_RUN` (MESH-DESIGN.md packet
//! paths 2 and 3): VXLAN on the ingress VNI is delivered into a local task only from a
//! cluster node and only to a published target (both underlay stages), and records the
//! flow's ingress node; a task's replies go back through that node (encapsulated on the
//! ingress VNI) or, when the task is local to the ingress node, leave translated back to
//! the published port; a SYN-ACK's MSS is clamped. Needs root; run by `cargo xtask test`.
//!
//! The maps are filled by hand, as the agent's reconciler would.

mod common;

use common::{classifier_fd, expect};
use std::os::fd::{AsFd, BorrowedFd};

use agent::dataplane::{self, Counters, OverlayMaps, PinDirs};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuHashMap, PerCpuValues},
    programs::Xdp,
    util::nr_cpus,
    Ebpf, Pod,
};
use dataplane_ebpf::{
    counters::Verdict,
    guard::{IPPROTO_TCP, IPPROTO_UDP},
    maps::{self as spec, MapSpec},
    mesh::{
        published_port_mac, Flow, FlowKey, MeshConfig, MeshStatKey, MeshStats, MeshTarget,
        MeshTargetKey, Reply, ReplyKey, FIN_FROM_BACKEND, MESH_DECAP_META_MAGIC, TCP_CLOSING,
        TCP_SYN_SENT, UDP_OPEN,
    },
    names,
    overlay::{
        endpoint_mac, ipv4_checksum, vxlan_header, EndpointKey, EndpointValue, NetworkValue,
        PortValue, SubnetKey, UnderlayValue, GATEWAY_MAC,
    },
};
use etherparse::PacketBuilder;
use xtask::testbed::{Host, InNetns, Testbed, TestbedConfig};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The task network (VNI 4096, 10.0.1.0/24) and the cluster's ingress VNI (no network).
const VNI_A: u32 = 4096;
const INGRESS_VNI: u32 = 4242;
const MSS_CLAMP: u16 = 1410;
/// The task behind the "port" ifindex 1 (the skb test runner's `lo`): replies come from it.
const ME: [u8; 4] = [10, 0, 1, 2];
/// A local task on ifindex 7: mesh requests go to it.
const TASK: [u8; 4] = [10, 0, 1, 3];
const TASK_IFINDEX: u32 = 7;
/// A task on another host (a target entry exists for it, wrongly: still refused).
const REMOTE_TASK: [u8; 4] = [10, 0, 1, 4];
/// Cluster nodes (in MESH_NODES) and an underlay host that is not one.
const NODE_B: [u8; 4] = [10, 200, 0, 12];
const NODE_C: [u8; 4] = [10, 200, 0, 13];
const NOT_NODE: [u8; 4] = [10, 200, 0, 99];
/// A client on the underlay.
const CLIENT: [u8; 4] = [10, 200, 0, 77];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
const TARGET_PORT: u16 = 80;
const UDP_TARGET_PORT: u16 = 5300;
const PUBLISHED_PORT: u16 = 8080;
const SLOT: u32 = 3;

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

/// A pinned map, opened as `T` (a typed aya map).
fn pinned<T: TryFrom<Map, Error = aya::maps::MapError>>(pins: &PinDirs, spec: &MapSpec) -> T {
    let data = MapData::from_pin(pins.maps().join(spec.name)).expect("pinned map");
    T::try_from(Map::from_map_data(data).expect("map")).expect("typed map")
}

fn hash<K: Pod, V: Pod>(pins: &PinDirs, spec: &MapSpec) -> HashMap<MapData, K, V> {
    pinned(pins, spec)
}

fn set_mesh_config(pins: &PinDirs, ingress_vni: u32) {
    let mut config: Array<MapData, MeshConfig> = pinned(pins, &spec::MESH_CONFIG);
    let value = MeshConfig {
        ingress_vni,
        mss: MSS_CLAMP,
        syn_timeout_ns: 60_000_000_000,
        established_timeout_ns: 8_000_000_000_000,
        closing_timeout_ns: 10_000_000_000,
        udp_timeout_ns: 60_000_000_000,
        ..MeshConfig::default()
    };
    config.set(0, value, 0).unwrap();
}

/// The overlay (network A, this host's tasks, the port) and the mesh (config, nodes,
/// targets) as the reconciler would write them.
fn program_maps(pins: &PinDirs, host: &Host) {
    let mut maps = OverlayMaps::open(pins).expect("overlay maps");
    maps.set_underlay(UnderlayValue {
        ifindex: underlay_ifindex(host),
        ip: host.underlay_ip().octets(),
        mac: underlay_mac(host),
        _pad: [0; 2],
    })
    .unwrap();
    maps.put_network(
        VNI_A,
        NetworkValue {
            subnet: [10, 0, 1, 0],
            prefix_len: 24,
            gateway: [10, 0, 1, 1],
        },
    )
    .unwrap();
    maps.put_subnet(SubnetKey::new([10, 0, 1, 0], 24), VNI_A)
        .unwrap();
    maps.put_port(1, PortValue { vni: VNI_A, ip: ME }).unwrap();
    let me = host.underlay_ip().octets();
    for (ip, host_ip, ifindex) in [
        (ME, me, 1),
        (TASK, me, TASK_IFINDEX),
        (REMOTE_TASK, NODE_B, 0),
    ] {
        maps.put_endpoint(
            EndpointKey { vni: VNI_A, ip },
            EndpointValue { host_ip, ifindex },
        )
        .unwrap();
    }
    set_mesh_config(pins, INGRESS_VNI);
    let mut nodes: HashMap<MapData, [u8; 4], u32> = hash(pins, &spec::MESH_NODES);
    for node in [me, NODE_B, NODE_C] {
        nodes.insert(node, 0, 0).unwrap();
    }
    let mut targets: HashMap<MapData, MeshTargetKey, MeshTarget> = hash(pins, &spec::MESH_TARGETS);
    for (ip, port, protocol) in [
        (TASK, TARGET_PORT, IPPROTO_TCP),
        (TASK, UDP_TARGET_PORT, IPPROTO_UDP),
        (REMOTE_TASK, TARGET_PORT, IPPROTO_TCP),
        (ME, TARGET_PORT, IPPROTO_TCP),
        (ME, UDP_TARGET_PORT, IPPROTO_UDP),
    ] {
        let key = MeshTargetKey {
            ip,
            port_be: port.to_be_bytes(),
            protocol,
            _pad: 0,
        };
        targets.insert(key, MeshTarget { vni: VNI_A }, 0).unwrap();
    }
}

fn replies(pins: &PinDirs) -> HashMap<MapData, ReplyKey, Reply> {
    hash(pins, &spec::MESH_REPLIES)
}

fn reply_key(backend: [u8; 4], backend_port: u16, client_port: u16, protocol: u8) -> ReplyKey {
    ReplyKey {
        backend_ip: backend,
        client_ip: CLIENT,
        backend_port_be: backend_port.to_be_bytes(),
        client_port_be: client_port.to_be_bytes(),
        protocol,
        _pad: [0; 3],
    }
}

fn xdp_fd<'a>(ebpf: &'a mut Ebpf) -> BorrowedFd<'a> {
    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    xdp.fd().expect("loaded").as_fd()
}

/// A client's TCP segment as the ingress node forwards it: to `dst`:`dport`, from the
/// client's port `sport`, with `flags` applied to the builder.
fn tcp_to(dst: [u8; 4], dport: u16, sport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, endpoint_mac(dst))
        .ipv4(CLIENT, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .options_raw(&[2, 4, 0x05, 0xb4])
        .unwrap()
        .write(&mut frame, &[])
        .expect("tcp frame");
    frame
}

fn udp_to(dst: [u8; 4], dport: u16, sport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, endpoint_mac(dst))
        .ipv4(CLIENT, dst, 64)
        .udp(sport, dport)
        .write(&mut frame, b"a client's datagram")
        .expect("udp frame");
    frame
}

/// VXLAN of `vni` from the underlay address `from` to `to`, carrying `inner`.
fn vxlan_from(from: [u8; 4], to: [u8; 4], vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vxlan_header(vni).to_vec();
    payload.extend_from_slice(inner);
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x12], [0x02, 0, 0, 0, 0, 0x11])
        .ipv4(from, to, 64)
        .udp(50000, 4789)
        .write(&mut frame, &payload)
        .expect("vxlan frame");
    frame
}

/// Rewrites the inner IPv4 header of an Ethernet frame (`at`: its offset) with `edit`,
/// then fixes its checksum.
fn edit_ip(mut frame: Vec<u8>, at: usize, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    edit(&mut frame[at..at + 20]);
    frame[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let header: [u8; 20] = frame[at..at + 20].try_into().unwrap();
    frame[at + 10..at + 12].copy_from_slice(&ipv4_checksum(&header).to_be_bytes());
    frame
}

/// Inserts 4 bytes of IPv4 options (NOP NOP NOP EOL) into the IPv4 header at `at`.
fn with_ip_options(frame: &[u8], at: usize) -> Vec<u8> {
    let mut out = frame[..at + 20].to_vec();
    out[at] = 0x46;
    let total = u16::from_be_bytes([out[at + 2], out[at + 3]]) + 4;
    out[at + 2..at + 4].copy_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[1, 1, 1, 0]);
    out.extend_from_slice(&frame[at + 20..]);
    edit_ip(out, at, |_| {})
}

/// The decapsulated frame a task receives: its MAC from the gateway, then `inner`'s IPv4.
fn delivered(dst: [u8; 4], inner: &[u8]) -> Vec<u8> {
    let mut expected = endpoint_mac(dst).to_vec();
    expected.extend_from_slice(&GATEWAY_MAC);
    expected.extend_from_slice(&[0x08, 0x00]);
    expected.extend_from_slice(&inner[14..]);
    expected
}

/// Inner frames a backend host must refuse on the ingress VNI (sent from `NODE_B`).
fn refused_inner() -> Vec<(&'static str, Vec<u8>)> {
    let good = tcp_to(TASK, TARGET_PORT, 40000);
    let mut not_ipv4 = good.clone();
    not_ipv4[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(GATEWAY_MAC, endpoint_mac(TASK))
        .ipv4(CLIENT, TASK, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    vec![
        ("a port that is not a target", tcp_to(TASK, 81, 40000)),
        (
            "a target port over the other protocol",
            udp_to(TASK, TARGET_PORT, 40000),
        ),
        (
            "a target of a task on another host",
            tcp_to(REMOTE_TASK, TARGET_PORT, 40000),
        ),
        (
            "an address with no target",
            tcp_to([10, 0, 1, 9], TARGET_PORT, 40000),
        ),
        ("inner ip options", with_ip_options(&good, 14)),
        (
            "inner first fragment",
            edit_ip(good.clone(), 14, |h| h[6] = 0x20),
        ),
        (
            "inner later fragment",
            edit_ip(good.clone(), 14, |h| h[7] = 0x10),
        ),
        ("inner icmp", icmp),
        ("inner ipv6 ethertype", not_ipv4),
        ("inner ports cut off", good[..14 + 20 + 2].to_vec()),
    ]
}

#[test]
fn backend_host_tc_delivers_mesh_requests_to_published_targets_only() {
    let bed = Testbed::new("mesh-tc-decap", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_maps(&pins, host);
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
    let replies = replies(&pins);

    // From a cluster node to a published target of a local task: decapsulated and
    // delivered into the task's network (the inner source MAC, which carried the
    // published port, back to the gateway's), the ingress node and the published port
    // recorded for the replies.
    let mut inner = tcp_to(TASK, TARGET_PORT, 40000);
    inner[6..12].copy_from_slice(&published_port_mac(PUBLISHED_PORT.to_be_bytes()));
    let frame = vxlan_from(NODE_B, me, INGRESS_VNI, &inner);
    let out = run(
        "a mesh request",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_DELIVER,
    );
    assert_eq!(out, delivered(TASK, &inner), "decapsulated frame");
    let key = reply_key(TASK, TARGET_PORT, 40000, IPPROTO_TCP);
    let reply = replies.get(&key, 0).expect("reply entry written");
    assert_eq!(reply.ingress_ip, NODE_B, "the ingress node");
    assert_eq!(reply.published_port_be, PUBLISHED_PORT.to_be_bytes());
    assert!(reply.seen_ns > 0, "seen");
    // Later packets of the flow only read the entry (rewritten at most once a second).
    run(
        "the flow's next packet",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_DELIVER,
    );
    assert_eq!(replies.get(&key, 0).unwrap().seen_ns, reply.seen_ns);
    // The same flow through another ingress node: the entry follows it.
    run(
        "the flow through another node",
        &vxlan_from(NODE_C, me, INGRESS_VNI, &inner),
        TC_ACT_REDIRECT,
        Verdict::MESH_DELIVER,
    );
    assert_eq!(replies.get(&key, 0).unwrap().ingress_ip, NODE_C);
    // ... and through another published port of the same target (or from a node that
    // sends no port: 0).
    let mut other_port = inner.clone();
    other_port[6..12].copy_from_slice(&published_port_mac(8081u16.to_be_bytes()));
    run(
        "the flow by another published port",
        &vxlan_from(NODE_C, me, INGRESS_VNI, &other_port),
        TC_ACT_REDIRECT,
        Verdict::MESH_DELIVER,
    );
    assert_eq!(
        replies.get(&key, 0).unwrap().published_port_be,
        8081u16.to_be_bytes()
    );
    run(
        "the flow without a published port",
        &vxlan_from(NODE_C, me, INGRESS_VNI, &tcp_to(TASK, TARGET_PORT, 40000)),
        TC_ACT_REDIRECT,
        Verdict::MESH_DELIVER,
    );
    assert_eq!(replies.get(&key, 0).unwrap().published_port_be, [0, 0]);
    // UDP to its target port.
    let inner = udp_to(TASK, UDP_TARGET_PORT, 40001);
    let out = run(
        "a mesh datagram",
        &vxlan_from(NODE_B, me, INGRESS_VNI, &inner),
        TC_ACT_REDIRECT,
        Verdict::MESH_DELIVER,
    );
    assert_eq!(out, delivered(TASK, &inner));
    let key = reply_key(TASK, UDP_TARGET_PORT, 40001, IPPROTO_UDP);
    assert_eq!(replies.get(&key, 0).unwrap().ingress_ip, NODE_B);

    // Anything else on the ingress VNI is dropped, and records nothing.
    let entries = || replies.keys().count();
    let before = entries();
    let good = tcp_to(TASK, TARGET_PORT, 40002);
    let mut cases = vec![
        (
            "from a host that is not a node",
            vxlan_from(NOT_NODE, me, INGRESS_VNI, &good),
        ),
        (
            "from this host's own address",
            vxlan_from(me, me, INGRESS_VNI, &good),
        ),
    ];
    for (what, inner) in refused_inner() {
        cases.push((what, vxlan_from(NODE_B, me, INGRESS_VNI, &inner)));
    }
    for (what, frame) in &cases {
        run(what, frame, TC_ACT_SHOT, Verdict::MESH_REFUSED);
    }
    assert_eq!(entries(), before, "refused frames record no reply entry");

    // The mesh off (MESH_CONFIG zero): the VNI is an unknown one, passed as before.
    set_mesh_config(&pins, 0);
    let frame = vxlan_from(NODE_B, me, INGRESS_VNI, &good);
    let out = run("mesh off", &frame, TC_ACT_OK, Verdict::UNKNOWN_VNI);
    assert_eq!(out, frame, "untouched");
    assert_eq!(entries(), before);
}

#[test]
fn backend_host_xdp_pops_and_marks_mesh_requests_and_drops_the_rest() {
    let bed = Testbed::new("mesh-xdp-decap", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_maps(&pins, host);
    let counters = Counters::open(&pins).unwrap();
    let fd = xdp_fd(&mut ebpf);
    let run = |what, frame: &[u8], action, verdict| {
        expect(
            &counters,
            names::XDP_UNDERLAY,
            fd,
            what,
            frame,
            action,
            verdict,
        )
    };
    let me = host.underlay_ip().octets();
    let replies = replies(&pins);

    // Popped in place with a mesh mark (tc delivers it and counts it as mesh_deliver):
    // the metadata, then the inner frame with its new Ethernet header.
    let inner = tcp_to(TASK, TARGET_PORT, 41000);
    let out = run(
        "a mesh request",
        &vxlan_from(NODE_B, me, INGRESS_VNI, &inner),
        XDP_PASS,
        Verdict::MESH_DELIVER,
    );
    let mut expected = [MESH_DECAP_META_MAGIC, TASK_IFINDEX, VNI_A]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect::<Vec<u8>>();
    expected.extend_from_slice(&delivered(TASK, &inner));
    assert_eq!(out, expected, "mesh mark + decapsulated frame");
    let key = reply_key(TASK, TARGET_PORT, 41000, IPPROTO_TCP);
    assert_eq!(replies.get(&key, 0).unwrap().ingress_ip, NODE_B);

    let good = tcp_to(TASK, TARGET_PORT, 41001);
    let mut cases = vec![
        (
            "from a host that is not a node",
            vxlan_from(NOT_NODE, me, INGRESS_VNI, &good),
        ),
        (
            "from this host's own address",
            vxlan_from(me, me, INGRESS_VNI, &good),
        ),
    ];
    for (what, inner) in refused_inner() {
        cases.push((what, vxlan_from(NODE_B, me, INGRESS_VNI, &inner)));
    }
    for (what, frame) in &cases {
        run(what, frame, XDP_DROP, Verdict::MESH_REFUSED);
    }
    assert!(
        replies
            .get(&reply_key(TASK, TARGET_PORT, 41001, IPPROTO_TCP), 0)
            .is_err(),
        "refused frames record nothing"
    );
}

/// The one's-complement sum of `bytes` (odd length padded), folded.
fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Whether the IPv4 packet `ip` (header and payload) has a valid header checksum and a
/// valid TCP or UDP checksum, computed from scratch (a UDP checksum of 0 is "none").
fn checksums_verify(ip: &[u8]) -> bool {
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if sum16(&ip[..header_len], 0) != 0xffff {
        return false;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[header_len..total];
    if ip[9] == IPPROTO_UDP && l4[6..8] == [0, 0] {
        return true;
    }
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    sum16(l4, sum16(&pseudo, 0)) == 0xffff
}

/// The MSS a TCP segment (IPv4 packet `ip`) announces, if it carries the option.
fn mss_of(ip: &[u8]) -> Option<u16> {
    let tcp = &ip[20..];
    let end = usize::from(tcp[12] >> 4) * 4;
    let mut i = 20;
    while i < end {
        match tcp[i] {
            0 => return None,
            1 => i += 1,
            2 => return Some(u16::from_be_bytes([tcp[i + 2], tcp[i + 3]])),
            _ => i += usize::from(tcp[i + 1]),
        }
    }
    None
}

/// What the task `ME` sends a client: a TCP segment from its target port with `flags`
/// (SYN-ACK: with the MSS option 1460 after a NOP pair and SACK-permitted).
fn task_tcp(client_port: u16, syn_ack: bool, fin: bool, rst: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    let mut builder = PacketBuilder::ethernet2(endpoint_mac(ME), GATEWAY_MAC)
        .ipv4(ME, CLIENT, 64)
        .tcp(TARGET_PORT, client_port, 7000, 64240)
        .ack(1001);
    if syn_ack {
        builder = builder
            .syn()
            .options_raw(&[1, 1, 4, 2, 2, 4, 0x05, 0xb4])
            .unwrap();
    }
    if fin {
        builder = builder.fin();
    }
    if rst {
        builder = builder.rst();
    }
    let payload: &[u8] = if syn_ack { &[] } else { b"HTTP/1.1 200 OK\r\n" };
    builder.write(&mut frame, payload).expect("tcp frame");
    frame
}

fn task_udp(client_port: u16, checksum: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(endpoint_mac(ME), GATEWAY_MAC)
        .ipv4(ME, CLIENT, 64)
        .udp(UDP_TARGET_PORT, client_port)
        .write(&mut frame, b"the task's answer")
        .expect("udp frame");
    if !checksum {
        frame[40..42].copy_from_slice(&[0, 0]);
    }
    frame
}

/// The reply entries the tests use: client ports below 50000 came through `NODE_B`,
/// from 50000 on through this node (published port 8080, a tracked flow).
fn put_reply(pins: &PinDirs, key: ReplyKey, ingress_ip: [u8; 4], published: u16) {
    let mut map = replies(pins);
    let value = Reply {
        ingress_ip,
        published_port_be: published.to_be_bytes(),
        _pad: [0; 2],
        seen_ns: 1,
    };
    map.insert(key, value, 0).unwrap();
}

fn flow_key(me: [u8; 4], client_port: u16, protocol: u8) -> FlowKey {
    FlowKey {
        client_ip: CLIENT,
        node_ip: me,
        client_port_be: client_port.to_be_bytes(),
        published_port_be: PUBLISHED_PORT.to_be_bytes(),
        protocol,
        _pad: [0; 3],
    }
}

#[test]
fn task_replies_go_back_through_their_ingress_node() {
    let bed = Testbed::new("mesh-tc-reply", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let _netns = InNetns::enter(host);
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    program_maps(&pins, host);
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
    let me = host.underlay_ip().octets();
    // Forwarding on and the client's MAC known: the FIB gives the next hop.
    host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])
        .unwrap();
    host.run(
        "ip",
        [
            "neigh",
            "replace",
            "10.200.0.77",
            "lladdr",
            "02:00:00:00:00:77",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();

    // No entry: the host's egress path, as before.
    let frame = task_tcp(40000, false, false, false);
    let out = run("no mesh flow", &frame, TC_ACT_OK, Verdict::TO_HOST);
    assert_eq!(out, frame, "untouched");

    // Came through another node: VXLAN on the ingress VNI to it, the SYN-ACK's MSS
    // clamped, every checksum valid.
    put_reply(
        &pins,
        reply_key(ME, TARGET_PORT, 40000, IPPROTO_TCP),
        NODE_B,
        PUBLISHED_PORT,
    );
    let frame = task_tcp(40000, true, false, false);
    let out = run(
        "a syn-ack through another node",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_REPLY,
    );
    check_mesh_encap(&out, &frame, me, NODE_B);
    let inner_ip = &out[64..];
    assert_eq!(mss_of(inner_ip), Some(MSS_CLAMP), "MSS clamped");
    assert!(checksums_verify(inner_ip), "inner checksums verify");
    let mut unclamped = inner_ip.to_vec();
    unclamped[20 + 26..20 + 28].copy_from_slice(&1460u16.to_be_bytes());
    unclamped[20 + 16..20 + 18].copy_from_slice(&frame[14 + 36..14 + 38]);
    assert_eq!(
        &unclamped[..],
        &frame[14..],
        "only the MSS and its checksum"
    );
    let frame = task_tcp(40000, false, false, false);
    let out = run(
        "data through another node",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_REPLY,
    );
    check_mesh_encap(&out, &frame, me, NODE_B);
    assert_eq!(&out[64..], &frame[14..], "the task's packet, unchanged");
    put_reply(
        &pins,
        reply_key(ME, UDP_TARGET_PORT, 40001, IPPROTO_UDP),
        NODE_B,
        PUBLISHED_PORT,
    );
    let frame = task_udp(40001, true);
    let out = run(
        "a datagram through another node",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_REPLY,
    );
    check_mesh_encap(&out, &frame, me, NODE_B);
    assert_eq!(&out[64..], &frame[14..]);

    // Came through this node: translated back to this node's address and the published
    // port, out of the underlay to the client; the flow's state and counters follow.
    let mut flows: HashMap<MapData, FlowKey, Flow> = hash(&pins, &spec::MESH_FLOWS);
    let mut stats: PerCpuHashMap<MapData, MeshStatKey, MeshStats> =
        pinned(&pins, &spec::MESH_STATS);
    let stat_key = MeshStatKey {
        slot: SLOT,
        backend_ip: ME,
    };
    let cpus = nr_cpus().unwrap();
    stats
        .insert(
            stat_key,
            PerCpuValues::try_from(vec![MeshStats::default(); cpus]).unwrap(),
            0,
        )
        .unwrap();
    let stat_packets = || {
        stats
            .get(&stat_key, 0)
            .unwrap()
            .iter()
            .map(|s| s.packets)
            .sum::<u64>()
    };
    let flow = Flow {
        backend_ip: ME,
        backend_host: me,
        vni: VNI_A,
        slot: SLOT,
        target_port_be: TARGET_PORT.to_be_bytes(),
        state: TCP_SYN_SENT,
        ..Flow::default()
    };
    flows
        .insert(flow_key(me, 50000, IPPROTO_TCP), flow, 0)
        .unwrap();
    put_reply(
        &pins,
        reply_key(ME, TARGET_PORT, 50000, IPPROTO_TCP),
        me,
        PUBLISHED_PORT,
    );
    let frame = task_tcp(50000, true, false, false);
    let out = run(
        "a syn-ack of a local flow",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_REPLY,
    );
    check_translated(&out, &frame, host, me);
    assert_eq!(mss_of(&out[14..]), Some(MSS_CLAMP), "MSS clamped");
    let tracked = flows.get(&flow_key(me, 50000, IPPROTO_TCP), 0).unwrap();
    assert_eq!(tracked.state, TCP_SYN_SENT, "a SYN-ACK changes no state");
    assert!(tracked.last_seen_ns > 0, "last seen moved");
    assert_eq!(stat_packets(), 1, "counted for the backend");
    let frame = task_tcp(50000, false, true, false);
    let out = run(
        "the task's FIN",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_REPLY,
    );
    check_translated(&out, &frame, host, me);
    let tracked = flows.get(&flow_key(me, 50000, IPPROTO_TCP), 0).unwrap();
    assert_eq!(tracked.flags, FIN_FROM_BACKEND, "the task's FIN noted");
    let frame = task_tcp(50000, false, false, true);
    run(
        "the task's RST",
        &frame,
        TC_ACT_REDIRECT,
        Verdict::MESH_REPLY,
    );
    let tracked = flows.get(&flow_key(me, 50000, IPPROTO_TCP), 0).unwrap();
    assert_eq!(tracked.state, TCP_CLOSING, "a RST closes");
    assert_eq!(stat_packets(), 3);

    // UDP, with and without a checksum (none stays none).
    let udp_flow = Flow {
        state: UDP_OPEN,
        ..flow
    };
    for (port, checksum) in [(50001, true), (50002, false)] {
        flows
            .insert(flow_key(me, port, IPPROTO_UDP), udp_flow, 0)
            .unwrap();
        put_reply(
            &pins,
            reply_key(ME, UDP_TARGET_PORT, port, IPPROTO_UDP),
            me,
            PUBLISHED_PORT,
        );
        let frame = task_udp(port, checksum);
        let out = run(
            "a datagram of a local flow",
            &frame,
            TC_ACT_REDIRECT,
            Verdict::MESH_REPLY,
        );
        check_translated(&out, &frame, host, me);
        assert_eq!(out[40..42] == [0, 0], !checksum, "UDP checksum {checksum}");
    }

    // Not a mesh reply even with an entry: a later fragment (no ports), and everything
    // once the mesh is off.
    let frame = edit_ip(task_udp(50001, true), 14, |h| h[7] = 0x10);
    run("a later fragment", &frame, TC_ACT_OK, Verdict::TO_HOST);
    set_mesh_config(&pins, 0);
    let frame = task_tcp(50000, false, false, false);
    let out = run("mesh off", &frame, TC_ACT_OK, Verdict::TO_HOST);
    assert_eq!(out, frame, "untouched");
}

/// `out` is the task's `frame` in VXLAN on the ingress VNI from `me` to `node`, with
/// valid outer checksums and the published port in the inner destination MAC (the
/// inner packet is checked by the caller).
fn check_mesh_encap(out: &[u8], frame: &[u8], me: [u8; 4], node: [u8; 4]) {
    assert_eq!(out.len(), frame.len() + 50, "50 bytes pushed");
    let ip: [u8; 20] = out[14..34].try_into().unwrap();
    assert_eq!(ip[9], 17, "outer UDP");
    assert_eq!(&ip[12..16], &me, "outer source: this node");
    assert_eq!(&ip[16..20], &node, "outer destination: the ingress node");
    assert_eq!(ipv4_checksum(&ip), 0, "outer IPv4 checksum verifies");
    assert_eq!(&out[36..38], &4789u16.to_be_bytes());
    assert_eq!(
        usize::from(u16::from_be_bytes([out[38], out[39]])),
        out.len() - 34,
        "UDP length"
    );
    assert_eq!(&out[40..42], &[0, 0], "outer UDP checksum 0 (none)");
    assert_eq!(&out[42..50], &vxlan_header(INGRESS_VNI), "the ingress VNI");
    assert_eq!(
        &out[50..56],
        &published_port_mac(PUBLISHED_PORT.to_be_bytes()),
        "inner destination MAC: the published port"
    );
    assert_eq!(&out[56..62], &endpoint_mac(ME), "inner source MAC");
    assert_eq!(&out[62..64], &[0x08, 0x00]);
    assert!(checksums_verify(&out[64..]), "inner checksums verify");
}

/// `out` is the task's `frame` translated back: from this node's address and the
/// published port, to the client's MAC from the underlay's, checksums valid, the rest
/// unchanged.
fn check_translated(out: &[u8], frame: &[u8], host: &Host, me: [u8; 4]) {
    assert_eq!(out.len(), frame.len(), "same length");
    assert_eq!(&out[..6], &CLIENT_MAC, "to the client's MAC (FIB)");
    assert_eq!(&out[6..12], &underlay_mac(host), "from the underlay's");
    assert_eq!(&out[26..30], &me, "source: this node");
    assert_eq!(&out[30..34], &CLIENT, "destination: the client");
    assert_eq!(
        &out[34..36],
        &PUBLISHED_PORT.to_be_bytes(),
        "published port"
    );
    assert_eq!(&out[36..38], &frame[36..38], "the client's port");
    assert!(
        checksums_verify(&out[14..]),
        "checksums verify from scratch"
    );
    let l4_check = if frame[23] == IPPROTO_TCP { 50 } else { 40 };
    let mss = mss_of(&frame[14..]).is_some() && frame[23] == IPPROTO_TCP;
    for i in 42..frame.len() {
        let mss_bytes = mss && (60..62).contains(&i);
        if i != l4_check && i != l4_check + 1 && !mss_bytes {
            assert_eq!(out[i], frame[i], "byte {i} unchanged");
        }
    }
}
