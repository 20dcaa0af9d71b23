//! `cargo xtask demo`: the seeds' tutorial (seed 000: a swarm, an overlay network
//! `backend`, `redis`, and a `counter` service published on 4568) replayed with Skein on this
//! machine. Four hosts and a client are network namespaces on one bridged underlay; h1 creates
//! the cluster, the others join it with the token from a file; `redis` is Debian's
//! `redis-server`; `counter` is `skein whoami --counter`, which counts hits per task in redis
//! (found by name, through the tasks' DNS) and answers `<task> > <count>` lines like the
//! tutorial's `subicura/counter`. The client curls every host's 4568 and a host that runs no
//! counter curls `localhost:4568`: the answers rotate across the tasks on every host, the
//! counts rise, each task sees the client's own address. `dig tasks.counter` from inside a
//! task lists them. Then a host running a counter (not redis) dies (`kill -9`, its link cut)
//! and the service heals: the task moves, new requests succeed and the count goes on.
//!
//! Every step says what it does; any failure stops the demo with a non-zero status. Without
//! `--keep`, everything is removed at the end (and on failure); with it the cluster stays up
//! and the demo prints how to reach it (`cargo xtask sweep` removes it later).

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use xtask::{
    cluster::{in_netns, kill_host, running_tasks, skein_ok, TaskInfo},
    testbed::{sweep_dead_runs, wait_until, Host, Process, Testbed, TestbedConfig},
    toolchain::{ensure_debian_packages, ensure_ebpf_toolchain, run_checked, say},
};

use crate::build_ebpf::workspace_root;

/// `cargo xtask demo` flags.
#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Leave the cluster running at the end and print how to reach it.
    #[arg(long)]
    keep: bool,
}

const HOSTS: usize = 4;
const REPLICAS: usize = 3;
/// How long one step may take before the demo gives up on it.
const STEP: Duration = Duration::from_secs(60);

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
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
    let skein = root.join("target/debug/skein").display().to_string();
    std::env::set_var("SKEIN_BIN", &skein);
    sweep_dead_runs()?;

    say(&format!(
        "creating {HOSTS} hosts and a client (network namespaces) on one bridged underlay, 10.200.0.0/24"
    ));
    let bed = Testbed::new("demo", TestbedConfig::with_hosts(HOSTS))?;
    // XDP transmits into the bridge and the client sends complete checksums, as on a
    // physical network (see `testbed::wire`).
    bed.make_wire_like()?;
    let mut demo = Demo {
        bed: &bed,
        agents: Vec::new(),
        dead: None,
        skein,
    };
    let outcome = demo.tutorial();
    if outcome.is_err() {
        demo.show_state();
    }
    if args.keep && outcome.is_ok() {
        demo.keep();
        // Its Drop would remove everything: left for `cargo xtask sweep` (a dead run).
        std::mem::forget(bed);
        return Ok(());
    }
    say("removing everything: agents, tasks, namespaces, bpffs mounts");
    drop(demo);
    drop(bed);
    outcome?;
    say("done");
    Ok(())
}

/// The cluster while the demo runs.
struct Demo<'a> {
    bed: &'a Testbed,
    /// One per host, in host order.
    agents: Vec<Process>,
    /// The host the demo killed, once it has.
    dead: Option<usize>,
    /// The skein binary the tasks run.
    skein: String,
}

