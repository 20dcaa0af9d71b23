//! `--publish-mode host` end to end (issue 12 part 5's acceptance, and part 7 for host
//! mode), on three hosts and a client namespace on a wire-like underlay, driven through the
//! `skein` CLI: a host-mode port answers only on the nodes running a task of the service,
//! each with its own tasks (round robin among them when it has several); any other node
//! refuses like a port nobody published (the packet goes to that host's stack: its own
//! listener, if any, gets it); a task on a node without one reaches another node's port;
//! scaling opens and closes the port with the tasks; a node's last task, draining, finishes
//! its downloads while new flows are refused, then the port closes; an unhealthy task
//! opens the port but gets no flow. Needs root.
//!
//! Every wait is bounded; the testbed removes everything on failure.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use xtask::{
    cluster::{
        create_service, in_netns, netns_with_ip, service_tasks, skein_ok, start_cluster_with,
        whoami, TaskInfo, DEADLINE,
    },
    scrape::{scrape, verdict_packets},
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig, CLIENT_UNDERLAY_IP},
};

/// The published port.
const EDGE: u16 = 9090;
/// How fast a refusal must come: a RST or ICMP answer, not a timeout.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// A 3-host cluster on a wire-like underlay, its agents draining a stopped task for
/// `drain` (short, so scaling down closes a port within seconds, unless the drain itself
/// is tested).
fn cluster(label: &str, drain: &str) -> (Testbed, Vec<Process>) {
    let bed = Testbed::new(label, TestbedConfig::with_hosts(3)).expect("testbed");
    bed.make_wire_like().expect("wire-like underlay");
    let extra = vec!["--drain-window".to_owned(), drain.to_owned()];
    let (agents, _) = start_cluster_with(&bed, |_| extra.clone(), &[]).expect("cluster");
    (bed, agents)
}

/// Waits until every host lists exactly `n` tasks of `service`, all running (draining ones
/// gone too); returns h1's list.
fn wait_running(bed: &Testbed, service: &str, n: usize) -> Vec<TaskInfo> {
    for host in bed.hosts() {
        wait_until(
            &format!("exactly {n} running {service} tasks on {}", host.name()),
            DEADLINE,
            || {
                let tasks = service_tasks(host, service);
                tasks.len() == n && tasks.iter().all(|t| t.state == "running")
            },
        )
        .unwrap();
    }
    service_tasks(bed.host(0), service)
}

/// The hosts of `bed` by namespace name (what `service ps` lists as a task's host).
fn host_of<'a>(bed: &'a Testbed, task: &TaskInfo) -> &'a Host {
    bed.hosts()
        .iter()
        .find(|h| h.netns() == task.host)
        .unwrap_or_else(|| panic!("no host {}", task.host))
}

/// Task IDs per host index (every host listed, maybe with none).
fn by_host(bed: &Testbed, tasks: &[TaskInfo]) -> BTreeMap<usize, BTreeSet<String>> {
    let mut map: BTreeMap<usize, BTreeSet<String>> = (0..bed.hosts().len())
        .map(|i| (i, BTreeSet::new()))
        .collect();
    for t in tasks {
        let host = host_of(bed, t);
        let i = bed.hosts().iter().position(|h| h.netns() == host.netns());
        map.entry(i.unwrap()).or_default().insert(t.id.clone());
    }
    map
}

/// What one `curl` got.
#[derive(Debug)]
enum Got {
    /// whoami answered: (Hostname, RemoteAddr's address).
    Task(String, String),
    /// Something else answered (the body).
    Other(String),
    /// curl's exit code 7 (connection refused: a RST or ICMP unreachable), this fast.
    Refused(Duration),
    /// Anything else (a timeout, ...): curl's exit code and stderr.
    #[expect(dead_code, reason = "shown through Debug in failure messages")]
    Failed(i32, String),
}

