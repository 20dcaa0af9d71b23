//! `cargo xtask bench overlay`: the overlay dataplane next to the kernel's own VXLAN + bridge,
//! measured in one run on one 3-host testbed, side by side. Needs root.
//!
//! - Skein: a cluster (h1 `--init`, h2/h3 `--join`), `skein network create bench`, endpoints
//!   `a`, `a2` on h1 and `b` on h2.
//! - Kernel reference on the same hosts: per host a VXLAN device `vxr` (VNI 77, outside Skein's
//!   VNI range) enslaved to a bridge `brr` with a veth to a reference endpoint namespace;
//!   10.77.0.1 (h1), 10.77.0.2 (h2), and 10.77.0.3 (h1 again, for the same-host comparison).
//!
//! Why the same testbed is the fair comparison (ARCHITECTURE.md, "Kernel and toolchain
//! facts": XDP on a veth turns its peer's TSO off): the agents' pass-through XDP program sits on each host's underlay `eth0`, which turns
//! TSO off on its peer, so only MTU-sized frames cross the "wire" — for Skein's packets and for
//! the reference's alike (Skein's TC underlay program passes VXLAN of VNIs it does not know).
//! Both sides are therefore measured on the same wire-like underlay. Cross-host TCP is measured
//! twice: with GRO off on every host's underlay `eth0` (how veths come) and on (how real NICs
//! come), toggled for both sides at once — Skein's XDP decapsulation lets the underlay's GRO
//! aggregate the inner TCP segments, and single segments cross the endpoint's veth, whose GRO
//! the agent turns on (part of Skein's own plumbing; the reference's veths stay as they
//! come); the kernel's VXLAN device aggregates in its GRO cells either way and, with underlay
//! GRO on, also gets UDP-tunnel GRO. Last, the agents are stopped and their dataplane removed,
//! and the reference alone is measured on the raw veth underlay (no XDP: 64 KB GSO packets
//! cross whole), the "raw" figure the issue asks for; Skein cannot run without its XDP.
//!
//! Figures only: no thresholds (the machine is shared and noisy; compare only figures from one
//! run). iperf3 is the load generator for TCP (every run bounded by `-t` and by `timeout`);
//! 64-byte UDP comes from the live-frames XDP generator in `pktgen.rs`, with iperf3 as a
//! second line.

use std::{process::Command, time::Duration};

use super::{
    pktgen,
    report::{Better, Figure, Figures},
};
use anyhow::{Context, Result};
use xtask::{
    cluster::{create_endpoint, skein_ok, start_cluster, DEADLINE},
    testbed::{run_command, wait_until, Host, Testbed, TestbedConfig},
    toolchain::say,
};

mod measure;

use measure::{iperf_tcp, iperf_udp, ping_once, ping_rtt, Endpoint};

/// The reference's VNI: Skein allocates from 4096 up, so 77 never collides with its networks.
const REF_VNI: &str = "77";
/// Bytes the VXLAN encapsulation adds (outer Ethernet/IPv4/UDP/VXLAN header).
const VXLAN_OVERHEAD: u32 = 50;
/// The reference's name in the figures.
const KERNEL: &str = "kernel VXLAN + bridge";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds of each TCP throughput run.
    #[arg(long, default_value_t = 10)]
    tcp_seconds: u32,
    /// Seconds of each 64-byte UDP run.
    #[arg(long, default_value_t = 5)]
    udp_seconds: u32,
    /// Rounds of the live-frames UDP generator (each side once per round; medians reported).
    #[arg(long, default_value_t = 3)]
    udp_rounds: u32,
    /// UDP flows (source ports) the generator cycles through.
    #[arg(long, default_value_t = 8)]
    udp_flows: u16,
    /// After setting up, print the namespaces and wait this many seconds before measuring
    /// (to inspect or measure the testbed by hand; it is still removed at the end).
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

/// One row of the final table: metric, Skein, reference, Skein/reference.
struct Row {
    metric: String,
    skein: String,
    reference: String,
    ratio: String,
}

impl Row {
    fn new(metric: &str, skein: Option<f64>, reference: Option<f64>, precision: usize) -> Row {
        let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.precision$}"));
        let ratio = match (skein, reference) {
            (Some(s), Some(r)) if r != 0.0 => format!("{:.2}", s / r),
            _ => "n/a".to_owned(),
        };
        Row {
            metric: metric.to_owned(),
            skein: show(skein),
            reference: show(reference),
            ratio,
        }
    }
}

pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    say("overlay: 3-host netns testbed, Skein cluster and the kernel VXLAN reference side by side");
    let bed = Testbed::new("bench-overlay", TestbedConfig::with_hosts(3))?;
    // Kept alive until the end: dropping a Process does not stop it, but holding them makes
    // the ownership obvious; the Testbed's Drop terminates them.
    say("starting agents: h1 --init, h2 and h3 --join");
    let (mut agents, _token) = start_cluster(&bed)?;

    say("skein network create bench; endpoints a, a2 on h1 and b on h2");
    skein_ok(bed.host(0), &["network", "create", "bench"])?;
    for host in &bed.hosts()[..2] {
        wait_until("network bench on h1 and h2", DEADLINE, || {
            skein_ok(host, &["network", "ls"]).is_ok_and(|ls| ls.contains("bench"))
        })?;
    }
    let a = create_endpoint(bed.host(0), "bench", "a")?;
    let a2 = create_endpoint(bed.host(0), "bench", "a2")?;
    let b = create_endpoint(bed.host(1), "bench", "b")?;

    say("kernel reference: vxlan id 77 + bridge brr on h1 and h2, endpoints 10.77.0.1/.2 (+.3 on h1)");
    let overlay_mtu = bed.underlay_mtu() - VXLAN_OVERHEAD;
    let (h1, h2) = (bed.host(0), bed.host(1));
    build_reference_host(h1, h2, overlay_mtu)?;
    build_reference_host(h2, h1, overlay_mtu)?;
    let ref1 = reference_endpoint(h1, "ref", "10.77.0.1", overlay_mtu)?;
    let ref2 = reference_endpoint(h2, "ref", "10.77.0.2", overlay_mtu)?;
    let ref3 = reference_endpoint(h1, "ref2", "10.77.0.3", overlay_mtu)?;

    say("checking that every pair pings before measuring");
    for (from, to) in [(&a, &b), (&a, &a2), (&ref1, &ref2), (&ref1, &ref3)] {
        wait_until(&format!("{} -> {}", from.0, to.1), DEADLINE, || {
            ping_once(&from.0, &to.1)
        })?;
    }

    underlay_notes(&bed);
    if args.hold > 0 {
        say(&format!(
            "holding {} s: Skein a={a:?} a2={a2:?} b={b:?}; reference {ref1:?} {ref2:?} {ref3:?}; \
             hosts {} {}",
            args.hold,
            h1.netns(),
            h2.netns()
        ));
        std::thread::sleep(Duration::from_secs(args.hold));
    }

    let mut rows = Vec::new();
    let mut figs = Figures::new("overlay");
    // A figure next to its kernel reference.
    let mut vs = |name: &str, unit: &str, better: Better, s: Option<f64>, k: Option<f64>| {
        figs.add(name, s, unit, better).against(KERNEL, k);
    };

    // Across hosts, TCP, twice: with the testbed's veth underlay as it is (GRO off, as veths
    // come) and with GRO on every host's eth0 (as real NICs come), the same for both sides.
    // Skein first, then the kernel, back to back so they share conditions.
    for gro in [false, true] {
        set_underlay_gro(&bed, gro)?;
        let label = if gro {
            "underlay GRO on"
        } else {
            "underlay GRO off"
        };
        say(&format!(
            "TCP across hosts, {label}, {} s each: Skein a -> b, kernel ref h1 -> ref h2",
            args.tcp_seconds
        ));
        let tcp_s = iperf_tcp(h2, &b, &a, args.tcp_seconds)?;
        let tcp_k = iperf_tcp(h2, &ref2, &ref1, args.tcp_seconds)?;
        println!("   Skein : {}", tcp_s.describe());
        println!("   kernel: {}", tcp_k.describe());
        rows.push(Row::new(
            &format!("TCP across hosts, {label} (Gbit/s)"),
            Some(tcp_s.gbits),
            Some(tcp_k.gbits),
            2,
        ));
        let tcp = format!("TCP across hosts, {label}");
        vs(
            &tcp,
            "Gbit/s",
            Better::Higher,
            Some(tcp_s.gbits),
            Some(tcp_k.gbits),
        );
        vs(
            &format!("{tcp}: CPU per GB (iperf3 both ends)"),
            "CPU-s/GB",
            Better::Lower,
            tcp_s.cpu_s_per_gb(),
            tcp_k.cpu_s_per_gb(),
        );
        rows.push(Row::new(
            "  retransmits",
            tcp_s.retransmits.map(|r| r as f64),
            tcp_k.retransmits.map(|r| r as f64),
            0,
        ));
        rows.push(Row::new(
            "  CPU-s/GB, iperf3 host+remote",
            tcp_s.cpu_s_per_gb(),
            tcp_k.cpu_s_per_gb(),
            2,
        ));
    }
    set_underlay_gro(&bed, false)?;

    // Across hosts, 64-byte UDP: the live-frames XDP generator (pktgen.rs) into a's and ref1's
    // eth0, counted in b and ref2; rounds alternate the sides. iperf3 stays as a second line.
    say(&format!(
        "64-byte UDP across hosts, live-frames XDP generator: {} rounds of {} s per side, {} flows",
        args.udp_rounds, args.udp_seconds, args.udp_flows
    ));
    let gen = pktgen::compare(
        &[
            ("Skein ", pktgen::Side::new(&a.0, h1.netns(), &b.0, &b.1)),
            (
                "kernel",
                pktgen::Side::new(&ref1.0, h1.netns(), &ref2.0, &ref2.1),
            ),
        ],
        args.udp_flows,
        args.udp_rounds,
        Duration::from_secs(args.udp_seconds.into()),
    )?;
    let (gs, gk) = (pktgen::Medians::of(&gen[0]), pktgen::Medians::of(&gen[1]));
    let both =
        |f: fn(&pktgen::Medians) -> Option<f64>| (gs.as_ref().and_then(f), gk.as_ref().and_then(f));
    vs(
        "UDP 64 B across hosts, delivered",
        "kpps",
        Better::Higher,
        both(|m| Some(m.delivered_kpps)).0,
        both(|m| Some(m.delivered_kpps)).1,
    );
    vs(
        "UDP 64 B across hosts: path CPU per packet",
        "ns",
        Better::Lower,
        both(|m| m.path_ns_per_packet).0,
        both(|m| m.path_ns_per_packet).1,
    );
    for (metric, (s, k), precision) in [
        (
            "UDP 64 B across hosts, delivered kpps",
            both(|m| Some(m.delivered_kpps)),
            0,
        ),
        ("  sent kpps (generator)", both(|m| Some(m.sent_kpps)), 0),
        ("  loss %", both(|m| Some(m.loss_percent)), 2),
        (
            "  CPU ns/packet, whole machine",
            both(|m| m.cpu_ns_per_packet),
            0,
        ),
        (
            "  CPU ns/packet, generator+softirq path",
            both(|m| m.path_ns_per_packet),
            0,
        ),
    ] {
        rows.push(Row::new(metric, s, k, precision));
    }

    say(&format!(
        "64-byte UDP across hosts with iperf3 as the generator, {} s each (iperf3 is the bottleneck)",
        args.udp_seconds
    ));
    let udp_s = iperf_udp(h2, &b, &a, args.udp_seconds)?;
    let udp_k = iperf_udp(h2, &ref2, &ref1, args.udp_seconds)?;
    println!("   Skein : {}", udp_s.describe());
    println!("   kernel: {}", udp_k.describe());
    rows.push(Row::new(
        "UDP 64 B, iperf3 generator, received kpps",
        Some(udp_s.received_pps / 1e3),
        Some(udp_k.received_pps / 1e3),
        1,
    ));
    rows.push(Row::new(
        "  loss %",
        Some(udp_s.loss_percent),
        Some(udp_k.loss_percent),
        2,
    ));

    // Same host: Skein a -> a2 vs two veths on one Linux bridge.
    say(&format!(
        "TCP on one host, {} s each: Skein a -> a2, kernel ref -> ref2 on h1's bridge",
        args.tcp_seconds
    ));
    let same_s = iperf_tcp(h1, &a2, &a, args.tcp_seconds)?;
    let same_k = iperf_tcp(h1, &ref3, &ref1, args.tcp_seconds)?;
    println!("   Skein : {}", same_s.describe());
    println!("   bridge: {}", same_k.describe());
    rows.push(Row::new(
        "TCP same host (Gbit/s)",
        Some(same_s.gbits),
        Some(same_k.gbits),
        2,
    ));
    vs(
        "TCP same host",
        "Gbit/s",
        Better::Higher,
        Some(same_s.gbits),
        Some(same_k.gbits),
    );
    rows.push(Row::new(
        "  CPU-s/GB, iperf3 host+remote",
        same_s.cpu_s_per_gb(),
        same_k.cpu_s_per_gb(),
        2,
    ));

    // Latency: ping round trips, same host and across hosts, for both sides.
    say("latency: ping -c 200 -i 0.005 (rtt avg / mdev)");
    for (label, (sf, st), (kf, kt)) in [
        ("ping same host", (&a, &a2), (&ref1, &ref3)),
        ("ping across hosts", (&a, &b), (&ref1, &ref2)),
    ] {
        let s = ping_rtt(&sf.0, &st.1)?;
        let k = ping_rtt(&kf.0, &kt.1)?;
        println!(
            "   {label}: Skein {}; kernel {}",
            s.describe(),
            k.describe()
        );
        rows.push(Row::new(
            &format!("{label}, rtt avg (µs)"),
            Some(s.avg_ms * 1e3),
            Some(k.avg_ms * 1e3),
            0,
        ));
        vs(
            &format!("{label}, rtt avg"),
            "µs",
            Better::Lower,
            Some(s.avg_ms * 1e3),
            Some(k.avg_ms * 1e3),
        );
        rows.push(Row::new(
            "  rtt mdev (µs)",
            Some(s.mdev_ms * 1e3),
            Some(k.mdev_ms * 1e3),
            0,
        ));
    }

    // The raw figure: the reference alone on a veth underlay with no XDP anywhere, so 64 KB
    // GSO super-packets cross the "wire" whole (no real wire does that). Skein cannot run
    // without its XDP program on the underlay, so it has no raw figure: stop the agents and
    // remove their dataplane first.
    say(&format!(
        "TCP across hosts, raw veth underlay (agents stopped, no XDP on any eth0), {} s: kernel ref h1 -> ref h2",
        args.tcp_seconds
    ));
    for (agent, host) in agents.iter_mut().zip(bed.hosts()) {
        agent.terminate(Duration::from_secs(10))?;
        let bpf_dir = host.bpf_dir().display().to_string();
        run_command(
            host.skein()?
                .args(["agent", "cleanup", "--bpf-dir", &bpf_dir]),
        )?;
    }
    let raw = iperf_tcp(h2, &ref2, &ref1, args.tcp_seconds)?;
    println!("   kernel: {}", raw.describe());
    rows.push(Row::new(
        "TCP across hosts, raw veth underlay, no XDP (Gbit/s)",
        None,
        Some(raw.gbits),
        2,
    ));
    // Skein has no raw figure (it cannot run without its XDP): the kernel's alone.
    figs.add(
        "kernel VXLAN alone, TCP across hosts on the raw veth underlay (no XDP)",
        Some(raw.gbits),
        "Gbit/s",
        Better::Higher,
    );

    print_table(&rows);
    println!(
        "   (both sides cross the same underlay with the agents' XDP on every eth0: wire-like, \
         MTU-sized frames; underlay GRO as labelled, else off; UDP 64 B: medians of the \
         live-frames XDP generator, CPU per delivered packet = /proc/stat busy time of the whole \
         machine, and of the packets' own path (generator thread + ksoftirqd), which other load \
         does not reach; the iperf3 UDP line is bounded by iperf3; a shared machine — compare \
         within this table only)"
    );
    Ok(figs.into_vec())
}

