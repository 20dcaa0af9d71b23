//! Differential fuzzing of Skein's three programs: random and mutated frames go through
//! the real, verifier-accepted programs (`BPF_PROG_TEST_RUN`) and through the userspace
//! model of their rules (`dataplane_ebpf::model`), against maps set up for a small
//! cluster; the counter slot that moved, the action and the output frame must agree.
//! Needs root; run by `cargo xtask test`.
//!
//! `SKEIN_DIFF_FRAMES` sets how many frames (each goes through all three programs;
//! default 20,000), `SKEIN_DIFF_SEED` the seed (default fixed, so the suite is
//! deterministic; printed either way). A disagreement fails with the program, the seed,
//! the frame's index and bytes in hex and both results.
//!
//! What the test runner cannot show: a redirect's target ifindex (the kernel records it,
//! the return code is `TC_ACT_REDIRECT` for all of them), the outer UDP source port and
//! IP ID of an encapsulated frame (flow hash and random; see `model::Outcome::unknown`),
//! and `tc_underlay_ingress`'s path for frames XDP marked (a tc test run has no XDP
//! metadata).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::Ipv4Addr,
    os::fd::{AsFd, BorrowedFd},
    time::Instant,
};

use agent::dataplane::{self, OverlayMaps, PinDirs};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{SchedClassifier, Xdp},
    Ebpf,
};
use dataplane_ebpf::{
    counters::{Counter, Verdict},
    guard::{GuardedPort, IPPROTO_TCP, IPPROTO_UDP},
    maps::{self as spec, MapSpec},
    model::{self, Cluster, Kernel, Outcome, Program, Route},
    names,
    overlay::{
        endpoint_mac, ipv4_checksum, vxlan_header, EndpointKey, EndpointValue, NetworkValue,
        PortValue, SubnetKey, UnderlayValue, VtepKey, VtepValue, GATEWAY_MAC,
    },
};
use dataplane_ebpf_test_run::test_run;
use xtask::testbed::{Host, InNetns, Testbed, TestbedConfig};

const VNI_A: u32 = 4096;
const VNI_B: u32 = 4097;
/// A network with no endpoint on this host.
const VNI_C: u32 = 4098;
/// A VNI no network has.
const VNI_UNKNOWN: u32 = 5000;
/// The port under test: the skb test runner presents every packet as received on
/// ifindex 1 (the namespace's `lo`).
const PORT: u32 = 1;
const ME: [u8; 4] = [10, 0, 1, 2];
const LOCAL: [u8; 4] = [10, 0, 1, 3];
const LOCAL_IFINDEX: u32 = 7;
const REMOTE: [u8; 4] = [10, 0, 1, 4];
/// A remote endpoint whose host has no route.
const FAR: [u8; 4] = [10, 0, 1, 5];
const FAR_HOST: [u8; 4] = [172, 31, 9, 9];
/// A remote endpoint whose host is on the underlay but not resolved.
const UNRESOLVED: [u8; 4] = [10, 0, 1, 6];
const B_LOCAL: [u8; 4] = [10, 0, 2, 3];
const B_REMOTE: [u8; 4] = [10, 0, 2, 4];
const C_REMOTE: [u8; 4] = [10, 0, 3, 4];
const PEER: [u8; 4] = [10, 200, 0, 12];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
/// An underlay host without a resolved neighbour entry.
const QUIET_HOST: [u8; 4] = [10, 200, 0, 13];
const VTEP_HOST: [u8; 4] = [10, 200, 0, 50];
const VTEP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x50];
const VTEP_INNER: [u8; 4] = [10, 0, 1, 200];
/// A cluster node's gossip address (guarded, not routed).
const GOSSIP_IP: [u8; 4] = [10, 201, 5, 5];
/// Routed via `PEER`: a destination the FIB forwards.
const ROUTED: [u8; 4] = [198, 51, 100, 7];
const GOSSIP_PORT: u16 = 7946;
const METRICS_PORT: u16 = 9464;

/// A small deterministic generator (SplitMix64): reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

fn sys(host: &Host, file: &str) -> String {
    host.run("cat", [format!("/sys/class/net/eth0/{file}")])
        .unwrap()
        .trim()
        .to_string()
}