/// `curl http://IP:EDGE/` from the namespace `netns`.
fn get(netns: &str, ip: &str) -> Got {
    let url = format!("http://{ip}:{EDGE}/");
    let start = Instant::now();
    let out = in_netns(netns, &["curl", "-sS", "--max-time", "5", &url]).unwrap();
    let took = start.elapsed();
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => {
            let field = |name: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            match (field("Hostname:"), field("RemoteAddr:")) {
                (Some(host), Some(remote)) => Got::Task(
                    host,
                    remote
                        .rsplit_once(':')
                        .map(|(ip, _)| ip)
                        .unwrap_or("")
                        .into(),
                ),
                _ => Got::Other(body),
            }
        }
        Some(7) => Got::Refused(took),
        code => Got::Failed(
            code.unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
    }
}

/// From `netns`, `host`'s port answers 8 requests, all with tasks of `tasks` in strict
/// rotation (each of them equally often), each seeing the caller as `caller`.
fn answers_only(netns: &str, host: &Host, tasks: &BTreeSet<String>, caller: &str) {
    let ip = host.underlay_ip().to_string();
    let what = format!("{}:{EDGE} from {netns}", host.name());
    // "running" means started, not yet listening: wait for a first answer.
    wait_until(&format!("{what} answering"), DEADLINE, || {
        match get(netns, &ip) {
            Got::Task(..) => Ok(()),
            other => Err(anyhow::anyhow!("{other:?}")),
        }
    })
    .unwrap();
    let mut seen = Vec::new();
    for i in 0..8 {
        match get(netns, &ip) {
            Got::Task(task, remote) => {
                assert_eq!(
                    remote, caller,
                    "{what}: request {i}: the task sees the caller"
                );
                seen.push(task);
            }
            other => panic!("{what}: request {i}: {other:?}"),
        }
    }
    for w in seen.windows(tasks.len()) {
        let distinct: BTreeSet<&String> = w.iter().collect();
        assert_eq!(
            distinct.len(),
            tasks.len(),
            "{what}: not a rotation: {seen:?}"
        );
    }
    let named: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        &named, tasks,
        "{what}: only this node's tasks, all of them: {seen:?}"
    );
}

/// From the client, `host` refuses on the port, fast, three times.
fn refuses(bed: &Testbed, host: &Host) {
    let ip = host.underlay_ip().to_string();
    for i in 0..3 {
        match get(bed.client().netns(), &ip) {
            Got::Refused(took) if took < REFUSED_WITHIN => {}
            other => panic!(
                "{}:{EDGE}, request {i}: not refused: {other:?}",
                host.name()
            ),
        }
    }
}

