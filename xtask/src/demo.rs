//! `cargo xtask demo`: a 3-host Skein cluster in network namespaces — one agent creates
//! it, two join with its token — `node ls`, an overlay network created on one node, an
//! endpoint on every host, traffic between the endpoints over VXLAN (ping, iperf3) with
//! the encap/decap counters moving, an agent killed and restarted without losing a packet,
//! a replicated service (`skein whoami` tasks, one per host) answering curl on its tasks'
//! overlay IPs and, through the routing mesh, a client on the underlay curling every
//! node's published port with the answers rotating across the tasks on every host, a
//! host's death leaving no stale entry and its task moving elsewhere; then everything is
//! removed.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use xtask::{
    cluster::{create_endpoint, in_netns, skein_ok},
    scrape::{sample, scrape},
    testbed::{sweep_dead_runs, wait_until, Host, Testbed, TestbedConfig},
    toolchain::{ensure_debian_packages, ensure_ebpf_toolchain, run_checked, say},
};

use crate::build_ebpf::workspace_root;

const HOSTS: usize = 3;

pub(crate) fn run() -> Result<()> {
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
    // XDP transmits into the bridge and the client sends complete checksums, as on a
    // physical network (see `testbed::wire`).
    bed.make_wire_like()?;
    let mut agents = Vec::new();
    let h1 = bed.host(0);
    say(&format!(
        "h1: `skein agent --underlay-iface eth0 --init` ({}): a new cluster",
        h1.underlay_ip()
    ));
    agents.push(h1.start_agent(&["--init"])?);
    let token = wait_until("the join token", Duration::from_secs(20), || {
        skein_ok(h1, &["join-token"]).map(|t| t.trim().to_owned())
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
    let created = skein_ok(bed.host(2), &["network", "create", "web"])
        .context("`skein network create web` on h3 failed")?;
    print!("{}", indent(&created));
    wait_until("web on h1", Duration::from_secs(20), || {
        skein_ok(h1, &["network", "ls"])
            .ok()
            .is_some_and(|t| t.contains("web"))
    })?;
    print!(
        "{}",
        indent(&skein_ok(h1, &["network", "ls"]).ok().unwrap_or_default())
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

    say("`skein endpoint create --network web --name app` on every host (a namespace each)");
    let mut endpoints = Vec::new();
    for host in bed.hosts() {
        endpoints.push(
            create_endpoint(host, "web", "app")
                .with_context(|| format!("`skein endpoint create` on {}", host.name()))?,
        );
    }
    print!(
        "{}",
        indent(&skein_ok(h1, &["endpoint", "ls"]).ok().unwrap_or_default())
    );

    let before = counters(&bed)?;
    say("overlay traffic: every endpoint pings the others (VXLAN between hosts), then iperf3 h1's endpoint -> h3's for 2 s");
    for (i, (from_ns, _)) in endpoints.iter().enumerate() {
        for (j, (_, to_ip)) in endpoints.iter().enumerate().filter(|(j, _)| *j != i) {
            let out = stdout_in(
                from_ns,
                &[
                    "ping", "-n", "-q", "-c", "20", "-i", "0.01", "-W", "2", to_ip,
                ],
            )?;
            let summary = out
                .lines()
                .find(|l| l.contains("transmitted"))
                .unwrap_or("no answer")
                .to_owned();
            println!(
                "   h{}'s app -> h{}'s app ({to_ip}): {summary}",
                i + 1,
                j + 1
            );
        }
    }
    let h3 = bed.host(2);
    let mut server = h3.spawn(
        {
            let mut cmd = h3.command("ip");
            cmd.args(["netns", "exec", &endpoints[2].0, "iperf3", "-s", "-1"]);
            cmd
        },
        "iperf3-server",
    )?;
    std::thread::sleep(Duration::from_millis(400));
    let out = stdout_in(
        &endpoints[0].0,
        &["iperf3", "-c", &endpoints[2].1, "-t", "2", "-f", "g"],
    )?;
    if let Some(line) = out.lines().rev().find(|l| l.contains("receiver")) {
        println!("   iperf3 over the overlay: {}", line.trim());
    }
    let _ = server.wait(Duration::from_secs(5));
    print_counters(&bed, &before, &counters(&bed)?);

    say("kill -9 the agent on h2 while h1's endpoint pings h2's 300 times; then start a new agent");
    let mut pinger = h1.spawn(
        {
            let mut cmd = h1.command("ip");
            cmd.args([
                "netns",
                "exec",
                &endpoints[0].0,
                "ping",
                "-n",
                "-q",
                "-c",
                "300",
                "-i",
                "0.01",
            ])
            .arg(&endpoints[1].1);
            cmd
        },
        "ping-restart",
    )?;
    let before_restart = counters(&bed)?;
    std::thread::sleep(Duration::from_millis(800));
    agents[1].kill9()?;
    let link = h2.run("ip", ["link", "show", "dev", "eth0"])?;
    println!(
        "   h2's agent killed; eth0 still has: {}",
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
        "   overlay ping across the restart: {}",
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

    let whoami = root.join("target/debug/skein").display().to_string();
    say("`skein service create web --network web --replicas 3 --publish 8080:80 -- skein whoami --port 80` on h1");
    let created = skein_ok(
        h1,
        &[
            "service",
            "create",
            "web",
            "--network",
            "web",
            "--replicas",
            "3",
            "--publish",
            "8080:80",
            "--",
            &whoami,
            "whoami",
            "--port",
            "80",
        ],
    )
    .context("`skein service create` failed")?;
    print!("{}", indent(&created));
    say("`skein service ps web` on h2: one task per host, each in its own namespace");
    let ps = skein_ok(h2, &["service", "ps", "web"])?;
    print!("{}", indent(&ps));
    say("h1's endpoint curls every task by its overlay IP (across hosts for two of them)");
    for ip in task_ips(h1)? {
        let body = stdout_in(
            &endpoints[0].0,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{ip}:80/"),
            ],
        )?;
        let field = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or("?")
                .to_owned()
        };
        println!(
            "   curl http://{ip}:80/ -> Hostname: {}, Node: {}, RemoteAddr: {}",
            field("Hostname"),
            short(&field("Node")),
            field("RemoteAddr")
        );
    }
    say("the routing mesh: a client on the underlay curls 8080 on every host, answers rotate");
    for host in bed.hosts() {
        let url = format!("http://{}:8080/", host.underlay_ip());
        for _ in 0..3 {
            let body = stdout_in(
                bed.client().netns(),
                &["curl", "-sS", "--max-time", "3", &url],
            )?;
            let field = |name: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or("?")
                    .to_owned()
            };
            println!(
                "   curl {url} -> Hostname: {}, Node: {}, RemoteAddr: {}",
                field("Hostname"),
                short(&field("Node")),
                field("RemoteAddr")
            );
        }
    }
    println!("   (RemoteAddr is the client's own address: no SNAT)");

    say("kill -9 h3's agent for good: its endpoint leaves every other host's maps, its task moves");
    agents[2].kill9()?;
    let h3_ip = endpoints[2].1.clone();
    wait_until(
        "h3's endpoint gone from h1's maps",
        Duration::from_secs(20),
        || {
            skein_ok(h1, &["debug", "maps"])
                .ok()
                .is_some_and(|m| !m.contains(&format!("ip {h3_ip} ")))
        },
    )?;
    print!("{}", indent(&node_ls(h1).unwrap_or_default()));
    println!("   h1's maps no longer hold {h3_ip}");
    let h3_name = h3.netns().to_owned();
    wait_until(
        "h3's task running elsewhere",
        Duration::from_secs(20),
        || {
            skein_ok(h1, &["service", "ps", "web", "--format", "json"])
                .ok()
                .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
                .is_some_and(|rows| {
                    rows.iter()
                        .filter(|r| r["state"] == "running" && r["hostname"] != h3_name.as_str())
                        .count()
                        == 3
                })
        },
    )?;
    say("`skein service ps web` on h1: h3's task is down, a new one runs on h1 or h2");
    print!("{}", indent(&skein_ok(h1, &["service", "ps", "web"])?));

    say("removing the testbed: agents, namespaces, bpffs mounts");
    drop(agents);
    drop(bed);
    say("done");
    Ok(())
}

/// The overlay IPs of web's running tasks, as `service ps` lists them on `host`.
fn task_ips(host: &Host) -> Result<Vec<String>> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(&skein_ok(
        host,
        &["service", "ps", "web", "--format", "json"],
    )?)?;
    Ok(rows
        .iter()
        .filter(|r| r["state"] == "running")
        .filter_map(|r| r["ip"].as_str().map(str::to_owned))
        .collect())
}