fn mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// The cluster's maps, as this host's agent would write them.
fn cluster(host: &Host) -> Cluster {
    let me = host.underlay_ip().octets();
    let mut c = Cluster {
        underlay: UnderlayValue {
            ifindex: sys(host, "ifindex").parse().unwrap(),
            ip: me,
            mac: mac(&sys(host, "address")),
            _pad: [0; 2],
        },
        ..Default::default()
    };
    for (vni, third) in [(VNI_A, 1), (VNI_B, 2), (VNI_C, 3)] {
        let subnet = [10, 0, third, 0];
        c.networks.insert(
            vni,
            NetworkValue {
                subnet,
                prefix_len: 24,
                gateway: [10, 0, third, 1],
            },
        );
        c.subnets.push((SubnetKey::new(subnet, 24), vni));
    }
    // A subnet whose network is gone (the maps converge one entry at a time).
    c.subnets.push((SubnetKey::new([10, 0, 4, 0], 24), 4099));
    c.ports.insert(PORT, PortValue { vni: VNI_A, ip: ME });
    for (vni, ip, host_ip, ifindex) in [
        (VNI_A, ME, me, PORT),
        (VNI_A, LOCAL, me, LOCAL_IFINDEX),
        (VNI_A, REMOTE, PEER, 0),
        (VNI_A, FAR, FAR_HOST, 0),
        (VNI_A, UNRESOLVED, QUIET_HOST, 0),
        (VNI_B, B_LOCAL, me, 8),
        (VNI_B, B_REMOTE, PEER, 0),
        (VNI_C, C_REMOTE, PEER, 0),
    ] {
        c.endpoints
            .insert(EndpointKey { vni, ip }, EndpointValue { host_ip, ifindex });
    }
    c.vteps.push((
        VtepKey::new(VNI_A, [10, 0, 1, 128], 25),
        VtepValue {
            underlay_ip: VTEP_HOST,
            mac: VTEP_MAC,
            _pad: [0; 2],
        },
    ));
    c.guarded_hosts
        .extend([me, PEER, QUIET_HOST, VTEP_HOST, GOSSIP_IP]);
    c.guarded_ports.extend([
        GuardedPort::new(IPPROTO_UDP, 4789),
        GuardedPort::new(IPPROTO_UDP, GOSSIP_PORT),
        GuardedPort::new(IPPROTO_TCP, GOSSIP_PORT),
        GuardedPort::new(IPPROTO_TCP, METRICS_PORT),
    ]);
    c
}

fn open_pin(pins: &PinDirs, spec: &MapSpec) -> MapData {
    MapData::from_pin(pins.maps().join(spec.name))
        .unwrap_or_else(|e| panic!("opening the pin of {}: {e}", spec.name))
}

/// Writes `cluster` into the pinned maps.
fn program_maps(pins: &PinDirs, cluster: &Cluster) {
    let mut maps = OverlayMaps::open(pins).expect("overlay maps");
    maps.set_underlay(cluster.underlay).unwrap();
    for (vni, net) in &cluster.networks {
        maps.put_network(*vni, *net).unwrap();
    }
    for (key, vni) in &cluster.subnets {
        maps.put_subnet(*key, *vni).unwrap();
    }
    for (ifindex, port) in &cluster.ports {
        maps.put_port(*ifindex, *port).unwrap();
    }
    for (key, value) in &cluster.endpoints {
        maps.put_endpoint(*key, *value).unwrap();
    }
    for (key, value) in &cluster.vteps {
        maps.put_vtep(*key, *value).unwrap();
    }
    for ip in &cluster.guarded_hosts {
        maps.put_guarded_host(*ip).unwrap();
    }
    for port in &cluster.guarded_ports {
        maps.put_guarded_port(*port).unwrap();
    }
}

