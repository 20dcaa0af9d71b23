//! Issue 16 point 3, second half: a new binary whose map layout changed migrates the
//! pinned maps in place, and live connections through the mesh ride on across the
//! upgrade. Needs root.
//!
//! The previous binary is stood in for by its map: with the agent stopped, the ingress
//! node's pinned conntrack (`MESH_FLOWS`) is rewritten in layout 0 — the 40-byte flow the
//! binaries before the next-hop cache pinned (`dataplane_ebpf::migrations::FlowV0`) —
//! holding the entries of the client's open connections. The programs still attached
//! keep their own map meanwhile, so the connections stay up until the new agent swaps its
//! programs in: from then on they are carried only if their entries were migrated (an
//! unknown flow's next segment is answered with a reset). No second eBPF build needed.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use agent::dataplane::{self, migrate::rewrite_pin_as_older_layout, PinDirs};
use aya::maps::{HashMap, Map, MapData, MapInfo};
use dataplane_ebpf::{
    maps::MESH_FLOWS,
    mesh::{Flow, FlowKey},
    migrations::{mesh_flow_to_v0, older_layouts},
};
use xtask::{
    cluster::{create_service, running_tasks, start_cluster_with, whoami, DEADLINE},
    testbed::{wait_until, Testbed, TestbedConfig, CLIENT_UNDERLAY_IP},
};

const WEB: u16 = 8080;
/// Connections the client holds open across the upgrade.
const CONNECTIONS: usize = 6;

/// The client: opens `n` keep-alive connections to `ip:port`, then sends a request on
/// each every 0.1 s, counting answers before and after the file `mark` appears, until the
/// file `stop` appears (or `limit` s). A connection that fails is reported and dropped;
/// an answer from another task than the connection's first is a failure too.
const HOLD: &str = r#"
import os, socket, sys, time
ip, port, n, mark, stop, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6])
def get(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError("closed")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    length = [l.split(b":", 1)[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    want = int(length[0]) if length else 0
    while len(body) < want:
        d = s.recv(65536)
        if not d:
            raise EOFError("closed")
        body += d
    return [l for l in body.decode(errors="replace").splitlines() if l.startswith("Hostname:")][0]
conns = []
for _ in range(n):
    s = socket.create_connection((ip, port), timeout=5)
    conns.append({"s": s, "port": s.getsockname()[1], "task": get(s), "before": 0, "after": 0})
print("OPEN " + " ".join(str(c["port"]) for c in conns), flush=True)
failed = 0
deadline = time.time() + limit
while time.time() < deadline and not os.path.exists(stop):
    after = os.path.exists(mark)
    for c in conns:
        if c["s"] is None:
            continue
        try:
            task = get(c["s"])
            if task != c["task"]:
                raise RuntimeError("answered by %s, not %s" % (task, c["task"]))
            c["after" if after else "before"] += 1
        except Exception as e:
            print("FAILED port %d: %r" % (c["port"], e), flush=True)
            failed += 1
            c["s"].close()
            c["s"] = None
    time.sleep(0.1)
print("DONE failed=%d before=%s after=%s" % (failed, ",".join(str(c["before"]) for c in conns), ",".join(str(c["after"]) for c in conns)), flush=True)
"#;

/// The client's TCP flows to `WEB` in the pinned `MESH_FLOWS` under `maps`: client port →
/// backend address. Read with today's layout (the caller checks the pin has it).
fn client_flows(maps: &Path) -> BTreeMap<u16, Ipv4Addr> {
    let data = MapData::from_pin(maps.join(MESH_FLOWS.name)).expect("MESH_FLOWS pinned");
    let flows: HashMap<_, FlowKey, Flow> =
        HashMap::try_from(Map::LruHashMap(data)).expect("MESH_FLOWS in today's layout");
    flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, _)| {
            key.client_ip == CLIENT_UNDERLAY_IP.octets()
                && u16::from_be_bytes(key.published_port_be) == WEB
        })
        .map(|(key, flow)| {
            (
                u16::from_be_bytes(key.client_port_be),
                Ipv4Addr::from(flow.backend_ip),
            )
        })
        .collect()
}

fn value_size(maps: &Path) -> u32 {
    MapInfo::from_pin(maps.join(MESH_FLOWS.name))
        .expect("MESH_FLOWS pinned")
        .value_size()
}

/// The `DONE` line's `name=` list.
fn counts(done: &str, name: &str) -> Vec<u64> {
    done.split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name}= in {done:?}"))
        .split(',')
        .map(|n| n.parse().expect("a count"))
        .collect()
}