// ---------------------------------------------------------------------------------------------
// The kernel reference.

/// On `host`: `vxr` (kernel VXLAN on the underlay eth0) enslaved to bridge `brr`, flooding
/// unknown destinations to `peer` through a static all-zeros FDB entry (no learning on vxr, so
/// nothing but this entry decides where frames go).
fn build_reference_host(host: &Host, peer: &Host, mtu: u32) -> Result<()> {
    let (mtu, local, remote) = (
        mtu.to_string(),
        host.underlay_ip().to_string(),
        peer.underlay_ip().to_string(),
    );
    let ns = host.netns();
    for args in [
        &[
            "link",
            "add",
            "vxr",
            "type",
            "vxlan",
            "id",
            REF_VNI,
            "dstport",
            "4789",
            "local",
            &local,
            "dev",
            "eth0",
            "nolearning",
        ][..],
        &["link", "set", "vxr", "mtu", &mtu],
        &["link", "add", "brr", "type", "bridge"],
        &["link", "set", "vxr", "master", "brr", "up"],
        &["link", "set", "brr", "up"],
    ] {
        run_command(Command::new("ip").args(["-n", ns]).args(args))?;
    }
    run_command(Command::new("bridge").args(["-n", ns]).args([
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vxr",
        "dst",
        &remote,
    ]))?;
    Ok(())
}

