//! A member that turned hostile, against real agents (issue 15): records sealed with the
//! cluster key from the token (a service with `replicas = u32::MAX`, a node MTU of 0,
//! oversized fields, a forged epoch `u64::MAX` for another node) change nothing and are
//! counted; `node rm` of a partitioned live node is undone by the node itself when the
//! partition heals; idle TCP connections to the peer-RPC port do not stop `service logs`.
//! Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use manager::{
    gossip::wire,
    secure::{max_plaintext, JoinToken, Sealer},
    state::{encode_record, Kind, Mode, NodeInfo, Record, RecordKey, Service, Stamp},
    testing, NodeId,
};
use serde_json::Value;
use xtask::{
    cluster::{running_tasks, skein, skein_ok, start_cluster, whoami, DEADLINE},
    scrape::scrape,
    testbed::{wait_until, Host, Testbed, TestbedConfig},
};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A stamp `ahead_ms` past now by `writer`.
fn stamp(writer: NodeId, ahead_ms: u64) -> Stamp {
    Stamp {
        hlc: manager::hlc::compose(wall_ms() + ahead_ms, 0),
        writer,
    }
}

/// `node ls` on `host`: hostname -> (id, status).
fn nodes(host: &Host) -> BTreeMap<String, (String, String)> {
    let Ok(out) = skein_ok(host, &["node", "ls", "--format", "json"]) else {
        return BTreeMap::new();
    };
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
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
        .collect()
}

fn all_ready(bed: &Testbed, host: &Host) -> bool {
    let n = nodes(host);
    bed.hosts()
        .iter()
        .all(|h| n.get(h.netns()).is_some_and(|(_, s)| s == "ready"))
}

/// Sends `datagrams` from the client namespace to every given host's gossip port.
fn send(bed: &Testbed, to: &[Ipv4Addr], datagrams: &[Vec<u8>]) {
    let hex: Vec<String> = datagrams
        .iter()
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    let file = bed.run_dir().join("hostile-datagrams.txt");
    std::fs::write(&file, hex.join("\n")).expect("writing the datagrams");
    let targets: Vec<String> = to.iter().map(|ip| format!("'{ip}'")).collect();
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for line in open('{}'):\n\
         \x20   d = bytes.fromhex(line.strip())\n\
         \x20   for ip in [{}]:\n\
         \x20       s.sendto(d, (ip, 7946))\n",
        file.display(),
        targets.join(", ")
    );
    bed.client()
        .run("python3", ["-c", &script])
        .expect("sending the hostile datagrams");
}

/// `skein_gossip_rejected_total{reason=REASON}` on `host`.
fn rejected(host: &Host, reason: &str) -> u64 {
    let key = format!("skein_gossip_rejected_total{{reason=\"{reason}\"}}");
    scrape(host)
        .expect("metrics")
        .iter()
        .find(|(k, _)| **k == key)
        .map(|(_, v)| *v)
        .unwrap_or_default()
}

fn services(host: &Host) -> Vec<Value> {
    let out = skein_ok(host, &["service", "ls", "--format", "json"]).expect("service ls");
    serde_json::from_str(&out).expect("service ls json")
}

