//! `cargo xtask bench mesh-vip`: an endpoint reaching a service through its VIP (balanced
//! on the sending host by `tc_endpoint_ingress`, `vip_nat`), next to the same endpoint
//! reaching the task's own address, and next to the kernel's way of balancing a VIP in
//! the client's namespace (Swarm puts IPVS there; this kernel has no IPVS, so nftables:
//! `dnat to numgen inc mod 1 map { 0 : <task> }` in the output hook, conntrack reversing
//! the replies) over the same overlay. Needs root.
//!
//! One 3-host cluster on a wire-like underlay; `web` = 1 × whoami on one host (publishing
//! 8080:80: a VIP takes the published ports' targets), the client
//! an endpoint (`endpoint create`) on another, so every request crosses the overlay and
//! all three paths reach the same task the same way: only the balancing differs. `wrk -t1`
//! keep-alive and `Connection: close` (a new connection, so a new flow, per request), the
//! three paths interleaved in every round, each round starting with the next path; medians
//! over the rounds; CPU is the whole machine's busy time per request (client, dataplane and
//! server share 2 cores).
//!
//! [`measure`] is what `bench mesh` can call; [`run`] prints its table.

use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::report::{Better, Figure, Figures};
use serde_json::Value;

use xtask::{
    cluster::{create_endpoint, in_netns, running_tasks, skein_ok, start_cluster_with, DEADLINE},
    testbed::{skein_binary, wait_until, Testbed, TestbedConfig},
};

/// The reference's virtual address (TEST-NET-1: routed via the gateway, then rewritten).
const REF_VIP: &str = "192.0.2.80";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Rounds (each runs every path once per mode).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: u32,
}

/// One wrk run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WrkFigures {
    pub(crate) requests_per_s: f64,
    pub(crate) p99_ms: f64,
    pub(crate) cpu_us_per_request: f64,
    pub(crate) errors: u64,
}

/// Medians per path, keep-alive and new connection per request.
#[derive(Clone, Debug, Default)]
pub(crate) struct VipFigures {
    /// Endpoint → the service's VIP (Skein, balanced in tc).
    pub(crate) vip: [WrkFigures; 2],
    /// Endpoint → the task's own address (no balancing).
    pub(crate) task_ip: [WrkFigures; 2],
    /// Endpoint → nftables DNAT in its own namespace → the task (the kernel reference).
    pub(crate) nft_dnat: [WrkFigures; 2],
}

/// Index of [`VipFigures`]' arrays.
pub(crate) const KEEP_ALIVE: usize = 0;
pub(crate) const NEW_CONNECTION: usize = 1;

pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    let f = measure(args.rounds, args.seconds, args.connections)?;
    let mut figs = Figures::new("mesh-vip");
    println!(
        "endpoint → service, wrk -t1 -c{} -d{}s, medians of {} rounds",
        args.connections, args.seconds, args.rounds
    );
    for (mode, i) in [
        ("keep-alive", KEEP_ALIVE),
        ("new connection", NEW_CONNECTION),
    ] {
        for (path, w) in [
            ("VIP (Skein tc)", f.vip[i]),
            ("task IP", f.task_ip[i]),
            ("nftables DNAT (reference)", f.nft_dnat[i]),
        ] {
            println!(
                "  {mode:<15} {path:<26} {:>8.0} req/s  p99 {:>6.2} ms  {:>6.1} µs CPU/req  {} errors",
                w.requests_per_s, w.p99_ms, w.cpu_us_per_request, w.errors
            );
        }
        println!(
            "  {mode:<15} VIP / reference {:.2}×, VIP / task IP {:.2}×",
            f.vip[i].requests_per_s / f.nft_dnat[i].requests_per_s,
            f.vip[i].requests_per_s / f.task_ip[i].requests_per_s
        );
        let name = format!("endpoint → service VIP, {mode}");
        for (reference, r) in [
            ("nftables DNAT in the client", f.nft_dnat[i]),
            ("the task's own address", f.task_ip[i]),
        ] {
            figs.add(
                &name,
                Some(f.vip[i].requests_per_s),
                "req/s",
                Better::Higher,
            )
            .against(reference, Some(r.requests_per_s));
        }
        figs.add(
            &format!("{name}: CPU per request (machine)"),
            Some(f.vip[i].cpu_us_per_request),
            "µs",
            Better::Lower,
        )
        .against(
            "nftables DNAT in the client",
            Some(f.nft_dnat[i].cpu_us_per_request),
        );
    }
    Ok(figs.into_vec())
}