/// A reference endpoint namespace `<host prefix>-<suffix>` with `eth0` = `ip`/24, its veth
/// peer on `host`'s bridge `brr`. Created with `ip netns add` from this process so its name
/// carries the testbed's prefix and the testbed's cleanup removes it.
fn reference_endpoint(host: &Host, suffix: &str, ip: &str, mtu: u32) -> Result<Endpoint> {
    let ns = format!("{}-{suffix}", host.resource_prefix());
    let mtu = mtu.to_string();
    let port = format!("v{suffix}");
    run_command(Command::new("ip").args(["netns", "add", &ns]))?;
    run_command(Command::new("ip").args(["netns", "exec", &ns]).args([
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
    ]))?;
    run_command(Command::new("ip").args(["-n", host.netns()]).args([
        "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        "mtu", &mtu,
    ]))?;
    run_command(
        Command::new("ip")
            .args(["-n", host.netns()])
            .args(["link", "set", &port, "master", "brr", "up"]),
    )?;
    for args in [
        &["addr", "add", &format!("{ip}/24"), "dev", "eth0"][..],
        &["link", "set", "eth0", "up"],
        &["link", "set", "lo", "up"],
    ] {
        run_command(Command::new("ip").args(["-n", &ns]).args(args))?;
    }
    Ok((ns, ip.to_owned()))
}

