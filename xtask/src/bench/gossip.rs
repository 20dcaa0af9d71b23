//! `cargo xtask bench gossip`: the control plane's figures.
//!
//! Simulated (the real engine, virtual time, in-memory network):
//! - a change on one node visible on every node, p50/p99 over many writes, 1000 nodes;
//! - a killed node declared down by every other node, p50/p99 over many kills;
//! - gossip bandwidth per node;
//! - false "down" verdicts for live nodes under 5 % loss over 10+ node-hours.
//!
//! Real (agents in a 5-host netns testbed, real UDP, real clocks):
//! - a change (network create) visible on every node, p50/p99;
//! - a `kill -9`ed agent shown down by every other node, p50/p99;
//! - agent RSS and gossip bandwidth per node.
//!
//! Figures only: no thresholds (the machine is shared and noisy).

use std::time::{Duration, Instant};

use super::{
    add_percentiles, percentiles,
    report::{Better, Figure, Figures},
};
use anyhow::{Context, Result};
use manager::{
    gossip::Tuning,
    sim::{NetworkModel, Sim},
    state::{Kind, RecordKey, Scope},
};
use xtask::{
    cluster::{node_rows, ready_count, skein_ok, start_cluster},
    scrape::scrape,
    testbed::{wait_until, Host, Testbed, TestbedConfig},
    toolchain::say,
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Nodes in the large simulated cluster.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Writes timed in the simulation.
    #[arg(long, default_value_t = 40)]
    writes: usize,
    /// Kills timed in the simulation.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Simulated node-hours under 5 % loss for the false-down check.
    #[arg(long, default_value_t = 10.0)]
    node_hours: f64,
    /// Skip the real-agent part (no root needed then).
    #[arg(long)]
    simulated_only: bool,
    /// Only the junk-datagram cost (see `--junk`), skipping everything else.
    #[arg(long)]
    junk_only: bool,
    /// Junk datagrams sent at a real agent's gossip port; 0 skips that part.
    #[arg(long, default_value_t = 100_000)]
    junk: usize,
    /// Rounds of the junk measurement (each binary once per round, alternating).
    #[arg(long, default_value_t = 3)]
    junk_rounds: usize,
    /// Every junk datagram this size (with the version byte); 0: mixed sizes.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=65_507))]
    junk_size: u16,
    /// Services created (no replicas) before the junk measurement: the store's size.
    #[arg(long, default_value_t = 0)]
    junk_services: usize,
    /// Changes (`network create`) timed on the real agents.
    #[arg(long, default_value_t = 20)]
    real_changes: usize,
    /// `kill -9`s timed on the real agents.
    #[arg(long, default_value_t = 6)]
    real_kills: usize,
    /// An older `skein` binary (e.g. the previous main's, copied) to measure side by side.
    #[arg(long)]
    baseline_bin: Option<std::path::PathBuf>,
}

pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    let mut figs = Figures::new("gossip");
    let junk = |figs: &mut Figures| -> Result<()> {
        super::gossip_junk::run(
            figs,
            args.junk,
            usize::from(args.junk_size),
            args.junk_services,
            args.baseline_bin.as_deref(),
            args.junk_rounds,
        )
    };
    if args.junk_only {
        junk(&mut figs)?;
        return Ok(figs.into_vec());
    }
    simulated_spread_and_detection(&args, &mut figs)?;
    simulated_false_downs(args.node_hours, &mut figs)?;
    if !args.simulated_only {
        real_agents(args.real_changes, args.real_kills, &mut figs)?;
        if args.junk > 0 {
            junk(&mut figs)?;
        }
    }
    Ok(figs.into_vec())
}

