//! `cargo xtask demo`: a 3-host Skein testbed in network namespaces, one agent per host,
//! real traffic between the hosts, the counters moving, an agent killed and restarted
//! without losing a packet; then everything is removed.
//!
//! (The overlay, services and the routing mesh join the demo as they land: the goal is
//! `curl` on every node's published port, answers rotating across replicas.)

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use xtask::{
    scrape::{sample, scrape, XDP_PASS_BYTES, XDP_PASS_PACKETS},
    testbed::{sweep_dead_runs, wait_until, Host, Testbed, TestbedConfig},
    toolchain::{ensure_debian_packages, ensure_ebpf_toolchain, run_checked, say},
};

use crate::build_ebpf::workspace_root;

const HOSTS: usize = 3;

pub fn run() -> Result<()> {
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the demo creates network namespaces and loads eBPF programs: run it as root"
    );
    ensure_ebpf_toolchain()?;
    ensure_debian_packages()?;
    let root = workspace_root();
    say("building the skein binary");
    run_checked(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--package", "agent", "--bin", "skein"]),
    )?;
    std::env::set_var("SKEIN_BIN", root.join("target/debug/skein"));
    sweep_dead_runs()?;

    say(&format!(
        "creating {HOSTS} hosts (network namespaces) on a bridged underlay, 10.200.0.0/24"
    ));
    let bed = Testbed::new("demo", TestbedConfig::with_hosts(HOSTS))?;
    let mut agents = Vec::new();
    for host in bed.hosts() {
        say(&format!(
            "{}: starting `skein agent --underlay-iface eth0` ({})",
            host.name(),
            host.underlay_ip()
        ));
        agents.push(host.start_agent(&[])?);
    }
    for host in bed.hosts() {
        wait_until("the agent's /metrics", Duration::from_secs(20), || {
            scrape(host)
        })
        .with_context(|| format!("agent on {}", host.name()))?;
        let link = host.run("ip", ["link", "show", "dev", "eth0"])?;
        let attached = link
            .lines()
            .find(|l| l.contains("prog/xdp"))
            .unwrap_or("(no XDP program!)");
        println!("   {}: eth0 {}", host.name(), attached.trim());
    }

    let before = counters(&bed)?;
    say("traffic: every host pings every other host 20 times, then iperf3 h1 -> h3 for 2 s");
    for from in bed.hosts() {
        for to in bed.hosts().iter().filter(|h| h.name() != from.name()) {
            let out = from.run(
                "ping",
                [
                    "-n",
                    "-q",
                    "-c",
                    "20",
                    "-i",
                    "0.01",
                    &to.underlay_ip().to_string(),
                ],
            )?;
            let summary = out
                .lines()
                .find(|l| l.contains("transmitted"))
                .unwrap_or("");
            println!("   {} -> {}: {summary}", from.name(), to.name());
        }
    }
    let h3 = bed.host(2);
    let mut server = h3.spawn(
        {
            let mut cmd = h3.command("iperf3");
            cmd.args(["-s", "-1"]);
            cmd
        },
        "iperf3-server",
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let out = bed.host(0).run(
        "iperf3",
        ["-c", &h3.underlay_ip().to_string(), "-t", "2", "-f", "g"],
    )?;
    if let Some(line) = out.lines().rev().find(|l| l.contains("receiver")) {
        println!("   iperf3 h1 -> h3: {}", line.trim());
    }
    let _ = server.wait(Duration::from_secs(5));
    print_counters(&bed, &before, &counters(&bed)?);

    say("kill -9 the agent on h2 while h1 pings it 300 times; then start a new agent");
    let h2 = bed.host(1);
    let mut pinger = bed.host(0).spawn(
        {
            let mut cmd = bed.host(0).command("ping");
            cmd.args(["-n", "-q", "-c", "300", "-i", "0.01"])
                .arg(h2.underlay_ip().to_string());
            cmd
        },
        "ping-restart",
    )?;
    let before_restart = counters(&bed)?;
    std::thread::sleep(Duration::from_millis(800));
    agents[1].kill9()?;
    let link = h2.run("ip", ["link", "show", "dev", "eth0"])?;
    println!(
        "   h2 agent killed; eth0 still has: {}",
        link.lines()
            .find(|l| l.contains("prog/xdp"))
            .unwrap_or("(nothing)")
            .trim()
    );
    std::thread::sleep(Duration::from_millis(700));
    agents[1] = h2.start_agent(&[])?;
    wait_until("the new agent's /metrics", Duration::from_secs(20), || {
        scrape(h2)
    })?;
    pinger.wait(Duration::from_secs(20))?;
    let summary = pinger.log();
    println!(
        "   ping h1 -> h2 across the restart: {}",
        summary
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("(no summary)")
    );
    print_counters(&bed, &before_restart, &counters(&bed)?);

    say("removing the testbed: agents, namespaces, bpffs mounts");
    drop(agents);
    drop(bed);
    say("done");
    Ok(())
}

type Counts = BTreeMap<String, (u64, u64)>;

fn counters(bed: &Testbed) -> Result<Counts> {
    bed.hosts()
        .iter()
        .map(|host: &Host| {
            let m = scrape(host)?;
            Ok((
                host.name().to_owned(),
                (sample(&m, XDP_PASS_PACKETS)?, sample(&m, XDP_PASS_BYTES)?),
            ))
        })
        .collect()
}

fn print_counters(bed: &Testbed, before: &Counts, after: &Counts) {
    println!(
        "   {:<6} {:>14} {:>14} {:>16}",
        "host", "xdp pass pkts", "(+ since)", "(+ bytes since)"
    );
    for host in bed.hosts() {
        let (b, a) = (before[host.name()], after[host.name()]);
        println!(
            "   {:<6} {:>14} {:>14} {:>16}",
            host.name(),
            a.0,
            format!("+{}", a.0 - b.0),
            format!("+{}", a.1 - b.1)
        );
    }
}
