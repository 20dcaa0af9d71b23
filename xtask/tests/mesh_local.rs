//! Host-local access to published services end to end (issue 12, parts 1–3), on three
//! hosts in one kernel, through the `skein` CLI: from every node's own host namespace,
//! `localhost`, `127.0.0.1`, the node's own address and another node's address reach the
//! published service and rotate over its tasks cluster-wide (also on the node that runs
//! none); UDP (connected and not) answers from the address the client used; agents
//! started, killed, restarted and cleaned up on one kernel leave each other's hooks alone;
//! the root namespace is never redirected. Needs root.
//!
//! Every wait is bounded; the testbed removes everything on failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use xtask::{
    cluster::{
        create_service, ready_count, running_tasks, skein_ok, start_cluster_with, whoami, TaskInfo,
        DEADLINE,
    },
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig},
};

const WEB: u16 = 8080;
const UDP: u16 = 5300;

fn cluster(label: &str) -> (Testbed, Vec<Process>, String) {
    let bed = Testbed::new(label, TestbedConfig::with_hosts(3)).expect("testbed");
    bed.make_wire_like().expect("wire-like underlay");
    let (agents, token) = start_cluster_with(&bed, |_| Vec::new(), &[]).expect("cluster");
    (bed, agents, token)
}

/// Waits until every host lists `n` running tasks of `service`; returns h1's list.
fn wait_running(bed: &Testbed, service: &str, n: usize) -> Vec<TaskInfo> {
    for host in bed.hosts() {
        wait_until(
            &format!("{n} running {service} tasks on {}", host.name()),
            DEADLINE,
            || running_tasks(host, service).len() == n,
        )
        .unwrap();
    }
    running_tasks(bed.host(0), service)
}

/// `curl URL` in `host`'s own namespace: (whoami's `Hostname:`, the peer address curl
/// read with `getpeername`), or curl's error.
fn curl_host(host: &Host, url: &str) -> Result<(String, String), String> {
    let out = host
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\nPEER %{remote_ip}:%{remote_port}\n",
            url,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "curl {url} in {}: {}",
            host.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    Ok((field("Hostname:"), field("PEER")))
}

/// 8 consecutive `curl`s of `url` in `host`: each of `tasks` answers exactly 4 times, and
/// curl's peer (getpeername) is always `peer`.
fn assert_rotation(host: &Host, url: &str, peer: &str, tasks: &BTreeSet<String>) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..8 {
        let (name, seen_peer) =
            curl_host(host, url).unwrap_or_else(|e| panic!("request {i} in {}: {e}", host.name()));
        assert_eq!(
            seen_peer,
            peer,
            "{} {url}: getpeername shows the address used",
            host.name()
        );
        *counts.entry(name).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = tasks.iter().map(|t| (t.clone(), 4)).collect();
    assert_eq!(
        counts,
        want,
        "{} {url}: 8 requests, 4 per task",
        host.name()
    );
}

/// Waits until `host`'s maps have converged on `tasks`: 4 requests to `url` in a row
/// reach every one of them (and nothing else). A node's maps follow the view a pass
/// later than `service ps` shows the tasks running.
fn wait_converged(host: &Host, url: &str, tasks: &BTreeSet<String>) {
    wait_until(
        &format!("{} reaching every task through {url}", host.name()),
        DEADLINE,
        || {
            let mut seen = BTreeSet::new();
            for _ in 0..2 * tasks.len() {
                seen.insert(curl_host(host, url).ok()?.0);
            }
            (&seen == tasks).then_some(())
        },
    )
    .unwrap();
}

/// Every node: localhost, 127.0.0.1, its own address and the next node's address rotate
/// over `tasks` on `port`.
fn assert_every_node_rotates(bed: &Testbed, hosts: &[usize], port: u16, tasks: &BTreeSet<String>) {
    for &i in hosts {
        let host = bed.host(i);
        let other = bed.host((i + 1) % bed.hosts().len());
        let own = host.underlay_ip().to_string();
        let other_ip = other.underlay_ip().to_string();
        let local = format!("http://127.0.0.1:{port}/");
        wait_converged(host, &local, tasks);
        assert_rotation(
            host,
            &format!("http://localhost:{port}/"),
            &format!("127.0.0.1:{port}"),
            tasks,
        );
        assert_rotation(host, &local, &format!("127.0.0.1:{port}"), tasks);
        assert_rotation(
            host,
            &format!("http://{own}:{port}/"),
            &format!("{own}:{port}"),
            tasks,
        );
        assert_rotation(
            host,
            &format!("http://{other_ip}:{port}/"),
            &format!("{other_ip}:{port}"),
            tasks,
        );
    }
}

