//! `cargo xtask demo`: a 3-host Skein cluster in network namespaces — one agent creates
//! it, two join with its token — `node ls`, a network created on one node and listed on
//! another, real traffic between the hosts, the counters moving, an agent killed (its
//! node shown down) and restarted without losing a packet; then everything is removed.
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
    let h1 = bed.host(0);
    say(&format!(
        "h1: `skein agent --underlay-iface eth0 --init` ({}): a new cluster",
        h1.underlay_ip()
    ));
    agents.push(h1.start_agent(&["--init"])?);
    let token = wait_until("the join token", Duration::from_secs(20), || {
        h1.skein()
            .and_then(|mut cmd| Ok(cmd.arg("join-token").output()?))
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })?;
    println!("   join token: {token}");
    let seed = h1.underlay_ip().to_string();
    let join_args = ["--join", seed.as_str(), "--token", token.as_str()];
    for host in &bed.hosts()[1..] {
        say(&format!(
            "{}: `skein agent --underlay-iface eth0 --join {seed} --token …` ({})",
            host.name(),
            host.underlay_ip()
        ));
        agents.push(host.start_agent(&join_args)?);
    }
    let h2 = bed.host(1);
    wait_until("3 ready nodes", Duration::from_secs(30), || {
        node_ls(h2).is_some_and(|table| table.matches(" ready ").count() == HOSTS)
    })?;
    say("`skein node ls` on h2");
    print!("{}", indent(&node_ls(h2).unwrap_or_default()));
    say("`skein network create web` on h3, then `skein network ls` on h1");
    let created = skein_out(bed.host(2), &["network", "create", "web"])
        .context("`skein network create web` on h3 failed")?;
    print!("{}", indent(&created));
    wait_until("web on h1", Duration::from_secs(20), || {
        skein_out(h1, &["network", "ls"]).is_some_and(|t| t.contains("web"))
    })?;
    print!(
        "{}",
        indent(&skein_out(h1, &["network", "ls"]).unwrap_or_default())
    );
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
    wait_until("h2 down on h1", Duration::from_secs(20), || {
        node_ls(h1).is_some_and(|t| t.contains(" down "))
    })?;
    println!("   h1's view with h2's agent dead:");
    print!("{}", indent(&node_ls(h1).unwrap_or_default()));
    let link = h2.run("ip", ["link", "show", "dev", "eth0"])?;
    println!(
        "   h2 agent killed; eth0 still has: {}",
        link.lines()
            .find(|l| l.contains("prog/xdp"))
            .unwrap_or("(nothing)")
            .trim()
    );
    std::thread::sleep(Duration::from_millis(700));
    agents[1] = h2.start_agent(&join_args)?;
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
    wait_until("3 ready again", Duration::from_secs(30), || {
        node_ls(h1).is_some_and(|t| t.matches(" ready ").count() == HOSTS)
    })?;
    println!("   h1's view after the restart (same node ID):");
    print!("{}", indent(&node_ls(h1).unwrap_or_default()));

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

/// `skein ARGS` in `host`, its stdout if it succeeded.
fn skein_out(host: &Host, args: &[&str]) -> Option<String> {
    let out = host.skein().ok()?.args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn node_ls(host: &Host) -> Option<String> {
    skein_out(host, &["node", "ls"])
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}
