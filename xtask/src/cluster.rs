//! Driving Skein through its command line inside a testbed, as a user does: start a
//! cluster, create endpoints, run commands in endpoint namespaces. Shared by the privileged
//! tests, the demo and the benchmarks.

use std::{
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::testbed::{wait_until, Host, Process, Testbed};

/// How long cluster operations may take before a caller gives up: generous, since tests
/// share two cores with whatever else runs.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `skein ARGS` in `host` (its default socket is the host's namespace-scoped one).
pub fn skein(host: &Host, args: &[&str]) -> Result<Output> {
    host.skein()?
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .with_context(|| format!("running skein {args:?} on {}", host.name()))
}

/// `skein ARGS` in `host`: its stdout, or an error carrying its stderr.
pub fn skein_ok(host: &Host, args: &[&str]) -> Result<String> {
    let out = skein(host, args)?;
    if !out.status.success() {
        bail!(
            "skein {args:?} on {} failed: {}",
            host.name(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` inside the network namespace `netns` (e.g. an endpoint's).
pub fn in_netns(netns: &str, args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} in {netns}"))
}

/// `node ls --format json` on `host`; None while its agent does not answer.
pub fn node_rows(host: &Host) -> Option<Vec<Value>> {
    serde_json::from_str(&skein_ok(host, &["node", "ls", "--format", "json"]).ok()?).ok()
}

/// How many nodes `host` sees ready.
pub fn ready_count(host: &Host) -> Option<usize> {
    Some(
        node_rows(host)?
            .iter()
            .filter(|r| r["status"] == "ready")
            .count(),
    )
}

/// Starts h1 with `--init` and every other host with `--join h1 --token …`, and waits until
/// every host sees every node ready. Returns the agents (in host order) and the token.
pub fn start_cluster(bed: &Testbed) -> Result<(Vec<Process>, String)> {
    start_cluster_with(bed, |_| Vec::new(), &[])
}

/// [`start_cluster`] with `extra(host)` added to each agent's flags and `env` to its
/// environment.
pub fn start_cluster_with(
    bed: &Testbed,
    extra: impl Fn(&Host) -> Vec<String>,
    env: &[(&str, &str)],
) -> Result<(Vec<Process>, String)> {
    let start = |host: &Host, own: &[&str]| {
        let mut args: Vec<String> = own.iter().map(|s| s.to_string()).collect();
        args.extend(extra(host));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        host.start_agent_with_env(&args, env)
    };
    let first = bed.host(0);
    let mut agents = vec![start(first, &["--init"])?];
    let token = wait_until("the join token", DEADLINE, || {
        skein_ok(first, &["join-token"]).map(|t| t.trim().to_owned())
    })?;
    let seed = first.underlay_ip().to_string();
    for host in &bed.hosts()[1..] {
        agents.push(start(host, &["--join", &seed, "--token", &token])?);
    }
    let n = bed.hosts().len();
    for host in bed.hosts() {
        wait_until(
            &format!("{n} ready nodes on {}", host.name()),
            DEADLINE,
            || ready_count(host) == Some(n),
        )?;
    }
    Ok((agents, token))
}

/// `skein endpoint create --network NETWORK --name NAME` on `host`; returns the endpoint's
/// namespace and overlay IP as `endpoint ls` lists them.
pub fn create_endpoint(host: &Host, network: &str, name: &str) -> Result<(String, String)> {
    let created = skein_ok(
        host,
        &["endpoint", "create", "--network", network, "--name", name],
    )?;
    let rows: Vec<Value> =
        serde_json::from_str(&skein_ok(host, &["endpoint", "ls", "--format", "json"])?)
            .context("endpoint ls json")?;
    let row = rows
        .iter()
        .find(|r| {
            r["name"] == name
                && r["netns"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(host.netns()))
        })
        .with_context(|| format!("endpoint {name} not listed after create:\n{created}"))?;
    Ok((
        row["netns"].as_str().context("netns")?.to_owned(),
        row["ip"].as_str().context("ip")?.to_owned(),
    ))
}