/// Sets up the namespace's FIB (forwarding on, a resolved peer, a routed prefix) and
/// reads back what the model needs: the `local` and `main` tables and the neighbours.
fn kernel(host: &Host) -> Kernel {
    host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])
        .unwrap();
    let peer = Ipv4Addr::from(PEER).to_string();
    host.run(
        "ip",
        [
            "neigh",
            "replace",
            &peer,
            "lladdr",
            "02:00:00:00:00:12",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    host.run("ip", ["route", "replace", "198.51.100.0/24", "via", &peer])
        .unwrap();
    let routes = |table: &str| -> Vec<Route> {
        let json = host
            .run("ip", ["-j", "route", "show", "table", table])
            .unwrap();
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let kind = r["type"].as_str().unwrap_or("unicast");
                assert!(
                    table == "local" || kind == "unicast",
                    "the model knows only unicast routes in main: {r}"
                );
                let dst = r["dst"].as_str().unwrap();
                let (prefix, len) = match dst {
                    "default" => ("0.0.0.0", "0"),
                    _ => dst.split_once('/').unwrap_or((dst, "32")),
                };
                Route {
                    prefix: prefix.parse::<Ipv4Addr>().unwrap().octets(),
                    prefix_len: len.parse().unwrap(),
                    gateway: r["gateway"]
                        .as_str()
                        .map(|g| g.parse::<Ipv4Addr>().unwrap().octets()),
                }
            })
            .collect()
    };
    let neighbours = {
        let json = host.run("ip", ["-j", "neigh", "show"]).unwrap();
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == "PERMANENT"))
            })
            .map(|n| {
                (
                    n["dst"]
                        .as_str()
                        .unwrap()
                        .parse::<Ipv4Addr>()
                        .unwrap()
                        .octets(),
                    mac(n["lladdr"].as_str().unwrap()),
                )
            })
            .collect()
    };
    Kernel {
        forwarding: true,
        local_routes: routes("local"),
        routes: routes("main"),
        neighbours,
        underlay_mac: mac(&sys(host, "address")),
        underlay_mtu: sys(host, "mtu").parse().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------
// Frames.

fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len() as u16).to_be_bytes();
    let mut ip = [
        0x45, 0, total[0], total[1], 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0, src[0], src[1],
        src[2], src[3], dst[0], dst[1], dst[2], dst[3],
    ];
    let sum = ipv4_checksum(&ip).to_be_bytes();
    ip[10..12].copy_from_slice(&sum);
    let mut out = ip.to_vec();
    out.extend_from_slice(l4);
    out
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// UDP, TCP or ICMP with `payload_len` bytes after the L4 header.
fn l4(rng: &mut Rng, protocol: u8, dport: u16, payload_len: usize) -> Vec<u8> {
    let sport = (1024 + rng.below(60000)) as u16;
    let mut out = match protocol {
        IPPROTO_UDP => {
            let len = (8 + payload_len) as u16;
            let mut h = sport.to_be_bytes().to_vec();
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&len.to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h
        }
        IPPROTO_TCP => {
            let mut h = sport.to_be_bytes().to_vec();
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&rng.bytes(8));
            h.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            h
        }
        _ => vec![rng.pick(&[0u8, 3, 8, 11]), 0, 0, 0, 0, 1, 0, 1],
    };
    out.extend(rng.bytes(payload_len));
    out
}

const ADDRESSES: &[[u8; 4]] = &[
    ME,
    LOCAL,
    REMOTE,
    FAR,
    UNRESOLVED,
    B_LOCAL,
    B_REMOTE,
    C_REMOTE,
    VTEP_INNER,
    [10, 0, 1, 1],
    [10, 0, 2, 1],
    [10, 0, 1, 77],
    [10, 0, 4, 5],
    PEER,
    QUIET_HOST,
    VTEP_HOST,
    GOSSIP_IP,
    [10, 200, 0, 2],
    [10, 200, 0, 255],
    ROUTED,
    [1, 1, 1, 1],
    [127, 0, 0, 1],
    [224, 0, 0, 1],
    [255, 255, 255, 255],
    [0, 0, 0, 0],
];

fn address(rng: &mut Rng, host_ip: [u8; 4]) -> [u8; 4] {
    match rng.below(ADDRESSES.len() + 2) {
        i if i < ADDRESSES.len() => ADDRESSES[i],
        i if i == ADDRESSES.len() => host_ip,
        _ => rng.bytes(4).try_into().unwrap(),
    }
}