/// GRO on or off on every host's underlay `eth0` (Skein's and the reference's traffic share
/// it, so both always see the same setting). Veths come with GRO off; real NICs with it on.
fn set_underlay_gro(bed: &Testbed, on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    for host in bed.hosts() {
        run_command(Command::new("ip").args([
            "netns",
            "exec",
            host.netns(),
            "ethtool",
            "-K",
            "eth0",
            "gro",
            state,
        ]))
        .with_context(|| format!("ethtool -K eth0 gro {state} on {}", host.name()))?;
    }
    Ok(())
}

/// What the underlay looks like for both sides: is XDP on eth0, and is TSO off on its peer?
/// ethtool may be absent; then the line says so and the bench goes on.
fn underlay_notes(bed: &Testbed) {
    let h = bed.host(1);
    let xdp = run_command(Command::new("ip").args(["-n", h.netns(), "link", "show", "eth0"]))
        .map(|s| {
            if s.contains("xdp") {
                "XDP attached"
            } else {
                "no XDP seen"
            }
        })
        .unwrap_or("ip link failed");
    // The peer of h's eth0 is the port named after the host in the underlay namespace.
    let tso = |netns: &str, dev: &str| {
        run_command(Command::new("ip").args(["netns", "exec", netns, "ethtool", "-k", dev]))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("tcp-segmentation-offload:"))
                    .map(|l| l.trim().to_owned())
            })
            .unwrap_or_else(|| "ethtool unavailable".to_owned())
    };
    println!(
        "   underlay of {}: eth0 {xdp}; eth0 {}; its peer (switch port) {}",
        h.name(),
        tso(h.netns(), "eth0"),
        tso(bed.underlay_netns(), h.name())
    );
}

fn print_table(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.metric.chars().count())
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "   {:<width$}  {:>10}  {:>14}  {:>7}",
        "metric", "Skein", "kernel ref", "ratio"
    );
    for r in rows {
        println!(
            "   {:<width$}  {:>10}  {:>14}  {:>7}",
            r.metric, r.skein, r.reference, r.ratio
        );
    }
}
