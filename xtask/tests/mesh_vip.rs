//! Service VIPs end to end (issue 12, parts 4, 6, 7), on three hosts on a wire-like
//! underlay, driven through the `skein` CLI: from a task of `client`, 8 requests to web's
//! VIP name both tasks four times (the task sees the client's own address); the same from
//! a namespace attached with `endpoint create`; a `web` task reaching its own VIP gets
//! answers from both tasks, itself included (hairpin); from inside a task `curl <node>:8080`
//! works for every node, its own included; the VIP does not answer from another network;
//! it takes every port and keeps it (a port no task listens on is refused by the task, a
//! service that publishes nothing is reached on its own port); a `dnsrr` service has no
//! VIP; scaling changes the rotation (new tasks join, tasks scaled away leave). Needs root.
//!
//! Requests run with `ip netns exec` in the task's (or endpoint's) namespace. Every wait is
//! bounded; the testbed removes everything on failure.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use xtask::{
    cluster::{
        create_endpoint, in_netns, running_tasks, skein, skein_ok, start_cluster_with, TaskInfo,
        DEADLINE,
    },
    scrape::{scrape, verdict_packets},
    testbed::{skein_binary, wait_until, Host, Testbed, TestbedConfig},
};

const WEB: u16 = 8080;

fn cluster(label: &str) -> (Testbed, Vec<xtask::testbed::Process>) {
    let bed = Testbed::new(label, TestbedConfig::with_hosts(3)).expect("testbed");
    bed.make_wire_like().expect("wire-like underlay");
    let (agents, _) = start_cluster_with(&bed, |_| Vec::new(), &[]).expect("cluster");
    (bed, agents)
}