fn port(rng: &mut Rng) -> u16 {
    {
        let r = rng.next();
        rng.pick(&[4789, GOSSIP_PORT, METRICS_PORT, 53, 80, 4790, r as u16])
    }
}

fn protocol(rng: &mut Rng) -> u8 {
    rng.pick(&[IPPROTO_UDP, IPPROTO_UDP, IPPROTO_TCP, IPPROTO_TCP, 1, 47])
}

fn payload_len(rng: &mut Rng) -> usize {
    match rng.below(16) {
        0 => 1350 + rng.below(200),
        1..=3 => rng.below(4),
        _ => rng.below(120),
    }
}

/// An ARP packet (IPv4 over Ethernet) from `spa` at `sha` about `tpa`.
fn arp_body(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4];
    arp.extend_from_slice(&op.to_be_bytes());
    arp.extend_from_slice(&sha);
    arp.extend_from_slice(&spa);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&tpa);
    arp
}

/// A valid frame of some kind, before mutation.
fn base_frame(rng: &mut Rng, host_ip: [u8; 4]) -> Vec<u8> {
    match rng.below(6) {
        // What the endpoint sends: from its own address (mostly) to anywhere.
        0 | 1 => {
            let src = if rng.chance(8) {
                address(rng, host_ip)
            } else {
                ME
            };
            let dst = address(rng, host_ip);
            let p = protocol(rng);
            let dport = port(rng);
            let len = payload_len(rng);
            let body = l4(rng, p, dport, len);
            ethernet(
                GATEWAY_MAC,
                endpoint_mac(src),
                0x0800,
                &ipv4(src, dst, p, &body),
            )
        }
        // ARP from the endpoint.
        2 => {
            let op: u16 = rng.pick(&[1, 1, 1, 2, 3]);
            let spa = if rng.chance(4) {
                address(rng, host_ip)
            } else {
                ME
            };
            let tpa = address(rng, host_ip);
            let arp = arp_body(op, endpoint_mac(ME), spa, tpa);
            let mut f = ethernet([0xff; 6], endpoint_mac(ME), 0x0806, &arp);
            if rng.chance(2) {
                f.resize(60, 0);
            }
            f
        }
        // VXLAN on the underlay.
        3 | 4 => {
            let vni = rng.pick(&[VNI_A, VNI_A, VNI_A, VNI_B, VNI_C, VNI_UNKNOWN]);
            let inner_src = rng.pick(&[REMOTE, REMOTE, B_REMOTE, VTEP_INNER, ME, C_REMOTE]);
            let inner_src = if rng.chance(8) {
                address(rng, host_ip)
            } else {
                inner_src
            };
            let inner_dst = rng.pick(&[LOCAL, LOCAL, ME, B_LOCAL, REMOTE]);
            let inner_dst = if rng.chance(8) {
                address(rng, host_ip)
            } else {
                inner_dst
            };
            let outer_src = rng.pick(&[PEER, PEER, PEER, VTEP_HOST, QUIET_HOST]);
            let p = protocol(rng);
            let dport = port(rng);
            let len = payload_len(rng).min(1300);
            let body = l4(rng, p, dport, len);
            // Now and then the inner frame is ARP (the overlay carries only IPv4).
            let (inner_type, inner_payload) = match rng.chance(16) {
                true => (
                    0x0806,
                    arp_body(1, endpoint_mac(inner_src), inner_src, inner_dst),
                ),
                false => (0x0800, ipv4(inner_src, inner_dst, p, &body)),
            };
            let inner = ethernet(
                endpoint_mac(inner_dst),
                endpoint_mac(inner_src),
                inner_type,
                &inner_payload,
            );
            let mut udp_payload = vxlan_header(vni).to_vec();
            udp_payload.extend_from_slice(&inner);
            let mut udp = rng.bytes(2);
            udp.extend_from_slice(&4789u16.to_be_bytes());
            udp.extend_from_slice(&(8 + udp_payload.len() as u16).to_be_bytes());
            udp.extend_from_slice(&[0, 0]);
            udp.extend_from_slice(&udp_payload);
            let mut outer = ipv4(outer_src, host_ip, IPPROTO_UDP, &udp);
            outer[6] = 0; // no DF
            ethernet(PEER_MAC, [2, 0, 0, 0, 0, 0x11], 0x0800, &outer)
        }
        // Plain IPv4 on the underlay: routed towards the overlay, or for the host.
        _ => {
            let dst = rng.pick(&[LOCAL, ME, B_LOCAL, [10, 0, 1, 77], [10, 0, 4, 5], host_ip]);
            let dst = if rng.chance(4) {
                address(rng, host_ip)
            } else {
                dst
            };
            let p = protocol(rng);
            let dport = port(rng);
            let len = payload_len(rng);
            let body = l4(rng, p, dport, len);
            ethernet(
                [2, 0, 0, 0, 0, 0x11],
                PEER_MAC,
                0x0800,
                &ipv4([10, 200, 0, 2], dst, p, &body),
            )
        }
    }
}