fn simulated_spread_and_detection(args: &Args, figs: &mut Figures) -> Result<()> {
    let n = args.nodes;
    say(&format!(
        "simulated cluster of {n} nodes (real engines, virtual time, 0.2-2 ms one-way delay)"
    ));
    let started = Instant::now();
    let mut sim = Sim::new(n, NetworkModel::default(), Tuning::default(), 42);
    let formed = sim
        .run_until_true(
            Duration::from_secs(300),
            Duration::from_millis(100),
            Sim::membership_converged,
        )
        .context("the simulated cluster did not form within 300 s")?;
    println!(
        "   membership of {n} nodes converged after {:.1} s (virtual)",
        formed.as_secs_f64()
    );
    figs.add(
        &format!("simulated {n} nodes: membership converged (virtual time)"),
        Some(formed.as_secs_f64()),
        "s",
        Better::Lower,
    );

    // Bandwidth in steady state: after the joiners' fast-announce period.
    sim.run_for(Duration::from_secs(35));
    let bytes_before: u64 = (0..n).map(|i| sim.bytes_out(i)).sum();
    sim.run_for(Duration::from_secs(10));
    let bytes_after: u64 = (0..n).map(|i| sim.bytes_out(i)).sum();
    let kbps = (bytes_after - bytes_before) as f64 / n as f64 / 10.0 / 1e3;
    println!("   gossip bandwidth, steady state: {kbps:.1} KB/s sent per node");
    figs.add(
        &format!("simulated {n} nodes: gossip sent per node, steady state"),
        Some(kbps),
        "KB/s",
        Better::Lower,
    );

    let mut spread = Vec::new();
    for w in 0..args.writes {
        let writer = (w * 7919) % n;
        let name = format!("bench-{w}");
        sim.write(
            writer,
            Scope::Cluster,
            Kind::Other(100),
            &name,
            Some(vec![1; 64]),
        );
        let key = RecordKey::cluster(Kind::Other(100), name);
        let took = sim
            .run_until_true(Duration::from_secs(60), Duration::from_millis(10), |s| {
                (0..s.len())
                    .filter_map(|i| s.engine(i))
                    .all(|e| e.with_store(|st| st.get(&key).is_some()))
            })
            .context("a write did not reach every node within 60 s")?;
        spread.push(took);
        sim.run_for(Duration::from_millis(200));
    }
    add_percentiles(
        figs,
        &format!("simulated {n} nodes: a change visible on all"),
        &spread,
    );
    println!(
        "   a change visible on all {n} nodes: {}",
        percentiles(&mut spread)
    );

    let mut detection = Vec::new();
    for k in 0..args.kills {
        let victim = 1 + (k * 104_729) % (n - 1);
        sim.kill(victim);
        let id = sim.id(victim);
        let took = sim
            .run_until_true(Duration::from_secs(60), Duration::from_millis(10), |s| {
                (0..s.len())
                    .filter_map(|i| s.engine(i))
                    .all(|e| !e.is_up(&id))
            })
            .context("a kill was not detected by every node within 60 s")?;
        detection.push(took);
        sim.restart(victim, 0);
        sim.run_for(Duration::from_secs(3));
    }
    add_percentiles(
        figs,
        &format!("simulated {n} nodes: a killed node down on all"),
        &detection,
    );
    println!(
        "   a killed node declared down by all {} others: {}",
        n - 1,
        percentiles(&mut detection)
    );
    println!(
        "   (simulation took {:.0} s of CPU time)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn simulated_false_downs(node_hours: f64, figs: &mut Figures) -> Result<()> {
    let nodes = 20;
    let seconds = (node_hours * 3600.0 / nodes as f64).ceil() as u64;
    say(&format!(
        "false 'down' verdicts under 5% loss: {nodes} live nodes for {:.0} min (virtual) = {node_hours} node-hours",
        seconds as f64 / 60.0
    ));
    let mut sim = Sim::new(nodes, NetworkModel::default(), Tuning::default(), 7);
    sim.run_until_true(
        Duration::from_secs(60),
        Duration::from_millis(100),
        Sim::membership_converged,
    )
    .context("the cluster did not form")?;
    sim.set_loss(0.05);
    let mut false_downs = 0u64;
    let mut was_converged = true;
    for _ in 0..seconds * 10 {
        sim.run_for(Duration::from_millis(100));
        // Count transitions into a state where some live node is seen down.
        let converged = sim.membership_converged();
        if was_converged && !converged {
            false_downs += 1;
        }
        was_converged = converged;
    }
    println!(
        "   {false_downs} episodes of a live node seen down over {node_hours} node-hours ({} datagrams lost)",
        sim.dropped
    );
    figs.add(
        &format!("simulated, 5 % loss: live node seen down, per {node_hours} node-hours"),
        Some(false_downs as f64),
        "episodes",
        Better::Lower,
    );
    Ok(())
}

fn real_agents(changes: usize, kills: usize, figs: &mut Figures) -> Result<()> {
    say("5 real agents in a netns testbed (real UDP, real clocks)");
    let bed = Testbed::new("bench-gossip", TestbedConfig::with_hosts(5))?;
    let (mut agents, token) = start_cluster(&bed)?;
    let seed = bed.host(0).underlay_ip().to_string();
    let join = ["--join", seed.as_str(), "--token", token.as_str()];

    let mut spread = Vec::new();
    for i in 0..changes {
        let creator = bed.host(i % 5);
        let name = format!("bench{i}");
        // `network create` returns after its conflict-settle wait, so time from the
        // moment the record is written: poll the other nodes from just before.
        let others: Vec<&Host> = bed
            .hosts()
            .iter()
            .filter(|h| h.name() != creator.name())
            .collect();
        let start = Instant::now();
        let mut child = creator
            .skein()?
            .args(["network", "create", &name])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let mut seen = vec![None; others.len()];
        while seen.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(30) {
            for (k, host) in others.iter().enumerate() {
                if seen[k].is_none()
                    && skein_ok(host, &["network", "ls"])
                        .ok()
                        .is_some_and(|t| t.contains(&name))
                {
                    seen[k] = Some(start.elapsed());
                }
            }
        }
        child.wait()?;
        spread.push(
            seen.iter()
                .map(|s| s.unwrap_or(Duration::from_secs(30)))
                .max()
                .unwrap_or_default(),
        );
    }
    add_percentiles(
        figs,
        "5 agents: a change visible on all (incl. CLI)",
        &spread,
    );
    println!(
        "   a change visible on all 5 nodes (network create on one, polled with `skein network ls` on the others; includes CLI latency): {}",
        percentiles(&mut spread)
    );

    let rss: Vec<u64> = agents.iter().map(|a| rss_kb(a.pid())).collect();
    figs.add(
        "5 agents: largest agent RSS",
        rss.iter()
            .max()
            .filter(|&&kb| kb > 0)
            .map(|&kb| kb as f64 / 1024.0),
        "MiB",
        Better::Lower,
    );
    println!(
        "   agent RSS: {} (KB)",
        rss.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let before: Vec<u64> = bed.hosts().iter().map(gossip_bytes_out).collect();
    std::thread::sleep(Duration::from_secs(10));
    let after: Vec<u64> = bed.hosts().iter().map(gossip_bytes_out).collect();
    let per_node: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / 10.0 / 1e3)
        .collect();
    let rates: Vec<String> = per_node.iter().map(|r| format!("{r:.1}")).collect();
    figs.add(
        "5 agents: gossip sent per node, idle (mean)",
        // A node whose metrics could not be read counts 0: no figure rather than a wrong one.
        (!after.contains(&0)).then(|| per_node.iter().sum::<f64>() / per_node.len() as f64),
        "KB/s",
        Better::Lower,
    );
    println!(
        "   gossip bandwidth sent per node, idle cluster: {} KB/s",
        rates.join(", ")
    );

    let mut detection = Vec::new();
    for round in 0..kills {
        let victim = 1 + round % 4;
        agents[victim].kill9()?;
        let start = Instant::now();
        let others: Vec<&Host> = (0..5)
            .filter(|&i| i != victim)
            .map(|i| bed.host(i))
            .collect();
        let victim_name = bed.host(victim).netns().to_owned();
        let mut seen = vec![None; others.len()];
        while seen.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(30) {
            for (k, host) in others.iter().enumerate() {
                if seen[k].is_none() && shows_down(host, &victim_name) {
                    seen[k] = Some(start.elapsed());
                }
            }
        }
        detection.push(
            seen.iter()
                .map(|s| s.unwrap_or(Duration::from_secs(30)))
                .max()
                .unwrap_or_default(),
        );
        agents[victim] = bed.host(victim).start_agent(&join)?;
        for host in bed.hosts() {
            wait_until("5 ready again", Duration::from_secs(30), || {
                ready_count(host) == Some(5)
            })?;
        }
    }
    add_percentiles(
        figs,
        "5 agents: a kill -9ed agent down on all (incl. CLI)",
        &detection,
    );
    println!(
        "   a kill -9ed agent shown down by all 4 others (polled with `skein node ls`): {}",
        percentiles(&mut detection)
    );
    Ok(())
}

fn shows_down(host: &Host, hostname: &str) -> bool {
    node_rows(host).is_some_and(|rows| {
        rows.iter()
            .any(|r| r["hostname"] == hostname && r["status"] == "down")
    })
}

fn rss_kb(pid: u32) -> u64 {
    // The agent runs under `ip netns exec`, which execs it: same PID.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn gossip_bytes_out(host: &Host) -> u64 {
    scrape(host)
        .ok()
        .and_then(|m| m.get("skein_gossip_bytes_out_total").copied())
        .unwrap_or(0)
}
