//! The routing mesh's XDP program cost per packet (`BPF_PROG_TEST_RUN`): `xdp_underlay` on
//! a conntrack hit and on a new flow, next to a pass-through, measured in one run on one
//! testbed host (the targets: a hit ≤ 4.5×, a new flow ≤ 12× the pass-through).
//! Needs root.
//!
//! - Pass-through reference: `xdp_underlay` itself, with the mesh on, on a frame it passes
//!   untouched (UDP to a port of this node that is not published): what every frame on the
//!   underlay pays, the program's parsing included. No separate program is added to the
//!   object for it.
//! - Hit: an established TCP flow's ACK to a backend on another host: conntrack lookup,
//!   liveness check, translation, outer headers (the flow's cached next hop), redirect.
//! - New flow: a SYN from a fresh client port each run: port and service lookups, the
//!   SYN's checksum, the shared cursor's atomic add, the backend, the conntrack and reply
//!   entries, MSS clamp, translation, the FIB's next hop, outer headers, redirect.
//!
//! How it is timed (the headline: the program's own cost). The test runner repeats a
//! program on one buffer without restoring it, so `repeat` > 1 is right only for a
//! program that leaves the frame as it found it (the pass-through); the mesh's cases
//! rewrite it (50 bytes pushed), so they run once per call, many calls. A call at
//! `repeat` 1 also times the runner's own bracketing (the clock reads, the softirq
//! guard), the *per-call overhead*: measured as the pass-through's median at `repeat` 1
//! minus its median at `repeat` [`PASS_REPEAT`], and subtracted from the hit's and the new
//! flow's medians at `repeat` 1. The raw medians (all three at `repeat` 1) and their
//! ratios are printed as well. The cases alternate in rounds of [`ROUND`] calls, so a
//! load that comes and goes on a shared machine weighs on all of them alike.

use std::{
    fs,
    net::Ipv4Addr,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use dataplane_ebpf::{
    maps as spec,
    mesh::{MeshBackend, MeshBackendKey, MeshConfig, MeshPort, MeshPortKey, MeshService},
    names,
    overlay::{EndpointKey, EndpointValue, UnderlayValue},
};
use dataplane_ebpf_test_run::test_run;
use xtask::{
    testbed::{Host, InNetns, Testbed, TestbedConfig},
    toolchain::say,
};

use super::{
    pktgen::{udp_frame, Addressing},
    report::{Better, Figure, Figures},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const VNI: u32 = 4096;
const INGRESS_VNI: u32 = 4000;
const BACKEND: [u8; 4] = [10, 0, 1, 4];
const BACKEND_HOST: &str = "10.200.0.12";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const PUBLISHED: u16 = 8080;
/// Runs of the pass-through per call when `repeat` > 1 is valid.
const PASS_REPEAT: u32 = 1_000;
/// Calls of each case per round (the pass-through at [`PASS_REPEAT`]: a tenth as many).
const ROUND: u32 = 500;

/// What [`run`] measured, nanoseconds per packet.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CostReport {
    /// The pass-through, `repeat` N (the program alone).
    pub(crate) pass_ns: f64,
    /// Conntrack hit and new flow, per-call overhead subtracted.
    pub(crate) hit_ns: f64,
    pub(crate) new_flow_ns: f64,
    /// The per-call timing overhead subtracted (pass-through at `repeat` 1 minus N).
    pub(crate) overhead_ns: f64,
    /// Raw means at `repeat` 1.
    pub(crate) pass_raw_ns: f64,
    pub(crate) hit_raw_ns: f64,
    pub(crate) new_flow_raw_ns: f64,
    pub(crate) runs: u32,
}

impl CostReport {
    pub(crate) fn hit_ratio(&self) -> f64 {
        self.hit_ns / self.pass_ns
    }

    pub(crate) fn new_flow_ratio(&self) -> f64 {
        self.new_flow_ns / self.pass_ns
    }

    /// The hit and the new flow, each next to the pass-through (the ratios).
    pub(crate) fn figures(&self) -> Vec<Figure> {
        let mut figs = Figures::new("mesh-cost");
        for (name, ns) in [
            ("xdp_underlay, conntrack hit (target ≤ 4.5×)", self.hit_ns),
            ("xdp_underlay, new flow (target ≤ 12×)", self.new_flow_ns),
        ] {
            figs.add(name, Some(ns), "ns/packet", Better::Lower)
                .against("pass-through", Some(self.pass_ns));
        }
        figs.into_vec()
    }
}

impl std::fmt::Display for CostReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "xdp_underlay cost per packet (BPF_PROG_TEST_RUN, {} calls per case, medians), \
             the program's own cost:",
            self.runs
        )?;
        writeln!(
            f,
            "  pass-through (unpublished UDP port) {:>7.1} ns         (repeat {PASS_REPEAT})",
            self.pass_ns
        )?;
        writeln!(
            f,
            "  conntrack hit (remote backend)      {:>7.1} ns  {:.2}x  (target <= 4.5x)",
            self.hit_ns,
            self.hit_ratio()
        )?;
        writeln!(
            f,
            "  new flow (remote backend)           {:>7.1} ns  {:.2}x  (target <= 12x)",
            self.new_flow_ns,
            self.new_flow_ratio()
        )?;
        writeln!(
            f,
            "  hit and new flow run once per call: their medians minus the per-call \
             overhead {:.1} ns (pass-through at repeat 1 minus at repeat {PASS_REPEAT})",
            self.overhead_ns
        )?;
        write!(
            f,
            "  raw, repeat 1: pass {:.1} ns, hit {:.1} ns ({:.2}x), new flow {:.1} ns ({:.2}x)",
            self.pass_raw_ns,
            self.hit_raw_ns,
            self.hit_raw_ns / self.pass_raw_ns,
            self.new_flow_raw_ns,
            self.new_flow_raw_ns / self.pass_raw_ns,
        )
    }
}

