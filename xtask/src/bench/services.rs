//! `cargo xtask bench services`: how fast services converge, on real agents in a netns
//! testbed (3 hosts by default):
//! - `service create` of 3 replicas (on an existing network) → all 3 running, seen by polling `service ps` on the
//!   creating node (and when the CLI itself reports `verify: Service converged`);
//! - a host's death (its agent and its tasks killed with SIGKILL) → its tasks running on
//!   the other hosts, seen by polling `service ps` on a surviving node.
//!
//! Figures only: no thresholds (the machine is shared and noisy).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use xtask::{
    cluster::{skein_ok, start_cluster},
    testbed::{skein_binary, wait_until, Host, Testbed, TestbedConfig},
    toolchain::say,
};

use super::{
    add_percentiles, percentiles,
    report::{Figure, Figures},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Hosts in the testbed.
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    /// Services created (each timed, then removed).
    #[arg(long, default_value_t = 10)]
    creates: usize,
    /// Host deaths timed.
    #[arg(long, default_value_t = 10)]
    deaths: usize,
}

const LIMIT: Duration = Duration::from_secs(60);

/// Running tasks of `service` per host, as `host` sees them.
fn running(host: &Host, service: &str) -> Option<Vec<String>> {
    let out = skein_ok(host, &["service", "ps", service, "--format", "json"]).ok()?;
    let rows: Vec<Value> = serde_json::from_str(&out).ok()?;
    Some(
        rows.iter()
            .filter(|r| r["state"] == "running")
            .map(|r| r["hostname"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    anyhow::ensure!(
        args.hosts >= 2,
        "--hosts must be at least 2 (a host dies, one stays)"
    );
    let mut figs = Figures::new("services");
    say(&format!(
        "services on {} real agents in a netns testbed",
        args.hosts
    ));
    let bed = Testbed::new("bench-services", TestbedConfig::with_hosts(args.hosts))?;
    let (mut agents, token) = start_cluster(&bed)?;
    // Agents adopt only, and start nothing, for their first seconds: measure the steady
    // state.
    std::thread::sleep(Duration::from_secs(5));
    let h1 = bed.host(0);
    let whoami = skein_binary()?.display().to_string();
    // The first service without --network also creates the default network `skein` (one
    // more 1.5 s conflict-settle wait, once per cluster): create it first, so every round
    // measures the same thing.
    skein_ok(h1, &["network", "create", "skein"])?;

    let mut polled = Vec::new();
    let mut cli = Vec::new();
    for i in 0..args.creates {
        let name = format!("bench{i}");
        let start = Instant::now();
        let mut child = h1
            .skein()?
            .args(["service", "create", &name, "--replicas", "3", "--"])
            .args([&whoami, "whoami", "--port", "80"])
            .stdout(Stdio::null())
            .spawn()?;
        let mut seen = None;
        let mut done = None;
        while (seen.is_none() || done.is_none()) && start.elapsed() < LIMIT {
            if seen.is_none() && running(h1, &name).is_some_and(|r| r.len() == 3) {
                seen = Some(start.elapsed());
            }
            if done.is_none() {
                if let Some(status) = child.try_wait()? {
                    anyhow::ensure!(status.success(), "service create {name} failed");
                    done = Some(start.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        polled.push(seen.unwrap_or(LIMIT));
        cli.push(done.unwrap_or(LIMIT));
        skein_ok(h1, &["service", "rm", &name])?;
    }
    // A round that did not converge within LIMIT counts LIMIT (a lower bound), as printed.
    add_percentiles(&mut figs, "create 3 replicas → 3 running", &polled);
    add_percentiles(&mut figs, "create 3 replicas → CLI says converged", &cli);
    println!(
        "   service create of 3 replicas → 3 running (polled `service ps`): {}",
        percentiles(&mut polled)
    );
    println!(
        "   service create of 3 replicas → the CLI prints `verify: Service converged` (includes the 1.5 s conflict-settle wait): {}",
        percentiles(&mut cli)
    );

    skein_ok(
        h1,
        &[
            "service",
            "create",
            "web",
            "--replicas",
            "3",
            "--",
            &whoami,
            "whoami",
            "--port",
            "80",
        ],
    )?;
    let seed = h1.underlay_ip().to_string();
    let join = ["--join", seed.as_str(), "--token", token.as_str()];
    let mut moved = Vec::new();
    for round in 0..args.deaths {
        let victim = 1 + round % (args.hosts - 1);
        let victim_name = bed.host(victim).netns().to_owned();
        wait_until("one task per host", LIMIT, || {
            running(h1, "web").is_some_and(|r| r.len() == 3 && r.contains(&victim_name))
        })?;
        // The host dies: its agent and every task process, at once.
        agents[victim].kill9()?;
        kill_tasks(bed.host(victim))?;
        let start = Instant::now();
        let mut seen = None;
        while seen.is_none() && start.elapsed() < LIMIT {
            if running(h1, "web").is_some_and(|r| r.len() == 3 && !r.contains(&victim_name)) {
                seen = Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        moved.push(seen.unwrap_or(LIMIT));
        agents[victim] = bed.host(victim).start_agent(&join)?;
    }
    add_percentiles(
        &mut figs,
        "a host's death → its task running elsewhere",
        &moved,
    );
    println!(
        "   a host's death (agent + tasks SIGKILLed) → its task running elsewhere (polled `service ps`): {}",
        percentiles(&mut moved)
    );
    Ok(figs.into_vec())
}

/// SIGKILLs every process in `host`'s task namespaces (only this testbed's).
fn kill_tasks(host: &Host) -> Result<()> {
    let list = host.run("ip", ["netns", "list"])?;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if !name.starts_with(&format!("{}-", host.resource_prefix())) {
            continue;
        }
        let pids = host
            .run("ip", ["netns", "pids", name])
            .with_context(|| format!("listing the processes in {name}"))?;
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) of a process in a namespace this testbed's agent created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(())
}
