//! `bench dns` (b): after a state change, how long until every node's DNS answer shows it,
//! next to how long until every node's `service ps` shows it (the control plane's own
//! convergence), in the same rounds on `--nodes` real agents.
//!
//! One service `conv` (`--conv-replicas` whoami tasks, a health check that fails while a
//! file named after the task exists). Each round makes one change, cycling: scale up by
//! one, scale back down, SIGKILL one task's processes, make one task's health check fail.
//! From the moment the change is made (the `--detach`ed CLI started, the kill sent, the
//! file created), two threads per node poll: one `service ps conv` on that node, one
//! `tasks.conv` (A) at that node's DNS listener (a UDP socket opened in its namespace);
//! each records when its view first satisfies the change (one more task and the old ones
//! kept; one fewer; the killed or sick task's IP gone). The DNS poller asks every 5 ms;
//! a `service ps` takes a CLI run (~10–30 ms here), so the control plane's times are that
//! much coarser. Rounds are bounded by `--conv-limit` seconds.

use std::{
    collections::BTreeSet,
    fs,
    net::Ipv4Addr,
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use xtask::{
    cluster::{netns_with_ip, running_tasks, skein_ok, start_cluster_with, TaskInfo},
    dns_wire::{RCODE_NOERROR, TYPE_A},
    testbed::{skein_binary, wait_until, Host, Testbed, TestbedConfig},
    toolchain::say,
};

use super::{agent_dns_args, ask, udp_socket_in, SKEIN_PORT};
use crate::bench::{
    add_percentiles, percentiles,
    report::{Better, Figures},
};

#[derive(clap::Args)]
pub(crate) struct Convergence {
    /// Agents in the convergence testbed.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// State changes timed (cycling scale up, scale down, task kill, health failure).
    #[arg(long, default_value_t = 8)]
    conv_rounds: usize,
    /// Tasks of the service at rest.
    #[arg(long, default_value_t = 3)]
    conv_replicas: usize,
    /// Seconds a round may take before it is counted as not converged.
    #[arg(long, default_value_t = 30)]
    conv_limit: u64,
}

/// A state change and what every view must show after it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    ScaleUp,
    ScaleDown,
    Kill(Ipv4Addr),
    Unhealthy(Ipv4Addr),
}

impl Change {
    fn label(&self) -> &'static str {
        match self {
            Change::ScaleUp => "scale up",
            Change::ScaleDown => "scale down",
            Change::Kill(_) => "task killed",
            Change::Unhealthy(_) => "health check fails",
        }
    }

    /// Whether `now` (a node's set of serving task IPs) shows the change made to `before`.
    fn shown(&self, before: &BTreeSet<Ipv4Addr>, now: &BTreeSet<Ipv4Addr>) -> bool {
        match self {
            Change::ScaleUp => now.len() == before.len() + 1 && now.is_superset(before),
            Change::ScaleDown => now.len() + 1 == before.len() && now.is_subset(before),
            Change::Kill(ip) | Change::Unhealthy(ip) => !now.contains(ip),
        }
    }
}

