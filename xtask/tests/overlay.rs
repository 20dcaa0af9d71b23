//! The overlay end to end, driven by the cluster as a user drives it: `skein network
//! create`, `skein endpoint create` on every host, then endpoints reach each other by
//! overlay IP across hosts, networks are isolated, removals and host deaths leave nothing
//! stale, and an agent restart does not break a transfer. Needs root.

use std::{
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use xtask::testbed::{wait_until, Host, Process, Testbed, TestbedConfig};

const DEADLINE: Duration = Duration::from_secs(30);

fn skein(host: &Host, args: &[&str]) -> Output {
    host.skein()
        .expect("skein binary")
        .args(args)
        .output()
        .expect("running skein")
}

fn skein_ok(host: &Host, args: &[&str]) -> String {
    let out = skein(host, args);
    assert!(
        out.status.success(),
        "skein {args:?} on {} failed: {}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs `cmd args` inside the network namespace `netns`.
fn in_netns(netns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

fn start_cluster(bed: &Testbed) -> Vec<Process> {
    let first = bed.host(0);
    let mut agents = vec![first.start_agent(&["--init"]).expect("first agent")];
    let token = wait_until("the join token", DEADLINE, || {
        let out = skein(first, &["join-token"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })
    .unwrap();
    let seed = first.underlay_ip().to_string();
    for host in &bed.hosts()[1..] {
        agents.push(
            host.start_agent(&["--join", &seed, "--token", &token])
                .expect("agent"),
        );
    }
    let n = bed.hosts().len();
    for host in bed.hosts() {
        wait_until("every node ready", DEADLINE, || {
            let out = skein(host, &["node", "ls", "--format", "json"]);
            serde_json::from_slice::<Vec<Value>>(&out.stdout)
                .is_ok_and(|rows| rows.iter().filter(|r| r["status"] == "ready").count() == n)
        })
        .unwrap();
    }
    agents
}

/// An endpoint made by `skein endpoint create`: (namespace, IP).
fn create_endpoint(host: &Host, network: &str, name: &str) -> (String, String) {
    let out = skein_ok(
        host,
        &["endpoint", "create", "--network", network, "--name", name],
    );
    let rows = skein_ok(host, &["endpoint", "ls", "--format", "json"]);
    let rows: Vec<Value> = serde_json::from_str(&rows).unwrap();
    let row = rows
        .iter()
        .find(|r| {
            r["name"] == name
                && r["netns"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(host.netns()))
        })
        .unwrap_or_else(|| panic!("endpoint {name} not listed after create:\n{out}"));
    (
        row["netns"].as_str().unwrap().to_owned(),
        row["ip"].as_str().unwrap().to_owned(),
    )
}

fn ping(netns: &str, ip: &str) -> bool {
    in_netns(
        netns,
        &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", ip],
    )
    .status
    .success()
}

#[test]
fn endpoints_on_three_hosts_reach_each_other_and_nothing_stale_remains() {
    let bed = Testbed::new("overlay-mesh", TestbedConfig::with_hosts(3)).expect("testbed");
    let mut agents = start_cluster(&bed);
    skein_ok(bed.host(0), &["network", "create", "net1"]);
    skein_ok(bed.host(1), &["network", "create", "net2"]);
    for host in bed.hosts() {
        wait_until("networks everywhere", DEADLINE, || {
            let ls = skein_ok(host, &["network", "ls"]);
            ls.contains("net1") && ls.contains("net2")
        })
        .unwrap();
    }
    let mut endpoints = Vec::new();
    for (i, host) in bed.hosts().iter().enumerate() {
        for k in 0..2 {
            endpoints.push((i, create_endpoint(host, "net1", &format!("e{i}{k}"))));
        }
    }
    // The overlay MTU is derived from the underlay (1500 - 50).
    let link = String::from_utf8_lossy(
        &in_netns(&endpoints[0].1 .0, &["ip", "link", "show", "eth0"]).stdout,
    )
    .into_owned();
    assert!(link.contains("mtu 1450"), "endpoint MTU:\n{link}");

    // Every endpoint pings every other, same host and across hosts.
    for (_, (from, _)) in &endpoints {
        for (_, (_, ip)) in &endpoints {
            wait_until(&format!("{from} -> {ip}"), DEADLINE, || ping(from, ip)).unwrap();
        }
    }

    // A 100 MB TCP transfer across hosts arrives intact.
    let (server_ns, server_ip) = &endpoints[5].1; // on h3
    let (client_ns, _) = &endpoints[0].1; // on h1
    let mut server = bed
        .host(2)
        .spawn(
            {
                let mut cmd = bed.host(2).command("ip");
                cmd.args(["netns", "exec", server_ns, "python3", "-c"]).arg(
                    "import socket,hashlib\n\
                     s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                     s.bind(('0.0.0.0', 5001)); s.listen(1); c,_=s.accept(); h=hashlib.sha256(); n=0\n\
                     while True:\n\
                     \x20   b=c.recv(1<<16)\n\
                     \x20   if not b: break\n\
                     \x20   h.update(b); n+=len(b)\n\
                     print(n, h.hexdigest())\n",
                );
                cmd
            },
            "tcp-server",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sender = in_netns(
        client_ns,
        &[
            "python3",
            "-c",
            &format!(
                "import socket,hashlib\n\
                 data=bytes(range(256))*4096\n\
                 h=hashlib.sha256(); s=socket.create_connection(('{server_ip}', 5001))\n\
                 for i in range(100):\n\
                 \x20   s.sendall(data); h.update(data)\n\
                 s.close(); print(100*len(data), h.hexdigest())\n"
            ),
        ],
    );
    assert!(
        sender.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sender.stderr)
    );
    server
        .wait(Duration::from_secs(60))
        .expect("server finishes");
    let sent = String::from_utf8_lossy(&sender.stdout).trim().to_owned();
    let received = server.log().trim().to_owned();
    assert_eq!(received, sent, "100 MB arrived intact");
    assert!(sent.starts_with("104857600 "), "{sent}");

    // Networks are isolated: an endpoint on net2 cannot reach net1's.
    let (other_ns, _) = create_endpoint(bed.host(1), "net2", "iso");
    assert!(!ping(&other_ns, &endpoints[0].1 .1), "net2 reached net1");

    // Removing an endpoint removes it everywhere.
    let (gone_ns, gone_ip) = endpoints.pop().unwrap().1;
    skein_ok(bed.host(2), &["endpoint", "rm", "e21"]);
    let namespaces = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !namespaces.contains(&gone_ns),
        "the endpoint's namespace is deleted with it"
    );
    for host in bed.hosts() {
        wait_until("the removed endpoint gone from the maps", DEADLINE, || {
            !skein_ok(host, &["debug", "maps"]).contains(&format!("{gone_ip} "))
        })
        .unwrap();
    }
    assert!(!ping(&endpoints[0].1 .0, &gone_ip));

    // A host's death removes its endpoints from every other host's maps.
    let h3_ips: Vec<String> = endpoints
        .iter()
        .filter(|(i, _)| *i == 2)
        .map(|(_, (_, ip))| ip.clone())
        .collect();
    agents[2].kill9().unwrap();
    for host in &bed.hosts()[..2] {
        wait_until("h3's endpoints gone from the maps", DEADLINE, || {
            let maps = skein_ok(host, &["debug", "maps"]);
            h3_ips.iter().all(|ip| !maps.contains(&format!("{ip} ")))
        })
        .unwrap();
    }
}