/// Measures the three cases about `runs` times each (whole rounds, at least one) on a
/// fresh one-host testbed, prints and returns the figures.
pub(crate) fn run(runs: u32) -> Result<CostReport> {
    let runs = runs.div_ceil(ROUND).max(1) * ROUND;
    let object = crate::build_ebpf::run()?;
    let bed = Testbed::new("meshcost", TestbedConfig::with_hosts(1))?;
    let host = bed.host(0);
    let mut ebpf = load(host, &object)?;
    let me = host.underlay_ip().octets();
    let my_mac = mac_of(host)?;
    program(host, &mut ebpf, me, my_mac)?;
    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .context("no xdp_underlay in the object")?
        .try_into()?;
    let fd = xdp.fd()?.as_fd();
    let _netns = InNetns::enter(host);
    say("measuring xdp_underlay: pass-through, conntrack hit, new flow");

    let addr = Addressing {
        src_mac: [0x02, 0, 0, 0, 0, 0x02],
        dst_mac: my_mac,
        src_ip: CLIENT,
        dst_ip: host.underlay_ip(),
    };
    let pass = udp_frame(&addr, 40000, 9999).to_vec();
    expect(fd, &pass, XDP_PASS, "pass-through")?;
    // A flow: its SYN and first ACK (which caches the next hop), then the ACK is the hit.
    let syn = tcp(me, &addr, 40000, 0x02);
    let ack = tcp(me, &addr, 40000, 0x10);
    expect(fd, &syn, XDP_REDIRECT, "the flow's SYN")?;
    expect(fd, &ack, XDP_REDIRECT, "the flow's ACK")?;

    let (mut pass_n, mut pass_1, mut hit, mut new_flow) = (vec![], vec![], vec![], vec![]);
    // New flows: a fresh client port each, from other client addresses than the hit's.
    let mut opened = 0u32;
    for _ in 0..runs.div_ceil(ROUND) {
        sample(fd, &pass, ROUND / 10, PASS_REPEAT, &mut pass_n)?;
        sample(fd, &pass, ROUND, 1, &mut pass_1)?;
        sample(fd, &ack, ROUND, 1, &mut hit)?;
        for _ in 0..ROUND {
            let client = Addressing {
                src_ip: Ipv4Addr::from(u32::from(CLIENT) + 1 + opened / 64_000),
                ..addr
            };
            let frame = tcp(me, &client, 1024 + (opened % 64_000) as u16, 0x02);
            opened += 1;
            let out = test_run(fd, &frame, 1)?;
            if out.retval != XDP_REDIRECT {
                bail!(
                    "new flow: XDP action {} (expected XDP_REDIRECT)",
                    out.retval
                );
            }
            new_flow.push(out.duration_ns);
        }
    }
    let pass_ns = median(&mut pass_n);
    let pass_raw_ns = median(&mut pass_1);
    let hit_raw_ns = median(&mut hit);
    let new_flow_raw_ns = median(&mut new_flow);
    let overhead_ns = (pass_raw_ns - pass_ns).max(0.0);
    let report = CostReport {
        pass_ns,
        hit_ns: hit_raw_ns - overhead_ns,
        new_flow_ns: new_flow_raw_ns - overhead_ns,
        overhead_ns,
        pass_raw_ns,
        hit_raw_ns,
        new_flow_raw_ns,
        runs,
    };
    println!("{report}");
    Ok(report)
}