#[test]
fn live_connections_ride_on_across_a_conntrack_layout_migration() {
    let bed = Testbed::new("migrate", TestbedConfig::with_hosts(3)).expect("testbed");
    bed.make_wire_like().expect("wire-like underlay");
    let (mut agents, _) = start_cluster_with(&bed, |_| Vec::new(), &[]).expect("cluster");
    create_service(
        &bed,
        "web",
        &["--replicas", "3", "--publish", "8080:80"],
        &whoami(&["--port", "80"]),
    );
    for host in bed.hosts() {
        wait_until(&format!("3 web tasks on {}", host.name()), DEADLINE, || {
            running_tasks(host, "web").len() == 3
        })
        .unwrap();
    }
    let h1 = bed.host(0);
    let ip = h1.underlay_ip().to_string();
    let maps = h1.bpf_dir().join("maps");
    let url = format!("http://{ip}:{WEB}/");
    wait_until("the mesh answering through h1", DEADLINE, || {
        xtask::cluster::in_netns(
            bed.client().netns(),
            &["curl", "-sf", "--max-time", "5", &url],
        )
        .ok()
        .filter(|out| out.status.success())
    })
    .unwrap();

    // Connections held open through h1 (the ingress node), requests flowing.
    let mark = bed.run_dir().join("migrate-mark");
    let stop = bed.run_dir().join("migrate-stop");
    let client = bed.client();
    let mut cmd = client.command("python3");
    cmd.args(["-c", HOLD, &ip, &WEB.to_string(), &CONNECTIONS.to_string()])
        .arg(&mark)
        .arg(&stop)
        .arg("300");
    let mut hold = client.spawn(cmd, "hold").expect("client starts");
    hold.wait_for_log("OPEN ", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}: {}", hold.log()));
    let ports: Vec<u16> = hold
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("OPEN "))
        .expect("OPEN line")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports.len(), CONNECTIONS);
    let before = client_flows(&maps);
    for port in &ports {
        assert!(
            before.contains_key(port),
            "conntrack of port {port}: {before:?}"
        );
    }

    // Stop the agent; leave the map as the previous binary would have pinned it.
    let status = agents[0]
        .terminate(Duration::from_secs(20))
        .expect("SIGTERM");
    assert!(
        status.success(),
        "h1's agent stops cleanly: {}",
        agents[0].log()
    );
    let v0 = &older_layouts(MESH_FLOWS.name)[0];
    let written = rewrite_pin_as_older_layout(&maps, &MESH_FLOWS, v0, mesh_flow_to_v0)
        .expect("MESH_FLOWS rewritten in layout 0");
    assert!(written >= CONNECTIONS, "{written} entries in layout 0");
    assert_eq!(value_size(&maps), 40, "the pin holds layout 0 now");

    // The new binary: migrates, swaps its programs in, and the connections go on.
    let started = Instant::now();
    agents[0] = h1.start_agent(&["--init"]).expect("h1's agent restarts");
    agents[0]
        .wait_for_log("pinned map migrated", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}: {}", agents[0].log()));
    let migrated_line = agents[0]
        .log()
        .lines()
        .find(|l| l.contains("pinned map migrated"))
        .map(str::to_owned)
        .unwrap();
    println!(
        "migrated in {:?} after the start: {migrated_line}",
        started.elapsed()
    );
    assert!(
        migrated_line.contains("map=\"MESH_FLOWS\"") || migrated_line.contains("map=MESH_FLOWS"),
        "{migrated_line}"
    );
    assert!(migrated_line.contains("from=layout 0"), "{migrated_line}");
    assert!(
        migrated_line.contains(&format!("entries={written}")),
        "every entry of layout 0 carried: {migrated_line}"
    );
    std::fs::write(&mark, b"").unwrap();
    assert_eq!(value_size(&maps), 56, "the pin holds today's layout");
    assert!(
        !maps.join("MESH_FLOWS@migrating").exists(),
        "no staging pin left"
    );
    let after = client_flows(&maps);
    for port in &ports {
        assert_eq!(
            after.get(port),
            before.get(port),
            "port {port}'s conntrack entry carried with its backend"
        );
    }

    // Requests on every connection for a while after the migration (a duration of
    // traffic, not a wait for readiness).
    std::thread::sleep(Duration::from_secs(4));
    std::fs::write(&stop, b"").unwrap();
    hold.wait(Duration::from_secs(30)).expect("client exits");
    let log = hold.log();
    println!("client: {log}");
    let done = log
        .lines()
        .find(|l| l.starts_with("DONE "))
        .unwrap_or_else(|| panic!("client summary: {log}"));
    assert!(
        done.starts_with("DONE failed=0 "),
        "every request on every held connection answered by its own task: {log}"
    );
    let after_counts = counts(done, "after");
    assert!(
        after_counts.iter().all(|n| *n >= 5),
        "every connection carried requests after the migration: {done}"
    );
    println!(
        "{} requests before, {} after the migration on {CONNECTIONS} connections",
        counts(done, "before").iter().sum::<u64>(),
        after_counts.iter().sum::<u64>()
    );
    // The client's requests continue after the restart: new connections too.
    let out = xtask::cluster::in_netns(
        bed.client().netns(),
        &["curl", "-sf", "--max-time", "5", &url],
    )
    .expect("curl");
    assert!(out.status.success(), "a new connection after the migration");
}