impl Demo<'_> {
    fn tutorial(&mut self) -> Result<()> {
        self.start_cluster()?;
        let h1 = self.bed.host(0);

        say("`skein network create backend` (an overlay network: VXLAN between the hosts)");
        print!(
            "{}",
            indent(&skein_ok(h1, &["network", "create", "backend"])?)
        );

        say("`skein service create redis --network backend -- redis-server …` (Debian's redis)");
        let redis = [
            "service",
            "create",
            "redis",
            "--network",
            "backend",
            "--",
            "redis-server",
            "--port",
            "6379",
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        print!("{}", indent(&skein_ok(h1, &redis)?));

        say(&format!(
            "`skein service create counter --network backend --replicas {REPLICAS} -e REDIS_HOST=redis --publish 4568:4567 -- skein whoami --counter --port 4567`"
        ));
        let replicas = REPLICAS.to_string();
        let counter = [
            "service",
            "create",
            "counter",
            "--network",
            "backend",
            "--replicas",
            &replicas,
            "-e",
            "REDIS_HOST=redis",
            "--publish",
            "4568:4567",
            "--",
            &self.skein,
            "whoami",
            "--counter",
            "--port",
            "4567",
        ];
        print!("{}", indent(&skein_ok(h1, &counter)?));
        say("`skein service ps counter` and `skein service ps redis`");
        print!("{}", indent(&skein_ok(h1, &["service", "ps", "counter"])?));
        print!("{}", indent(&skein_ok(h1, &["service", "ps", "redis"])?));

        let mut counts = Counts::default();
        say("the client curls 4568 on every host, three times each: every node rotates over all the tasks");
        for i in 0..HOSTS {
            let ip = self.bed.host(i).underlay_ip().to_string();
            for _ in 0..REPLICAS {
                self.curl(self.bed.client().netns(), &ip, &mut counts)
                    .with_context(|| format!("curl {ip}:4568"))?;
            }
        }
        println!("   (the address each task saw is the client's own: no SNAT on the way)");

        let tasks = running_tasks(h1, "counter");
        let quiet = (0..HOSTS)
            .find(|&i| !tasks.iter().any(|t| t.host == self.bed.host(i).netns()))
            .context("every host runs a counter")?;
        let quiet_host = self.bed.host(quiet);
        say(&format!(
            "on {} (it runs no counter): `curl localhost:4568` three times",
            quiet_host.name()
        ));
        for _ in 0..3 {
            self.curl(quiet_host.netns(), "localhost", &mut counts)?;
        }

        let first = tasks.first().context("no counter task running")?;
        let task_ns = self.task_netns(first)?;
        say(&format!(
            "`dig tasks.counter` inside task {} (its resolver is 127.0.0.11 in its own namespace)",
            first.name
        ));
        let dig = stdout_in(
            &task_ns,
            &["dig", "+short", "+time=2", "@127.0.0.11", "tasks.counter"],
        )?;
        print!("{}", indent(&dig));
        let mut listed: Vec<&str> = dig.split_whitespace().collect();
        listed.sort_unstable();
        let mut running: Vec<&str> = tasks.iter().map(|t| t.ip.as_str()).collect();
        running.sort_unstable();
        ensure!(
            listed == running,
            "dig tasks.counter listed {listed:?}, the running tasks are {running:?}"
        );

        self.kill_a_counter_host(&mut counts)?;
        Ok(())
    }

    /// h1 creates the cluster; the others join with the token read from a file.
    fn start_cluster(&mut self) -> Result<()> {
        let h1 = self.bed.host(0);
        say(&format!(
            "h1: `skein agent --underlay-iface eth0 --init` ({}): a new cluster",
            h1.underlay_ip()
        ));
        self.agents.push(h1.start_agent(&["--init"])?);
        let token = wait_until("the join token", STEP, || {
            skein_ok(h1, &["join-token"]).map(|t| t.trim().to_owned())
        })?;
        let token_file = self.bed.run_dir().join("join-token");
        write_secret(&token_file, &token)?;
        say(&format!(
            "`skein join-token > {}` on h1 (mode 0600): the token is the cluster's key",
            token_file.display()
        ));
        let seed = h1.underlay_ip().to_string();
        let token_path = token_file.display().to_string();
        for host in &self.bed.hosts()[1..] {
            say(&format!(
                "{}: `skein agent --underlay-iface eth0 --join {seed} --token-file {token_path}` ({})",
                host.name(),
                host.underlay_ip()
            ));
            self.agents
                .push(host.start_agent(&["--join", &seed, "--token-file", &token_path])?);
        }
        // Ready, and every node's own record (its hostname) arrived.
        wait_until(&format!("{HOSTS} ready nodes"), STEP, || {
            skein_ok(h1, &["node", "ls"]).ok().filter(|t| {
                t.matches(" ready ").count() == HOSTS
                    && self.bed.hosts().iter().all(|h| t.contains(h.netns()))
            })
        })?;
        say("`skein node ls`");
        print!("{}", indent(&skein_ok(h1, &["node", "ls"])?));
        Ok(())
    }

    /// Kills a host that runs a counter but not redis, waits for the service to heal and
    /// curls every live host again: every request answered, the counts going on.
    fn kill_a_counter_host(&mut self, counts: &mut Counts) -> Result<()> {
        let cli = self.bed.host(0);
        let tasks = running_tasks(cli, "counter");
        let redis_hosts: Vec<String> = running_tasks(cli, "redis")
            .into_iter()
            .map(|t| t.host)
            .collect();
        let victim = (1..HOSTS)
            .rev()
            .chain([0])
            .find(|&i| {
                let ns = self.bed.host(i).netns();
                tasks.iter().any(|t| t.host == ns) && !redis_hosts.iter().any(|h| h == ns)
            })
            .context("no host runs a counter without redis")?;
        let host = self.bed.host(victim);
        say(&format!(
            "kill -9 {}: its link goes down, its agent and its tasks are killed",
            host.name()
        ));
        kill_host(host, &mut self.agents[victim])?;
        self.dead = Some(victim);
        let cli = self.live_host();
        wait_until(
            &format!("{REPLICAS} counters running on the live hosts"),
            STEP,
            || {
                let running = running_tasks(cli, "counter");
                (running.len() == REPLICAS && running.iter().all(|t| t.host != host.netns()))
                    .then_some(())
            },
        )?;
        say("the service healed: `skein service ps counter`");
        print!("{}", indent(&skein_ok(cli, &["service", "ps", "counter"])?));
        say("the client curls 4568 on every live host: every request answered, the counts go on");
        for i in (0..HOSTS).filter(|&i| i != victim) {
            let ip = self.bed.host(i).underlay_ip().to_string();
            for _ in 0..REPLICAS {
                self.curl(self.bed.client().netns(), &ip, counts)?;
            }
        }
        Ok(())
    }

    /// `curl ADDRESS:4568` from namespace `from`, printing which task answered (the one
    /// whose count rose), its count, the client address it saw, and every task's count.
    fn curl(&self, from: &str, address: &str, counts: &mut Counts) -> Result<()> {
        let url = format!("http://{address}:4568/");
        let output = in_netns(from, &["curl", "-sS", "--max-time", "5", &url])?;
        let body = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "curl {url} failed: {}{body}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (now, remote) =
            parse_counter(&body).with_context(|| format!("{url} answered {body:?}"))?;
        let answered = now
            .iter()
            .find(|(task, count)| counts.get(*task).is_none_or(|before| before < *count))
            .map(|(task, count)| format!("{} (its count now {count})", self.task_label(task)))
            .unwrap_or_else(|| "? (no count rose)".to_owned());
        let all: Vec<String> = now
            .iter()
            .map(|(t, c)| format!("{} > {c}", short(t)))
            .collect();
        println!(
            "   curl {url} -> {answered}, saw the client as {remote}   [{}]",
            all.join(", ")
        );
        *counts = now;
        Ok(())
    }

    /// `counter.2 on h3 (4f0c1a9e…)` for a task ID, as the live hosts list it.
    fn task_label(&self, id: &str) -> String {
        let tasks = running_tasks(self.live_host(), "counter");
        match tasks.iter().find(|t| t.id == id) {
            Some(task) => format!("{} on {}", task.name, self.host_name(&task.host)),
            None => short(id),
        }
    }

    /// The testbed name (`h2`) of the host whose namespace is `netns`.
    fn host_name(&self, netns: &str) -> String {
        self.bed
            .hosts()
            .iter()
            .find(|h| h.netns() == netns)
            .map_or_else(|| netns.to_owned(), |h| h.name().to_owned())
    }

    /// The network namespace of a running task, found by its overlay IP on its host.
    fn task_netns(&self, task: &TaskInfo) -> Result<String> {
        let host = self
            .bed
            .hosts()
            .iter()
            .find(|h| h.netns() == task.host)
            .with_context(|| format!("task {} is on no testbed host", task.name))?;
        xtask::cluster::netns_with_ip(host, &task.ip)
    }

    /// A host whose agent is alive, for CLI commands.
    fn live_host(&self) -> &Host {
        let i = (0..HOSTS).find(|&i| Some(i) != self.dead).unwrap_or(0);
        self.bed.host(i)
    }

    /// What the cluster looked like when a step failed: its services' tasks and the end of
    /// every agent's log.
    fn show_state(&self) {
        let cli = self.live_host();
        for service in ["redis", "counter"] {
            if let Ok(ps) = skein_ok(cli, &["service", "ps", service]) {
                say(&format!("when it failed, `skein service ps {service}`:"));
                print!("{}", indent(&ps));
            }
        }
        for (i, agent) in self.agents.iter().enumerate() {
            let log = agent.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            say(&format!("the last lines of h{}'s agent log:", i + 1));
            for line in tail.iter().rev() {
                println!("   {line}");
            }
        }
    }

    /// Leaves the cluster running: the agents keep running after the demo exits.
    fn keep(self) {
        let cli = self.live_host();
        say("--keep: the cluster stays up. Try:");
        println!("   ip netns exec {} {} service ls", cli.netns(), self.skein);
        println!(
            "   ip netns exec {} curl http://{}:4568/",
            self.bed.client().netns(),
            cli.underlay_ip()
        );
        println!("   `cargo xtask sweep` removes it (and so does the next test run or demo).");
        for agent in self.agents {
            std::mem::forget(agent);
        }
    }
}

/// Every task's count, by task ID.
type Counts = BTreeMap<String, u64>;

/// A counter answer: `<task> > <count>` lines, then `RemoteAddr: A`.
fn parse_counter(body: &str) -> Result<(Counts, String)> {
    let mut counts = Counts::new();
    let mut remote = None;
    for line in body.lines() {
        if let Some(addr) = line.strip_prefix("RemoteAddr: ") {
            remote = Some(addr.to_owned());
        } else if let Some((task, count)) = line.split_once(" > ") {
            counts.insert(task.to_owned(), count.trim().parse()?);
        } else {
            bail!("unexpected line {line:?}");
        }
    }
    Ok((counts, remote.context("no RemoteAddr line")?))
}

/// Writes `text` to `path`, readable by root only.
fn write_secret(path: &std::path::Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{text}")?;
    Ok(())
}

/// The first 12 characters of a task or node ID, as tables show them.
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

/// Stdout of `args` run inside the network namespace `netns`; fails unless it succeeds.
fn stdout_in(netns: &str, args: &[&str]) -> Result<String> {
    let output = in_netns(netns, args)?;
    ensure!(
        output.status.success(),
        "{} in {netns} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
