//! `cargo xtask bench mesh`: the routing mesh next to a kernel reference, side by side in one
//! run on one 3-host testbed with a client namespace on the underlay. Needs root.
//!
//! - Skein: a cluster; `web` (3 × whoami, `--publish 8080:80`), `sink` (1 × whoami --udp,
//!   `--publish 9:9/udp`), `dl` (1 × `python3 -m http.server`, `--publish 8081:8000`).
//! - Kernel reference (Swarm's design without IPVS, which this kernel lacks), on the same
//!   hosts: per host a VXLAN device `vxm` (VNI 78, port 4789, static FDB and neighbour
//!   entries, as Swarm's control plane writes them) on a bridge `brm` (10.78.0.N/24), one
//!   backend namespace per host (10.78.0.1N, default route via its host) running the same
//!   programs as plain processes, and nftables on every host: `numgen inc mod 3` DNAT of
//!   `<underlay ip>:8180` to the three backends' port 80, `:8181` to the download backend on
//!   h2, UDP `:1009` to h2's backend port 9, and masquerade out of `brm` (so the reference's
//!   backends see the ingress host, not the client: the address the mesh keeps).
//! - The underlay is made wire-like for both ([`Testbed::make_wire_like`]).
//!
//! Figures:
//! (a) 64-byte UDP through one ingress node to a remote backend, from a socket generator in
//!     the client; the ingress node's CPU is the run time of its `eth0`'s threaded NAPI
//!     thread, frames leaving it are counted on its switch port (details: `udp.rs`).
//! (b) `wrk` from the client through h1's published port: a new connection per request
//!     (`Connection: close`) and keep-alive; requests/s, p99 latency, CPU per request (whole
//!     machine busy time from `/proc/stat`, so wrk and the servers are in it for both sides);
//!     then keep-alive at a fixed load (`--paced-*`: every connection pauses after each
//!     answer, so both sides run at about the same rate, half the reference's maximum):
//!     flat out, the two cores are saturated and p99 is mostly time queued for a CPU, set
//!     by the scheduler; at a fixed load it is the time the path adds;
//!     a 100 MB download (curl) through a node that does not run the backend: throughput and
//!     the backend's retransmitted segments (`/proc/net/snmp` of its namespace).
//! (c) Skein only: a backend's host killed (agent + tasks SIGKILLed) → time until every
//!     request to every surviving node succeeds again. The reference has no control plane
//!     (nftables' map never changes), so it never recovers: n/a.
//!
//! Figures only: no thresholds. Every run is bounded by `--*-seconds` and `timeout`.

use std::{fs, process::Command, time::Duration};

use anyhow::Result;
use xtask::{
    cluster::start_cluster,
    testbed::{run_command, Testbed, TestbedConfig},
    toolchain::{ensure_debian_packages, say},
};

use super::{
    add_percentiles, percentiles,
    report::{Better, Figure, Figures},
    wrk,
};

mod death;
mod reference;
mod skein;
mod udp;

