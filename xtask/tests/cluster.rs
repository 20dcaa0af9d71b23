//! Real agents forming a cluster in a netns testbed: join, `node ls`, kill -9, restart,
//! partition, networks outliving their creator, wrong tokens, random datagrams, and no
//! plaintext on the wire. Needs root; run by `cargo xtask test`.
//!
//! Deadlines are generous (the figures live in `cargo xtask bench gossip`).

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use xtask::{
    cluster::{skein, skein_ok, start_cluster, DEADLINE},
    scrape::scrape,
    testbed::{wait_until, Host, Testbed, TestbedConfig},
};

/// `node ls` on `host` as (hostname -> (id, status)); None while the agent is not up.
fn node_ls(host: &Host) -> Option<BTreeMap<String, (String, String)>> {
    let out = skein(host, &["node", "ls", "--format", "json"]).unwrap();
    if !out.status.success() {
        return None;
    }
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        rows.iter()
            .map(|r| {
                (
                    r["hostname"].as_str().unwrap_or_default().to_owned(),
                    (
                        r["id"].as_str().unwrap_or_default().to_owned(),
                        r["status"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect(),
    )
}

fn statuses(host: &Host) -> Option<BTreeMap<String, String>> {
    node_ls(host).map(|m| m.into_iter().map(|(h, (_, s))| (h, s)).collect())
}

fn networks(host: &Host) -> Vec<String> {
    let out = skein_ok(host, &["network", "ls", "--format", "json"]).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&out).expect("network ls json");
    rows.iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The hostname an agent reports: its namespace's name.
fn hostname(host: &Host) -> String {
    host.netns().to_owned()
}

fn expect_all(bed: &Testbed, ready: &[usize], down: &[usize]) -> BTreeMap<String, String> {
    let mut expected = BTreeMap::new();
    for &i in ready {
        expected.insert(hostname(bed.host(i)), "ready".to_owned());
    }
    for &i in down {
        expected.insert(hostname(bed.host(i)), "down".to_owned());
    }
    expected
}

#[test]
fn five_agents_agree_survive_kills_and_partitions() {
    let bed = Testbed::new("cluster-five", TestbedConfig::with_hosts(5)).expect("testbed");
    let (mut agents, token) = start_cluster(&bed).unwrap();
    assert!(token.starts_with("SKEIN-1-"), "token {token:?}");
    let all: Vec<usize> = (0..5).collect();
    for host in bed.hosts() {
        wait_until(
            &format!("5 ready nodes on {}", host.name()),
            DEADLINE,
            || statuses(host) == Some(expect_all(&bed, &all, &[])),
        )
        .expect("cluster forms");
    }
    let ids_before = node_ls(bed.host(0)).unwrap();

    // A network created on h2 is listed everywhere.
    skein_ok(bed.host(1), &["network", "create", "net1"]).unwrap();
    for host in bed.hosts() {
        wait_until("net1 everywhere", DEADLINE, || {
            networks(host).contains(&"net1".to_owned())
        })
        .unwrap();
    }

    // kill -9 h3: every other node shows it down.
    agents[2].kill9().expect("kill -9");
    for &i in &[0, 1, 3, 4] {
        wait_until(&format!("h3 down on h{}", i + 1), DEADLINE, || {
            statuses(bed.host(i)) == Some(expect_all(&bed, &[0, 1, 3, 4], &[2]))
        })
        .unwrap();
    }
    // Restarted with the same flags: ready again, with its previous ID.
    agents[2] = bed
        .host(2)
        .start_agent(&[
            "--join",
            &bed.host(0).underlay_ip().to_string(),
            "--token",
            &token,
        ])
        .expect("restart h3");
    for host in bed.hosts() {
        wait_until("5 ready after the restart", DEADLINE, || {
            statuses(host) == Some(expect_all(&bed, &all, &[]))
        })
        .unwrap();
    }
    assert_eq!(
        node_ls(bed.host(0)).unwrap(),
        ids_before,
        "same IDs after the restart"
    );

    // A network whose creator dies stays listed everywhere.
    skein_ok(bed.host(3), &["network", "create", "orphan"]).unwrap();
    for host in bed.hosts() {
        wait_until("orphan everywhere", DEADLINE, || {
            networks(host).contains(&"orphan".to_owned())
        })
        .unwrap();
    }
    agents[3].kill9().expect("kill -9 h4");
    for &i in &[0, 1, 2, 4] {
        wait_until("h4 down", DEADLINE, || {
            statuses(bed.host(i)) == Some(expect_all(&bed, &[0, 1, 2, 4], &[3]))
        })
        .unwrap();
        assert!(
            networks(bed.host(i)).contains(&"orphan".to_owned()),
            "orphan outlives h4"
        );
    }

    // Partition h5 by taking its underlay link down, then heal.
    bed.set_underlay_link(4, false).expect("link down");
    wait_until("h5 down on h1", DEADLINE, || {
        statuses(bed.host(0)) == Some(expect_all(&bed, &[0, 1, 2], &[3, 4]))
    })
    .unwrap();
    wait_until("the others down on h5", DEADLINE, || {
        statuses(bed.host(4)) == Some(expect_all(&bed, &[4], &[0, 1, 2, 3]))
    })
    .unwrap();
    bed.set_underlay_link(4, true).expect("link up");
    for &i in &[0, 1, 2, 4] {
        wait_until("h5 back after the partition", DEADLINE, || {
            statuses(bed.host(i)) == Some(expect_all(&bed, &[0, 1, 2, 4], &[3]))
        })
        .unwrap();
    }

    // node rm of the dead h4 forgets it everywhere.
    let h4_id = &ids_before[&hostname(bed.host(3))].0;
    let refused = skein(
        bed.host(0),
        &["node", "rm", &bed.host(1).netns().replace('-', "")],
    )
    .unwrap();
    assert!(!refused.status.success(), "a bogus ID is refused");
    skein_ok(bed.host(0), &["node", "rm", h4_id]).unwrap();
    for &i in &[0, 1, 2, 4] {
        wait_until("h4 forgotten", DEADLINE, || {
            statuses(bed.host(i)) == Some(expect_all(&bed, &[0, 1, 2, 4], &[]))
        })
        .unwrap();
    }
}

#[test]
fn a_wrong_token_cannot_join_and_says_so() {
    let bed = Testbed::new("cluster-token", TestbedConfig::with_hosts(2)).expect("testbed");
    let _first = bed.host(0).start_agent(&["--init"]).expect("first agent");
    wait_until("first agent up", DEADLINE, || {
        skein(bed.host(0), &["join-token"])
            .unwrap()
            .status
            .success()
    })
    .unwrap();
    // A well-formed token of another cluster.
    let other = manager::secure::JoinToken::generate().to_string();
    let mut intruder = bed
        .host(1)
        .start_agent(&[
            "--join",
            &bed.host(0).underlay_ip().to_string(),
            "--token",
            &other,
            "--join-timeout",
            "3s",
        ])
        .expect("intruder starts");
    let status = intruder
        .wait(Duration::from_secs(30))
        .expect("intruder exits on its own");
    assert!(!status.success(), "a wrong token must fail");
    let log = intruder.log();
    assert!(
        log.contains("could not join the cluster"),
        "says why:\n{log}"
    );
    assert!(
        log.contains("token is wrong"),
        "names the likely cause:\n{log}"
    );
    // The first node never saw it.
    let nodes = node_ls(bed.host(0)).unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    // A malformed token is refused at once.
    let out = skein(
        bed.host(1),
        &[
            "agent",
            "--underlay-iface",
            "eth0",
            "--join",
            "10.200.0.11",
            "--token",
            "SKEIN-1-garbage",
        ],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("join token is malformed"), "{stderr}");
}

#[test]
fn random_datagrams_change_nothing_and_are_counted_and_nothing_is_plaintext() {
    let bed = Testbed::new("cluster-fuzz", TestbedConfig::with_hosts(3)).expect("testbed");
    let (mut agents, _token) = start_cluster(&bed).unwrap();
    let all = [0, 1, 2];
    for host in bed.hosts() {
        wait_until("3 ready", DEADLINE, || {
            statuses(host) == Some(expect_all(&bed, &all, &[]))
        })
        .unwrap();
    }
    let h1 = bed.host(0);

    // Capture gossip on h1 while a distinctively named network is created.
    let capture = h1.dir().join("gossip.pcap");
    let mut tcpdump = h1
        .spawn(
            {
                let mut cmd = h1.command("tcpdump");
                cmd.args(["-i", "eth0", "-U", "-w"])
                    .arg(&capture)
                    .args(["udp", "port", "7946"]);
                cmd
            },
            "tcpdump",
        )
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(1500));
    skein_ok(
        bed.host(1),
        &[
            "network",
            "create",
            "plaintextcanary",
            "--subnet",
            "10.99.77.0/24",
        ],
    )
    .unwrap();
    for host in bed.hosts() {
        wait_until("canary everywhere", DEADLINE, || {
            networks(host).contains(&"plaintextcanary".to_owned())
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    tcpdump
        .terminate(Duration::from_secs(5))
        .expect("stop tcpdump");
    let bytes = std::fs::read(&capture).expect("capture file");
    assert!(
        bytes.len() > 2000,
        "the capture holds gossip ({} bytes)",
        bytes.len()
    );
    for needle in [
        "plaintextcanary",
        "10.99.77",
        &hostname(bed.host(1)),
        "10.200.0.12",
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle:?} appears in plaintext in the gossip capture"
        );
    }

    // 10,000 random datagrams from the client namespace to h1's gossip port.
    let networks_before = networks(h1);
    let overflows_before = udp_receive_buffer_errors(h1);
    let script = "import os, socket, time\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        for i in range(10000):\n\
        \x20   s.sendto(os.urandom(1 + (i * 131) % 1400), ('10.200.0.11', 7946))\n\
        \x20   if i % 50 == 0: time.sleep(0.002)\n";
    bed.client()
        .run("python3", ["-c", script])
        .expect("sending random datagrams");
    std::thread::sleep(Duration::from_secs(1));
    for agent in &mut agents {
        assert!(agent.is_running(), "every agent survives:\n{}", agent.log());
    }
    assert_eq!(
        statuses(h1),
        Some(expect_all(&bed, &all, &[])),
        "membership unchanged"
    );
    assert_eq!(networks(h1), networks_before, "networks unchanged");
    let metrics = scrape(h1).expect("metrics");
    let rejected: u64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("skein_gossip_rejected_total"))
        .map(|(_, v)| v)
        .sum();
    // A datagram the kernel dropped for a full socket buffer (a burst on a loaded machine)
    // never reached the agent; every other one must be counted.
    let overflowed = udp_receive_buffer_errors(h1) - overflows_before;
    assert!(
        rejected + overflowed >= 10_000 && rejected >= 5_000,
        "random datagrams are counted as rejected: {rejected} (socket buffer overflows: {overflowed})"
    );
}

/// `RcvbufErrors` of UDP in the host's namespace (`/proc/net/snmp`): datagrams the kernel
/// dropped because a socket's receive buffer was full.
fn udp_receive_buffer_errors(host: &Host) -> u64 {
    let snmp = host.run("cat", ["/proc/net/snmp"]).expect("/proc/net/snmp");
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (names, values) = (
        udp.next().expect("Udp header"),
        udp.next().expect("Udp values"),
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .expect("RcvbufErrors in /proc/net/snmp")
}

#[test]
fn leave_announces_departure_and_removes_the_dataplane() {
    let bed = Testbed::new("cluster-leave", TestbedConfig::with_hosts(3)).expect("testbed");
    let (mut agents, _token) = start_cluster(&bed).unwrap();
    for host in bed.hosts() {
        wait_until("3 ready", DEADLINE, || {
            statuses(host) == Some(expect_all(&bed, &[0, 1, 2], &[]))
        })
        .unwrap();
    }
    let h3 = bed.host(2);
    let reply = skein_ok(h3, &["agent", "leave"]).unwrap();
    assert!(reply.contains("left the cluster"), "{reply}");
    let status = agents[2]
        .wait(Duration::from_secs(20))
        .expect("the agent exits after leave");
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        agents[2].log()
    );
    // Its dataplane is gone: no program on the underlay, no pins.
    let link = h3.run("ip", ["link", "show", "dev", "eth0"]).unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached after leave:\n{link}"
    );
    let pins: Vec<_> = ["maps", "links"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(h3.bpf_dir().join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .collect();
    assert!(pins.is_empty(), "pins left after leave: {pins:?}");
    // It forgot the cluster: starting again without --init/--join is refused.
    let out = skein(
        h3,
        &[
            "agent",
            "--underlay-iface",
            "eth0",
            "--bpf-dir",
            &h3.bpf_dir().to_string_lossy(),
        ],
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to no cluster"));
    // The others see it down (announced, not timed out: well within the deadline).
    for i in [0, 1] {
        wait_until("h3 down after leave", DEADLINE, || {
            statuses(bed.host(i)) == Some(expect_all(&bed, &[0, 1], &[2]))
        })
        .unwrap();
    }
}