/// Every `skein_mesh_*` sample of the service `edge` on `host`, summed.
fn edge_samples(host: &Host) -> u64 {
    scrape(host)
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("skein_mesh_") && k.contains("service=\"edge\""))
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn host_mode_answers_only_where_a_task_runs_with_that_nodes_own_tasks() {
    let (bed, _agents) = cluster("hostmode", "2s");
    let client = bed.client().netns().to_owned();
    let client_ip = CLIENT_UNDERLAY_IP.to_string();
    create_service(
        &bed,
        "edge",
        &[
            "--replicas",
            "2",
            "--publish-mode",
            "host",
            "--publish",
            "9090:80",
        ],
        &whoami(&["--port", "80"]),
    );
    let placed = by_host(&bed, &wait_running(&bed, "edge", 2));
    let with: Vec<usize> = placed
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        with.len(),
        2,
        "2 replicas on 3 nodes: two nodes hold one: {placed:?}"
    );
    let third = *placed.iter().find(|(_, t)| t.is_empty()).unwrap().0;
    let first = with[0];

    // The two nodes with a task answer with their own task, and only it.
    for &i in &with {
        answers_only(&client, bed.host(i), &placed[&i], &client_ip);
    }
    // The third refuses: nothing of the mesh there, not even counters.
    refuses(&bed, bed.host(third));
    assert_eq!(
        edge_samples(bed.host(third)),
        0,
        "the third has no edge rows"
    );
    assert!(
        scrape(bed.host(first))
            .unwrap()
            .iter()
            .any(|(k, v)| k.starts_with("skein_mesh_new_flows_total{service=\"edge\"") && *v >= 8),
        "the first node counts its task's flows"
    );
    // Refused like a port nobody published: the packet reached the third host's stack,
    // so a listener of its own on that port gets it.
    {
        let h = bed.host(third);
        let mut c = h.command("python3");
        c.args([
            "-m",
            "http.server",
            &EDGE.to_string(),
            "--bind",
            &h.underlay_ip().to_string(),
        ]);
        let _listener = h.spawn(c, "host-listener").unwrap();
        let ip = h.underlay_ip().to_string();
        let body = wait_until("the third host's own listener", DEADLINE, || {
            match get(&client, &ip) {
                Got::Other(body) => Ok(body),
                other => Err(anyhow::anyhow!("{other:?}")),
            }
        })
        .unwrap();
        assert!(body.contains("Directory listing"), "{body}");
    }

    // A task on the third node reaches the first node's port: out through its host's
    // egress NAT (so the task there sees the third host's address), into the first's XDP.
    create_service(
        &bed,
        "probe",
        &["--mode", "global"],
        &whoami(&["--port", "80"]),
    );
    let probe = wait_running(&bed, "probe", 3)
        .into_iter()
        .find(|t| t.host == bed.host(third).netns())
        .expect("a probe task on the third host");
    let probe_ns = netns_with_ip(bed.host(third), &probe.ip).unwrap();
    answers_only(
        &probe_ns,
        bed.host(first),
        &placed[&first],
        &bed.host(third).underlay_ip().to_string(),
    );

    // Scaling to 3 opens the port on the third node, with its new task.
    skein_ok(bed.host(0), &["service", "scale", "edge=3"]).unwrap();
    let placed = by_host(&bed, &wait_running(&bed, "edge", 3));
    assert!(placed.values().all(|t| t.len() == 1), "{placed:?}");
    for (i, tasks) in &placed {
        answers_only(&client, bed.host(*i), tasks, &client_ip);
    }

    // Scaling to 4: the node holding two tasks rotates between them.
    skein_ok(bed.host(0), &["service", "scale", "edge=4"]).unwrap();
    let placed = by_host(&bed, &wait_running(&bed, "edge", 4));
    let two = placed
        .iter()
        .find(|(_, t)| t.len() == 2)
        .expect("a node with two");
    answers_only(&client, bed.host(*two.0), two.1, &client_ip);

    // Scaling back to 2: a node whose last task drained away and stopped closes the port.
    skein_ok(bed.host(0), &["service", "scale", "edge=2"]).unwrap();
    let placed = by_host(&bed, &wait_running(&bed, "edge", 2));
    for (i, tasks) in &placed {
        if tasks.is_empty() {
            wait_until(
                &format!("{} refusing again", bed.host(*i).name()),
                DEADLINE,
                || match get(&client, &bed.host(*i).underlay_ip().to_string()) {
                    Got::Refused(_) => Ok(()),
                    other => Err(anyhow::anyhow!("{other:?}")),
                },
            )
            .unwrap();
            refuses(&bed, bed.host(*i));
            // Closed, not merely without a backend: the service's rows left with its
            // port, so the refusal was the host's.
            wait_until(
                &format!("{} without edge rows", bed.host(*i).name()),
                DEADLINE,
                || edge_samples(bed.host(*i)) == 0,
            )
            .unwrap();
        } else {
            answers_only(&client, bed.host(*i), tasks, &client_ip);
        }
    }
}

