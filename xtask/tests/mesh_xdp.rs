//! The routing mesh on the ingress node (`xdp_underlay` → `mesh_ingress`) under
//! `BPF_PROG_TEST_RUN`: maps filled by hand as the agent would, frames built with
//! etherparse, verdicts, counters and output frames checked (checksums recomputed from
//! scratch). Needs root; run with `--test-threads=1`.
//!
//! The test enters the testbed host's namespace: the XDP test runner hands the frame to
//! the program as received on that namespace's loopback, and `bpf_fib_lookup` answers
//! from that namespace's routes and neighbours (permanent entries for the hosts and the
//! client below).

use std::{
    os::fd::{AsFd, BorrowedFd},
    thread,
    time::Duration,
};

use agent::dataplane::{self, Counters, OverlayMaps, PinDirs};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::Xdp,
    util::nr_cpus,
    Ebpf,
};
use dataplane_ebpf::{
    counters::Verdict,
    maps as spec,
    mesh::{
        published_port_mac, Flow, FlowKey, MeshBackend, MeshBackendKey, MeshConfig, MeshPort,
        MeshPortKey, MeshService, MeshStatKey, MeshStats, Reply, ReplyKey, CT_DELETED, CT_INSERTED,
        TCP_ESTABLISHED,
    },
    names,
    overlay::{
        endpoint_mac, vxlan_header, DecapMeta, EndpointKey, EndpointValue, NetworkValue, PortValue,
        UnderlayValue, DECAP_META_MAGIC, GATEWAY_MAC,
    },
};
use dataplane_ebpf_test_run::test_run;
use etherparse::{PacketBuilder, TcpOptionElement};
use xtask::testbed::{Host, InNetns, Testbed, TestbedConfig};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VNI: u32 = 4096;
const INGRESS_VNI: u32 = 4000;
const MSS: u16 = 1410;
/// Backends of the services: one local (veth ifindex 7), two on other hosts.
const LOCAL_BACKEND: [u8; 4] = [10, 0, 1, 3];
const LOCAL_IFINDEX: u32 = 7;
const REMOTE_A: [u8; 4] = [10, 0, 1, 4];
const HOST_A: [u8; 4] = [10, 200, 0, 12];
const REMOTE_B: [u8; 4] = [10, 0, 1, 5];
const HOST_B: [u8; 4] = [10, 200, 0, 13];
const HOST_A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const CLIENT: [u8; 4] = [10, 200, 0, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Published ports: TCP 8080 → 80 and UDP 5300 → 5353 (slots 1, 2); slot 3 (TCP 9090,
/// UDP 9091) has no serving task.
const TCP_PORT: u16 = 8080;
const TCP_TARGET: u16 = 80;
const UDP_PORT: u16 = 5300;
const UDP_TARGET: u16 = 5353;
const EMPTY_TCP: u16 = 9090;
const EMPTY_UDP: u16 = 9091;
const BACKENDS: [([u8; 4], [u8; 4]); 3] = [
    (LOCAL_BACKEND, [0; 4]), // host filled in: this host
    (REMOTE_A, HOST_A),
    (REMOTE_B, HOST_B),
];

fn map(pins: &PinDirs, name: &str) -> Map {
    let data = MapData::from_pin(pins.maps().join(name)).expect(name);
    Map::from_map_data(data).expect(name)
}

fn mac_of(host: &Host) -> [u8; 6] {
    let text = host.run("cat", ["/sys/class/net/eth0/address"]).unwrap();
    let v: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// One host with the overlay and the mesh programmed, and the program's descriptor.
struct Bed {
    bed: Testbed,
    pins: PinDirs,
    ebpf: Ebpf,
    counters: Counters,
    me: [u8; 4],
    my_mac: [u8; 6],
}

impl Bed {
    fn new(label: &str, config: MeshConfig) -> Bed {
        let bed = Testbed::new(label, TestbedConfig::with_hosts(1)).expect("testbed");
        let host = bed.host(0);
        let pins = PinDirs::new(host.bpf_dir());
        let ebpf = dataplane::load(&pins).expect("object loads");
        let me = host.underlay_ip().octets();
        let my_mac = mac_of(host);
        host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])
            .unwrap();
        for (ip, mac) in [
            ("10.200.0.12", "02:00:00:00:00:12"),
            ("10.200.0.13", "02:00:00:00:00:13"),
            ("10.200.0.2", "02:00:00:00:00:02"),
        ] {
            host.run(
                "ip",
                [
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            )
            .unwrap();
        }
        let ifindex: u32 = host
            .run("cat", ["/sys/class/net/eth0/ifindex"])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut overlay = OverlayMaps::open(&pins).unwrap();
        overlay
            .set_underlay(UnderlayValue {
                ifindex,
                ip: me,
                mac: my_mac,
                _pad: [0; 2],
            })
            .unwrap();
        overlay
            .put_network(
                VNI,
                NetworkValue {
                    subnet: [10, 0, 1, 0],
                    prefix_len: 24,
                    gateway: [10, 0, 1, 1],
                },
            )
            .unwrap();
        overlay
            .put_port(
                LOCAL_IFINDEX,
                PortValue {
                    vni: VNI,
                    ip: LOCAL_BACKEND,
                },
            )
            .unwrap();
        for (ip, host_ip) in backends(me) {
            let ifindex = if host_ip == me { LOCAL_IFINDEX } else { 0 };
            overlay
                .put_endpoint(
                    EndpointKey { vni: VNI, ip },
                    EndpointValue { host_ip, ifindex },
                )
                .unwrap();
        }
        let b = Bed {
            counters: Counters::open(&pins).unwrap(),
            bed,
            pins,
            ebpf,
            me,
            my_mac,
        };
        b.set_config(config);
        let mut ports: HashMap<_, MeshPortKey, MeshPort> =
            HashMap::try_from(map(&b.pins, spec::MESH_PORTS.name)).unwrap();
        for (protocol, port, slot, target) in [
            (6, TCP_PORT, 1, TCP_TARGET),
            (17, UDP_PORT, 2, UDP_TARGET),
            (6, EMPTY_TCP, 3, 80),
            (17, EMPTY_UDP, 3, 80),
        ] {
            let value = MeshPort {
                slot,
                target_port_be: target.to_be_bytes(),
                _pad: [0; 2],
            };
            ports
                .insert(MeshPortKey::new(protocol, port), value, 0)
                .unwrap();
        }
        let mut services: Array<_, MeshService> =
            Array::try_from(map(&b.pins, spec::MESH_SERVICES.name)).unwrap();
        let mut found: HashMap<_, MeshBackendKey, MeshBackend> =
            HashMap::try_from(map(&b.pins, spec::MESH_BACKENDS.name)).unwrap();
        let mut stats: PerCpuHashMap<_, MeshStatKey, MeshStats> =
            PerCpuHashMap::try_from(map(&b.pins, spec::MESH_STATS.name)).unwrap();
        let zero =
            || PerCpuValues::try_from(vec![MeshStats::default(); nr_cpus().unwrap()]).unwrap();
        for slot in [1, 2, 3] {
            let count = if slot == 3 { 0 } else { 3 };
            let service = MeshService {
                backends: count,
                cursor: 0,
                vni: VNI,
            };
            services.set(slot, service, 0).unwrap();
            stats
                .insert(
                    MeshStatKey {
                        slot,
                        backend_ip: [0; 4],
                    },
                    zero(),
                    0,
                )
                .unwrap();
            if slot == 3 {
                continue;
            }
            for (index, (ip, host_ip)) in backends(me).into_iter().enumerate() {
                let key = MeshBackendKey {
                    slot,
                    index: index as u32,
                };
                found.insert(key, MeshBackend { ip, host_ip }, 0).unwrap();
                stats
                    .insert(
                        MeshStatKey {
                            slot,
                            backend_ip: ip,
                        },
                        zero(),
                        0,
                    )
                    .unwrap();
            }
        }
        let mut nodes: HashMap<_, [u8; 4], u32> =
            HashMap::try_from(map(&b.pins, spec::MESH_NODES.name)).unwrap();
        for node in [me, HOST_A, HOST_B] {
            nodes.insert(node, 1, 0).unwrap();
        }
        b
    }

    fn host(&self) -> &Host {
        self.bed.host(0)
    }

    fn set_config(&self, config: MeshConfig) {
        let mut c: Array<_, MeshConfig> =
            Array::try_from(map(&self.pins, spec::MESH_CONFIG.name)).unwrap();
        c.set(0, config, 0).unwrap();
    }

    fn fd(&mut self) -> BorrowedFd<'_> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(names::XDP_UNDERLAY)
            .unwrap()
            .try_into()
            .unwrap();
        xdp.fd().unwrap().as_fd()
    }

    fn slot(&self, v: Verdict) -> u64 {
        self.counters
            .read()
            .into_iter()
            .filter(|(p, w, _)| *p == names::XDP_UNDERLAY && *w == v)
            .map(|(_, _, c)| c.packets)
            .sum()
    }

    /// Runs the program on `frame`; checks the action and that it was counted once, as
    /// `verdict`. Returns the output (metadata included).
    fn run(&mut self, what: &str, frame: &[u8], action: u32, verdict: Verdict) -> Vec<u8> {
        let total = |b: &Bed| Verdict::ALL.iter().map(|&v| b.slot(v)).sum::<u64>();
        let (before, all_before) = (self.slot(verdict), total(self));
        let out = test_run(self.fd(), frame, 1).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(out.retval, action, "{what}: action");
        assert_eq!(
            (self.slot(verdict) - before, total(self) - all_before),
            (1, 1),
            "{what}: counted once as {:?}",
            verdict.reason()
        );
        out.data_out
    }

    fn cursor(&self, slot: u32) -> u32 {
        let s: Array<_, MeshService> =
            Array::try_from(map(&self.pins, spec::MESH_SERVICES.name)).unwrap();
        s.get(&slot, 0).unwrap().cursor
    }

    fn flows(&self) -> HashMap<MapData, FlowKey, Flow> {
        HashMap::try_from(map(&self.pins, spec::MESH_FLOWS.name)).unwrap()
    }

    fn ct_event(&self, slot: u32) -> u64 {
        let a: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map(&self.pins, spec::MESH_CT_EVENTS.name)).unwrap();
        a.get(&slot, 0).unwrap().iter().sum()
    }

    fn stats(&self, slot: u32, backend_ip: [u8; 4]) -> MeshStats {
        let s: PerCpuHashMap<_, MeshStatKey, MeshStats> =
            PerCpuHashMap::try_from(map(&self.pins, spec::MESH_STATS.name)).unwrap();
        let per_cpu = s.get(&MeshStatKey { slot, backend_ip }, 0).unwrap();
        per_cpu.iter().fold(MeshStats::default(), |a, s| MeshStats {
            new_flows: a.new_flows + s.new_flows,
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
        })
    }
}

