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

/// Starts h1 with `--init` and every other host with `--join h1 --token-file …`, and waits until
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
        // As the README says: the token in a root-only file, never on a command line.
        let file = write_token_file(host, "join-token", &token)?;
        agents.push(start(host, &["--join", &seed, "--token-file", &file])?);
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

/// Writes `token` to `<host dir>/<name>` (mode 0600) and returns the path, for
/// `--token-file`.
pub fn write_token_file(host: &Host, name: &str, token: &str) -> Result<String> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let path = host.dir().join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", path.display()))?;
    Ok(path.display().to_string())
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

/// A task as `service ps --format json` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskInfo {
    /// `web.1`, ...
    pub name: String,
    /// The task ID (whoami's `Hostname:`).
    pub id: String,
    /// The host it runs on (its namespace name, the agent's hostname in a testbed).
    pub host: String,
    /// Its overlay IP.
    pub ip: String,
    /// `running`, `starting`, `down`, ...
    pub state: String,
}

/// The tasks of `service` as `host` lists them (empty while the agent does not answer).
pub fn service_tasks(host: &Host, service: &str) -> Vec<TaskInfo> {
    let Ok(out) = skein_ok(host, &["service", "ps", service, "--format", "json"]) else {
        return Vec::new();
    };
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    rows.iter()
        .map(|r| TaskInfo {
            name: r["name"].as_str().unwrap_or_default().to_owned(),
            id: r["id"].as_str().unwrap_or_default().to_owned(),
            host: r["hostname"].as_str().unwrap_or_default().to_owned(),
            ip: r["ip"].as_str().unwrap_or_default().to_owned(),
            state: r["state"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The running tasks of `service` as `host` lists them.
pub fn running_tasks(host: &Host, service: &str) -> Vec<TaskInfo> {
    service_tasks(host, service)
        .into_iter()
        .filter(|t| t.state == "running")
        .collect()
}

/// The namespaces Skein made on `host` (named after its resource prefix).
pub fn agent_namespaces(host: &Host) -> Result<Vec<String>> {
    let list = host.run("ip", ["netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{}-", host.resource_prefix())))
        .map(str::to_owned)
        .collect())
}

/// The namespace of `host`'s agent that has the address `ip` (a task's or an endpoint's).
pub fn netns_with_ip(host: &Host, ip: &str) -> Result<String> {
    for ns in agent_namespaces(host)? {
        let Ok(out) = in_netns(&ns, &["ip", "-o", "-4", "addr", "show"]) else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        if text
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(ip))
        {
            return Ok(ns);
        }
    }
    bail!("no namespace of {} has the address {ip}", host.name())
}

/// A host's death as a machine dies: its underlay link goes down first (a dead machine
/// sends nothing more — not the FINs the kernel would send for its killed tasks' sockets),
/// then its agent and every process in its agent's namespaces (the tasks) get SIGKILL at
/// once. `agent` is the host's agent process.
pub fn kill_host(host: &Host, agent: &mut Process) -> Result<()> {
    host.run("ip", ["link", "set", "eth0", "down"])
        .with_context(|| format!("cutting {} off the underlay", host.name()))?;
    agent.kill9()?;
    for ns in agent_namespaces(host)? {
        let pids = host
            .run("ip", ["netns", "pids", &ns])
            .with_context(|| format!("listing the processes in {ns}"))?;
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

/// Brings a host [`kill_host`] killed back onto the underlay (its link up), so an agent can
/// be started on it again.
pub fn revive_host(host: &Host) -> Result<()> {
    host.run("ip", ["link", "set", "eth0", "up"])
        .with_context(|| format!("bringing {} back onto the underlay", host.name()))?;
    Ok(())
}

/// Waits until every host in `watchers` lists `down_host` (a host's namespace name, its
/// hostname) as `down` in `node ls`.
pub fn wait_node_down(watchers: &[&Host], down_host: &str, timeout: Duration) -> Result<()> {
    for w in watchers {
        wait_until(
            &format!("{} to see {down_host} down", w.name()),
            timeout,
            || {
                node_rows(w).is_some_and(|rows| {
                    rows.iter()
                        .any(|r| r["hostname"] == down_host && r["status"] == "down")
                })
            },
        )?;
    }
    Ok(())
}

/// `<skein> whoami ARGS`: the command of a test service's tasks.
pub fn whoami(args: &[&str]) -> Vec<String> {
    let skein = crate::testbed::skein_binary().expect("the skein binary");
    let mut v = vec![skein.display().to_string(), "whoami".into()];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// `service create NAME FLAGS -- COMMAND` on h1; panics unless it succeeds.
pub fn create_service(bed: &Testbed, name: &str, flags: &[&str], command: &[String]) {
    let mut all: Vec<&str> = vec!["service", "create", name];
    all.extend_from_slice(flags);
    all.push("--");
    all.extend(command.iter().map(String::as_str));
    let out = skein(bed.host(0), &all).expect("running skein");
    assert!(
        out.status.success(),
        "service create {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