/// The first 12 hex digits of a node ID, as tables show it.
fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Per host: (packets encapsulated, packets decapsulated).
type Counts = BTreeMap<String, (u64, u64)>;

fn counters(bed: &Testbed) -> Result<Counts> {
    bed.hosts()
        .iter()
        .map(|host: &Host| {
            let m = scrape(host)?;
            Ok((
                host.name().to_owned(),
                (sample(&m, ENCAP_PACKETS)?, sample(&m, DECAP_PACKETS)?),
            ))
        })
        .collect()
}

fn print_counters(bed: &Testbed, before: &Counts, after: &Counts) {
    println!(
        "   {:<6} {:>22} {:>22}",
        "host", "VXLAN encapsulated", "VXLAN decapsulated"
    );
    for host in bed.hosts() {
        let (b, a) = (before[host.name()], after[host.name()]);
        println!(
            "   {:<6} {:>22} {:>22}",
            host.name(),
            format!("{} (+{})", a.0, a.0 - b.0),
            format!("{} (+{})", a.1, a.1 - b.1)
        );
    }
}

fn node_ls(host: &Host) -> Option<String> {
    skein_ok(host, &["node", "ls"]).ok()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

const ENCAP_PACKETS: &str =
    "skein_tc_endpoint_ingress_packets_total{verdict=\"redirect\",reason=\"encap\"}";
const DECAP_PACKETS: &str =
    "skein_tc_underlay_ingress_packets_total{verdict=\"redirect\",reason=\"decap\"}";

/// Stdout of `args` run inside the network namespace `netns`.
fn stdout_in(netns: &str, args: &[&str]) -> Result<String> {
    Ok(String::from_utf8_lossy(&in_netns(netns, args)?.stdout).into_owned())
}
