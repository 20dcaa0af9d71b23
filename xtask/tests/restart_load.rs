//! Agent restarts under load through the routing mesh (issue 16 point 3, first half): on a
//! three-host wire-like testbed, `wrk` from the client namespace to host 1's published port
//! — once with keep-alive connections, once with a new connection per request — while the
//! test restarts host 1's agent (the ingress) and host 2's (a backend's node, not the
//! ingress), each gracefully (SIGTERM, then a start) and with `kill -9` followed at once by
//! a start. Every restart must be invisible to the client:
//! - wrk: no socket error (connect, read, write, timeout with `--timeout 10s`), no non-2xx;
//!   the same for a second, smaller wrk on host 1 itself to `127.0.0.1:8080` (the host
//!   path: the socket hooks every start of host 1's agent adopts);
//! - the client namespace's `TcpEstabResets`, `TcpAttemptFails` and `TcpExtTCPTimeouts`
//!   do not move;
//! - the ingress's conntrack (`MESH_FLOWS` on host 1) and the backend host's reply entries
//!   (`MESH_REPLIES` on host 2) present before a restart are present after it (keep-alive
//!   run: the same connections throughout);
//! - the service's round-robin cursor (`MESH_SERVICES[slot].cursor` on host 1) never goes
//!   back, sampled every 100 ms through every restart (a clear-and-refill of the maps would
//!   reset it to 0);
//! - the tasks are adopted, not restarted: the same task IDs at the end.
//!
//! The maps are read from their pins with aya, not through the agent, so they are read
//! while the agent is down too, and a map replaced by a new one would be seen. Needs root.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use agent::dataplane::PinDirs;
use aya::maps::{Array, HashMap, Map, MapData};
use dataplane_ebpf::{
    guard::IPPROTO_TCP,
    maps::{MESH_FLOWS, MESH_PORTS, MESH_REPLIES, MESH_SERVICES},
    mesh::{Flow, FlowKey, MeshPort, MeshPortKey, MeshService, Reply, ReplyKey, TCP_ESTABLISHED},
};
use xtask::{
    cluster::{
        create_service, in_netns, ready_count, service_tasks, start_cluster, whoami, DEADLINE,
    },
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig, CLIENT_UNDERLAY_IP},
};

/// The published port (whoami listens on 80 in its task).
const WEB: u16 = 8080;
/// wrk's connections (the brief: `-c8`).
const CONNECTIONS: u32 = 8;
/// After a restart, the load runs this long before the next one: past the reconciler's
/// and the supervisor's warm-up (10 s), when removals held back at start happen.
const SETTLE: Duration = Duration::from_secs(12);
/// How long a restarted agent gets to answer with every node ready (a loaded machine).
const RESTART_DEADLINE: Duration = Duration::from_secs(60);
/// The client's TCP counters that must not move.
const CLIENT_COUNTERS: [&str; 3] = ["TcpEstabResets", "TcpAttemptFails", "TcpExtTCPTimeouts"];

/// How an agent is stopped before it is started again.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM, wait for the exit (it publishes its restart grace), then start.
    Graceful,
    /// SIGKILL, then start at once (well inside the failure-detection time).
    Kill,
}

/// The cluster, its agents, and how each was started (to restart it the same way).
struct Cluster {
    bed: Testbed,
    agents: Vec<Process>,
    /// The slot of `web` in host 1's mesh maps.
    slot: u32,
}

fn pins(host: &Host) -> PinDirs {
    PinDirs::new(host.bpf_dir())
}