/// Where the IPv4 header is: the outer one, or (for a VXLAN-looking frame) the inner one.
fn ip_offset(rng: &mut Rng, frame: &[u8]) -> usize {
    if frame.len() > 84 && frame[36..38] == [0x12, 0xb5] && rng.chance(2) {
        64
    } else {
        14
    }
}

/// One mutation, blind or field-aware.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, host_ip: [u8; 4]) {
    let len = frame.len();
    let set = |frame: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        if at + bytes.len() <= frame.len() {
            frame[at..at + bytes.len()].copy_from_slice(bytes);
        }
    };
    match rng.below(16) {
        0 => {
            let bit = rng.below(len * 8);
            frame[bit / 8] ^= 1 << (bit % 8);
        }
        1 => {
            let i = rng.below(len);
            frame[i] = rng.next() as u8;
        }
        2 => frame.truncate(rng.below(len + 1).max(1)),
        3 => {
            let extra = rng.below(64);
            frame.extend(rng.bytes(extra));
        }
        4 => {
            let et: u16 = {
                let r = rng.next();
                rng.pick(&[0x0800, 0x0806, 0x86dd, 0x8100, r as u16])
            };
            let at = if ip_offset(rng, frame) == 64 { 62 } else { 12 };
            set(frame, at, &et.to_be_bytes());
        }
        5 => {
            let at = ip_offset(rng, frame);
            let v = ({
                let r = rng.next();
                rng.pick(&[4u8, 4, 4, 6, r as u8 >> 4])
            } << 4)
                | rng.below(16) as u8;
            set(frame, at, &[v]);
        }
        6 => {
            let at = ip_offset(rng, frame) + 6;
            let frag: u16 = {
                let r = rng.next();
                rng.pick(&[0x2000, 0x0001, 0x2010, 0x4000, 0, r as u16])
            };
            set(frame, at, &frag.to_be_bytes());
        }
        7 => {
            let at = ip_offset(rng, frame) + 9;
            let p = protocol(rng);
            set(frame, at, &[p]);
        }
        8 => {
            let at = ip_offset(rng, frame) + 22;
            let p = port(rng);
            set(frame, at, &p.to_be_bytes());
        }
        9 => {
            let vni = {
                let r = rng.next();
                rng.pick(&[VNI_A, VNI_B, VNI_C, VNI_UNKNOWN, 0, r as u32 & 0xff_ffff])
            };
            let v = vxlan_header(vni);
            set(frame, 46, &v[4..7]);
        }
        10 => {
            let flags = {
                let r = rng.next();
                rng.pick(&[0x08u8, 0x00, 0x0c, 0xff, r as u8])
            };
            set(frame, 42, &[flags]);
        }
        11 => {
            let at = ip_offset(rng, frame) + rng.pick(&[12, 16]);
            let a = address(rng, host_ip);
            set(frame, at, &a);
        }
        14 if len >= 34 => {
            // IPv4 options inserted into the outer header (IHL, total length follow).
            let words = 1 + rng.below(10);
            let ihl = (frame[14] & 0x0f) as usize;
            if ihl >= 5 && 14 + ihl * 4 <= len {
                let at = 14 + ihl * 4;
                let mut options = vec![1u8; words * 4 - 1];
                options.push(0);
                frame.splice(at..at, options);
                frame[14] = (frame[14] & 0xf0) | ((ihl + words).min(15) as u8);
                let total = u16::from_be_bytes([frame[16], frame[17]]);
                let total = total.wrapping_add(words as u16 * 4).to_be_bytes();
                frame[16..18].copy_from_slice(&total);
            }
        }
        15 => {
            // DF, none, MF, or a later fragment.
            let v: u16 = rng.pick(&[0x4000, 0x0000, 0x2000, 0x0001, 0x00b9]);
            let at = ip_offset(rng, frame) + 6;
            set(frame, at, &v.to_be_bytes());
        }
        12 => {
            // The outer UDP length field.
            let v: u16 = {
                let r = rng.next();
                rng.pick(&[0, 8, 49, 50, 51, r as u16])
            };
            set(frame, 38, &v.to_be_bytes());
        }
        _ => {
            // The ARP fields.
            let at = 14 + rng.pick(&[0, 2, 4, 5, 6, 14, 24]);
            let n = rng.pick(&[1, 2, 4]);
            let v = rng.bytes(n);
            set(frame, at, &v);
        }
    }
}