fn web(bed: &Testbed, port: u16) -> BTreeSet<String> {
    create_service(
        bed,
        "web",
        &["--replicas", "2", "--publish", &format!("{port}:80")],
        &whoami(&["--port", "80"]),
    );
    let tasks = wait_running(bed, "web", 2);
    let hosts: BTreeSet<&str> = tasks.iter().map(|t| t.host.as_str()).collect();
    assert_eq!(hosts.len(), 2, "two tasks on two nodes: {tasks:?}");
    tasks.into_iter().map(|t| t.id).collect()
}

#[test]
fn localhost_own_and_other_addresses_rotate_over_every_task_on_every_node() {
    let (bed, _agents, _) = cluster("local-rotate");
    let tasks = web(&bed, WEB);
    assert_every_node_rotates(&bed, &[0, 1, 2], WEB, &tasks);
}

/// The UDP client, in Python (sockets with recvfrom/getpeername are plainer there):
/// `unconnected` sends with sendto and prints the address recvfrom reports; `connected`
/// connects, sends, and prints recvfrom's and getpeername's addresses; then the answer's
/// first line.
const UDP_CLIENT: &str = r#"
import socket, sys
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
if mode == "connected":
    s.connect((ip, port))
    s.send(b"local")
    peer = s.getpeername()
else:
    s.sendto(b"local", (ip, port))
    peer = None
data, frm = s.recvfrom(65535)
print("FROM %s:%d" % frm)
if peer:
    print("PEER %s:%d" % peer)
print(data.split(b"\n")[0].decode(errors="replace"))
"#;

fn udp_client(host: &Host, mode: &str, ip: &str) -> Result<Vec<String>, String> {
    let out = host
        .command("timeout")
        .args([
            "10",
            "python3",
            "-c",
            UDP_CLIENT,
            mode,
            ip,
            &UDP.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

#[test]
fn udp_answers_from_the_published_address_connected_and_not() {
    let (bed, _agents, _) = cluster("local-udp");
    create_service(
        &bed,
        "dns",
        &["--replicas", "2", "--publish", &format!("{UDP}:{UDP}/udp")],
        &whoami(&["--udp", "--port", &UDP.to_string()]),
    );
    let tasks: BTreeSet<String> = wait_running(&bed, "dns", 2)
        .into_iter()
        .map(|t| t.id)
        .collect();
    for host in bed.hosts() {
        let own = host.underlay_ip().to_string();
        for ip in ["127.0.0.1", own.as_str()] {
            wait_until(
                &format!("UDP answers to {ip} in {}", host.name()),
                DEADLINE,
                || udp_client(host, "unconnected", ip),
            )
            .unwrap();
            let mut answered = BTreeSet::new();
            for mode in ["unconnected", "connected"] {
                for _ in 0..4 {
                    let lines = udp_client(host, mode, ip)
                        .unwrap_or_else(|e| panic!("{mode} UDP to {ip} in {}: {e}", host.name()));
                    assert_eq!(
                        lines[0],
                        format!("FROM {ip}:{UDP}"),
                        "{mode} UDP in {}: the answer comes from the address used: {lines:?}",
                        host.name()
                    );
                    if mode == "connected" {
                        assert_eq!(lines[1], format!("PEER {ip}:{UDP}"), "{lines:?}");
                    }
                    let answer = lines.last().unwrap();
                    let name = answer
                        .split_whitespace()
                        .skip_while(|w| *w != "Hostname:")
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    answered.insert(name);
                }
            }
            assert_eq!(
                answered,
                tasks,
                "UDP to {ip} in {} reaches every task",
                host.name()
            );
        }
    }
}

/// A published port that is free on 127.0.0.1 in the root namespace, with this test's
/// own listener bound there (the listener is ours: we bound it).
fn root_listener() -> (TcpListener, u16) {
    for port in [WEB, 18080, 28080, 38080] {
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return (listener, port);
        }
    }
    panic!("no free port on 127.0.0.1 for the root-namespace listener");
}

#[test]
fn agents_on_one_kernel_leave_each_other_and_the_root_namespace_alone() {
    let (listener, port) = root_listener();
    // Answers every connection with a marker, until the test ends.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream
                .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 19\r\n\r\nHostname: root-ns\r\n");
        }
    });
    let (bed, mut agents, token) = cluster("local-agents");
    let tasks = web(&bed, port);
    assert_every_node_rotates(&bed, &[0, 1, 2], port, &tasks);
    let root = || {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{port}/"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for _ in 0..4 {
        assert!(
            root().contains("Hostname: root-ns"),
            "the root namespace's 127.0.0.1:{port} is its own"
        );
    }

    // h2's agent: kill -9 (its hooks stay, pinned), then a new one adopts them. (While it
    // is dead the others may mark h2 down and move its task: the rotation is checked once
    // the cluster has settled again.)
    agents[1].kill9().expect("kill -9 h2's agent");
    agents[1] = bed
        .host(1)
        .start_agent(&[
            "--join",
            &bed.host(0).underlay_ip().to_string(),
            "--token",
            &token,
        ])
        .expect("restart h2's agent");
    for host in bed.hosts() {
        wait_until(
            &format!("3 ready nodes on {} after h2's restart", host.name()),
            DEADLINE,
            || ready_count(host) == Some(3),
        )
        .unwrap();
    }
    let tasks: BTreeSet<String> = wait_running(&bed, "web", 2)
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_every_node_rotates(&bed, &[0, 1, 2], port, &tasks);
    assert!(root().contains("Hostname: root-ns"));

    // h3's agent stops and `skein agent cleanup` removes its dataplane: h1 and h2 go on.
    agents[2].kill9().expect("kill h3's agent");
    let out = bed
        .host(2)
        .skein()
        .unwrap()
        .args(["agent", "cleanup", "--bpf-dir"])
        .arg(bed.host(2).bpf_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // h3's tasks may have been one of the two; the nodes that still run an agent serve
    // what runs on h1 and h2 (h3's host is unchanged for them until it is marked down).
    wait_until("h3 down on h1", DEADLINE, || {
        let rows = skein_ok(bed.host(0), &["node", "ls", "--format", "json"]).unwrap_or_default();
        rows.contains("\"down\"").then_some(())
    })
    .unwrap();
    let left = wait_until("web rescheduled to 2 running tasks", DEADLINE, || {
        let t = running_tasks(bed.host(0), "web");
        (t.len() == 2 && t.iter().all(|t| t.host != bed.host(2).netns())).then_some(t)
    })
    .unwrap();
    let left: BTreeSet<String> = left.into_iter().map(|t| t.id).collect();
    for host in &bed.hosts()[..2] {
        wait_until(
            &format!("{} serving after h3 left", host.name()),
            DEADLINE,
            || running_tasks(host, "web").len() == 2,
        )
        .unwrap();
    }
    assert_every_node_rotates_among(&bed, &[0, 1], port, &left);
    assert!(root().contains("Hostname: root-ns"));
}