fn pinned(host: &Host, name: &str) -> Map {
    let path: PathBuf = pins(host).maps().join(name);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The host's `MESH_FLOWS` keys of the client's established connections to the published
/// port (closing ones may be swept by their 10 s timeout while an agent restarts).
fn client_flows(host: &Host) -> BTreeSet<FlowKey> {
    let map: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(pinned(host, MESH_FLOWS.name)).expect("MESH_FLOWS");
    map.iter()
        .filter_map(Result::ok)
        .filter(|(k, f)| {
            k.client_ip == CLIENT_UNDERLAY_IP.octets()
                && k.published_port_be == WEB.to_be_bytes()
                && f.state == TCP_ESTABLISHED
        })
        .map(|(k, _)| k)
        .collect()
}

/// The host's `MESH_REPLIES` keys of the client's connections from the client ports in
/// `flows`.
fn client_replies(host: &Host, flows: &BTreeSet<FlowKey>) -> BTreeSet<ReplyKey> {
    let ports: BTreeSet<[u8; 2]> = flows.iter().map(|f| f.client_port_be).collect();
    let map: HashMap<MapData, ReplyKey, Reply> =
        HashMap::try_from(pinned(host, MESH_REPLIES.name)).expect("MESH_REPLIES");
    map.keys()
        .filter_map(Result::ok)
        .filter(|k| k.client_ip == CLIENT_UNDERLAY_IP.octets() && ports.contains(&k.client_port_be))
        .collect()
}

/// The slot `MESH_PORTS` gives the published port on `host`.
fn web_slot(host: &Host) -> Option<u32> {
    let map: HashMap<MapData, MeshPortKey, MeshPort> =
        HashMap::try_from(pinned(host, MESH_PORTS.name)).expect("MESH_PORTS");
    map.get(&MeshPortKey::new(IPPROTO_TCP, WEB), 0)
        .ok()
        .map(|p| p.slot)
}

/// `MESH_SERVICES[slot]` on `host`: (backends, cursor).
fn rotation(host: &Host, slot: u32) -> (u32, u32) {
    let map: Array<MapData, MeshService> =
        Array::try_from(pinned(host, MESH_SERVICES.name)).expect("MESH_SERVICES");
    let s = map.get(&slot, 0).expect("reading MESH_SERVICES");
    (s.backends, s.cursor)
}

/// The client namespace's [`CLIENT_COUNTERS`], as `nstat` reads them (absolute values).
fn client_counters(bed: &Testbed) -> Vec<(String, u64)> {
    let mut args = vec!["nstat", "-asz"];
    args.extend(CLIENT_COUNTERS);
    let out = in_netns(bed.client().netns(), &args).expect("nstat");
    let text = String::from_utf8_lossy(&out.stdout);
    CLIENT_COUNTERS
        .iter()
        .map(|name| {
            let value = text
                .lines()
                .find_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
                })
                .unwrap_or_else(|| panic!("nstat has no {name}: {text}"));
            (name.to_string(), value)
        })
        .collect()
}

/// What one wrk run counted.
#[derive(Debug, Default)]
struct WrkTotals {
    requests: u64,
    non_2xx: u64,
    /// connect, read, write, timeout.
    socket_errors: [u64; 4],
}

fn parse_wrk(out: &str) -> WrkTotals {
    let mut w = WrkTotals::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            w.requests = words[0].parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            for (i, part) in v.split(',').enumerate().take(4) {
                w.socket_errors[i] = part
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX);
            }
        }
    }
    w
}

