//! `cargo xtask bench dns`: Skein's DNS server (issue 13) next to dnsmasq and Knot DNS,
//! side by side in one run, and how fast every node's answers follow a state change.
//!
//! (a) Throughput and latency, one agent (a 1-host testbed): `--services` services of
//!     `--replicas` whoami tasks; their names (`svcN` → VIP, `tasks.svcN` → task IPs) are
//!     asked of Skein's `--dns-addr` (127.0.0.1:5353 in the host), and exactly the records
//!     Skein answered are loaded into dnsmasq (hosts file, `--no-resolv`) and Knot (a root
//!     zone, one UDP worker) on the same loopback (ports 5354, 5355), same TTL. CPU: every
//!     server — the whole agent process (`taskset -a`), dnsmasq, knotd — is confined to
//!     CPU 1, dnsperf (one thread) to CPU 0; so each server has exactly one core, and the
//!     server CPU time per query (from `/proc/<pid>/stat`) is printed next to the rate.
//!     Rounds alternate the servers; medians. Then p99 latency of each server at the same
//!     offered load, 50 % of Skein's median maximum (`dnsperf -Q`, per-query latencies).
//! (b) Convergence on `--nodes` real agents (`converge.rs`).
//!
//! Figures only: no thresholds. No server forwards anywhere: the agents' `--dns-upstream`
//! is a closed port on the host's own loopback.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use xtask::{
    cluster::{running_tasks, skein_ok, start_cluster_with},
    dns_wire::{self, Response, TYPE_A},
    testbed::{run_command, skein_binary, wait_until, Host, InNetns, Testbed, TestbedConfig},
    toolchain::{ensure_packages, say},
};

use super::report::{Better, Figure, Figures};

mod converge;
mod perf;
mod refs;

/// Skein's DNS listener on a host (the agent's default `--dns-addr`).
pub(crate) const SKEIN_PORT: u16 = 5353;
/// The agents' upstream: a port nothing listens on, on the host's own loopback.
pub(crate) const CLOSED_UPSTREAM: &str = "127.0.0.1:5399";

/// The DNS flags of every agent the benches start: nothing forwarded out, answers with
/// `ttl_seconds`.
pub(crate) fn agent_dns_args(ttl_seconds: u32) -> Vec<String> {
    let ttl = format!("{ttl_seconds}s");
    ["--dns-upstream", CLOSED_UPSTREAM, "--dns-ttl", &ttl]
        .map(str::to_owned)
        .to_vec()
}
/// What the DNS bench runs, installed if missing (command, Debian package).
const PACKAGES: &[(&str, &str)] = &[
    ("dnsperf", "dnsperf"),
    ("dnsmasq", "dnsmasq-base"),
    ("knotd", "knot"),
    ("taskset", "util-linux"),
];

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Services created for the throughput figures (each answers 2 names).
    #[arg(long, default_value_t = 4)]
    services: usize,
    /// Tasks per service (all on the one host).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Seconds of each dnsperf run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Rounds of the maximum-rate runs (each server once per round).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// dnsperf client sockets.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// dnsperf queries in flight at most.
    #[arg(long, default_value_t = 200)]
    outstanding: u32,
    /// TTL of every answer, seconds (Skein's `--dns-ttl`, dnsmasq's `--local-ttl`, Knot's).
    #[arg(long, default_value_t = 2)]
    ttl: u32,
    /// Serve made-up records from dnsmasq and Knot only (no agent): checks the harness.
    #[arg(long)]
    references_only: bool,
    /// Skip the convergence figure.
    #[arg(long)]
    skip_convergence: bool,
    #[command(flatten)]
    converge: converge::Convergence,
}

/// One server under test.
struct Server {
    label: &'static str,
    port: u16,
    pid: u32,
}

/// A server's figures.
#[derive(Default)]
struct ServerFigures {
    max_qps: Vec<f64>,
    cpu_us_per_query: Vec<f64>,
    lost: u64,
    other_rcodes: Vec<String>,
    response_bytes: u64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// dnsperf's CPU busy (0–1) in each max-rate run.
    client_busy: Vec<f64>,
    lost_at_rate: u64,
}

pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure_packages(PACKAGES)?;
    if !args.references_only {
        super::use_release_binary()?;
    }
    say("dns (a): one agent, dnsmasq and Knot on one host's loopback; dnsperf on CPU 0, servers on CPU 1");
    let bed = Testbed::new("bench-dns", TestbedConfig::with_hosts(1))?;
    let host = bed.host(0);
    let mut agents = Vec::new();
    let records = if args.references_only {
        made_up_records(args.services, args.replicas)
    } else {
        let (started, _) = start_cluster_with(&bed, |_| agent_dns_args(args.ttl), &[])?;
        agents = started;
        create_services(host, args.services, args.replicas)?;
        skein_records(host, args.services, args.replicas)?
    };
    let dnsmasq = refs::start_dnsmasq(host, &records, args.ttl)?;
    let knot = refs::start_knot(host, &records, args.ttl)?;
    let mut servers = Vec::new();
    if let Some(agent) = agents.first() {
        // Every thread of the agent, and those it starts later, on the servers' CPU.
        run_command(std::process::Command::new("taskset").args([
            "-a",
            "-p",
            "-c",
            refs::SERVER_CPU,
            &agent.pid().to_string(),
        ]))?;
        servers.push(Server {
            label: "Skein",
            port: SKEIN_PORT,
            pid: agent.pid(),
        });
    }
    servers.push(Server {
        label: "dnsmasq",
        port: refs::DNSMASQ_PORT,
        pid: dnsmasq.pid(),
    });
    servers.push(Server {
        label: "Knot",
        port: refs::KNOT_PORT,
        pid: knot.pid(),
    });
    let queries = host.dir().join("queries.txt");
    std::fs::write(
        &queries,
        records
            .iter()
            .map(|(name, _)| format!("{name} A\n"))
            .collect::<String>(),
    )?;

    let mut figures: Vec<ServerFigures> =
        servers.iter().map(|_| ServerFigures::default()).collect();
    for round in 0..args.rounds {
        // Alternate who goes first: the machine is shared and drifts.
        for k in 0..servers.len() {
            let i = (k + round as usize) % servers.len();
            let s = &servers[i];
            let cpu_before = perf::cpu_time(s.pid)?;
            let run = perf::dnsperf(
                host,
                s.port,
                &queries,
                args.seconds,
                args.clients,
                args.outstanding,
                None,
                false,
            )?;
            let cpu = perf::cpu_time(s.pid)? - cpu_before;
            let f = &mut figures[i];
            f.max_qps.push(run.qps);
            f.client_busy.extend(run.client_cpu_busy);
            f.cpu_us_per_query
                .push(cpu.as_secs_f64() * 1e6 / run.completed.max(1) as f64);
            f.lost += run.sent - run.completed;
            f.other_rcodes.extend(run.other_rcodes);
            f.response_bytes = run.response_bytes;
            say(&format!(
                "round {round}: {} {:.0} queries/s",
                s.label, run.qps
            ));
        }
    }
    let rate = (median(&figures[0].max_qps) / 2.0).max(100.0) as u64;
    say(&format!(
        "p99 at {rate} queries/s (50 % of {}'s median maximum) for each server",
        servers[0].label
    ));
    for (s, f) in servers.iter().zip(&mut figures) {
        let mut run = perf::dnsperf(
            host,
            s.port,
            &queries,
            args.seconds,
            args.clients,
            args.outstanding,
            Some(rate),
            true,
        )?;
        f.p50_ms = perf::quantile(&mut run.latencies, 0.50).map(|s| s * 1e3);
        f.p99_ms = perf::quantile(&mut run.latencies, 0.99).map(|s| s * 1e3);
        f.lost_at_rate = run.sent - run.completed;
    }
    print_table(&servers, &figures, rate, &args);
    drop(bed);
    let mut figs = Figures::new("dns");
    add_figures(&mut figs, &servers, &figures, rate);

    if !args.skip_convergence && !args.references_only {
        converge::run(&args.converge, args.ttl, &mut figs)?;
    }
    Ok(figs.into_vec())
}

