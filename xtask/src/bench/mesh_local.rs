//! `cargo xtask bench mesh-local`: the `curl localhost:P` path (issue 12's figure) — `wrk`
//! from a node's host namespace to `127.0.0.1:P` (the socket hooks give each connection a
//! task once, at connect) against `wrk` to the task's own address, keep-alive and
//! `Connection: close`, side by side in one run. The target: within 5 %.
//!
//! [`measure`] is the part `bench mesh` can call on its own testbed: a node with a local
//! task of a service published on `port`.

use std::process::Command;

use anyhow::{bail, Result};

use super::report::{Better, Figure, Figures};
use xtask::{
    cluster::{running_tasks, skein, start_cluster_with, DEADLINE},
    testbed::{skein_binary, wait_until, Host, Testbed, TestbedConfig},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    pub(crate) connections: u32,
    /// Rounds (each: the four runs, alternating paths).
    #[arg(long, default_value_t = 2)]
    pub(crate) rounds: u32,
}

/// One `wrk` run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Run {
    pub(crate) requests_per_s: f64,
    pub(crate) errors: u64,
}

/// The four figures of one round.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LocalFigures {
    pub(crate) localhost_keepalive: Run,
    pub(crate) direct_keepalive: Run,
    pub(crate) localhost_close: Run,
    pub(crate) direct_close: Run,
}

impl LocalFigures {
    /// localhost ÷ direct, keep-alive and new connection.
    pub(crate) fn ratios(&self) -> (f64, f64) {
        (
            self.localhost_keepalive.requests_per_s / self.direct_keepalive.requests_per_s,
            self.localhost_close.requests_per_s / self.direct_close.requests_per_s,
        )
    }

    pub(crate) fn describe(&self) -> String {
        let (ka, close) = self.ratios();
        format!(
            "keep-alive: localhost {:.0} req/s vs task IP {:.0} req/s ({:.3}×); \
             Connection: close: localhost {:.0} vs task IP {:.0} ({:.3}×); errors {}/{}/{}/{}",
            self.localhost_keepalive.requests_per_s,
            self.direct_keepalive.requests_per_s,
            ka,
            self.localhost_close.requests_per_s,
            self.direct_close.requests_per_s,
            close,
            self.localhost_keepalive.errors,
            self.direct_keepalive.errors,
            self.localhost_close.errors,
            self.direct_close.errors,
        )
    }
}

/// On `host` (running a task at `task_ip`:`target_port` of a service published on
/// `port`): wrk to `127.0.0.1:port` and to the task directly, keep-alive then
/// `Connection: close`, each for `seconds` with `connections` connections; the task's
/// address first in each pair, or `localhost` first if `localhost_first`.
pub(crate) fn measure(
    host: &Host,
    port: u16,
    task_ip: &str,
    target_port: u16,
    seconds: u32,
    connections: u32,
    localhost_first: bool,
) -> Result<LocalFigures> {
    let localhost = format!("http://127.0.0.1:{port}/");
    let direct = format!("http://{task_ip}:{target_port}/");
    // Callers alternate which path goes first, so neither always meets the other's
    // leftovers (TIME_WAIT sockets, a warm cache) or the machine's drift.
    let pair = |close: bool| -> Result<(Run, Run)> {
        Ok(if localhost_first {
            let localhost = wrk(host, &localhost, close, seconds, connections)?;
            (localhost, wrk(host, &direct, close, seconds, connections)?)
        } else {
            let direct = wrk(host, &direct, close, seconds, connections)?;
            (wrk(host, &localhost, close, seconds, connections)?, direct)
        })
    };
    let (localhost_keepalive, direct_keepalive) = pair(false)?;
    let (localhost_close, direct_close) = pair(true)?;
    Ok(LocalFigures {
        localhost_keepalive,
        direct_keepalive,
        localhost_close,
        direct_close,
    })
}

/// One wrk run in `host`'s namespace (the shared runner).
fn wrk(host: &Host, url: &str, close: bool, seconds: u32, connections: u32) -> Result<Run> {
    let w = super::wrk::run(host.netns(), url, close, seconds, connections)?;
    Ok(Run {
        requests_per_s: w.requests_per_s,
        errors: w.errors,
    })
}

/// A one-node cluster running one whoami task published on 8080, then [`measure`]
/// `rounds` times; the figures are the medians over the rounds.
pub(crate) fn run(args: Args) -> Result<Vec<Figure>> {
    let bed = Testbed::new("bench-mesh-local", TestbedConfig::with_hosts(1))?;
    let _agents = start_cluster_with(&bed, |_| Vec::new(), &[])?.0;
    let host = bed.host(0);
    // New-connection runs open tens of thousands of connections to one address: reuse
    // TIME_WAIT ports as a load generator would, or the port space runs out mid-run.
    host.run("sysctl", ["-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    host.run("sysctl", ["-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
    let whoami = skein_binary()?.display().to_string();
    let out = skein(
        host,
        &[
            "service",
            "create",
            "web",
            "--publish",
            "8080:80",
            "--",
            &whoami,
            "whoami",
            "--port",
            "80",
        ],
    )?;
    if !out.status.success() {
        bail!("service create: {}", String::from_utf8_lossy(&out.stderr));
    }
    let task = wait_until("web running", DEADLINE, || {
        running_tasks(host, "web").into_iter().next()
    })?;
    wait_until("127.0.0.1:8080 answering", DEADLINE, || {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                host.netns(),
                "curl",
                "-sf",
                "--max-time",
                "2",
            ])
            .arg("http://127.0.0.1:8080/")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })?;
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let figures = measure(
            host,
            8080,
            &task.ip,
            80,
            args.seconds,
            args.connections,
            round % 2 == 0,
        )?;
        println!("round {round}: {}", figures.describe());
        rounds.push(figures);
    }
    Ok(figures(&rounds))
}

/// `localhost:P` next to the task's own address, keep-alive and new connection: medians.
fn figures(rounds: &[LocalFigures]) -> Vec<Figure> {
    let median = |f: fn(&LocalFigures) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let mut figs = Figures::new("mesh-local");
    figs.add(
        "wrk to localhost:P on a node, keep-alive",
        median(|r| r.localhost_keepalive.requests_per_s),
        "req/s",
        Better::Higher,
    )
    .against(
        "the task's own address",
        median(|r| r.direct_keepalive.requests_per_s),
    );
    figs.add(
        "wrk to localhost:P on a node, new connection per request",
        median(|r| r.localhost_close.requests_per_s),
        "req/s",
        Better::Higher,
    )
    .against(
        "the task's own address",
        median(|r| r.direct_close.requests_per_s),
    );
    figs.into_vec()
}