fn create_web(bed: &Testbed) {
    let command = whoami(&["--port", "80"]);
    let mut args = vec!["service", "create", "web", "--replicas", "3", "--"];
    args.extend(command.iter().map(String::as_str));
    let out = skein(bed.host(0), &args).expect("service create");
    assert!(
        out.status.success(),
        "service create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sealed_hostile_records_change_nothing_and_are_counted() {
    let bed = Testbed::new("hostile-records", TestbedConfig::with_hosts(3)).expect("testbed");
    let (mut agents, token) = start_cluster(&bed).unwrap();
    let token: JoinToken = token.parse().expect("the agent's token parses");
    create_web(&bed);
    let ids = nodes(bed.host(0));
    let id_of = |i: usize| -> NodeId { ids[bed.host(i).netns()].0.parse().expect("node ID") };
    let targets: Vec<Ipv4Addr> = bed.hosts().iter().map(Host::underlay_ip).collect();

    // A member nobody lists (it holds the key), writing cluster objects and forging host 3's
    // own entry, as host 3 would sign it.
    let hostile = NodeId([0x66; 16]);
    let evil = testing::service(
        "evil",
        Mode::Replicated { replicas: u32::MAX },
        stamp(hostile, 0),
    );
    let mut web_evil = evil.clone();
    web_evil.name = "web".into();
    let h3 = id_of(2);
    let mut mtu0 = testing::node(1, true, [10, 200, 0, 13])
        .info
        .expect("fixture has info");
    mtu0.hostname = bed.host(2).netns().to_owned();
    mtu0.underlay_mtu = 0;
    let records = [
        Record {
            key: Service::key("evil"),
            stamp: stamp(hostile, 0),
            value: Some(evil.encode()),
        },
        Record {
            key: Service::key("web"),
            stamp: stamp(hostile, 5_000),
            value: Some(web_evil.encode()),
        },
        Record {
            key: NodeInfo::key(h3),
            stamp: stamp(h3, 5_000),
            value: Some(mtu0.encode()),
        },
        // Oversized fields: the longest name with a value that is no service.
        Record {
            key: RecordKey::cluster(Kind::Service, "x".repeat(255)),
            stamp: stamp(hostile, 0),
            value: Some(vec![0xff; 1000]),
        },
    ];
    let encoded: Vec<Vec<u8>> = records.iter().map(encode_record).collect();
    let mut as_hostile = Sealer::new(&token.key, token.cluster_id, hostile, wall_ms());
    let mut as_h3 = Sealer::new(&token.key, token.cluster_id, h3, wall_ms());
    let mut datagrams: Vec<Vec<u8>> = Vec::new();
    for (i, record) in encoded.iter().enumerate() {
        let payload = wire::records([record.as_slice()], max_plaintext(1500));
        let sealer = if i == 2 { &mut as_h3 } else { &mut as_hostile };
        datagrams.extend(payload.iter().map(|p| sealer.seal(p)));
    }
    // Another node's epoch u64::MAX: host 2 claimed in a sealed digest.
    let mut as_h2_max = Sealer::new(&token.key, token.cluster_id, id_of(1), u64::MAX);
    datagrams.push(as_h2_max.seal(&wire::digest(&[0; manager::state::BUCKETS])));
    // A datagram larger than any member sends.
    datagrams.push(vec![1; 60_000]);

    let before: Vec<u64> = bed
        .hosts()
        .iter()
        .map(|h| rejected(h, "invalid_record"))
        .collect();
    send(&bed, &[targets[0], targets[2]], &datagrams[3..]);
    send(&bed, &targets[..2], &datagrams[..3]);

    // Host 2 stays heard for longer than a failure takes to be detected (~1-3 s).
    let quiet_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < quiet_until {
        for host in bed.hosts() {
            assert!(
                all_ready(&bed, host),
                "a node went down on {}: {:?}",
                host.name(),
                nodes(host)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for agent in &mut agents {
        assert!(agent.is_running(), "every agent survives:\n{}", agent.log());
    }
    for (i, host) in bed.hosts().iter().enumerate() {
        let listed = services(host);
        let names: Vec<&str> = listed.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(names, ["web"], "on {}", host.name());
        assert!(
            listed[0].to_string().contains("3"),
            "web keeps 3 replicas on {}: {}",
            host.name(),
            listed[0]
        );
        let now = rejected(host, "invalid_record");
        if i != 1 {
            assert!(
                now > before[i],
                "invalid records counted on {}",
                host.name()
            );
            assert!(
                rejected(host, "epoch_ahead") >= 1,
                "forged epoch counted on {}",
                host.name()
            );
            // The 60,000-byte datagram: the socket filter drops it in the kernel.
            assert!(
                rejected(host, "dropped_by_kernel") >= 1,
                "oversized counted on {}",
                host.name()
            );
        }
    }
    // Valid state keeps being served: the 3 web tasks run and a new service converges.
    wait_until("3 web tasks", DEADLINE, || {
        running_tasks(bed.host(1), "web").len() == 3
    })
    .unwrap();
    let command = whoami(&["--port", "80"]);
    let mut args = vec!["service", "create", "db", "--replicas", "1", "--"];
    args.extend(command.iter().map(String::as_str));
    skein_ok(bed.host(2), &args).expect("a valid service after the attack");
}

#[test]
fn node_rm_of_a_partitioned_live_node_is_undone_when_it_heals() {
    let bed = Testbed::new("hostile-noderm", TestbedConfig::with_hosts(3)).expect("testbed");
    let (mut agents, _token) = start_cluster(&bed).unwrap();
    create_web(&bed);
    let h3 = bed.host(2).netns().to_owned();
    wait_until("a web task on h3", DEADLINE, || {
        running_tasks(bed.host(0), "web")
            .iter()
            .any(|t| t.host == h3)
    })
    .unwrap();
    let pid = agents[2].pid();
    let id = nodes(bed.host(0))[&h3].0.clone();

    bed.set_underlay_link(2, false).expect("partition h3");
    wait_until("h3 down on h1", DEADLINE, || {
        nodes(bed.host(0))
            .get(&h3)
            .is_some_and(|(_, s)| s == "down")
    })
    .unwrap();
    skein_ok(bed.host(0), &["node", "rm", &id]).expect("node rm of the partitioned h3");
    wait_until("h3 gone from h1's node ls", DEADLINE, || {
        !nodes(bed.host(0)).contains_key(&h3)
    })
    .unwrap();
    bed.set_underlay_link(2, true).expect("heal");

    for host in &bed.hosts()[..2] {
        wait_until("h3 back and ready", 2 * DEADLINE, || {
            nodes(host).get(&h3).is_some_and(|(_, s)| s == "ready")
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", nodes(host)));
    }
    wait_until("h3 runs a web task again", 2 * DEADLINE, || {
        running_tasks(bed.host(0), "web")
            .iter()
            .any(|t| t.host == h3)
    })
    .unwrap();
    assert!(agents[2].is_running(), "h3's agent:\n{}", agents[2].log());
    assert_eq!(agents[2].pid(), pid, "h3's agent was never restarted");
}

#[test]
fn idle_peer_connections_do_not_stop_service_logs() {
    let bed = Testbed::new("hostile-idle", TestbedConfig::with_hosts(3)).expect("testbed");
    let (_agents, _token) = start_cluster(&bed).unwrap();
    create_web(&bed);
    wait_until("3 web tasks", DEADLINE, || {
        running_tasks(bed.host(0), "web").len() == 3
    })
    .unwrap();
    let target = bed.host(0).underlay_ip();
    // 200 connections to h1's peer-RPC port that never send a byte, reopened as soon as the
    // agent closes them, for 60 s at most.
    let script = format!(
        "import socket, time, select\n\
         conns = []\n\
         end = time.time() + 60\n\
         while time.time() < end:\n\
         \x20   conns = [c for c in conns if not select.select([c], [], [], 0)[0]]\n\
         \x20   while len(conns) < 200:\n\
         \x20       c = socket.create_connection(('{target}', 7946))\n\
         \x20       conns.append(c)\n\
         \x20   time.sleep(0.05)\n"
    );
    let mut idle = bed
        .client()
        .spawn(
            {
                let mut cmd = bed.client().command("python3");
                cmd.args(["-c", &script]);
                cmd
            },
            "idle-connections",
        )
        .expect("idle connections");
    std::thread::sleep(Duration::from_secs(3));
    let h1_tasks: Vec<String> = running_tasks(bed.host(1), "web")
        .into_iter()
        .filter(|t| t.host == bed.host(0).netns())
        .map(|t| t.id)
        .collect();
    assert_eq!(h1_tasks.len(), 1, "one web task on h1");
    for round in 0..5 {
        let out = skein(bed.host(1), &["service", "logs", "web"]).expect("service logs");
        let logs = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && logs.contains(&h1_tasks[0]) && !stderr.contains("note:"),
            "round {round}: h1's task output missing while 200 idle connections are open:\n\
             {logs}\nstderr: {stderr}\nidle: {}",
            idle.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        idle.is_running(),
        "the idle connections were still held:\n{}",
        idle.log()
    );
    idle.terminate(Duration::from_secs(5))
        .expect("stop the idle connections");
}