fn generate(rng: &mut Rng, host_ip: [u8; 4]) -> Vec<u8> {
    if rng.chance(16) {
        let n = 1 + rng.below(160);
        return rng.bytes(n);
    }
    let mut frame = base_frame(rng, host_ip);
    let mutations = match rng.below(8) {
        0 | 1 => 0,
        2..=5 => 1,
        _ => 2 + rng.below(3),
    };
    for _ in 0..mutations {
        mutate(rng, &mut frame, host_ip);
    }
    frame
}

// ---------------------------------------------------------------------------------------
// Running and comparing.

/// One program under test: its fd and its counters.
struct Subject<'a> {
    program: Program,
    name: &'static str,
    fd: BorrowedFd<'a>,
    counters: PerCpuArray<MapData, Counter>,
    /// The last known sum of every slot.
    seen: Vec<Counter>,
    /// Frames the test runner refused (EINVAL), by length.
    refused: BTreeMap<usize, u64>,
}

impl Subject<'_> {
    fn slot(&self, slot: u32) -> Counter {
        self.counters
            .get(&slot, 0)
            .map(|per_cpu| Counter::sum(per_cpu.iter()))
            .unwrap_or_default()
    }

    fn moved(&mut self) -> Vec<(Verdict, u64)> {
        let mut moved = Vec::new();
        for v in Verdict::ALL {
            let now = self.slot(v.slot());
            let before = self.seen[v.slot() as usize];
            if now != before {
                moved.push((v, now.packets - before.packets));
                self.seen[v.slot() as usize] = now;
            }
        }
        moved
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn describe(o: &Outcome) -> String {
    format!(
        "{}/{:?} action {:?} (retval {}) frame {} (unknown bytes {:?})",
        o.verdict.name(),
        o.verdict.reason(),
        o.action,
        o.action.retval(),
        hex(&o.frame),
        o.unknown
    )
}

/// Whether `BPF_PROG_TEST_RUN` refuses `frame` (EINVAL) before the program runs: XDP
/// and the skb runner anything shorter than an Ethernet header; the skb runner (kernel
/// 6.18) also an IPv4 or IPv6 EtherType without room for the fixed IP header. Found by this test; a refusal outside these rules fails it.
fn runner_refuses(program: Program, frame: &[u8]) -> bool {
    let ethertype = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    match program {
        Program::XdpUnderlay => frame.len() < 14,
        _ => {
            frame.len() < 14
                || (ethertype == Some(0x0800) && frame.len() < 14 + 20)
                || (ethertype == Some(0x86dd) && frame.len() < 14 + 40)
        }
    }
}

/// Runs one frame through one program and the model; `Err` describes a disagreement.
fn check(
    subject: &mut Subject<'_>,
    frame: &[u8],
    cluster: &Cluster,
    kernel: &Kernel,
) -> Result<(), String> {
    let expected = model::run(subject.program, frame, cluster, kernel);
    let refuses = runner_refuses(subject.program, frame);
    let out = match test_run(subject.fd, frame, 1) {
        Ok(_) if refuses => return Err("the test runner was expected to refuse it".into()),
        Ok(out) => out,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            *subject.refused.entry(frame.len()).or_default() += 1;
            let moved = subject.moved();
            return match (refuses, moved.is_empty()) {
                (true, true) => Ok(()),
                (false, _) => Err("refused by the test runner (EINVAL), unexpectedly".into()),
                (true, false) => Err(format!("refused (EINVAL), yet counted: {moved:?}")),
            };
        }
        Err(e) => return Err(format!("test run failed: {e}")),
    };
    let slot = expected.verdict.slot();
    let now = subject.slot(slot);
    let before = subject.seen[slot as usize];
    let counted_as_expected =
        now.packets == before.packets + 1 && now.bytes == before.bytes + frame.len() as u64;
    if counted_as_expected {
        subject.seen[slot as usize] = now;
    }
    let frame_ok = expected.matches(&out.data_out);
    // An encapsulated frame's outer IPv4 checksum must verify whatever the ID.
    let checksum_ok = expected.unknown.is_empty()
        || out
            .data_out
            .get(14..34)
            .is_some_and(|h| ipv4_checksum(h.try_into().unwrap()) == 0);
    if counted_as_expected && out.retval == expected.action.retval() && frame_ok && checksum_ok {
        return Ok(());
    }
    let moved = subject.moved();
    Err(format!(
        "expected: {}\n     got: counted {:?}, retval {}, frame {}{}",
        describe(&expected),
        moved
            .iter()
            .map(|(v, n)| format!("{}/{:?} +{n}", v.name(), v.reason()))
            .collect::<Vec<_>>(),
        out.retval,
        hex(&out.data_out),
        if checksum_ok {
            ""
        } else {
            " (outer IPv4 checksum does not verify)"
        }
    ))
}