/// Builds the testbed, measures every path `rounds` times (interleaved), removes it.
pub(crate) fn measure(rounds: u32, seconds: u32, connections: u32) -> Result<VipFigures> {
    let bed = Testbed::new("bench-vip", TestbedConfig::with_hosts(3))?;
    bed.make_wire_like()?;
    let (_agents, _) = start_cluster_with(&bed, |_| Vec::new(), &[])?;
    // The server's binary may differ from the agents' (`SKEIN_WHOAMI_BIN`): a debug
    // agent — the data path is its eBPF object, compiled the same either way — serving
    // with a release whoami, so the server is not the bottleneck.
    let whoami = match std::env::var_os("SKEIN_WHOAMI_BIN") {
        Some(bin) => std::path::PathBuf::from(bin),
        None => skein_binary()?,
    }
    .display()
    .to_string();
    skein_ok(
        bed.host(0),
        &[
            "service",
            "create",
            "web",
            "--replicas",
            "1",
            // A VIP takes the target ports of the published ones.
            "--publish",
            "8080:80",
            "--",
            &whoami,
            "whoami",
            "--port",
            "80",
        ],
    )?;
    let task = wait_until("web running", DEADLINE, || {
        running_tasks(bed.host(0), "web")
            .into_iter()
            .next()
            .ok_or("not yet")
    })?;
    let inspect: Value =
        serde_json::from_str(&skein_ok(bed.host(0), &["service", "inspect", "web"])?)?;
    let vip = inspect["vip"]
        .as_str()
        .context("web has no VIP")?
        .to_owned();
    // The client on another host than the task.
    let client_host = bed
        .hosts()
        .iter()
        .find(|h| h.netns() != task.host && h.name() != task.host)
        .context("no host without the task")?;
    // One client endpoint per path, side by side on that host: the reference's NAT table
    // turns on conntrack for everything in its namespace, which the other paths must not
    // pay, and one path's thousands of TIME_WAIT sockets stay out of the next one's way
    // (wrk to a second destination from a namespace full of them hung past its duration).
    let (ns, _) = create_endpoint(client_host, "skein", "bench-vip")?;
    let (task_ns, _) = create_endpoint(client_host, "skein", "bench-task")?;
    let (ref_ns, _) = create_endpoint(client_host, "skein", "bench-ref")?;
    // The reference: the kernel balances REF_VIP in the client's own namespace.
    let rules = format!(
        "table ip vipref {{\n chain out {{\n  type nat hook output priority -100;\n  \
         ip daddr {REF_VIP} tcp dport 80 dnat to numgen inc mod 1 map {{ 0 : {} }}\n }}\n}}\n",
        task.ip
    );
    let nft = Command::new("ip")
        .args(["netns", "exec", &ref_ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(rules.as_bytes())?;
            child.wait()
        })?;
    ensure!(nft.success(), "nft rules in the client namespace");

    let urls = [
        (&ns, format!("http://{vip}:80/")),
        (&task_ns, format!("http://{}:80/", task.ip)),
        (&ref_ns, format!("http://{REF_VIP}:80/")),
    ];
    for (ns, url) in &urls {
        let answered = wait_until(&format!("{url} answering"), DEADLINE, || {
            let out = in_netns(ns, &["curl", "-sf", "--max-time", "2", url])
                .map_err(|e| e.to_string())?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| "no answer".to_owned())
        });
        if let Err(error) = answered {
            let maps = skein_ok(client_host, &["debug", "maps"]).unwrap_or_default();
            bail!("{error:#}\nclient host's maps:\n{maps}");
        }
    }
    let mut samples: Vec<[Vec<WrkFigures>; 2]> =
        vec![Default::default(), Default::default(), Default::default()];
    for round in 0..rounds as usize {
        // Each round starts with another path: none always runs first or after another.
        for path in (0..urls.len()).map(|k| (k + round) % urls.len()) {
            let (ns, url) = &urls[path];
            for (mode, close) in [(KEEP_ALIVE, false), (NEW_CONNECTION, true)] {
                let before = tcp_counters(ns);
                let figures = match wrk(ns, url, close, seconds, connections) {
                    Ok(f) => {
                        let after = tcp_counters(ns);
                        println!(
                            "  {:<14} {:<14} {:>8.0} req/s  p99 {:>7.2} ms  {:>7.1} µs CPU/req  client TCP: {}",
                            PATHS[path],
                            if close { "new connection" } else { "keep-alive" },
                            f.requests_per_s,
                            f.p99_ms,
                            f.cpu_us_per_request,
                            counter_deltas(&before, &after)
                        );
                        f
                    }
                    Err(error) => {
                        let ss = in_netns(ns, &["ss", "-tanp"])
                            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                            .unwrap_or_default();
                        let maps = skein_ok(client_host, &["debug", "maps"]).unwrap_or_default();
                        bail!("{error:#}\nss:\n{ss}\nclient host's maps:\n{maps}");
                    }
                };
                samples[path][mode].push(figures);
            }
        }
    }
    // What the balancer did on the client's host over all the runs.
    let maps = skein_ok(client_host, &["debug", "maps"]).unwrap_or_default();
    for line in maps.lines().filter(|l| l.contains("vip")) {
        println!("  client host: {}", line.trim());
    }
    let median = |runs: &[WrkFigures]| -> WrkFigures {
        let pick = |f: fn(&WrkFigures) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        WrkFigures {
            requests_per_s: pick(|w| w.requests_per_s),
            p99_ms: pick(|w| w.p99_ms),
            cpu_us_per_request: pick(|w| w.cpu_us_per_request),
            errors: runs.iter().map(|w| w.errors).sum(),
        }
    };
    let both = |s: &[Vec<WrkFigures>; 2]| [median(&s[0]), median(&s[1])];
    Ok(VipFigures {
        vip: both(&samples[0]),
        task_ip: both(&samples[1]),
        nft_dnat: both(&samples[2]),
    })
}