fn backends(me: [u8; 4]) -> [([u8; 4], [u8; 4]); 3] {
    let mut b = BACKENDS;
    b[0].1 = me;
    b
}

fn config() -> MeshConfig {
    MeshConfig {
        ingress_vni: INGRESS_VNI,
        mss: MSS,
        _pad: 0,
        syn_timeout_ns: 60_000_000_000,
        established_timeout_ns: 8_000_000_000_000,
        closing_timeout_ns: 10_000_000_000,
        udp_timeout_ns: 60_000_000_000,
    }
}

#[derive(Clone, Copy, Default)]
struct Tcp {
    syn: bool,
    ack: bool,
    fin: bool,
    rst: bool,
    mss: Option<u16>,
}

const SYN: Tcp = Tcp {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
    mss: Some(1460),
};
const ACK: Tcp = Tcp {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    mss: None,
};

/// A client's TCP segment from `sport` to this node's `dport`.
fn tcp(me: [u8; 4], me_mac: [u8; 6], sport: u16, dport: u16, t: Tcp, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, me_mac)
        .ipv4(CLIENT, me, 64)
        .tcp(sport, dport, 1000, 64240);
    if t.syn {
        b = b.syn();
    }
    if t.ack {
        b = b.ack(5000);
    }
    if t.fin {
        b = b.fin();
    }
    if t.rst {
        b = b.rst();
    }
    if let Some(mss) = t.mss {
        b = b
            .options(&[
                TcpOptionElement::MaximumSegmentSize(mss),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::Noop,
                TcpOptionElement::WindowScale(7),
            ])
            .unwrap();
    }
    let mut frame = Vec::new();
    b.write(&mut frame, payload).unwrap();
    frame
}