fn flow_key(port: u16) -> FlowKey {
    FlowKey {
        client_ip: [10, 200, 0, 2],
        node_ip: [10, 200, 0, 11],
        client_port_be: port.to_be_bytes(),
        published_port_be: WEB.to_be_bytes(),
        protocol: 6,
        _pad: [0; 3],
    }
}

fn flow(last_seen_ns: u64) -> Flow {
    Flow {
        backend_ip: [10, 10, 0, 5],
        backend_host: [10, 200, 0, 12],
        vni: 4096,
        slot: 1,
        target_port_be: 80u16.to_be_bytes(),
        state: dataplane_ebpf::mesh::TCP_ESTABLISHED,
        created_ns: 1,
        last_seen_ns,
        ..Flow::default()
    }
}

/// `flow` in layout 0, as the old programs would write it.
fn v0(flow: &Flow) -> [u8; 40] {
    // SAFETY: Flow is a repr(C) ABI value without implicit padding (size asserted in the
    // ABI), so all its bytes are initialised; the slice lives only for the conversion.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            flow as *const Flow as *const u8,
            std::mem::size_of::<Flow>(),
        )
    };
    let mut old = [0u8; 40];
    assert!(mesh_flow_to_v0(&[], bytes, &mut old, 0));
    old
}

/// The second copy's rule, step by step on real maps (the end-to-end test above cannot
/// reach it: the programs it swaps out write an unpinned map): between the first copy and
/// the swap the old programs change entries 1 and 2 and open 4; after the swap the new
/// programs change 2 and close 3. The finished map has 1 and 4 as the old programs left
/// them, 2 as the new programs made it (theirs is newer), and no 3.
#[test]
fn what_the_old_programs_changed_before_the_swap_is_copied_again_unless_the_new_ones_did() {
    let bed = Testbed::new("migrate-pass", TestbedConfig::with_hosts(1)).expect("testbed");
    let pins = PinDirs::new(bed.host(0).bpf_dir());
    drop(dataplane::load(&pins).expect("first load pins the maps"));
    let maps = pins.maps();
    let open = |name: &str| MapData::from_pin(maps.join(name)).expect("pinned");
    {
        let mut today: HashMap<_, FlowKey, Flow> =
            HashMap::try_from(Map::LruHashMap(open(MESH_FLOWS.name))).unwrap();
        for port in [1, 2, 3] {
            today.insert(flow_key(port), flow(100), 0).unwrap();
        }
    }
    let v0_layout = &older_layouts(MESH_FLOWS.name)[0];
    assert_eq!(
        rewrite_pin_as_older_layout(&maps, &MESH_FLOWS, v0_layout, mesh_flow_to_v0).unwrap(),
        3
    );

    let (ebpf, migration) = dataplane::load_migrating(&pins).expect("loads, migrating");
    let mut old: HashMap<_, FlowKey, [u8; 40]> =
        HashMap::try_from(Map::LruHashMap(open(MESH_FLOWS.name))).expect("old pin, layout 0");
    let mut new: HashMap<_, FlowKey, Flow> =
        HashMap::try_from(Map::LruHashMap(open("MESH_FLOWS@migrating"))).expect("staging pin");
    assert_eq!(new.keys().count(), 3, "the first copy");
    assert_eq!(new.get(&flow_key(1), 0).unwrap(), flow(100));
    // The old programs, before the swap.
    old.insert(flow_key(1), v0(&flow(200)), 0).unwrap();
    old.insert(flow_key(2), v0(&flow(200)), 0).unwrap();
    old.insert(flow_key(4), v0(&flow(300)), 0).unwrap();
    // The new programs, after it.
    let refreshed = Flow {
        hop_ifindex: 9,
        ..flow(250)
    };
    new.insert(flow_key(2), refreshed, 0).unwrap();
    new.remove(&flow_key(3)).unwrap();

    let done = migration.finish().expect("finishes");
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        (done[0].map, done[0].recopied, done[0].dropped),
        ("MESH_FLOWS", 2, 0)
    );
    assert_eq!(value_size(&maps), 56, "the pin replaced");
    assert!(
        !maps.join("MESH_FLOWS@migrating").exists(),
        "no staging pin left"
    );
    let migrated: HashMap<_, FlowKey, Flow> =
        HashMap::try_from(Map::LruHashMap(open(MESH_FLOWS.name))).unwrap();
    let mut entries: Vec<(u16, Flow)> = migrated
        .iter()
        .map(|entry| entry.unwrap())
        .map(|(key, flow)| (u16::from_be_bytes(key.client_port_be), flow))
        .collect();
    entries.sort_by_key(|(port, _)| *port);
    assert_eq!(
        entries,
        vec![(1, flow(200)), (2, refreshed), (4, flow(300))],
        "1 and 4 as the old programs left them, 2 as the new made it, 3 closed"
    );
    drop(ebpf);
    dataplane::cleanup(&pins).unwrap();
}