/// One figure of a server's figures.
type Pick = fn(&ServerFigures) -> Option<f64>;

/// Skein's figures, each next to dnsmasq and next to Knot.
fn add_figures(figs: &mut Figures, servers: &[Server], figures: &[ServerFigures], rate: u64) {
    let skein = servers.iter().position(|s| s.label == "Skein");
    let of =
        |i: Option<usize>, f: fn(&ServerFigures) -> Option<f64>| i.and_then(|i| f(&figures[i]));
    let rows: [(String, &str, Better, Pick); 3] = [
        (
            "max queries/s, server on one core".to_owned(),
            "q/s",
            Better::Higher,
            |f| Some(median(&f.max_qps)),
        ),
        (
            "server CPU per query".to_owned(),
            "µs",
            Better::Lower,
            |f| Some(median(&f.cpu_us_per_query)),
        ),
        (
            format!("p99 latency at {rate} q/s"),
            "ms",
            Better::Lower,
            |f| f.p99_ms,
        ),
    ];
    for (name, unit, better, f) in rows {
        for reference in ["dnsmasq", "Knot"] {
            let r = servers.iter().position(|s| s.label == reference);
            figs.add(&name, of(skein, f), unit, better)
                .against(reference, of(r, f));
        }
    }
}

fn print_table(servers: &[Server], figures: &[ServerFigures], rate: u64, args: &Args) {
    let names = args.services * 2;
    println!(
        "\nDNS on one host's loopback: {names} names ({} services × [NAME, tasks.NAME], {} tasks each), \
         TTL {} s; dnsperf -c {} -q {} for {} s × {} rounds (medians); every server confined to CPU 1",
        args.services, args.replicas, args.ttl, args.clients, args.outstanding, args.seconds, args.rounds
    );
    let mut header = format!("{:<34}", "");
    for s in servers {
        header += &format!("{:>12}", s.label);
    }
    if servers.len() == 3 {
        header += &format!("{:>16}{:>13}", "Skein/dnsmasq", "Skein/Knot");
    }
    println!("{header}");
    let row = |label: &str, values: Vec<Option<f64>>, digits: usize| {
        let mut line = format!("{label:<34}");
        for v in &values {
            line += &match v {
                Some(v) => format!("{v:>12.digits$}"),
                None => format!("{:>12}", "n/a"),
            };
        }
        if values.len() == 3 {
            for other in [values[1], values[2]] {
                line += &match (values[0], other) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:>14.2}×", a / b),
                    _ => format!("{:>15}", "n/a"),
                };
            }
        }
        println!("{line}");
    };
    row(
        "max queries/s",
        figures.iter().map(|f| Some(median(&f.max_qps))).collect(),
        0,
    );
    row(
        "server CPU µs per query",
        figures
            .iter()
            .map(|f| Some(median(&f.cpu_us_per_query)))
            .collect(),
        1,
    );
    row(
        &format!("p50 ms at {rate} q/s"),
        figures.iter().map(|f| f.p50_ms).collect(),
        3,
    );
    row(
        &format!("p99 ms at {rate} q/s"),
        figures.iter().map(|f| f.p99_ms).collect(),
        3,
    );
    for (s, f) in servers.iter().zip(figures) {
        println!(
            "   {}: max-rate runs {:?} q/s (dnsperf's CPU busy {:?} %), average response {} bytes, lost {} (at the rate: {}), other response codes {:?}",
            s.label,
            f.max_qps.iter().map(|q| q.round()).collect::<Vec<_>>(),
            f.client_busy.iter().map(|b| (b * 100.0).round()).collect::<Vec<_>>(),
            f.response_bytes,
            f.lost,
            f.lost_at_rate,
            f.other_rcodes
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    perf::quantile(&mut v, 0.5).unwrap_or(0.0)
}

/// `svcN` services of `replicas` whoami tasks each, on h1, waited for until running.
fn create_services(host: &Host, services: usize, replicas: usize) -> Result<()> {
    let whoami = skein_binary()?.display().to_string();
    skein_ok(host, &["network", "create", "skein"])?;
    for i in 0..services {
        let name = format!("svc{i}");
        skein_ok(
            host,
            &[
                "service",
                "create",
                &name,
                "--replicas",
                &replicas.to_string(),
                "--",
                &whoami,
                "whoami",
                "--port",
                "80",
            ],
        )?;
    }
    for i in 0..services {
        let name = format!("svc{i}");
        wait_until(
            &format!("{replicas} running tasks of {name}"),
            Duration::from_secs(60),
            || running_tasks(host, &name).len() == replicas,
        )?;
    }
    Ok(())
}

/// What Skein answers for every service's two names, checked against `service ps`: the
/// records the references then serve.
fn skein_records(
    host: &Host,
    services: usize,
    replicas: usize,
) -> Result<Vec<(String, Vec<Ipv4Addr>)>> {
    let mut records = Vec::new();
    for i in 0..services {
        let name = format!("svc{i}");
        let mut want: Vec<Ipv4Addr> = running_tasks(host, &name)
            .iter()
            .map(|t| t.ip.parse())
            .collect::<Result<_, _>>()
            .context("task IPs of service ps")?;
        want.sort();
        let tasks = wait_until(
            &format!("Skein to answer tasks.{name} with {want:?}"),
            Duration::from_secs(30),
            || match resolve(host, SKEIN_PORT, &format!("tasks.{name}")) {
                Ok(got) if got == want => Ok(got),
                Ok(got) => Err(anyhow::anyhow!("answered {got:?}")),
                Err(e) => Err(e),
            },
        )?;
        ensure!(tasks.len() == replicas, "tasks.{name}: {tasks:?}");
        let vip = resolve(host, SKEIN_PORT, &name)?;
        ensure!(vip.len() == 1, "{name} answers one VIP, not {vip:?}");
        records.push((name.clone(), vip));
        records.push((format!("tasks.{name}"), tasks));
    }
    Ok(records)
}

fn made_up_records(services: usize, replicas: usize) -> Vec<(String, Vec<Ipv4Addr>)> {
    (0..services)
        .flat_map(|i| {
            let tasks = (0..replicas)
                .map(|r| Ipv4Addr::new(10, 99, i as u8, 10 + r as u8))
                .collect();
            [
                (format!("svc{i}"), vec![Ipv4Addr::new(10, 98, 0, i as u8)]),
                (format!("tasks.svc{i}"), tasks),
            ]
        })
        .collect()
}

/// A UDP socket opened inside `host`'s namespace (it stays there whichever thread uses
/// it), with a 1 s receive timeout.
pub(crate) fn udp_socket_in(host: &Host) -> Result<UdpSocket> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _inside = InNetns::enter(host);
            let sock = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            Ok(sock)
        })
        .join()
        .expect("the socket thread does not panic")
    })
}

/// Asks `name` (type `qtype`) of 127.0.0.1:`port` through `sock`; the response, whatever
/// its code.
pub(crate) fn ask(sock: &UdpSocket, port: u16, name: &str, qtype: u16) -> Result<Response> {
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    sock.send_to(&dns_wire::query(id, name, qtype), ("127.0.0.1", port))
        .context("sending a query")?;
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        let (n, _) = sock
            .recv_from(&mut buf)
            .with_context(|| format!("no answer for {name} from port {port}"))?;
        let response = dns_wire::parse_response(&buf[..n])?;
        // A late answer to an earlier question: skip it.
        if response.id == id {
            return Ok(response);
        }
    }
    bail!("no answer with our ID for {name} from port {port}")
}

/// The A records the server on 127.0.0.1:`port` in `host` answers for `name`, sorted.
pub(crate) fn resolve(host: &Host, port: u16, name: &str) -> Result<Vec<Ipv4Addr>> {
    let sock = udp_socket_in(host)?;
    let response = ask(&sock, port, name, TYPE_A)?;
    ensure!(
        response.rcode == dns_wire::RCODE_NOERROR,
        "{name}: response code {}",
        response.rcode
    );
    Ok(response.a_records())
}