/// The paths in the order [`measure`] runs them (for the per-run lines).
const PATHS: [&str; 3] = ["VIP", "task IP", "nft DNAT"];

/// The client namespace's TCP counters that tell a healthy run from a collapsing one
/// (retransmitted SYNs, resets, failed opens), printed per run as deltas.
const WATCHED: [&str; 7] = [
    "TcpActiveOpens",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpOutRsts",
    "TcpRetransSegs",
    "TcpExtTCPSynRetrans",
    "TcpExtTCPTimeouts",
];

/// `nstat -asz` in `ns`: absolute counters, history untouched; empty if it fails (the
/// figures do not depend on it).
fn tcp_counters(ns: &str) -> std::collections::BTreeMap<String, u64> {
    let Ok(out) = in_netns(ns, &["nstat", "-asz"]) else {
        return Default::default();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let value = words.next()?.parse().ok()?;
            WATCHED.contains(&name).then(|| (name.to_owned(), value))
        })
        .collect()
}

fn counter_deltas(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    WATCHED
        .iter()
        .map(|name| {
            let d = after.get(*name).unwrap_or(&0)
                - before
                    .get(*name)
                    .unwrap_or(&0)
                    .min(after.get(*name).unwrap_or(&0));
            format!(
                "{} {d}",
                name.trim_start_matches("TcpExt").trim_start_matches("Tcp")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One wrk run in namespace `ns` (the shared runner), as this bench's figures.
fn wrk(ns: &str, url: &str, close: bool, seconds: u32, connections: u32) -> Result<WrkFigures> {
    let w = super::wrk::run(ns, url, close, seconds, connections)?;
    Ok(WrkFigures {
        requests_per_s: w.requests_per_s,
        p99_ms: w.p99_ms.unwrap_or(f64::NAN),
        cpu_us_per_request: w.cpu_us_per_request().unwrap_or(f64::NAN),
        errors: w.errors,
    })
}