/// [`assert_every_node_rotates`] with the other node taken among `hosts` only.
fn assert_every_node_rotates_among(
    bed: &Testbed,
    hosts: &[usize],
    port: u16,
    tasks: &BTreeSet<String>,
) {
    for (k, &i) in hosts.iter().enumerate() {
        let host = bed.host(i);
        let other = bed.host(hosts[(k + 1) % hosts.len()]);
        let local = format!("http://127.0.0.1:{port}/");
        wait_converged(host, &local, tasks);
        assert_rotation(
            host,
            &format!("http://localhost:{port}/"),
            &format!("127.0.0.1:{port}"),
            tasks,
        );
        let own = host.underlay_ip().to_string();
        assert_rotation(
            host,
            &format!("http://{own}:{port}/"),
            &format!("{own}:{port}"),
            tasks,
        );
        let other_ip = other.underlay_ip().to_string();
        assert_rotation(
            host,
            &format!("http://{other_ip}:{port}/"),
            &format!("{other_ip}:{port}"),
            tasks,
        );
    }
}

const INTO_OVERLAY_HOST_PATH: &str =
    "skein_tc_host_egress_packets_total{verdict=\"drop\",reason=\"routed_into_overlay\"}";

/// Part 3's fail-closed rule for the host path: only connections the host itself opened
/// (and the socket hooks redirected) leave through it. A machine routing into the overlay
/// through a node — here a namespace on a link of h3's that is not the underlay, so no XDP
/// program stands in its way and h3's own routes to the overlay are what it meets — gets
/// nothing through; nor does the host dialling a task's address itself.
#[test]
fn only_the_hosts_own_redirected_connections_take_the_host_path() {
    let (bed, _agents, _) = cluster("local-closed");
    let tasks = web(&bed, WEB);
    // h3 runs one task at most: pick a task on another node, reached only by the host path.
    let all = running_tasks(bed.host(0), "web");
    let h3 = bed.host(2);
    let remote = all
        .iter()
        .find(|t| t.host != h3.netns())
        .expect("a task off h3")
        .clone();
    wait_converged(h3, &format!("http://127.0.0.1:{WEB}/"), &tasks);

    // An outsider behind h3, with h3 as its router to the overlay.
    let outsider = format!("{}-out", h3.netns());
    let sh = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&["netns", "add", &outsider]);
    sh(&[
        "link",
        "add",
        "skout0",
        "netns",
        &outsider,
        "type",
        "veth",
        "peer",
        "name",
        "skout1",
        "netns",
        h3.netns(),
    ]);
    sh(&[
        "-n",
        &outsider,
        "addr",
        "add",
        "192.0.2.2/24",
        "dev",
        "skout0",
    ]);
    sh(&["-n", &outsider, "link", "set", "skout0", "up"]);
    sh(&[
        "-n",
        h3.netns(),
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "skout1",
    ]);
    sh(&["-n", h3.netns(), "link", "set", "skout1", "up"]);
    sh(&[
        "-n",
        &outsider,
        "route",
        "add",
        "10.0.0.0/8",
        "via",
        "192.0.2.1",
    ]);
    h3.run("sysctl", ["-w", "net.ipv4.ip_forward=1"]).unwrap();

    let before = xtask::scrape::scrape(h3).unwrap();
    let url = format!("http://{}:80/", remote.ip);
    let outsider_curl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &outsider,
            "curl",
            "-sS",
            "--max-time",
            "3",
            &url,
        ])
        .output()
        .unwrap();
    let host_curl = curl_host(h3, &url);
    let after = xtask::scrape::scrape(h3).unwrap();
    let _ = Command::new("ip")
        .args(["netns", "del", &outsider])
        .status();

    assert!(
        !outsider_curl.status.success(),
        "a machine routing through h3 reached task {}: {}",
        remote.ip,
        String::from_utf8_lossy(&outsider_curl.stdout)
    );
    assert!(
        host_curl.is_err(),
        "h3 dialling task {} itself (no published address) went through: {host_curl:?}",
        remote.ip
    );
    let moved = after.get(INTO_OVERLAY_HOST_PATH).copied().unwrap_or(0)
        - before.get(INTO_OVERLAY_HOST_PATH).copied().unwrap_or(0);
    assert!(
        moved >= 2,
        "the host path dropped {moved} packets as routed_into_overlay, expected the outsider's and the host's SYNs"
    );
    // And the host path still serves what it is for.
    assert_rotation(
        h3,
        &format!("http://localhost:{WEB}/"),
        &format!("127.0.0.1:{WEB}"),
        &tasks,
    );
}