#[test]
fn an_unhealthy_host_mode_task_opens_the_port_but_gets_no_flow() {
    let (bed, _agents) = cluster("hostmode-health", "2s");
    // Never healthy: its port opens on its node, refused there by the mesh itself.
    create_service(
        &bed,
        "edge",
        &[
            "--detach",
            "--replicas",
            "1",
            "--publish-mode",
            "host",
            "--publish",
            "9090:80",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
        ],
        &whoami(&["--port", "80"]),
    );
    let task = wait_until("the edge task listed", DEADLINE, || {
        service_tasks(bed.host(0), "edge")
            .into_iter()
            .find(|t| t.state == "starting" || t.state == "unhealthy")
            .ok_or_else(|| anyhow::anyhow!("not yet"))
    })
    .unwrap();
    let at = bed
        .hosts()
        .iter()
        .position(|h| h.netns() == task.host)
        .unwrap();
    // The task's own node: the mesh answers with a RST (counted); wait for the port to
    // be there (its row appears with it).
    let h = bed.host(at);
    wait_until("the port open on the task's node", DEADLINE, || {
        scrape(h)
            .ok()
            .filter(|s| s.contains_key("skein_mesh_refused_flows_total{service=\"edge\"}"))
            .ok_or_else(|| anyhow::anyhow!("no edge row yet"))
    })
    .unwrap();
    let count = |h: &Host| {
        let s = scrape(h).unwrap();
        (
            verdict_packets(&s, "mesh_no_backend"),
            s.get("skein_mesh_refused_flows_total{service=\"edge\"}")
                .copied()
                .unwrap_or(0),
        )
    };
    let before: Vec<(u64, u64)> = bed.hosts().iter().map(count).collect();
    for host in bed.hosts() {
        refuses(&bed, host);
    }
    let after: Vec<(u64, u64)> = bed.hosts().iter().map(count).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let (refused_by_mesh, refused_rows) = (a.0 - b.0, a.1 - b.1);
        if i == at {
            assert_eq!(
                (refused_by_mesh, refused_rows),
                (3, 3),
                "the task's node refuses in XDP and counts it"
            );
        } else {
            assert_eq!(
                (refused_by_mesh, refused_rows),
                (0, 0),
                "{} is not the mesh's for this port",
                bed.host(i).name()
            );
        }
    }
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn a_nodes_draining_last_task_finishes_its_downloads_then_the_port_closes() {
    let (bed, _agents) = cluster("hostmode-drain", "10s");
    // 8 MB at 2 MB/s: 4 s, well inside the 10 s drain window.
    let dir = bed.shared_dir().join("blob");
    std::fs::create_dir_all(&dir).unwrap();
    let blob = dir.join("blob");
    let status = Command::new("head")
        .args(["-c", &(8u64 << 20).to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&blob).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let sum = sha256_file(&blob);
    create_service(
        &bed,
        "edge",
        &[
            "--replicas",
            "2",
            "--publish-mode",
            "host",
            "--publish",
            "9090:8000",
        ],
        &[
            "/usr/bin/python3".into(),
            "-m".into(),
            "http.server".into(),
            "8000".into(),
            "--directory".into(),
            dir.display().to_string(),
        ],
    );
    let placed = by_host(&bed, &wait_running(&bed, "edge", 2));
    let with: Vec<usize> = placed
        .iter()
        .filter(|(_, t)| !t.is_empty())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(with.len(), 2, "{placed:?}");
    let url = |i: usize| format!("http://{}:{EDGE}/blob", bed.host(i).underlay_ip());
    let client = bed.client();
    for &i in &with {
        wait_until(&format!("{} serving", bed.host(i).name()), DEADLINE, || {
            in_netns(
                client.netns(),
                &[
                    "curl",
                    "-sSf",
                    "--max-time",
                    "5",
                    "-o",
                    "/dev/null",
                    "-r",
                    "0-0",
                    &url(i),
                ],
            )
            .is_ok_and(|o| o.status.success())
        })
        .unwrap();
    }
    // A slow download through each node; then one task is scaled away mid-download. The
    // client's receive buffer is kept small, so the server cannot push the file ahead
    // into it: the transfer needs the client's ACKs to reach the task all along.
    let out = in_netns(
        client.netns(),
        &["sysctl", "-w", "net.ipv4.tcp_rmem=4096 32768 65536"],
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut downloads = Vec::new();
    for &i in &with {
        let dest = bed.run_dir().join(format!("downloaded-{i}"));
        let mut cmd = client.command("curl");
        cmd.args(["-sS", "-f", "--limit-rate", "2M", "--max-time", "60", "-o"])
            .arg(&dest)
            .arg(url(i));
        downloads.push((
            i,
            dest,
            client.spawn(cmd, &format!("download-{i}")).unwrap(),
        ));
    }
    thread::sleep(Duration::from_secs(1));
    skein_ok(bed.host(0), &["service", "scale", "edge=1"]).unwrap();
    let draining = wait_until("a draining edge task", DEADLINE, || {
        service_tasks(bed.host(0), "edge")
            .into_iter()
            .find(|t| t.state == "draining")
    })
    .unwrap();
    let at = bed
        .hosts()
        .iter()
        .position(|h| h.netns() == draining.host)
        .unwrap();
    // While it drains: its node's port is still the mesh's, and refuses new flows itself
    // (once its agent has synced the drain: `service ps` may show it a moment earlier).
    let no_backend = |i: usize| verdict_packets(&scrape(bed.host(i)).unwrap(), "mesh_no_backend");
    let before = no_backend(at);
    let ip = bed.host(at).underlay_ip().to_string();
    wait_until(
        "the draining node refusing new flows",
        DEADLINE,
        || match get(client.netns(), &ip) {
            Got::Refused(took) if took < REFUSED_WITHIN => Ok(()),
            other => Err(anyhow::anyhow!("{other:?}")),
        },
    )
    .unwrap();
    let refused_by_mesh = no_backend(at) - before;
    assert!(
        service_tasks(bed.host(0), "edge")
            .iter()
            .any(|t| t.state == "draining"),
        "the check ran during the drain"
    );
    // Both downloads finish intact, the one from the draining task too.
    for (i, dest, mut download) in downloads {
        let status = download
            .wait(Duration::from_secs(60))
            .expect("the download ends");
        assert!(
            status.success(),
            "the download through {} failed: {}",
            bed.host(i).name(),
            download.log()
        );
        assert_eq!(sha256_file(&dest), sum, "through {}", bed.host(i).name());
    }
    assert!(
        refused_by_mesh >= 1,
        "the draining node's refusal was the mesh's (its port still open), not the host's"
    );
    // The drain over and the task stopped, its node closes the port.
    wait_running(&bed, "edge", 1);
    wait_until(
        &format!("{} without edge rows", bed.host(at).name()),
        DEADLINE,
        || edge_samples(bed.host(at)) == 0,
    )
    .unwrap();
    refuses(&bed, bed.host(at));
}

/// `n` datagrams to `ip:port` from the client, each from a new connected socket (so an
/// ICMP port unreachable comes back as `REFUSED`): one line per datagram, the answer's
/// first line, `REFUSED` or `TIMEOUT`.
fn udp(bed: &Testbed, ip: &str, port: u16, n: usize) -> Vec<String> {
    const SCRIPT: &str = r#"
import socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((ip, port))
    try:
        s.send(b"hostmode")
        print(s.recv(65535).split(b"\n")[0].decode(errors="replace"), flush=True)
    except ConnectionRefusedError:
        print("REFUSED", flush=True)
    except socket.timeout:
        print("TIMEOUT", flush=True)
    s.close()
"#;
    let out = in_netns(
        bed.client().netns(),
        &[
            "python3",
            "-c",
            SCRIPT,
            ip,
            &port.to_string(),
            &n.to_string(),
        ],
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// whoami's UDP answer `Hostname: H Task: T ...`: H.
fn udp_host(line: &str) -> &str {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["Hostname:", host, ..] => host,
        _ => "",
    }
}

#[test]
fn host_mode_udp_answers_from_the_nodes_own_task_and_elsewhere_is_unreachable() {
    let (bed, _agents) = cluster("hostmode-udp", "2s");
    create_service(
        &bed,
        "dns",
        &[
            "--replicas",
            "2",
            "--publish-mode",
            "host",
            "--publish",
            "5300:5300/udp",
        ],
        &whoami(&["--udp", "--port", "5300"]),
    );
    let placed = by_host(&bed, &wait_running(&bed, "dns", 2));
    for (i, tasks) in &placed {
        let ip = bed.host(*i).underlay_ip().to_string();
        if tasks.is_empty() {
            // Not the mesh's here: the host's stack answers ICMP port unreachable.
            assert_eq!(
                udp(&bed, &ip, 5300, 3),
                ["REFUSED"; 3],
                "{}",
                bed.host(*i).name()
            );
            continue;
        }
        wait_until(&format!("UDP answers from {ip}"), DEADLINE, || {
            !udp_host(&udp(&bed, &ip, 5300, 1)[0]).is_empty()
        })
        .unwrap();
        let lines = udp(&bed, &ip, 5300, 6);
        let named: BTreeSet<&str> = lines.iter().map(|l| udp_host(l)).collect();
        let own: BTreeSet<&str> = tasks.iter().map(String::as_str).collect();
        assert_eq!(
            named,
            own,
            "{}: only its own task: {lines:?}",
            bed.host(*i).name()
        );
    }
}