fn expect(fd: BorrowedFd<'_>, frame: &[u8], action: u32, what: &str) -> Result<()> {
    let out = test_run(fd, frame, 1)?;
    if out.retval != action {
        bail!("{what}: XDP action {} (expected {action})", out.retval);
    }
    Ok(())
}

/// Appends the ns per run of `calls` calls of `repeat` runs each to `samples`.
fn sample(
    fd: BorrowedFd<'_>,
    frame: &[u8],
    calls: u32,
    repeat: u32,
    samples: &mut Vec<u32>,
) -> Result<()> {
    for _ in 0..calls {
        samples.push(test_run(fd, frame, repeat)?.duration_ns);
    }
    Ok(())
}

/// The median (on a shared machine an interrupt or a cold cache now and then must not
/// move the figure).
fn median(samples: &mut [u32]) -> f64 {
    samples.sort_unstable();
    f64::from(samples[samples.len() / 2])
}

fn load(host: &Host, object: &Path) -> Result<Ebpf> {
    let maps_dir = host.bpf_dir().join("maps");
    fs::create_dir_all(&maps_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .load_file(object)
        .context("loading the eBPF object")?;
    let xdp: &mut Xdp = ebpf
        .program_mut(names::XDP_UNDERLAY)
        .context("no xdp_underlay in the object")?
        .try_into()?;
    xdp.load().context("xdp_underlay through the verifier")?;
    Ok(ebpf)
}

fn mac_of(host: &Host) -> Result<[u8; 6]> {
    let text = host.run("cat", ["/sys/class/net/eth0/address"])?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {text}"))
}

/// The maps as an agent would fill them for one published TCP port balanced to one
/// task on another host; forwarding on and the neighbours known, as on a live node.
fn program(host: &Host, ebpf: &mut Ebpf, me: [u8; 4], mac: [u8; 6]) -> Result<()> {
    host.run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])?;
    for (ip, lladdr) in [
        (BACKEND_HOST, "02:00:00:00:00:12"),
        ("10.200.0.2", "02:00:00:00:00:02"),
    ] {
        host.run(
            "ip",
            [
                "neigh",
                "replace",
                ip,
                "lladdr",
                lladdr,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
    }
    let ifindex: u32 = host
        .run("cat", ["/sys/class/net/eth0/ifindex"])?
        .trim()
        .parse()?;
    let backend_host: Ipv4Addr = BACKEND_HOST.parse()?;
    let mut underlay: Array<&mut MapData, UnderlayValue> =
        Array::try_from(ebpf.map_mut(spec::OVERLAY_UNDERLAY.name).context("map")?)?;
    underlay.set(
        0,
        UnderlayValue {
            ifindex,
            ip: me,
            mac,
            _pad: [0; 2],
        },
        0,
    )?;
    let mut endpoints: HashMap<&mut MapData, EndpointKey, EndpointValue> =
        HashMap::try_from(ebpf.map_mut(spec::OVERLAY_ENDPOINTS.name).context("map")?)?;
    endpoints.insert(
        EndpointKey {
            vni: VNI,
            ip: BACKEND,
        },
        EndpointValue {
            host_ip: backend_host.octets(),
            ifindex: 0,
        },
        0,
    )?;
    let mut config: Array<&mut MapData, MeshConfig> =
        Array::try_from(ebpf.map_mut(spec::MESH_CONFIG.name).context("map")?)?;
    config.set(
        0,
        MeshConfig {
            ingress_vni: INGRESS_VNI,
            mss: 1410,
            _pad: 0,
            syn_timeout_ns: 60_000_000_000,
            established_timeout_ns: 8_000_000_000_000,
            closing_timeout_ns: 10_000_000_000,
            udp_timeout_ns: 60_000_000_000,
        },
        0,
    )?;
    let mut ports: HashMap<&mut MapData, MeshPortKey, MeshPort> =
        HashMap::try_from(ebpf.map_mut(spec::MESH_PORTS.name).context("map")?)?;
    ports.insert(
        MeshPortKey::new(6, PUBLISHED),
        MeshPort {
            slot: 1,
            target_port_be: 80u16.to_be_bytes(),
            _pad: [0; 2],
        },
        0,
    )?;
    let mut services: Array<&mut MapData, MeshService> =
        Array::try_from(ebpf.map_mut(spec::MESH_SERVICES.name).context("map")?)?;
    services.set(
        1,
        MeshService {
            backends: 1,
            cursor: 0,
            vni: VNI,
        },
        0,
    )?;
    let mut backends: HashMap<&mut MapData, MeshBackendKey, MeshBackend> =
        HashMap::try_from(ebpf.map_mut(spec::MESH_BACKENDS.name).context("map")?)?;
    backends.insert(
        MeshBackendKey { slot: 1, index: 0 },
        MeshBackend {
            ip: BACKEND,
            host_ip: backend_host.octets(),
        },
        0,
    )?;
    Ok(())
}

/// A client's TCP segment (flags byte `flags`, a SYN with the usual options) to the
/// published port, checksums filled in.
fn tcp(me: [u8; 4], addr: &Addressing, sport: u16, flags: u8) -> Vec<u8> {
    let options: &[u8] = if flags & 0x02 != 0 {
        &[2, 4, 0x05, 0xb4, 4, 2, 1, 3, 3, 7, 0, 0]
    } else {
        &[]
    };
    let tcp_len = 20 + options.len();
    let mut f = Vec::with_capacity(14 + 20 + tcp_len);
    f.extend_from_slice(&addr.dst_mac);
    f.extend_from_slice(&addr.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + tcp_len) as u16;
    let src = addr.src_ip.octets();
    let mut ip = [
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, src[0], src[1], src[2], src[3], me[0], me[1],
        me[2], me[3],
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let c = checksum(&ip).to_be_bytes();
    ip[10..12].copy_from_slice(&c);
    f.extend_from_slice(&ip);
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&PUBLISHED.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    if flags & 0x10 != 0 {
        t[8..12].copy_from_slice(&5000u32.to_be_bytes());
    }
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(options);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&me);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&t);
    let c = checksum(&pseudo).to_be_bytes();
    t[16..18].copy_from_slice(&c);
    f.extend_from_slice(&t);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        sum += u32::from(pair[0]) << 8 | u32::from(pair.get(1).copied().unwrap_or(0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