fn udp(me: [u8; 4], me_mac: [u8; 6], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, me_mac)
        .ipv4(CLIENT, me, 64)
        .udp(sport, dport)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

/// RFC 1071 over any bytes, independent of the code under test.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        sum += (pair[0] as u64) << 8 | pair.get(1).copied().unwrap_or(0) as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checks an IPv4 packet's header and TCP/UDP checksums from scratch.
fn assert_checksums(what: &str, ip: &[u8]) {
    assert_eq!(ip[0], 0x45, "{what}: plain IPv4");
    assert_eq!(checksum(&ip[..20]), 0, "{what}: IPv4 header checksum");
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let l4 = &ip[20..total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(l4);
    assert_eq!(checksum(&pseudo), 0, "{what}: L4 checksum");
}

/// What a delivered frame became: (backend address, the IPv4 packet).
fn delivered(what: &str, b: &Bed, out: &[u8], retval_local: bool) -> ([u8; 4], Vec<u8>) {
    if retval_local {
        let meta = DecapMeta {
            magic: DECAP_META_MAGIC,
            ifindex: LOCAL_IFINDEX,
            vni: VNI,
        };
        let want: Vec<u8> = [meta.magic, meta.ifindex, meta.vni]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        assert_eq!(&out[..12], &want, "{what}: the decap mark tc delivers by");
        let frame = &out[12..];
        assert_eq!(
            &frame[..6],
            &endpoint_mac(LOCAL_BACKEND),
            "{what}: inner dst"
        );
        assert_eq!(&frame[6..12], &GATEWAY_MAC, "{what}: inner src");
        let ip = frame[14..].to_vec();
        return (ip[16..20].try_into().unwrap(), ip);
    }
    // Outer Ethernet, IPv4, UDP, VXLAN on the ingress VNI, inner Ethernet.
    let outer: [u8; 20] = out[14..34].try_into().unwrap();
    assert_eq!(checksum(&outer), 0, "{what}: outer IPv4 checksum");
    assert_eq!(outer[9], 17);
    assert_eq!(&outer[12..16], &b.me, "{what}: outer source: this node");
    assert_eq!(
        u16::from_be_bytes([outer[2], outer[3]]) as usize,
        out.len() - 14,
        "{what}: outer length"
    );
    assert_eq!(outer[6] & 0x40, 0, "{what}: DF clear");
    assert!(u16::from_be_bytes([out[34], out[35]]) >= 49152);
    assert_eq!(&out[36..38], &4789u16.to_be_bytes());
    assert_eq!(
        u16::from_be_bytes([out[38], out[39]]) as usize,
        out.len() - 34
    );
    assert_eq!(
        &out[42..50],
        &vxlan_header(INGRESS_VNI),
        "{what}: ingress VNI"
    );
    assert_eq!(&out[6..12], &b.my_mac, "{what}: outer source MAC");
    let host: [u8; 4] = outer[16..20].try_into().unwrap();
    let backend: [u8; 4] = out[64 + 16..64 + 20].try_into().unwrap();
    let expected_host = BACKENDS.iter().find(|(ip, _)| *ip == backend).unwrap().1;
    assert_eq!(host, expected_host, "{what}: to the backend's host");
    if host == HOST_A {
        assert_eq!(&out[..6], &HOST_A_MAC, "{what}: outer MAC from the FIB");
    }
    assert_eq!(
        &out[50..56],
        &endpoint_mac(backend),
        "{what}: inner dst MAC"
    );
    let published: [u8; 2] = out[64 + 22..64 + 24].try_into().unwrap();
    let published = match u16::from_be_bytes(published) {
        TCP_TARGET => TCP_PORT,
        UDP_TARGET => UDP_PORT,
        other => panic!("{what}: unexpected target port {other}"),
    };
    assert_eq!(
        &out[56..62],
        &published_port_mac(published.to_be_bytes()),
        "{what}: inner src MAC carries the published port"
    );
    (backend, out[64..].to_vec())
}

/// Runs a flow-opening or flow packet expecting delivery, counted as `verdict`; returns
/// the backend.
fn expect_delivery(b: &mut Bed, what: &str, frame: &[u8], verdict: Verdict) -> [u8; 4] {
    let before = b.slot(verdict);
    let out = test_run(b.fd(), frame, 1).unwrap();
    assert_eq!(
        b.slot(verdict) - before,
        1,
        "{what}: counted as {:?}",
        verdict.reason()
    );
    let local = out.retval == XDP_PASS;
    assert!(
        out.retval == XDP_PASS || out.retval == XDP_REDIRECT,
        "{what}: delivered, got {}",
        out.retval
    );
    let (backend, ip) = delivered(what, b, &out.data_out, local);
    assert_eq!(local, backend == LOCAL_BACKEND, "{what}: local iff PASS");
    assert_eq!(&ip[12..16], &CLIENT, "{what}: the client's address kept");
    assert_checksums(what, &ip);
    backend
}

#[test]
fn new_flows_rotate_exactly_and_a_flow_stays_on_its_backend() {
    let mut b = Bed::new("mesh-rotate", config());
    let _netns = InNetns::enter(b.host());
    let (me, mac) = (b.me, b.my_mac);
    let order: Vec<[u8; 4]> = BACKENDS.iter().map(|(ip, _)| *ip).collect();
    let new_before = b.slot(Verdict::MESH_NEW_FLOW);
    let mut picks = Vec::new();
    for i in 0..9u16 {
        let frame = tcp(me, mac, 40000 + i, TCP_PORT, SYN, b"");
        let out = test_run(b.fd(), &frame, 1).unwrap();
        let local = out.retval == XDP_PASS;
        let (backend, ip) = delivered("syn", &b, &out.data_out, local);
        assert_checksums("syn", &ip);
        assert_eq!(&ip[22..24], &TCP_TARGET.to_be_bytes(), "target port");
        assert_eq!(&ip[12..16], &CLIENT, "client address kept (no SNAT)");
        // MSS option right after the 20-byte header: 1460 clamped to 1410.
        assert_eq!(&ip[40..44], &[2, 4, 0x05, 0x82], "MSS clamped to {MSS}");
        picks.push(backend);
    }
    let expected: Vec<[u8; 4]> = (0..9).map(|i| order[i % 3]).collect();
    assert_eq!(picks, expected, "exact round robin");
    assert_eq!(b.slot(Verdict::MESH_NEW_FLOW) - new_before, 9);
    assert_eq!(b.ct_event(CT_INSERTED), 9, "entries counted");
    assert_eq!(b.cursor(1), 9);
    for (ip, _) in BACKENDS {
        assert_eq!(b.stats(1, ip).new_flows, 3, "new flows per backend");
    }

    // Later packets of each flow stay on their backend, counted as flow hits; the first
    // ACK establishes the entry.
    for i in 0..9u16 {
        let frame = tcp(me, mac, 40000 + i, TCP_PORT, ACK, b"GET / HTTP/1.1\r\n\r\n");
        let before = b.slot(Verdict::MESH_FLOW);
        let backend = expect_delivery(&mut b, "ack", &frame, Verdict::MESH_FLOW);
        assert_eq!(backend, picks[i as usize], "flow {i} stays on its backend");
        assert_eq!(b.slot(Verdict::MESH_FLOW) - before, 1);
    }
    let key = FlowKey {
        client_ip: CLIENT,
        node_ip: me,
        client_port_be: 40000u16.to_be_bytes(),
        published_port_be: TCP_PORT.to_be_bytes(),
        protocol: 6,
        _pad: [0; 3],
    };
    let flow = b.flows().get(&key, 0).unwrap();
    assert_eq!(flow.state, TCP_ESTABLISHED);
    assert_eq!(b.cursor(1), 9, "hits do not advance the rotation");

    // UDP: one rotation of its own, every datagram of a flow on its backend.
    let mut udp_picks = Vec::new();
    for i in 0..6u16 {
        let frame = udp(me, mac, 50000 + i, UDP_PORT, b"query");
        udp_picks.push(expect_delivery(
            &mut b,
            "udp",
            &frame,
            Verdict::MESH_NEW_FLOW,
        ));
    }
    assert_eq!(
        udp_picks,
        (0..6).map(|i| order[i % 3]).collect::<Vec<_>>(),
        "udp rotation"
    );
    let again = expect_delivery(
        &mut b,
        "udp again",
        &udp(me, mac, 50001, UDP_PORT, b"again"),
        Verdict::MESH_FLOW,
    );
    assert_eq!(again, udp_picks[1]);
}

#[test]
fn new_flows_from_both_cpus_continue_one_rotation() {
    let b = Bed::new("mesh-cpus", config());
    let cpus = nr_cpus().unwrap();
    assert!(cpus >= 2, "needs two CPUs");
    let order: Vec<[u8; 4]> = BACKENDS.iter().map(|(ip, _)| *ip).collect();
    let (me, mac) = (b.me, b.my_mac);
    let host = b.host();
    let prog = {
        let xdp: &Xdp = b
            .ebpf
            .program(names::XDP_UNDERLAY)
            .unwrap()
            .try_into()
            .unwrap();
        xdp.fd().unwrap().as_fd().try_clone_to_owned().unwrap()
    };
    // One thread per new flow, pinned alternately to CPU 0 and CPU 1, one after the
    // other: the picks must continue one rotation (per-CPU cursors would not).
    let mut picks = Vec::new();
    for i in 0..12u16 {
        let frame = tcp(me, mac, 41000 + i, TCP_PORT, SYN, b"");
        let prog = prog.try_clone().unwrap();
        let pick = thread::scope(|s| {
            s.spawn(|| {
                pin_to_cpu(usize::from(i % 2));
                let _netns = InNetns::enter(host);
                let out = test_run(prog.as_fd(), &frame, 1).unwrap();
                let dst_at = if out.retval == XDP_PASS { 12 + 14 } else { 64 };
                <[u8; 4]>::try_from(&out.data_out[dst_at + 16..dst_at + 20]).unwrap()
            })
            .join()
            .unwrap()
        });
        picks.push(pick);
    }
    let expected: Vec<[u8; 4]> = (0..12).map(|i| order[i % 3]).collect();
    assert_eq!(picks, expected, "one rotation across CPUs 0 and 1");

    // Both CPUs at once: every backend gets exactly its share.
    let per_thread = 30u16;
    let all: Vec<[u8; 4]> = thread::scope(|s| {
        let handles: Vec<_> = (0..2u16)
            .map(|cpu| {
                let prog = prog.try_clone().unwrap();
                s.spawn(move || {
                    pin_to_cpu(cpu as usize);
                    let _netns = InNetns::enter(host);
                    (0..per_thread)
                        .map(|i| {
                            let frame = tcp(me, mac, 42000 + cpu * 1000 + i, TCP_PORT, SYN, b"");
                            let out = test_run(prog.as_fd(), &frame, 1).unwrap();
                            let at = if out.retval == XDP_PASS { 12 + 14 } else { 64 };
                            <[u8; 4]>::try_from(&out.data_out[at + 16..at + 20]).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for backend in &order {
        assert_eq!(
            all.iter().filter(|p| *p == backend).count(),
            20,
            "concurrent picks shared exactly"
        );
    }
    assert_eq!(b.cursor(1), 12 + 60);
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity");
    }
}

#[test]
fn what_no_live_flow_takes_is_reset_refused_or_dropped() {
    let mut b = Bed::new("mesh-reset", config());
    let _netns = InNetns::enter(b.host());
    let (me, mac) = (b.me, b.my_mac);

    // TCP without a flow: reset from the port it tried, at its ACK number.
    let out = b.run(
        "ack without a flow",
        &tcp(me, mac, 43000, TCP_PORT, ACK, b"data"),
        XDP_REDIRECT,
        Verdict::MESH_RESET,
    );
    assert_eq!(out.len(), 54);
    assert_eq!(&out[..6], &CLIENT_MAC, "back to the sender");
    assert_eq!(&out[6..12], &mac);
    let ip = &out[14..];
    assert_checksums("reset", ip);
    assert_eq!(&ip[12..16], &me);
    assert_eq!(&ip[16..20], &CLIENT);
    assert_eq!(&ip[20..22], &TCP_PORT.to_be_bytes());
    assert_eq!(&ip[22..24], &43000u16.to_be_bytes());
    assert_eq!(
        &ip[24..28],
        &5000u32.to_be_bytes(),
        "seq = the segment's ack"
    );
    assert_eq!(ip[33], 0x04, "RST");
    assert_eq!(b.cursor(1), 0, "no pick for a reset");

    // No serving task: SYN → RST+ACK, UDP → ICMP port unreachable.
    let out = b.run(
        "syn to a service without tasks",
        &tcp(me, mac, 43001, EMPTY_TCP, SYN, b""),
        XDP_REDIRECT,
        Verdict::MESH_NO_BACKEND,
    );
    let ip = &out[14..];
    assert_checksums("refusal", ip);
    assert_eq!(ip[33], 0x14, "RST+ACK");
    assert_eq!(&ip[28..32], &1001u32.to_be_bytes(), "acks the SYN");
    let query = udp(me, mac, 43002, EMPTY_UDP, b"query");
    let out = b.run(
        "udp to a service without tasks",
        &query,
        XDP_REDIRECT,
        Verdict::MESH_NO_BACKEND,
    );
    assert_eq!(out.len(), 14 + 56);
    let ip = &out[14..];
    assert_eq!(checksum(&ip[..20]), 0);
    assert_eq!((ip[9], ip[20], ip[21]), (1, 3, 3), "ICMP port unreachable");
    assert_eq!(checksum(&ip[20..]), 0, "ICMP checksum");
    assert_eq!(&ip[28..], &query[14..14 + 28], "quotes the datagram");
    assert_eq!(b.stats(3, [0; 4]).new_flows, 2, "refusals counted");

    // Nonsense, fragments, options, bad checksums: dropped before the conntrack.
    let mut bad = Vec::new();
    let syn_fin = Tcp { fin: true, ..SYN };
    bad.push(("syn+fin", tcp(me, mac, 43003, TCP_PORT, syn_fin, b"")));
    bad.push((
        "no flags",
        tcp(me, mac, 43004, TCP_PORT, Tcp::default(), b""),
    ));
    let mut frag = udp(me, mac, 43005, UDP_PORT, b"first fragment");
    set_ip(&mut frag, 6, &[0x20, 0]);
    bad.push(("first fragment", frag));
    let mut ip_check = tcp(me, mac, 43006, TCP_PORT, SYN, b"");
    ip_check[24] ^= 0xff;
    bad.push(("bad ip checksum", ip_check));
    let mut tcp_check = tcp(me, mac, 43007, TCP_PORT, SYN, b"");
    tcp_check[50] ^= 0xff;
    bad.push(("syn with a bad tcp checksum", tcp_check));
    let mut options = udp(me, mac, 43008, UDP_PORT, b"opts");
    options.splice(34..34, [1, 1, 1, 0]);
    set_ip(&mut options, 0, &[0x46]);
    let total = u16::from_be_bytes([options[16], options[17]]) + 4;
    set_ip(&mut options, 2, &total.to_be_bytes());
    bad.push(("ip options", options));
    let mut short = tcp(me, mac, 43009, TCP_PORT, SYN, b"");
    set_ip(&mut short, 2, &200u16.to_be_bytes());
    bad.push(("length beyond the frame", short));
    // A TCP header cut short after the ports (random bytes a scanner sends).
    let mut cut = tcp(me, mac, 43010, TCP_PORT, SYN, b"");
    cut.truncate(14 + 20 + 9);
    set_ip(&mut cut, 2, &29u16.to_be_bytes());
    bad.push(("tcp header cut short", cut));
    let mut tcp_options = tcp(me, mac, 43011, TCP_PORT, SYN, b"");
    tcp_options.splice(34..34, [1, 1, 1, 0]);
    set_ip(&mut tcp_options, 0, &[0x46]);
    let total = u16::from_be_bytes([tcp_options[16], tcp_options[17]]) + 4;
    set_ip(&mut tcp_options, 2, &total.to_be_bytes());
    bad.push(("tcp with ip options", tcp_options));
    for (what, frame) in &bad {
        let out = b.run(what, frame, XDP_DROP, Verdict::MESH_INVALID);
        assert_eq!(&out, frame, "{what} untouched");
    }
    assert_eq!(b.cursor(1), 0, "nothing invalid advanced the rotation");
    assert_eq!(b.cursor(2), 0);
    assert_eq!(b.flows().keys().count(), 0, "nor created an entry");
    assert_eq!(b.stats(1, [0; 4]).packets, 8, "service drops counted");

    // A later fragment has no ports: the host's to reassemble.
    let mut later = udp(me, mac, 43010, UDP_PORT, b"later");
    set_ip(&mut later, 6, &[0, 0x10]);
    b.run("later fragment", &later, XDP_PASS, Verdict::PASS);

    // Too big for the overlay: with DF, ICMP fragmentation needed (MTU 1410 + 40);
    // without, dropped.
    let mut big = udp(me, mac, 43011, UDP_PORT, &[0x5a; 1472]);
    set_ip(&mut big, 6, &[0x40, 0]);
    let out = b.run(
        "1500-byte udp, DF",
        &big,
        XDP_REDIRECT,
        Verdict::MESH_FRAG_NEEDED,
    );
    let ip = &out[14..];
    assert_eq!((ip[20], ip[21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([ip[26], ip[27]]), MSS + 40, "the MTU");
    assert_eq!(checksum(&ip[20..]), 0);
    assert_eq!(&ip[28..], &big[14..14 + 28]);
    let mut no_df = udp(me, mac, 43012, UDP_PORT, &[0x5a; 1472]);
    set_ip(&mut no_df, 6, &[0, 0]);
    b.run("1500-byte udp, no DF", &no_df, XDP_DROP, Verdict::TOO_BIG);
    assert_eq!(b.cursor(2), 0, "too big: no flow opened, no pick taken");
    // A datagram that fits is balanced.
    b.run(
        "1450-byte udp",
        &udp(me, mac, 43013, UDP_PORT, &[0x5a; 1422]),
        XDP_PASS,
        Verdict::MESH_NEW_FLOW,
    );
}

/// Sets bytes of the IPv4 header at `offset` and fixes its checksum.
fn set_ip(frame: &mut [u8], offset: usize, bytes: &[u8]) {
    frame[14 + offset..14 + offset + bytes.len()].copy_from_slice(bytes);
    let ihl = (frame[14] & 0x0f) as usize * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn expired_flows_and_dead_backends_are_reset_and_a_syn_repicks() {
    let mut b = Bed::new(
        "mesh-expire",
        MeshConfig {
            syn_timeout_ns: 20_000_000,
            established_timeout_ns: 20_000_000,
            ..config()
        },
    );
    let _netns = InNetns::enter(b.host());
    let (me, mac) = (b.me, b.my_mac);
    let first = expect_delivery(
        &mut b,
        "syn",
        &tcp(me, mac, 44000, TCP_PORT, SYN, b""),
        Verdict::MESH_NEW_FLOW,
    );
    expect_delivery(
        &mut b,
        "ack",
        &tcp(me, mac, 44000, TCP_PORT, ACK, b""),
        Verdict::MESH_FLOW,
    );
    thread::sleep(Duration::from_millis(60));
    let deleted = b.ct_event(CT_DELETED);
    b.run(
        "ack after the established timeout",
        &tcp(me, mac, 44000, TCP_PORT, ACK, b"late"),
        XDP_REDIRECT,
        Verdict::MESH_RESET,
    );
    assert_eq!(b.ct_event(CT_DELETED) - deleted, 1, "entry deleted");
    assert_eq!(b.flows().keys().count(), 0);

    // A SYN after expiry opens a new flow with the next pick.
    let before = b.cursor(1);
    let _ = expect_delivery(
        &mut b,
        "syn again",
        &tcp(me, mac, 44001, TCP_PORT, SYN, b""),
        Verdict::MESH_NEW_FLOW,
    );
    let _ = first;
    assert_eq!(b.cursor(1), before + 1);

    // A SYN on an expired entry of its own key replaces it with a new pick.
    let syn = tcp(me, mac, 44003, TCP_PORT, SYN, b"");
    expect_delivery(&mut b, "syn", &syn, Verdict::MESH_NEW_FLOW);
    thread::sleep(Duration::from_millis(60));
    let (inserted, before) = (b.ct_event(CT_INSERTED), b.cursor(1));
    expect_delivery(
        &mut b,
        "syn on the expired entry",
        &syn,
        Verdict::MESH_NEW_FLOW,
    );
    assert_eq!(b.cursor(1), before + 1, "re-picked");
    assert_eq!(b.ct_event(CT_INSERTED), inserted, "replaced, not inserted");

    // A dead backend (its endpoint gone): its flow's next segment is reset.
    b.set_config(config());
    let syn = tcp(me, mac, 44002, TCP_PORT, SYN, b"");
    let backend = expect_delivery(&mut b, "syn to die", &syn, Verdict::MESH_NEW_FLOW);
    let mut overlay = OverlayMaps::open(&b.pins).unwrap();
    overlay
        .remove_endpoint(EndpointKey {
            vni: VNI,
            ip: backend,
        })
        .unwrap();
    b.run(
        "ack to a dead backend",
        &tcp(me, mac, 44002, TCP_PORT, ACK, b""),
        XDP_REDIRECT,
        Verdict::MESH_RESET,
    );
    // New flows skip it.
    for i in 0..6u16 {
        let picked = expect_delivery(
            &mut b,
            "syn skipping the dead",
            &tcp(me, mac, 44100 + i, TCP_PORT, SYN, b""),
            Verdict::MESH_NEW_FLOW,
        );
        assert_ne!(picked, backend);
    }
}

#[test]
fn a_backends_reply_is_translated_back_to_the_client() {
    let mut b = Bed::new("mesh-reply", config());
    let _netns = InNetns::enter(b.host());
    let (me, mac) = (b.me, b.my_mac);
    // Rotate to REMOTE_A (index 1): the first flow goes to the local backend.
    expect_delivery(
        &mut b,
        "first",
        &tcp(me, mac, 45000, TCP_PORT, SYN, b""),
        Verdict::MESH_NEW_FLOW,
    );
    let backend = expect_delivery(
        &mut b,
        "second",
        &tcp(me, mac, 45001, TCP_PORT, SYN, b""),
        Verdict::MESH_NEW_FLOW,
    );
    assert_eq!(backend, REMOTE_A);

    // Only the local backend's flow has a reply entry here: a remote one's replies carry
    // the published port back.
    let replies: HashMap<_, ReplyKey, Reply> =
        HashMap::try_from(map(&b.pins, spec::MESH_REPLIES.name)).unwrap();
    let reply_key = |backend: [u8; 4], client_port: u16| ReplyKey {
        backend_ip: backend,
        client_ip: CLIENT,
        backend_port_be: TCP_TARGET.to_be_bytes(),
        client_port_be: client_port.to_be_bytes(),
        protocol: 6,
        _pad: [0; 3],
    };
    let local = replies.get(&reply_key(LOCAL_BACKEND, 45000), 0).unwrap();
    assert_eq!(
        (local.ingress_ip, local.published_port_be),
        (me, TCP_PORT.to_be_bytes())
    );
    assert!(
        replies.get(&reply_key(REMOTE_A, 45001), 0).is_err(),
        "no reply entry for a remote backend's flow"
    );
    drop(replies);

    // The task's SYN-ACK, encapsulated by its host on the ingress VNI, the published
    // port in the inner destination MAC.
    let syn_ack = |dst_mac: [u8; 6]| {
        let mut inner = Vec::new();
        PacketBuilder::ethernet2(endpoint_mac(REMOTE_A), dst_mac)
            .ipv4(REMOTE_A, CLIENT, 64)
            .tcp(TCP_TARGET, 45001, 7000, 65160)
            .syn()
            .ack(1001)
            .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
            .unwrap()
            .write(&mut inner, b"")
            .unwrap();
        inner
    };
    let inner = syn_ack(published_port_mac(TCP_PORT.to_be_bytes()));
    let from = |src: [u8; 4], vni: u32, inner: &[u8]| {
        let mut payload = vxlan_header(vni).to_vec();
        payload.extend_from_slice(inner);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(HOST_A_MAC, mac)
            .ipv4(src, me, 64)
            .udp(50000, 4789)
            .write(&mut frame, &payload)
            .unwrap();
        frame
    };
    let out = b.run(
        "syn-ack from the backend's host",
        &from(HOST_A, INGRESS_VNI, &inner),
        XDP_REDIRECT,
        Verdict::MESH_REPLY,
    );
    assert_eq!(&out[..6], &CLIENT_MAC, "to the client, MAC from the FIB");
    assert_eq!(&out[6..12], &mac);
    let ip = &out[14..];
    assert_checksums("reply", ip);
    assert_eq!(&ip[12..16], &me, "from the address the client sent to");
    assert_eq!(&ip[16..20], &CLIENT);
    assert_eq!(
        &ip[20..22],
        &TCP_PORT.to_be_bytes(),
        "from the published port"
    );
    assert_eq!(&ip[40..44], &[2, 4, 0x05, 0x82], "SYN-ACK's MSS clamped");
    assert_eq!(out.len(), inner.len(), "outer headers gone");
    assert_eq!(b.stats(1, REMOTE_A).packets, 2, "syn and reply counted");

    // Not a reply from that backend's host, or not naming the flow's published port: on
    // the ingress VNI it is judged by the backend host's rules (no local target here), so
    // refused and dropped — never passed to the host stack. On another VNI it is not the
    // mesh's (unknown VNIs pass untouched).
    for (what, frame) in [
        ("from another node", from(HOST_B, INGRESS_VNI, &inner)),
        (
            "from a stranger",
            from([10, 200, 0, 99], INGRESS_VNI, &inner),
        ),
        ("from this node itself", from(me, INGRESS_VNI, &inner)),
        (
            "without the published port",
            from(HOST_A, INGRESS_VNI, &syn_ack(GATEWAY_MAC)),
        ),
        (
            "naming another published port",
            from(
                HOST_A,
                INGRESS_VNI,
                &syn_ack(published_port_mac(UDP_PORT.to_be_bytes())),
            ),
        ),
    ] {
        b.run(what, &frame, XDP_DROP, Verdict::MESH_REFUSED);
    }
    let frame = from(HOST_A, 5000, &inner);
    let out = b.run("another vni", &frame, XDP_PASS, Verdict::PASS);
    assert_eq!(out, frame, "another vni untouched");
    assert_eq!(b.slot(Verdict::MESH_REPLY), 1);
}

#[test]
fn with_the_mesh_off_published_ports_pass_untouched() {
    let mut b = Bed::new("mesh-off", MeshConfig::default());
    let _netns = InNetns::enter(b.host());
    let (me, mac) = (b.me, b.my_mac);
    for (what, frame) in [
        ("tcp syn", tcp(me, mac, 46000, TCP_PORT, SYN, b"")),
        ("udp", udp(me, mac, 46001, UDP_PORT, b"x")),
    ] {
        let out = b.run(what, &frame, XDP_PASS, Verdict::PASS);
        assert_eq!(out, frame);
    }
    assert_eq!(b.cursor(1), 0);
}

/// A flow's next hop comes from the FIB once and is kept in its conntrack entry (no FIB
/// lookup per packet); it is asked again at the flow's next refresh of `last_seen_ns`
/// (here after 500 ms: a quarter of a 2 s timeout; long enough that the commands between
/// the packets cannot reach it on a loaded machine), so a host's new MAC is used from
/// then on.
#[test]
fn a_flow_keeps_its_next_hop_until_its_refresh() {
    let mut b = Bed::new(
        "mesh-hop",
        MeshConfig {
            syn_timeout_ns: 2_000_000_000,
            established_timeout_ns: 2_000_000_000,
            ..config()
        },
    );
    let _netns = InNetns::enter(b.host());
    let (me, mac) = (b.me, b.my_mac);
    // The rotation's second pick is REMOTE_A (on HOST_A).
    expect_delivery(
        &mut b,
        "syn 1",
        &tcp(me, mac, 45000, TCP_PORT, SYN, b""),
        Verdict::MESH_NEW_FLOW,
    );
    let sport = 45001;
    let picked = expect_delivery(
        &mut b,
        "syn 2",
        &tcp(me, mac, sport, TCP_PORT, SYN, b""),
        Verdict::MESH_NEW_FLOW,
    );
    assert_eq!(picked, REMOTE_A);
    let ack = tcp(me, mac, sport, TCP_PORT, ACK, b"x");
    expect_delivery(&mut b, "first ack", &ack, Verdict::MESH_FLOW);
    let key = FlowKey {
        client_ip: CLIENT,
        node_ip: me,
        client_port_be: sport.to_be_bytes(),
        published_port_be: TCP_PORT.to_be_bytes(),
        protocol: 6,
        _pad: [0; 3],
    };
    let flow = b.flows().get(&key, 0).expect("the flow's entry");
    let eth0: u32 = b
        .host()
        .run("cat", ["/sys/class/net/eth0/ifindex"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        (flow.hop_ifindex, flow.hop_dmac, flow.hop_smac),
        (eth0, HOST_A_MAC, b.my_mac),
        "next hop kept in the entry"
    );
    assert!(flow.hop_mtu >= 1500, "the route's MTU: {}", flow.hop_mtu);

    let moved = [0x02, 0, 0, 0, 0, 0x99];
    b.host()
        .run(
            "ip",
            [
                "neigh",
                "replace",
                "10.200.0.12",
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    let out = b.run("ack, kept hop", &ack, XDP_REDIRECT, Verdict::MESH_FLOW);
    assert_eq!(
        &out[..6],
        &HOST_A_MAC,
        "the kept next hop, not a FIB lookup"
    );
    thread::sleep(Duration::from_millis(700));
    let out = b.run(
        "ack after the refresh",
        &ack,
        XDP_REDIRECT,
        Verdict::MESH_FLOW,
    );
    assert_eq!(&out[..6], &moved, "asked the FIB again at the refresh");
    assert_eq!(b.flows().get(&key, 0).unwrap().hop_dmac, moved);
}