/// Samples host 1's cursor of `slot` every 100 ms until stopped; fails on the first
/// sample below the one before (the rotation went back).
struct CursorWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(Duration, u32, u32)>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CursorWatch {
    fn start(host: &Host, slot: u32) -> CursorWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let dir = host.bpf_dir().to_path_buf();
        let (s, out) = (stop.clone(), samples.clone());
        let thread = thread::spawn(move || {
            let start = Instant::now();
            // Bounded: the test stops it long before.
            while !s.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
                let read = MapData::from_pin(PinDirs::new(&dir).maps().join(MESH_SERVICES.name))
                    .ok()
                    .and_then(|d| Map::from_map_data(d).ok())
                    .and_then(|m| Array::<MapData, MeshService>::try_from(m).ok())
                    .and_then(|a| a.get(&slot, 0).ok());
                if let Some(v) = read {
                    out.lock()
                        .unwrap()
                        .push((start.elapsed(), v.backends, v.cursor));
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        CursorWatch {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns (samples, first and last cursor) after checking the
    /// cursor never went back and the backend count never dropped below 3.
    fn finish(mut self, what: &str) -> (usize, u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the cursor sampler");
        }
        let samples = self.samples.lock().unwrap().clone();
        assert!(samples.len() > 10, "{what}: too few cursor samples");
        for pair in samples.windows(2) {
            let ((t0, _, c0), (t1, b1, c1)) = (pair[0], pair[1]);
            assert!(
                c1 >= c0,
                "{what}: the round-robin cursor went back from {c0} ({t0:?}) to {c1} ({t1:?})"
            );
            assert_eq!(b1, 3, "{what}: {b1} backends at {t1:?} (every task serves)");
        }
        (samples.len(), samples[0].2, samples[samples.len() - 1].2)
    }
}

impl Drop for CursorWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Cluster {
    fn new(label: &str) -> Cluster {
        let bed = Testbed::new(label, TestbedConfig::with_hosts(3)).expect("testbed");
        bed.make_wire_like().expect("wire-like underlay");
        let (agents, _token) = start_cluster(&bed).expect("cluster");
        create_service(
            &bed,
            "web",
            &["--replicas", "3", "--publish", "8080:80"],
            &whoami(&["--port", "80"]),
        );
        for host in bed.hosts() {
            wait_until(
                &format!("3 running web tasks on {}", host.name()),
                DEADLINE * 2,
                || {
                    let tasks = service_tasks(host, "web");
                    tasks.len() == 3 && tasks.iter().all(|t| t.state == "running")
                },
            )
            .unwrap();
        }
        let slot = wait_until("web's mesh slot on h1", DEADLINE, || web_slot(bed.host(0))).unwrap();
        let url = format!("http://{}:{WEB}/", bed.host(0).underlay_ip());
        wait_until("the mesh answering through h1", DEADLINE, || {
            in_netns(
                bed.client().netns(),
                &["curl", "-sf", "--max-time", "3", &url],
            )
            .is_ok_and(|o| o.status.success())
        })
        .unwrap();
        Cluster { bed, agents, slot }
    }

    /// The flags host `i` was started with by `start_cluster` (h1 `--init`, the others
    /// `--join h1 --token-file`): a restart uses the same ones.
    fn flags(&self, i: usize) -> Vec<String> {
        if i == 0 {
            return vec!["--init".into()];
        }
        let token_file = self.bed.host(i).dir().join("join-token");
        vec![
            "--join".into(),
            self.bed.host(0).underlay_ip().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
        ]
    }

    /// Stops host `i`'s agent as `stop` says, starts it again with the same flags, and
    /// waits until it answers with every node ready. Returns how long it was down.
    fn restart(&mut self, i: usize, stop: Stop) -> Duration {
        let host = self.bed.host(i);
        let down = Instant::now();
        match stop {
            Stop::Graceful => {
                let status = self.agents[i]
                    .terminate(Duration::from_secs(30))
                    .expect("SIGTERM");
                assert!(status.success(), "h{} agent exit: {status}", i + 1);
            }
            Stop::Kill => self.agents[i].kill9().expect("kill -9"),
        }
        let flags = self.flags(i);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.agents[i] = host.start_agent(&flags).expect("restarting the agent");
        self.agents[i]
            .wait_for_log("agent running", RESTART_DEADLINE)
            .unwrap_or_else(|e| panic!("{e:#}: {}", self.agents[i].log()));
        let took = down.elapsed();
        for h in self.bed.hosts() {
            wait_until(
                &format!("3 ready nodes on {} after h{}'s restart", h.name(), i + 1),
                RESTART_DEADLINE,
                || ready_count(h) == Some(3),
            )
            .unwrap();
        }
        took
    }
}

/// `wrk -t1 -cN -d600s --timeout 10s [-H 'Connection: close'] url` in `host`'s
/// namespace; [`stop_wrk`] ends it.
fn spawn_wrk(host: &Host, url: &str, connections: u32, close: bool, log: &str) -> Process {
    let mut cmd = host.command("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        "-d600s",
        "--timeout",
        "10s",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    host.spawn(cmd, log).expect("wrk")
}

/// Stops wrk with SIGINT (it then prints its totals as at the end of its duration);
/// returns its output and totals.
fn stop_wrk(mut wrk: Process) -> (String, WrkTotals) {
    // SAFETY: kill(2) of a wrk this test started (`ip netns exec` execs it in place).
    unsafe { libc::kill(wrk.pid() as i32, libc::SIGINT) };
    wrk.wait(Duration::from_secs(60)).expect("wrk to stop");
    let out = wrk.log();
    let totals = parse_wrk(&out);
    (out, totals)
}

/// One wrk run through h1 while the four restarts happen; returns wrk's totals.
fn load_through_restarts(cluster: &mut Cluster, close: bool) -> WrkTotals {
    let what = if close {
        "new connection"
    } else {
        "keep-alive"
    };
    let slot = cluster.slot;
    let tasks_before: BTreeSet<String> = service_tasks(cluster.bed.host(0), "web")
        .into_iter()
        .map(|t| t.id)
        .collect();
    let counters_before = client_counters(&cluster.bed);
    let url = format!("http://{}:{WEB}/", cluster.bed.host(0).underlay_ip());
    let log = if close { "wrk-close" } else { "wrk-keepalive" };
    let mut wrk = spawn_wrk(cluster.bed.client(), &url, CONNECTIONS, close, log);
    // The host path too: h1's own sockets to 127.0.0.1:8080 (the socket hooks, re-attached
    // by every start of h1's agent).
    let local_url = format!("http://127.0.0.1:{WEB}/");
    let mut local = spawn_wrk(cluster.bed.host(0), &local_url, 2, close, "wrk-local");
    let watch = CursorWatch::start(cluster.bed.host(0), slot);
    thread::sleep(Duration::from_secs(3));

    for (i, stop) in [
        (0, Stop::Graceful),
        (0, Stop::Kill),
        (1, Stop::Graceful),
        (1, Stop::Kill),
    ] {
        let name = cluster.bed.host(i).name().to_owned();
        let (h1, h2) = (cluster.bed.host(0), cluster.bed.host(1));
        let flows = client_flows(h1);
        let replies = client_replies(h2, &flows);
        let (backends, cursor) = rotation(h1, slot);
        let took = cluster.restart(i, stop);
        let (h1, h2) = (cluster.bed.host(0), cluster.bed.host(1));
        let flows_after = client_flows(h1);
        let replies_after = client_replies(h2, &flows);
        let (backends_after, cursor_after) = rotation(h1, slot);
        eprintln!(
            "{what}: {} {stop:?}: down→up {took:?}; h1 flows {} → {}, h2 replies {} → {}, \
             h1 rotation {backends}/{cursor} → {backends_after}/{cursor_after}",
            name,
            flows.len(),
            flows_after.len(),
            replies.len(),
            replies_after.len()
        );
        assert!(cursor_after >= cursor, "{what}: the rotation went back");
        if !close {
            // The same connections throughout: every entry must have survived.
            assert!(!flows.is_empty(), "{what}: h1 tracks the client's flows");
            let lost: Vec<_> = flows.difference(&flows_after).collect();
            assert!(
                lost.is_empty(),
                "{what}: h1 lost conntrack entries {lost:?}"
            );
            let lost: Vec<_> = replies.difference(&replies_after).collect();
            assert!(lost.is_empty(), "{what}: h2 lost reply entries {lost:?}");
        }
        for w in [&mut wrk, &mut local] {
            assert!(w.is_running(), "{what}: wrk ended early: {}", w.log());
        }
        thread::sleep(SETTLE);
    }

    // Read before wrk stops: a connection closed with an answer still unread (wrk exits
    // mid-request) is reset by the client itself and counted in TcpEstabResets.
    let counters_loaded = client_counters(&cluster.bed);
    let (out, totals) = stop_wrk(wrk);
    let (local_out, local_totals) = stop_wrk(local);
    let (samples, first, last) = watch.finish(what);
    let counters_after = client_counters(&cluster.bed);
    eprintln!(
        "{what}: wrk {totals:?}; cursor {first} → {last} over {samples} samples; client \
         counters {counters_before:?} → {counters_loaded:?} under load → {counters_after:?} \
         once wrk stopped; h1's own wrk to 127.0.0.1 {local_totals:?}\n{out}\n{local_out}"
    );
    assert!(totals.requests > 0, "{what}: wrk made no requests: {out}");
    assert_eq!(totals.non_2xx, 0, "{what}: non-2xx answers: {out}");
    assert_eq!(totals.socket_errors, [0; 4], "{what}: socket errors: {out}");
    for ((name, before), (_, after)) in counters_before.iter().zip(&counters_loaded) {
        assert_eq!(after - before, 0, "{what}: the client's {name} moved");
    }
    assert!(
        local_totals.requests > 0,
        "{what}: h1's wrk made no requests: {local_out}"
    );
    assert_eq!(
        (local_totals.non_2xx, local_totals.socket_errors),
        (0, [0; 4]),
        "{what}: h1's wrk to 127.0.0.1 failed: {local_out}"
    );
    let tasks_after: BTreeSet<String> = service_tasks(cluster.bed.host(0), "web")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        tasks_after, tasks_before,
        "{what}: the tasks were adopted, not replaced"
    );
    totals
}

#[test]
fn agent_restarts_on_the_ingress_and_a_backend_node_drop_no_request_under_wrk() {
    let mut cluster = Cluster::new("restart-load");
    let keep_alive = load_through_restarts(&mut cluster, false);
    let close = load_through_restarts(&mut cluster, true);
    eprintln!("totals: keep-alive {keep_alive:?}; new connection {close:?}");
}

#[test]
fn wrk_totals_parse() {
    let out = "Running 10m test @ http://10.200.0.11:8080/\n  1 threads and 8 connections\n\
               12345 requests in 5.00s, 4.50MB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n\
               Non-2xx or 3xx responses: 4\nRequests/sec:   2469.00\n";
    let w = parse_wrk(out);
    assert_eq!(
        (w.requests, w.non_2xx, w.socket_errors),
        (12345, 4, [1, 2, 0, 3])
    );
    let clean = parse_wrk("100 requests in 1.00s, 1MB read\n");
    assert_eq!((clean.non_2xx, clean.socket_errors), (0, [0; 4]));
}