pub(super) fn run(args: &Convergence, ttl: u32, figs: &mut Figures) -> Result<()> {
    say(&format!(
        "dns (b): convergence of DNS answers vs `service ps` on {} agents",
        args.nodes
    ));
    let bed = Testbed::new("bench-dnsconv", TestbedConfig::with_hosts(args.nodes))?;
    let (_agents, _) = start_cluster_with(&bed, |_| agent_dns_args(ttl), &[])?;
    let h1 = bed.host(0);
    // Where the health check (run in the task's mount namespace) can see the flag files.
    let sick_dir = crate::bench::TaskVisibleDir::new(&bed, "sick")?;
    let sick = sick_dir.path().to_owned();
    let health = format!(
        "test ! -e {}/$(cat /proc/sys/kernel/hostname)",
        sick.display()
    );
    let whoami = skein_binary()?.display().to_string();
    let n = args.conv_replicas;
    skein_ok(
        h1,
        &[
            "service",
            "create",
            "conv",
            "--replicas",
            &n.to_string(),
            "--health-cmd",
            &health,
            "--health-interval",
            "200ms",
            "--restart-delay",
            "200ms",
            "--",
            &whoami,
            "whoami",
            "--port",
            "80",
        ],
    )?;
    let sockets = bed
        .hosts()
        .iter()
        .map(udp_socket_in)
        .collect::<Result<Vec<_>>>()?;
    let limit = Duration::from_secs(args.conv_limit);
    let (mut dns_all, mut ps_all, mut lag_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_kind: Vec<(&'static str, Vec<Duration>, Vec<Duration>)> = Vec::new();
    let mut missed = 0usize;
    for round in 0..args.conv_rounds {
        // A scale up leaves one more task for the scale down that follows it.
        let at_rest = if round % 4 == 1 { n + 1 } else { n };
        let before = settle(&bed, &sockets, at_rest, limit)
            .with_context(|| format!("the service settling before round {round}"))?;
        let tasks = running_tasks(h1, "conv");
        let victim = tasks
            .get(round % tasks.len().max(1))
            .cloned()
            .context("a running task")?;
        let change = match round % 4 {
            0 => Change::ScaleUp,
            1 => Change::ScaleDown,
            2 => Change::Kill(victim.ip.parse()?),
            _ => Change::Unhealthy(victim.ip.parse()?),
        };
        let start = Instant::now();
        make(&bed, &change, &victim, n, &sick)?;
        let times = watch(&bed, &sockets, &change, &before, start, limit);
        for (node, (dns, ps)) in times.iter().enumerate() {
            match (dns, ps) {
                (Some(dns), Some(ps)) => {
                    dns_all.push(*dns);
                    ps_all.push(*ps);
                    lag_all.push(dns.saturating_sub(*ps));
                    match by_kind.iter_mut().find(|k| k.0 == change.label()) {
                        Some(k) => {
                            k.1.push(*dns);
                            k.2.push(*ps);
                        }
                        None => by_kind.push((change.label(), vec![*dns], vec![*ps])),
                    }
                }
                _ => {
                    missed += 1;
                    say(&format!(
                        "round {round} ({}): node h{} not converged in {limit:?} (dns {dns:?}, ps {ps:?})",
                        change.label(),
                        node + 1
                    ));
                }
            }
        }
        // Undo what stays: the sick file (the task then passes its check again).
        if let Change::Unhealthy(_) = change {
            let _ = fs::remove_file(sick.join(&victim.id));
        }
        say(&format!("round {round} ({}) timed", change.label()));
    }
    println!(
        "\nDNS convergence on {} agents, {} changes (TTL {ttl} — a client's cache would add up to it):",
        args.nodes, args.conv_rounds
    );
    println!(
        "   every node's DNS answer shows the change:  {}",
        percentiles(&mut dns_all)
    );
    println!(
        "   every node's `service ps` shows it:        {}",
        percentiles(&mut ps_all)
    );
    println!(
        "   DNS after `service ps`, per node:           {}",
        percentiles(&mut lag_all)
    );
    for (kind, mut dns, mut ps) in by_kind {
        println!(
            "   {kind}: DNS {} | service ps {}",
            percentiles(&mut dns),
            percentiles(&mut ps)
        );
    }
    println!("   node-rounds not converged within the limit: {missed}");
    let nodes = args.nodes;
    add_percentiles(
        figs,
        &format!("{nodes} agents: every node's DNS answer shows a change"),
        &dns_all,
    );
    add_percentiles(
        figs,
        &format!("{nodes} agents: every node's `service ps` shows it"),
        &ps_all,
    );
    figs.add(
        &format!(
            "{nodes} agents: node-rounds not converged within {} s",
            args.conv_limit
        ),
        Some(missed as f64),
        "",
        Better::Lower,
    );
    Ok(())
}

/// Makes `change`, returning as soon as it is made (the CLI detached).
fn make(
    bed: &Testbed,
    change: &Change,
    victim: &TaskInfo,
    n: usize,
    sick: &std::path::Path,
) -> Result<()> {
    let h1 = bed.host(0);
    match change {
        Change::ScaleUp | Change::ScaleDown => {
            let to = if *change == Change::ScaleUp { n + 1 } else { n };
            h1.skein()?
                .args(["service", "scale", &format!("conv={to}"), "--detach"])
                .stdout(Stdio::null())
                .spawn()
                .context("service scale")?;
        }
        Change::Kill(_) => {
            let host = bed
                .hosts()
                .iter()
                .find(|h| h.netns() == victim.host)
                .context("the victim's host")?;
            let ns = netns_with_ip(host, &victim.ip)?;
            let pids = host.run("ip", ["netns", "pids", &ns])?;
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) of a task process of this testbed's agent.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        Change::Unhealthy(_) => fs::write(sick.join(&victim.id), b"")?,
    }
    Ok(())
}

/// Waits (up to `limit`) until every node lists `n` running tasks, all the same, and
/// answers exactly them; returns that set.
fn settle(
    bed: &Testbed,
    sockets: &[std::net::UdpSocket],
    n: usize,
    limit: Duration,
) -> Result<BTreeSet<Ipv4Addr>> {
    wait_until("every node's ps and DNS to agree", limit, || {
        let first = ps_set(bed.host(0))?;
        anyhow::ensure!(first.len() == n, "{} running", first.len());
        for (host, sock) in bed.hosts().iter().zip(sockets) {
            anyhow::ensure!(ps_set(host)? == first, "{} lists others", host.name());
            anyhow::ensure!(dns_set(sock)? == first, "{} answers others", host.name());
        }
        Ok(first)
    })
}

fn ps_set(host: &Host) -> Result<BTreeSet<Ipv4Addr>> {
    running_tasks(host, "conv")
        .iter()
        .map(|t| t.ip.parse().context("a task IP"))
        .collect()
}

fn dns_set(sock: &std::net::UdpSocket) -> Result<BTreeSet<Ipv4Addr>> {
    let r = ask(sock, SKEIN_PORT, "tasks.conv", TYPE_A)?;
    anyhow::ensure!(r.rcode == RCODE_NOERROR, "rcode {}", r.rcode);
    Ok(r.a_records().into_iter().collect())
}

/// Per node: (DNS, service ps) time after `start` at which its view first showed `change`.
fn watch(
    bed: &Testbed,
    sockets: &[std::net::UdpSocket],
    change: &Change,
    before: &BTreeSet<Ipv4Addr>,
    start: Instant,
    limit: Duration,
) -> Vec<(Option<Duration>, Option<Duration>)> {
    let times = Mutex::new(vec![(None, None); sockets.len()]);
    std::thread::scope(|s| {
        for (i, (host, sock)) in bed.hosts().iter().zip(sockets).enumerate() {
            let times = &times;
            s.spawn(move || {
                while start.elapsed() < limit {
                    if dns_set(sock).is_ok_and(|now| change.shown(before, &now)) {
                        times.lock().expect("no poisoning")[i].0 = Some(start.elapsed());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            s.spawn(move || {
                while start.elapsed() < limit {
                    if ps_set(host).is_ok_and(|now| change.shown(before, &now)) {
                        times.lock().expect("no poisoning")[i].1 = Some(start.elapsed());
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    });
    times.into_inner().expect("no poisoning")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(last: &[u8]) -> BTreeSet<Ipv4Addr> {
        last.iter().map(|&l| Ipv4Addr::new(10, 0, 0, l)).collect()
    }

    #[test]
    fn a_change_is_shown_only_by_the_view_that_has_it() {
        let before = set(&[1, 2, 3]);
        assert!(Change::ScaleUp.shown(&before, &set(&[1, 2, 3, 9])));
        assert!(
            !Change::ScaleUp.shown(&before, &set(&[1, 2, 9, 8])),
            "an old task missing"
        );
        assert!(!Change::ScaleUp.shown(&before, &before));
        assert!(Change::ScaleDown.shown(&before, &set(&[1, 3])));
        assert!(!Change::ScaleDown.shown(&before, &set(&[1, 9])));
        let gone = Change::Kill(Ipv4Addr::new(10, 0, 0, 2));
        assert!(gone.shown(&before, &set(&[1, 3])));
        assert!(gone.shown(&before, &set(&[1, 3, 4])), "replaced");
        assert!(!gone.shown(&before, &before));
    }
}