/// The published ports: Skein's and the reference's differ (they share the hosts' addresses).
const SKEIN_HTTP: u16 = 8080;
const SKEIN_DOWNLOAD: u16 = 8081;
const SKEIN_UDP: u16 = 9;
const DOWNLOAD_MB: u64 = 100;
const LIMIT: Duration = Duration::from_secs(60);
/// The reference's name in the figures.
const KERNEL: &str = "kernel VXLAN + nftables DNAT";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Measure only the kernel reference (no agents; for before the mesh lands).
    #[arg(long)]
    reference_only: bool,
    /// Seconds of each 64-byte UDP generator run.
    #[arg(long, default_value_t = 3)]
    udp_seconds: u32,
    /// Rounds of the UDP runs (each side once per round; medians reported).
    #[arg(long, default_value_t = 3)]
    udp_rounds: u32,
    /// UDP flows (source ports) the generator cycles through.
    #[arg(long, default_value_t = 8)]
    udp_flows: u16,
    /// Rounds of the wrk runs (each side once per round, alternating; medians reported).
    #[arg(long, default_value_t = 3)]
    wrk_rounds: u32,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 5)]
    wrk_seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    wrk_connections: u32,
    /// wrk connections of the fixed-load keep-alive runs.
    #[arg(long, default_value_t = 32)]
    paced_connections: u32,
    /// Milliseconds each connection of the fixed-load runs waits after an answer (32
    /// connections pausing 2 ms: about 13,000 requests/s, some half of the reference's
    /// keep-alive maximum here).
    #[arg(long, default_value_t = 2)]
    paced_pause_ms: u32,
    /// After setting up, print the testbed's prefix and wait this many seconds before
    /// checking and measuring (to inspect it by hand; it is still removed at the end).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Runs of each `BPF_PROG_TEST_RUN` cost case (0: skip the XDP cost figures).
    #[arg(long, default_value_t = 20_000)]
    cost_runs: u32,
    /// Skip the host-local access and VIP figures (issue 12; each on its own testbed,
    /// measured before the main one is built).
    #[arg(long)]
    skip_local_and_vip: bool,
    /// Host deaths timed (Skein only).
    #[arg(long, default_value_t = 3)]
    deaths: usize,
}

/// How wrk loads the published port.
enum Load {
    /// `Connection: close`: a new connection (a new flow) per request, flat out.
    NewConnection,
    /// Keep-alive, flat out: the machine saturated, so latencies are mostly CPU queueing.
    KeepAlive,
    /// Keep-alive at about the same rate on both sides, well below either's maximum
    /// (`wrk::run_paced`): the latency the path adds.
    Paced,
}

/// What one side offers the measurements.
pub(crate) struct Side {
    label: &'static str,
    /// Index of the ingress host for UDP and HTTP.
    udp_ingress: usize,
    udp_port: u16,
    /// The namespace whose nftables sink counts the delivered UDP (port 9).
    udp_receiver: String,
    http_port: u16,
    download_ingress: usize,
    download_port: u16,
    /// The download backend's namespace (its retransmits).
    download_backend: String,
}

/// One row: metric, Skein, reference, Skein/reference.
struct Row(String, Option<f64>, Option<f64>, usize);

pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    let mut figs = Figures::new("mesh");
    ensure_debian_packages()?;
    super::use_release_binary()?;
    let cost = if args.cost_runs > 0 && !args.reference_only {
        say("XDP program cost per packet (BPF_PROG_TEST_RUN), before the testbed is built");
        Some(super::mesh_cost::run(args.cost_runs)?)
    } else {
        None
    };
    if !args.skip_local_and_vip && !args.reference_only {
        let (seconds, connections, rounds) =
            (args.wrk_seconds, args.wrk_connections, args.wrk_rounds);
        say("(d) `curl localhost:P` on a node vs the task's own address (own 1-host testbed)");
        figs.extend(super::mesh_local::run(super::mesh_local::Args {
            seconds,
            connections,
            rounds,
        })?);
        say("(e) endpoint → VIP vs task IP vs nftables DNAT in the client (own testbed)");
        figs.extend(super::mesh_vip::run(super::mesh_vip::Args {
            rounds,
            seconds,
            connections,
        })?);
    }
    say("mesh: 3 hosts + a client on a wire-like underlay; Skein's mesh and the kernel reference");
    let bed = Testbed::new("bench-mesh", TestbedConfig::with_hosts(3))?;
    bed.make_wire_like()?;
    // Where the download's task can read it (not under the testbed's /run directory).
    let blob = super::TaskVisibleDir::new(&bed, "blob")?;
    let blob_dir = blob.path().to_owned();
    run_command(
        Command::new("head")
            .args(["-c", &format!("{}", DOWNLOAD_MB << 20), "/dev/urandom"])
            .stdout(fs::File::create(blob_dir.join("blob"))?),
    )?;

    say("kernel reference: vxlan 78 + bridge brm + nftables numgen DNAT/masquerade on h1..h3");
    let (reference, _servers) = reference::build(&bed, &blob_dir)?;
    reference::check(&bed)?;

    let mut skein = None;
    let mut agents = Vec::new();
    if !args.reference_only {
        say("Skein: cluster, services web (3), sink (1, UDP), dl (1, download)");
        let (a, token) = start_cluster(&bed)?;
        agents = a;
        skein = Some((skein::side(&bed, &blob_dir)?, token));
    }
    if args.hold > 0 {
        say(&format!(
            "holding {} s: testbed {}",
            args.hold,
            bed.prefix()
        ));
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    let sides: Vec<&Side> = skein
        .as_ref()
        .map(|(s, _)| s)
        .into_iter()
        .chain(std::iter::once(&reference))
        .collect();

    let mut rows = Vec::new();
    // A row of the table, and the same as a figure (`name`) next to the kernel reference.
    #[allow(clippy::too_many_arguments)]
    let both = |rows: &mut Vec<Row>,
                figs: &mut Figures,
                metric: &str,
                name: &str,
                unit: &str,
                better: Better,
                v: &[Option<f64>],
                precision| {
        let (s, r) = if sides.len() == 2 {
            (v[0], v[1])
        } else {
            (None, v[0])
        };
        rows.push(Row(metric.to_owned(), s, r, precision));
        figs.add(name, s, unit, better).against(KERNEL, r);
    };
    if let Some(c) = &cost {
        figs.extend(c.figures());
    }

    if let Some(c) = &cost {
        let skein_only = |rows: &mut Vec<Row>, metric: &str, v: f64, precision| {
            rows.push(Row(metric.to_owned(), Some(v), None, precision));
        };
        skein_only(
            &mut rows,
            "XDP cost: conntrack hit (× pass-through)",
            c.hit_ratio(),
            2,
        );
        skein_only(
            &mut rows,
            "XDP cost: new flow (× pass-through)",
            c.new_flow_ratio(),
            2,
        );
        skein_only(
            &mut rows,
            "  pass-through ns (program's own cost)",
            c.pass_ns,
            0,
        );
        skein_only(&mut rows, "  hit ns", c.hit_ns, 0);
        skein_only(&mut rows, "  new flow ns", c.new_flow_ns, 0);
    }

    // (a) 64-byte UDP through one ingress node.
    say(&format!(
        "(a) 64-byte UDP through one ingress node to a remote backend: {} rounds × {} s, {} flows",
        args.udp_rounds, args.udp_seconds, args.udp_flows
    ));
    let duration = Duration::from_secs(args.udp_seconds.into());
    let mut udp: Vec<Vec<udp::UdpFigures>> = vec![Vec::new(); sides.len()];
    for round in 1..=args.udp_rounds {
        for (side, runs) in sides.iter().zip(&mut udp) {
            // A side that fails a run is reported n/a, the other side still measured.
            match udp::run(&bed, side, args.udp_flows, duration) {
                Ok(f) => {
                    println!("   round {round}, {}: {}", side.label, f.describe());
                    runs.push(f);
                }
                Err(e) => println!("   round {round}, {}: failed: {e:#}", side.label),
            }
        }
    }
    let med = |f: fn(&udp::UdpFigures) -> Option<f64>| -> Vec<Option<f64>> {
        udp.iter()
            .map(|runs| median(runs.iter().filter_map(f).collect()))
            .collect()
    };
    both(
        &mut rows,
        &mut figs,
        "UDP 64 B: frames leaving the ingress node per ingress CPU-s (k)",
        "UDP 64 B through an ingress node: frames per ingress CPU-second",
        "k",
        Better::Higher,
        &med(|f| f.leaving_per_cpu_s().map(|v| v / 1e3)),
        0,
    );
    both(
        &mut rows,
        &mut figs,
        "  ingress CPU ns/frame",
        "UDP 64 B through an ingress node: ingress CPU per frame",
        "ns",
        Better::Lower,
        &med(|f| f.ingress_ns_per_frame()),
        0,
    );
    // Rows of the table only: the conditions of the runs rather than figures of merit.
    let only_row = |rows: &mut Vec<Row>, metric: &str, v: &[Option<f64>]| {
        let (s, r) = if sides.len() == 2 {
            (v[0], v[1])
        } else {
            (None, v[0])
        };
        rows.push(Row(metric.to_owned(), s, r, 0));
    };
    only_row(
        &mut rows,
        "  ingress NAPI thread busy (%)",
        &med(|f| Some(f.ingress_busy() * 100.0)),
    );
    only_row(
        &mut rows,
        "  leaving kpps (drop-after-ingress run)",
        &med(|f| Some(f.leaving_kpps())),
    );
    both(
        &mut rows,
        &mut figs,
        "  delivered kpps (delivery run)",
        "UDP 64 B through an ingress node: delivered",
        "kpps",
        Better::Higher,
        &med(|f| Some(f.delivered_kpps())),
        0,
    );
    only_row(
        &mut rows,
        "  sent kpps (delivery run)",
        &med(|f| Some(f.sent_kpps())),
    );
    both(
        &mut rows,
        &mut figs,
        "  path CPU ns/delivered packet",
        "UDP 64 B through an ingress node: path CPU per delivered packet",
        "ns",
        Better::Lower,
        &med(|f| f.path_ns_per_delivered()),
        0,
    );

    // (b) HTTP with wrk, and the download.
    let modes = [
        (Load::NewConnection, "new connection per request"),
        (Load::KeepAlive, "keep-alive"),
        (Load::Paced, "keep-alive at a fixed load"),
    ];
    for (load, label) in modes {
        let connections = match load {
            Load::Paced => args.paced_connections,
            _ => args.wrk_connections,
        };
        let pause = match load {
            Load::Paced => format!(
                ", each pausing {} ms after every answer",
                args.paced_pause_ms
            ),
            _ => String::new(),
        };
        say(&format!(
            "(b) wrk, {label}: {} rounds × {} s, {connections} connections{pause}",
            args.wrk_rounds, args.wrk_seconds
        ));
        let mut runs: Vec<Vec<wrk::Wrk>> = vec![Vec::new(); sides.len()];
        for round in 1..=args.wrk_rounds {
            for (side, runs) in sides.iter().zip(&mut runs) {
                let ip = bed.host(0).underlay_ip();
                let url = format!("http://{ip}:{}/", side.http_port);
                let (ns, seconds) = (bed.client().netns(), args.wrk_seconds);
                let run = match load {
                    Load::NewConnection => wrk::run(ns, &url, true, seconds, connections),
                    Load::KeepAlive => wrk::run(ns, &url, false, seconds, connections),
                    Load::Paced => {
                        wrk::run_paced(ns, &url, args.paced_pause_ms, seconds, connections)
                    }
                };
                match run {
                    Ok(w) => {
                        println!("   round {round}, {}: {}", side.label, w.describe());
                        runs.push(w);
                    }
                    Err(e) => println!("   round {round}, {}: failed: {e:#}", side.label),
                }
            }
        }
        // Medians over the rounds, figure by figure; errors summed.
        let v = |f: fn(&wrk::Wrk) -> Option<f64>| {
            runs.iter()
                .map(|r| median(r.iter().filter_map(f).collect()))
                .collect::<Vec<_>>()
        };
        let errors: Vec<Option<f64>> = runs
            .iter()
            .map(|r| (!r.is_empty()).then(|| r.iter().map(|w| w.errors as f64).sum()))
            .collect();
        let http = format!("HTTP through a published port, {label}");
        both(
            &mut rows,
            &mut figs,
            &format!("HTTP {label}: req/s"),
            &http,
            "req/s",
            Better::Higher,
            &v(|w| Some(w.requests_per_s)),
            0,
        );
        if matches!(load, Load::Paced) {
            both(
                &mut rows,
                &mut figs,
                "  p50 latency (ms)",
                &format!("{http}: p50 latency"),
                "ms",
                Better::Lower,
                &v(|w| w.p50_ms),
                2,
            );
        }
        both(
            &mut rows,
            &mut figs,
            "  p99 latency (ms)",
            &format!("{http}: p99 latency"),
            "ms",
            Better::Lower,
            &v(|w| w.p99_ms),
            2,
        );
        both(
            &mut rows,
            &mut figs,
            "  CPU µs/request (machine)",
            &format!("{http}: CPU per request (machine)"),
            "µs",
            Better::Lower,
            &v(|w| w.cpu_us_per_request()),
            1,
        );
        both(
            &mut rows,
            &mut figs,
            "  errors (socket + non-2xx), all rounds",
            &format!("{http}: errors"),
            "",
            Better::Lower,
            &errors,
            0,
        );
    }
    say(&format!(
        "(b) {DOWNLOAD_MB} MB download through a node without the backend"
    ));
    let mut downloads = Vec::new();
    for side in &sides {
        let d = reference::download(&bed, side, DOWNLOAD_MB << 20);
        match &d {
            Ok(d) => println!("   {}: {}", side.label, d.describe()),
            Err(e) => println!("   {}: failed: {e:#}", side.label),
        }
        downloads.push(d.ok());
    }
    both(
        &mut rows,
        &mut figs,
        "100 MB download (Gbit/s)",
        "100 MB download through a node without the backend",
        "Gbit/s",
        Better::Higher,
        &downloads
            .iter()
            .map(|d| d.as_ref().map(|d| d.gbits))
            .collect::<Vec<_>>(),
        2,
    );
    both(
        &mut rows,
        &mut figs,
        "  retransmits (backend)",
        "100 MB download: backend retransmits",
        "",
        Better::Lower,
        &downloads
            .iter()
            .map(|d| d.as_ref().map(|d| d.retransmits as f64))
            .collect::<Vec<_>>(),
        0,
    );

    // (c) a backend's host killed.
    if let Some((_, token)) = &skein {
        say(&format!(
            "(c) Skein: a backend's host killed → every request succeeds again ({} runs)",
            args.deaths
        ));
        let mut recovered = Vec::new();
        for round in 0..args.deaths {
            let victim = 1 + round % 2;
            let t = match death::host_death(&bed, &mut agents, victim, token) {
                Ok(t) => t,
                Err(e) => {
                    println!("   run {}: failed: {e:#}", round + 1);
                    break;
                }
            };
            println!(
                "   run {}: h{} killed, every request succeeds after {:.0} ms",
                round + 1,
                victim + 1,
                t.as_secs_f64() * 1e3
            );
            recovered.push(t);
        }
        add_percentiles(
            &mut figs,
            "a backend's host killed → every request succeeds again",
            &recovered,
        );
        println!(
            "   (c) Skein: {}; reference: n/a (no control plane: never)",
            percentiles(&mut recovered)
        );
    }

    print_table(&rows);
    println!(
        "   (wire-like underlay: GRO on the switch ports, tx checksumming off on every eth0; \
         UDP: medians, live frames handed to the ingress node as raw frames, ingress CPU = its \
         eth0's threaded NAPI thread; HTTP CPU: whole machine /proc/stat; a shared \
         machine: compare within this table only)"
    );
    drop(agents);
    Ok(figs.into_vec())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let show = |v: Option<f64>, p: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.p$}"));
    println!();
    println!(
        "   {:<width$}  {:>10}  {:>12}  {:>7}",
        "metric", "Skein", "kernel ref", "ratio"
    );
    for Row(metric, s, r, p) in rows {
        let ratio = match (s, r) {
            (Some(s), Some(r)) if *r != 0.0 => format!("{:.2}", s / r),
            _ => "n/a".to_owned(),
        };
        println!(
            "   {metric:<width$}  {:>10}  {:>12}  {ratio:>7}",
            show(*s, *p),
            show(*r, *p)
        );
    }
}