/// `cargo xtask sweep` (what it calls) detaches the socket hooks of a namespace that is
/// gone — a dead run whose pins survived, which would otherwise count towards the
/// kernel's 64 programs per cgroup and attach type — and never those of a namespace that
/// lives, even with its agent dead.
#[test]
fn sweep_detaches_the_hooks_of_a_gone_namespace_only() {
    let bed = Testbed::new("local-sweep", TestbedConfig::with_hosts(2)).expect("testbed");
    let (mut agents, _) = start_cluster_with(&bed, |_| Vec::new(), &[]).expect("cluster");
    let cookie_of = |host: &Host| {
        xtask::testbed::netns_cookie(&PathBuf::from("/run/netns").join(host.netns())).unwrap()
    };
    let (c1, c2) = (cookie_of(bed.host(0)), cookie_of(bed.host(1)));
    let hooks_of = |cookie: u64| {
        xtask::testbed::socket_hooks()
            .unwrap()
            .into_iter()
            .filter(|h| h.cookie == cookie)
            .count()
    };
    wait_until("4 hooks for each host", DEADLINE, || {
        hooks_of(c1) == 4 && hooks_of(c2) == 4
    })
    .unwrap();

    // h2's agent dies; its pins (on the testbed's bpffs) keep its hooks attached.
    agents[1].kill9().expect("kill h2's agent");
    xtask::testbed::sweep_dead_runs().expect("sweep");
    assert_eq!(hooks_of(c2), 4, "a live namespace's hooks are spared");
    assert_eq!(hooks_of(c1), 4, "a live agent's hooks are spared");

    // Its namespace goes (the host-path veth first, so nothing holds it).
    let _ = bed.host(1).run("ip", ["link", "del", "skein-mesh"]);
    let out = Command::new("ip")
        .args(["netns", "del", bed.host(1).netns()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("h2's namespace gone", DEADLINE, || {
        !PathBuf::from("/run/netns")
            .join(bed.host(1).netns())
            .exists()
    })
    .unwrap();
    assert_eq!(hooks_of(c2), 4, "nothing detached them yet");
    let report = xtask::testbed::sweep_dead_runs().expect("sweep");
    assert!(report.socket_hooks >= 4, "{report}");
    assert_eq!(hooks_of(c2), 0, "the gone namespace's hooks are detached");
    assert_eq!(hooks_of(c1), 4, "h1's hooks are untouched");
}