/// `service create NAME FLAGS -- COMMAND` on h1; panics unless it converges.
fn create(bed: &Testbed, name: &str, flags: &[&str], command: &[&str]) {
    let mut all: Vec<&str> = vec!["service", "create", name];
    all.extend_from_slice(flags);
    all.push("--");
    all.extend_from_slice(command);
    let out = skein(bed.host(0), &all).unwrap();
    assert!(
        out.status.success(),
        "service create {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn whoami() -> Vec<String> {
    vec![
        skein_binary().unwrap().display().to_string(),
        "whoami".into(),
        "--port".into(),
        "80".into(),
    ]
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

/// `service inspect NAME` as JSON.
fn inspect(bed: &Testbed, name: &str) -> Value {
    serde_json::from_str(&skein_ok(bed.host(0), &["service", "inspect", name]).unwrap()).unwrap()
}

/// The namespace of `task` (on the host `service ps` names): the endpoint with its address.
fn task_netns(bed: &Testbed, task: &TaskInfo) -> String {
    let host = host_named(bed, &task.host);
    let endpoints: Vec<Value> =
        serde_json::from_str(&skein_ok(host, &["endpoint", "ls", "--format", "json"]).unwrap())
            .unwrap();
    let endpoint = endpoints
        .iter()
        .find(|e| e["ip"] == task.ip.as_str())
        .unwrap_or_else(|| panic!("no endpoint for task {task:?} in {endpoints:?}"));
    endpoint["netns"].as_str().unwrap().to_owned()
}

fn host_named<'a>(bed: &'a Testbed, name: &str) -> &'a Host {
    bed.hosts()
        .iter()
        .find(|h| h.netns() == name || h.name() == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

/// `curl` in namespace `ns`: the body, or an error with curl's stderr.
fn curl_in(ns: &str, url: &str) -> Result<String, String> {
    let out = in_netns(ns, &["curl", "-sS", "--max-time", "3", url]).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {url} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// 8 requests to `url` from `ns` after one that must succeed within the deadline: how
/// often each task answered, and the client addresses the tasks saw.
fn eight(ns: &str, url: &str) -> (BTreeMap<String, usize>, BTreeSet<String>) {
    wait_until(&format!("{url} answering in {ns}"), DEADLINE, || {
        curl_in(ns, url)
    })
    .unwrap();
    let mut answers = BTreeMap::new();
    let mut remotes = BTreeSet::new();
    for i in 0..8 {
        let body = curl_in(ns, url).unwrap_or_else(|e| panic!("request {i}: {e}"));
        *answers
            .entry(field(&body, "Hostname:").to_owned())
            .or_insert(0) += 1;
        let remote = field(&body, "RemoteAddr:");
        remotes.insert(
            remote
                .rsplit_once(':')
                .map_or(remote, |(ip, _)| ip)
                .to_owned(),
        );
    }
    (answers, remotes)
}

fn assert_four_each(answers: &BTreeMap<String, usize>, tasks: &[TaskInfo], what: &str) {
    let want: BTreeMap<String, usize> = tasks.iter().map(|t| (t.id.clone(), 4)).collect();
    assert_eq!(answers, &want, "{what}: answers per task");
}

#[test]
fn a_vip_rotates_from_tasks_and_attached_namespaces_hairpins_and_stays_in_its_network() {
    let (bed, _agents) = cluster("vip-rotate");
    let web_cmd = whoami();
    let web_cmd: Vec<&str> = web_cmd.iter().map(String::as_str).collect();
    create(
        &bed,
        "web",
        &["--replicas", "2", "--publish", "8080:80"],
        &web_cmd,
    );
    create(&bed, "client", &["--replicas", "1"], &["sleep", "3600"]);
    create(
        &bed,
        "names",
        &["--replicas", "1", "--endpoint-mode", "dnsrr"],
        &web_cmd,
    );
    let web = wait_running(&bed, "web", 2);
    let client = wait_running(&bed, "client", 1);
    wait_running(&bed, "names", 1);

    // dnsrr: no VIP; vip mode: one.
    assert!(
        inspect(&bed, "names")["vip"].is_null(),
        "a dnsrr service has no VIP: {}",
        inspect(&bed, "names")
    );
    let vip = inspect(&bed, "web")["vip"]
        .as_str()
        .expect("web has a VIP")
        .to_owned();
    let url = format!("http://{vip}:80/");

    // From the client task: both tasks four times each, the client's own address kept.
    let client_ns = task_netns(&bed, &client[0]);
    let (answers, remotes) = eight(&client_ns, &url);
    assert_four_each(&answers, &web, "client task → VIP");
    assert_eq!(
        remotes,
        BTreeSet::from([client[0].ip.clone()]),
        "the tasks see the client's own address"
    );

    // From a namespace attached to the same network on every host (containers' way).
    for (i, host) in bed.hosts().iter().enumerate() {
        let (ns, ip) = create_endpoint(host, "skein", &format!("probe{i}")).unwrap();
        let (answers, remotes) = eight(&ns, &url);
        assert_four_each(
            &answers,
            &web,
            &format!("endpoint on {} → VIP", host.name()),
        );
        assert_eq!(remotes, BTreeSet::from([ip]));
    }

    // Hairpin: each web task reaches its own VIP; it answers too (it sees the VIP).
    for task in &web {
        let ns = task_netns(&bed, task);
        let (answers, remotes) = eight(&ns, &url);
        assert_four_each(&answers, &web, &format!("web task {} → VIP", task.id));
        let allowed = BTreeSet::from([task.ip.clone(), vip.clone()]);
        assert!(
            remotes.is_subset(&allowed) && remotes.contains(&vip),
            "{}: the other task sees the client's address, itself the VIP: {remotes:?}",
            task.id
        );
    }

    // The VIP takes every port and keeps it: a port no task listens on is refused by the
    // task's own stack at once (a reset, not a timeout), and the balancer refused nothing.
    let client_host = host_named(&bed, &client[0].host);
    let before = verdict_packets(&scrape(client_host).unwrap(), "vip_refused");
    let refused = curl_in(&client_ns, &format!("http://{vip}:81/")).unwrap_err();
    // curl's exit 7 ("Failed to connect"), not 28 (a timeout: the packet went nowhere).
    assert!(
        refused.contains("Failed to connect") && !refused.contains("timed out"),
        "{refused}"
    );
    let after = verdict_packets(&scrape(client_host).unwrap(), "vip_refused");
    assert_eq!(
        after, before,
        "vip_refused moved for a port the VIP forwards"
    );

    // A service that publishes nothing (a database reached by name) is reached on its VIP
    // at the port its task listens on.
    let db_cmd: Vec<String> = whoami()
        .into_iter()
        .map(|a| if a == "80" { "6379".to_owned() } else { a })
        .collect();
    let db_cmd: Vec<&str> = db_cmd.iter().map(String::as_str).collect();
    create(&bed, "db", &["--replicas", "1"], &db_cmd);
    let db = wait_running(&bed, "db", 1);
    let db_vip = inspect(&bed, "db")["vip"]
        .as_str()
        .expect("db has a VIP")
        .to_owned();
    let (answers, _) = eight(&client_ns, &format!("http://{db_vip}:6379/"));
    assert_eq!(
        answers,
        BTreeMap::from([(db[0].id.clone(), 8)]),
        "client → db's VIP"
    );

    // Another network: the VIP does not answer there.
    skein_ok(bed.host(0), &["network", "create", "other"]).unwrap();
    let (other_ns, _) = create_endpoint(bed.host(1), "other", "stranger").unwrap();
    for attempt in 0..3 {
        assert!(
            curl_in(&other_ns, &url).is_err(),
            "attempt {attempt}: the VIP answered another network"
        );
    }

    // Scaling: a third task joins the rotation, then two leave it.
    skein_ok(bed.host(0), &["service", "scale", "web=3"]).unwrap();
    let web3 = wait_running(&bed, "web", 3);
    wait_until("the third task in the rotation", DEADLINE, || {
        let (answers, _) = eight(&client_ns, &url);
        (answers.len() == 3).then_some(()).ok_or("not yet")
    })
    .unwrap();
    skein_ok(bed.host(0), &["service", "scale", "web=1"]).unwrap();
    let web1 = wait_running(&bed, "web", 1);
    assert!(web3.iter().any(|t| t.id == web1[0].id));
    wait_until("only the remaining task answers", DEADLINE, || {
        let (answers, _) = eight(&client_ns, &url);
        (answers.len() == 1 && answers.contains_key(&web1[0].id))
            .then_some(())
            .ok_or("not yet")
    })
    .unwrap();
}

#[test]
fn tasks_reach_every_nodes_published_port_their_own_included() {
    let (bed, _agents) = cluster("vip-nodeports");
    let web_cmd = whoami();
    let web_cmd: Vec<&str> = web_cmd.iter().map(String::as_str).collect();
    create(
        &bed,
        "web",
        &["--replicas", "2", "--publish", "8080:80"],
        &web_cmd,
    );
    create(&bed, "client", &["--replicas", "1"], &["sleep", "3600"]);
    let web = wait_running(&bed, "web", 2);
    let client = wait_running(&bed, "client", 1);
    let client_ns = task_netns(&bed, &client[0]);
    for host in bed.hosts() {
        let url = format!("http://{}:{WEB}/", host.underlay_ip());
        let (answers, _) = eight(&client_ns, &url);
        assert_four_each(
            &answers,
            &web,
            &format!("client task on {} → {}", client[0].host, host.name()),
        );
    }
    // A web task to its own node's published port (the hairpin through a node address).
    let ns = task_netns(&bed, &web[0]);
    let own = host_named(&bed, &web[0].host);
    let url = format!("http://{}:{WEB}/", own.underlay_ip());
    let (answers, _) = eight(&ns, &url);
    assert_four_each(&answers, &web, "web task → its own node's 8080");
}

/// One HTTP request from `ns` to `ip:port` out of local port `local_port` (set with
/// `SO_REUSEADDR`), `Connection: close`: the server closes first and the client only after
/// reading to the end, so the port is free again at once (the TIME_WAIT is the server's),
/// as with any client that reuses ports quickly. The body, or why not.
fn request_from_port(ns: &str, local_port: u16, ip: &str, port: u16) -> Result<String, String> {
    const SCRIPT: &str = r#"
import socket, sys
local, ip, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(5)
s.bind(("0.0.0.0", local))
s.connect((ip, port))
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
body = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    body += chunk
s.close()
sys.stdout.write(body.decode(errors="replace"))
"#;
    let out = in_netns(
        ns,
        &[
            "python3",
            "-c",
            SCRIPT,
            &local_port.to_string(),
            ip,
            &port.to_string(),
        ],
    )
    .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{ip}:{port} from port {local_port} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A client port reused right after a close is a new connection (the VIP's conntrack
/// knows TCP states, as a real balancer's): the same port reaching the VIP, then a node's
/// published port of the same service (whose flow takes over the task's reply entry for
/// that port), then the VIP again must get a working connection every time. Without TCP
/// state the third request rode its first flow's stale entry and the task's answers came
/// back from the node's address: the client reset them and the connection never opened.
/// Then, with no task left, the VIP refuses a connection at once like a closed port (a
/// TCP reset) and counts it, where it used to drop the SYN in silence (a timeout).
#[test]
fn a_reused_client_port_gets_a_new_connection_and_a_vip_without_tasks_refuses() {
    let (bed, _agents) = cluster("vip-reuse");
    let web_cmd = whoami();
    let web_cmd: Vec<&str> = web_cmd.iter().map(String::as_str).collect();
    create(
        &bed,
        "web",
        &["--replicas", "1", "--publish", "8080:80"],
        &web_cmd,
    );
    let web = wait_running(&bed, "web", 1);
    let vip = inspect(&bed, "web")["vip"]
        .as_str()
        .expect("web has a VIP")
        .to_owned();
    // The client on another host than the task: replies cross the underlay.
    let client_host = bed
        .hosts()
        .iter()
        .find(|h| h.netns() != web[0].host && h.name() != web[0].host)
        .expect("a host without the task");
    let (ns, client_ip) = create_endpoint(client_host, "skein", "reuser").unwrap();
    wait_until("the VIP answering", DEADLINE, || {
        curl_in(&ns, &format!("http://{vip}:80/"))
    })
    .unwrap();
    let node = client_host.underlay_ip().to_string();
    let port = 40_123;
    for (i, (ip, dport)) in [(vip.as_str(), 80), (node.as_str(), WEB), (vip.as_str(), 80)]
        .into_iter()
        .enumerate()
    {
        let body = request_from_port(&ns, port, ip, dport)
            .unwrap_or_else(|e| panic!("request {i} from port {port}: {e}"));
        assert_eq!(field(&body, "Hostname:"), web[0].id, "request {i}: {body}");
        assert_eq!(
            field(&body, "RemoteAddr:"),
            format!("{client_ip}:{port}"),
            "request {i}"
        );
    }

    // No serving task: refused at once (a reset, as from a closed port), and counted.
    skein_ok(bed.host(0), &["service", "scale", "web=0"]).unwrap();
    wait_running(&bed, "web", 0);
    let refused_before = verdict_packets(&scrape(client_host).unwrap(), "vip_refused");
    let url = format!("http://{vip}:80/");
    wait_until("the VIP refusing at once", DEADLINE, || {
        match curl_in(&ns, &url) {
            Err(e) if e.contains("Failed to connect") && !e.contains("timed out") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    let refused_after = verdict_packets(&scrape(client_host).unwrap(), "vip_refused");
    assert!(
        refused_after > refused_before,
        "vip_refused {refused_before} -> {refused_after}"
    );
}