fn xdp_fd(ebpf: &mut Ebpf) -> BorrowedFd<'_> {
    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .expect("xdp program")
        .try_into()
        .expect("xdp type");
    xdp.fd().expect("loaded").as_fd()
}

fn tc_fd<'a>(ebpf: &'a Ebpf, name: &str) -> BorrowedFd<'a> {
    let tc: &SchedClassifier = ebpf
        .program(name)
        .expect("program")
        .try_into()
        .expect("classifier");
    tc.fd().expect("loaded").as_fd()
}

#[test]
fn programs_agree_with_the_model_on_random_and_mutated_frames() {
    let frames = env_or("SKEIN_DIFF_FRAMES", 20_000);
    let seed = env_or("SKEIN_DIFF_SEED", 0x5ce1_0d1f);
    eprintln!("differential: {frames} frames, SKEIN_DIFF_SEED={seed}");

    let bed = Testbed::new("diff", TestbedConfig::with_hosts(1)).expect("testbed");
    let host = bed.host(0);
    let pins = PinDirs::new(host.bpf_dir());
    let _netns = InNetns::enter(host);
    let mut ebpf = dataplane::load(&pins).expect("object loads");
    let cluster = cluster(host);
    program_maps(&pins, &cluster);
    let kernel = kernel(host);
    eprintln!("kernel as the model sees it: {kernel:?}");
    let mut no_port = cluster.clone();
    no_port.ports.clear();
    let host_ip = host.underlay_ip().octets();

    // XDP needs `program_mut` to reach its fd; take it first and keep it for the run.
    let xdp = xdp_fd(&mut ebpf).try_clone_to_owned().unwrap();
    let subject = |program, name: &'static str, fd, spec: &MapSpec| {
        let counters =
            PerCpuArray::try_from(Map::PerCpuArray(open_pin(&pins, spec))).expect("counters");
        let mut s = Subject {
            program,
            name,
            fd,
            counters,
            seen: vec![Counter::default(); Verdict::ALL.len()],
            refused: BTreeMap::new(),
        };
        s.moved();
        s
    };
    let mut subjects = [
        subject(
            Program::XdpUnderlay,
            names::XDP_UNDERLAY,
            xdp.as_fd(),
            &spec::XDP_UNDERLAY_COUNTERS,
        ),
        subject(
            Program::TcUnderlayIngress,
            names::TC_UNDERLAY_INGRESS,
            tc_fd(&ebpf, names::TC_UNDERLAY_INGRESS),
            &spec::TC_UNDERLAY_COUNTERS,
        ),
        subject(
            Program::TcEndpointIngress { ifindex: PORT },
            names::TC_ENDPOINT_INGRESS,
            tc_fd(&ebpf, names::TC_ENDPOINT_INGRESS),
            &spec::TC_ENDPOINT_COUNTERS,
        ),
    ];
    let mut maps = OverlayMaps::open(&pins).unwrap();

    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let mut verdicts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let start = Instant::now();
    for index in 0..frames {
        let frame = generate(&mut rng, host_ip);
        // Now and then the port entry is missing (fail closed: everything dropped).
        let portless = rng.chance(32);
        for subject in subjects.iter_mut() {
            let is_endpoint = matches!(subject.program, Program::TcEndpointIngress { .. });
            let maps_now = if portless && is_endpoint {
                maps.remove_port(PORT).unwrap();
                &no_port
            } else {
                &cluster
            };
            let result = check(subject, &frame, maps_now, &kernel);
            if portless && is_endpoint {
                maps.put_port(PORT, cluster.ports[&PORT]).unwrap();
            }
            // What ran, by the model's verdict (the coverage check below reads it).
            if !runner_refuses(subject.program, &frame) {
                let verdict = model::run(subject.program, &frame, maps_now, &kernel).verdict;
                *verdicts
                    .entry((subject.name, verdict.reason().unwrap_or(verdict.name())))
                    .or_default() += 1;
            }
            if let Err(why) = result {
                failures.push(format!(
                    "{} disagrees with the model on frame #{index} (SKEIN_DIFF_SEED={seed}, \
                     {} bytes{}):\n   frame: {}\n{why}",
                    subject.name,
                    frame.len(),
                    if portless && is_endpoint {
                        ", no port entry"
                    } else {
                        ""
                    },
                    hex(&frame),
                ));
            }
        }
        if failures.len() >= 10 {
            break;
        }
    }
    let elapsed = start.elapsed();
    eprintln!(
        "differential: {frames} frames x 3 programs in {:.1} s",
        elapsed.as_secs_f64()
    );
    for ((program, verdict), n) in &verdicts {
        eprintln!("  {program:<20} {verdict:<20} {n}");
    }
    for s in &subjects {
        let refused: u64 = s.refused.values().sum();
        eprintln!(
            "  {}: {refused} frames refused by the test runner (lengths {:?})",
            s.name,
            s.refused.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The run covered every path worth fuzzing: each of these verdicts came up.
    for (program, verdict) in [
        (names::XDP_UNDERLAY, "decap"),
        (names::XDP_UNDERLAY, "spoofed_source"),
        (names::XDP_UNDERLAY, "routed_into_overlay"),
        (names::TC_UNDERLAY_INGRESS, "decap"),
        (names::TC_UNDERLAY_INGRESS, "malformed"),
        (names::TC_UNDERLAY_INGRESS, "unknown_vni"),
        (names::TC_UNDERLAY_INGRESS, "routed_into_overlay"),
        (names::TC_ENDPOINT_INGRESS, "arp_reply"),
        (names::TC_ENDPOINT_INGRESS, "encap"),
        (names::TC_ENDPOINT_INGRESS, "local"),
        (names::TC_ENDPOINT_INGRESS, "to_host"),
        (names::TC_ENDPOINT_INGRESS, "cluster_port"),
        (names::TC_ENDPOINT_INGRESS, "no_port"),
        (names::TC_ENDPOINT_INGRESS, "too_big"),
        (names::TC_ENDPOINT_INGRESS, "no_route"),
    ] {
        assert!(
            verdicts.contains_key(&(program, verdict)) || frames < 2_000,
            "{frames} frames never reached {program}'s {verdict}"
        );
    }
}
