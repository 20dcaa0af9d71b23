//! The dataplane fails closed (issue 10), end to end in netns testbeds, tried as an attacker
//! would: every test sends what must not get through, checks on the *receiving* side (a
//! recorder that logs whatever arrives) that nothing did, checks that the drop counter
//! moved, and first proves the recorder and the path work with traffic that must arrive.
//!
//! - Routing into the overlay: the client namespace (on the underlay, no member) routes an
//!   overlay subnet via a host and pings, connects and sends UDP to the endpoints.
//! - Crafted VXLAN from a workload: an endpoint of network X sends hand-made VXLAN to every
//!   other host's 4789 (and its own host's) claiming a source on network Y, or another
//!   endpoint of X.
//! - Cluster ports: with `--metrics-addr` on each host's underlay address, a service task
//!   tries every host's 4789, 7946 (UDP, TCP) and metrics port, by the gateway address and
//!   every host's address; gossip and `service logs` keep working.
//! - First packets: with the periodic map sync off (`SKEIN_TEST_NO_MAP_SYNC=1`), a task
//!   whose first act is to send spoofed packets, and a namespace already sending them
//!   when it is attached, get none through, and every one of them is counted as
//!   spoofed (none met a veth without its port entry).
//!
//! Every test was seen failing against the skein of before the fail-closed work (the
//! receiving side got the traffic); the whole file takes about 50 s.
//!
//! Needs root; run by `cargo xtask test` (which builds the `skein` binary first).

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::{
    cluster::{
        create_endpoint, in_netns, ready_count, skein, skein_ok, start_cluster, start_cluster_with,
        DEADLINE,
    },
    scrape::parse,
    testbed::{run_command, skein_binary, wait_until, Host, Process, Testbed, TestbedConfig},
};

/// The port every recorder listens on in the endpoints (UDP and TCP).
const VICTIM_PORT: u16 = 7000;
/// The port of the recorders in the hosts' own namespaces in the first-packets test.
const HOST_PORT: u16 = 7100;
/// The agents' metrics port (on the underlay address in the cluster-ports test).
const METRICS_PORT: u16 = 9946;
const VXLAN_PORT: u16 = 4789;
/// A VNI no network has: VXLAN for it passes a host's XDP program untouched (a kernel
/// VXLAN device may own it), so a recorder on the host's UDP 4789 sees what arrives.
const UNKNOWN_VNI: u32 = 0xff_fff0;

const INTO_OVERLAY_XDP: &str =
    "skein_xdp_underlay_packets_total{verdict=\"drop\",reason=\"routed_into_overlay\"}";
const INTO_OVERLAY_TC: &str =
    "skein_tc_underlay_ingress_packets_total{verdict=\"drop\",reason=\"routed_into_overlay\"}";
const CLUSTER_PORT: &str =
    "skein_tc_endpoint_ingress_packets_total{verdict=\"drop\",reason=\"cluster_port\"}";
const NO_PORT: &str =
    "skein_tc_endpoint_ingress_packets_total{verdict=\"drop\",reason=\"no_port\"}";
const SPOOFED: &str =
    "skein_tc_endpoint_ingress_packets_total{verdict=\"drop\",reason=\"spoofed_source\"}";

/// Logs whatever reaches the namespace it runs in, one line per arrival, until its
/// lifetime is up: `udp PORT SRC PAYLOAD`, `tcp PORT SRC accepted`, `icmp TYPE SRC PAYLOAD`.
/// Arguments: UDP ports, TCP ports (comma-separated, may be empty), `1` to record ICMP,
/// lifetime in seconds.
const RECORDER: &str = r#"
import select, socket, sys, time
udp = [int(p) for p in sys.argv[1].split(",") if p]
tcp = [int(p) for p in sys.argv[2].split(",") if p]
socks = {}
for p in udp:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); socks[s] = ("udp", p)
for p in tcp:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(64); socks[s] = ("tcp", p)
if sys.argv[3] == "1":
    socks[socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)] = ("icmp", 0)
print("ready", flush=True)
end = time.time() + float(sys.argv[4])
while time.time() < end:
    for s in select.select(list(socks), [], [], 0.2)[0]:
        kind, port = socks[s]
        if kind == "tcp":
            c, addr = s.accept(); c.close()
            print("tcp", port, addr[0], "accepted", flush=True)
        elif kind == "udp":
            data, addr = s.recvfrom(65535)
            print("udp", port, addr[0], repr(data[:64]), flush=True)
        else:
            data, addr = s.recvfrom(65535)
            ihl = (data[0] & 15) * 4
            print("icmp", data[ihl], addr[0], repr(data[ihl + 8:ihl + 72]), flush=True)
"#;

/// Starts a [`RECORDER`] in `host`, or in the namespace `netns` if given (an endpoint's),
/// and waits until it listens.
fn recorder(host: &Host, netns: Option<&str>, udp: &[u16], tcp: &[u16], icmp: bool) -> Process {
    let join = |ports: &[u16]| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = host.command("ip");
            cmd.args(["netns", "exec", ns, "python3"]);
            cmd
        }
        None => host.command("python3"),
    };
    cmd.args(["-c", RECORDER, &join(udp), &join(tcp)])
        .arg(if icmp { "1" } else { "0" })
        .arg("150");
    let name = format!(
        "recorder-{}",
        netns.unwrap_or("host").rsplit('-').next().unwrap()
    );
    let mut process = host.spawn(cmd, &name).expect("starting a recorder");
    process
        .wait_for_log("ready", DEADLINE)
        .expect("the recorder listens");
    process
}

/// The lines of a recorder's log that mention `needle`.
fn arrivals(recorder: &Process, needle: &str) -> Vec<String> {
    recorder
        .log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Every sample of `host`'s `/metrics` at `addr` (host:port).
fn metrics_at(host: &Host, addr: &str) -> BTreeMap<String, u64> {
    let url = format!("http://{addr}/metrics");
    let text = wait_until(&format!("{url} on {}", host.name()), DEADLINE, || {
        host.run("curl", ["-sf", "--max-time", "5", &url])
    })
    .expect("scraping /metrics");
    parse(&text).expect("parsing /metrics")
}

fn metrics(host: &Host) -> BTreeMap<String, u64> {
    metrics_at(host, &format!("127.0.0.1:{METRICS_PORT}"))
}

/// A counter that may not exist yet (a build without the verdict) reads as 0, so a
/// missing counter fails the assertion on its movement rather than the scrape.
fn counter(samples: &BTreeMap<String, u64>, key: &str) -> u64 {
    samples.get(key).copied().unwrap_or(0)
}

/// The sum of every sample whose key starts with `prefix`.
fn family(samples: &BTreeMap<String, u64>, prefix: &str) -> u64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// `network create NAME --subnet SUBNET --vni VNI` on h1, waited for on every host.
fn create_network(bed: &Testbed, name: &str, subnet: &str, vni: u32) {
    skein_ok(
        bed.host(0),
        &[
            "network",
            "create",
            name,
            "--subnet",
            subnet,
            "--vni",
            &vni.to_string(),
        ],
    )
    .expect("network create");
    for host in bed.hosts() {
        wait_until(
            &format!("network {name} on {}", host.name()),
            DEADLINE,
            || skein_ok(host, &["network", "ls"]).is_ok_and(|ls| ls.contains(name)),
        )
        .expect("the network everywhere");
    }
}

/// Runs a Python script in `netns` to completion; panics with its stderr if it fails.
fn python_in(netns: &str, script: &str, args: &[&str]) -> String {
    let mut all = vec!["python3", "-c", script];
    all.extend_from_slice(args);
    let out = in_netns(netns, &all).expect("running python");
    assert!(
        out.status.success(),
        "python in {netns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends one UDP datagram `payload` to `dst:port` from `netns`.
const SEND_UDP: &str = r#"
import socket, sys
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"#;

/// Sends `payload` from `netns` to `dst:port` until `recorder` has logged it: proves the
/// path and the recorder work (and waits out the map sync) before an attack is tried.
fn control(netns: &str, dst: &str, port: u16, payload: &str, recorder: &Process) {
    wait_until(
        &format!("{payload} from {netns} to {dst}"),
        DEADLINE,
        || {
            python_in(netns, SEND_UDP, &[dst, &port.to_string(), payload]);
            std::thread::sleep(Duration::from_millis(100));
            !arrivals(recorder, payload).is_empty()
        },
    )
    .expect("the control datagram arrives");
}

/// From the client namespace: to every target, 3 UDP datagrams `attack-udp` and a TCP
/// connection (1 s timeout) to `port`; prints `tcp-connected IP` or `tcp-failed IP`.
const CLIENT_ATTACK: &str = r#"
import socket, sys
port = int(sys.argv[2])
for t in sys.argv[1].split(","):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(3):
        u.sendto(b"attack-udp %d" % i, (t, port))
    try:
        socket.create_connection((t, port), timeout=1.0).close()
        print("tcp-connected", t)
    except OSError as e:
        print("tcp-failed", t, e)
"#;

/// Whether `ping` from `host` to `ip` gets any answer (3 echoes).
fn ping_answered(host: &Host, ip: &str) -> bool {
    host.command("ping")
        .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", ip])
        .output()
        .expect("running ping")
        .status
        .success()
}

#[test]
fn nothing_routed_into_the_overlay_from_the_underlay_reaches_an_endpoint() {
    let bed = Testbed::new("fc-into-overlay", TestbedConfig::with_hosts(2)).expect("testbed");
    let _agents = start_cluster(&bed).expect("the cluster forms").0;
    create_network(&bed, "net1", "10.61.0.0/24", 6101);
    let (h1, h2, client) = (bed.host(0), bed.host(1), bed.client());
    let (ns1, ip1) = create_endpoint(h1, "net1", "victim1").unwrap();
    let (ns2, ip2) = create_endpoint(h2, "net1", "victim2").unwrap();
    let rec1 = recorder(h1, Some(&ns1), &[VICTIM_PORT], &[VICTIM_PORT], true);
    let rec2 = recorder(h2, Some(&ns2), &[VICTIM_PORT], &[VICTIM_PORT], true);
    // The recorders see overlay traffic: the endpoints reach each other.
    control(&ns2, &ip1, VICTIM_PORT, "control-to-1", &rec1);
    control(&ns1, &ip2, VICTIM_PORT, "control-to-2", &rec2);

    // The client routes the subnet via h1, and h2's endpoint via h2 (as an attacker on the
    // underlay who knows where each endpoint lives would).
    let (h1_ul, h2_ul) = (h1.underlay_ip().to_string(), h2.underlay_ip().to_string());
    client
        .run("ip", ["route", "add", "10.61.0.0/24", "via", &h1_ul])
        .unwrap();
    client
        .run("ip", ["route", "add", &format!("{ip2}/32"), "via", &h2_ul])
        .unwrap();
    let before = [metrics(h1), metrics(h2)];

    let pinged = [&ip1, &ip2].map(|ip| ping_answered(client, ip));
    let out = client
        .run(
            "python3",
            [
                "-c",
                CLIENT_ATTACK,
                &format!("{ip1},{ip2}"),
                &VICTIM_PORT.to_string(),
            ],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Nothing from the client arrived, by any protocol, at either endpoint.
    let client_ip = client.underlay_ip().to_string();
    for (name, rec) in [("victim1", &rec1), ("victim2", &rec2)] {
        let seen = arrivals(rec, &format!(" {client_ip} "));
        assert!(
            seen.is_empty(),
            "{name} received from the client on the underlay:\n{}",
            seen.join("\n")
        );
    }
    assert_eq!(pinged, [false, false], "pings into the overlay answered");
    assert!(!out.contains("tcp-connected"), "{out}");
    // Each endpoint's host dropped and counted at least the 3 echoes, 3 datagrams and a SYN.
    for (i, host) in [h1, h2].into_iter().enumerate() {
        let after = metrics(host);
        let moved = |key| counter(&after, key) - counter(&before[i], key);
        let dropped = moved(INTO_OVERLAY_XDP) + moved(INTO_OVERLAY_TC);
        assert!(
            dropped >= 7,
            "{}: {dropped} packets counted as routed_into_overlay, expected at least 7",
            host.name()
        );
    }

    // The host's other forwarding still works: h1 forwards the client's packets for an
    // address h2 holds outside the overlay.
    h2.run("ip", ["addr", "add", "192.0.2.12/32", "dev", "lo"])
        .unwrap();
    h1.run("ip", ["route", "add", "192.0.2.12/32", "via", &h2_ul])
        .unwrap();
    client
        .run("ip", ["route", "add", "192.0.2.12/32", "via", &h1_ul])
        .unwrap();
    assert!(
        ping_answered(client, "192.0.2.12"),
        "h1 no longer forwards underlay traffic outside the overlay"
    );
}

/// Sends hand-made VXLAN over a plain UDP socket (so the host's egress NAT makes its
/// outer source the host's own address). Argument: `OUTER,VNI,INNER_SRC,INNER_DST,TAG`
/// cases joined by `;`; each goes 3 times as inner UDP to port 7000 and 3 times as inner
/// ICMP echo, both carrying TAG. Prints how many it sent.
const VXLAN_INJECTOR: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def mac(ip): return b"\x02\x53" + socket.inet_aton(ip)
def frame(src, dst, proto, l4):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return mac(dst) + mac(src) + b"\x08\x00" + h + l4
def udp(payload): return struct.pack("!HHHH", 40000, 7000, 8 + len(payload), 0) + payload
def echo(payload):
    h = struct.pack("!BBHHH", 8, 0, 0, 0x5353, 1) + payload
    return h[:2] + struct.pack("!H", csum(h)) + h[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for case in sys.argv[1].split(";"):
    outer, vni, src, dst, tag = case.split(",")
    head = struct.pack("!B3xI", 0x08, int(vni) << 8)
    for i in range(3):
        s.sendto(head + frame(src, dst, 17, udp(tag.encode())), (outer, 4789))
        s.sendto(head + frame(src, dst, 1, echo(tag.encode())), (outer, 4789))
        sent += 2
print(sent)
"#;

#[test]
fn crafted_vxlan_from_a_workload_delivers_nothing() {
    let bed = Testbed::new("fc-crafted-vxlan", TestbedConfig::with_hosts(3)).expect("testbed");
    let _agents = start_cluster(&bed).expect("the cluster forms").0;
    let (vni_x, vni_y) = (6201, 6202);
    create_network(&bed, "netx", "10.62.0.0/24", vni_x);
    create_network(&bed, "nety", "10.63.0.0/24", vni_y);
    let h1 = bed.host(0);
    // The attacker and the two endpoints whose addresses it claims all live on h1, so the
    // outer source (h1, after its NAT) is the right host for the inner source: only the
    // guard on the attacker's host stands in the way.
    let (attacker_ns, _) = create_endpoint(h1, "netx", "attacker").unwrap();
    let (peer_x_ns, peer_x) = create_endpoint(h1, "netx", "peerx").unwrap();
    let (peer_y_ns, peer_y) = create_endpoint(h1, "nety", "peery").unwrap();
    let mut targets = Vec::new(); // (host index, network, ip, recorder)
    for (i, host) in bed.hosts().iter().enumerate().skip(1) {
        for (net, peer_ns) in [("netx", &peer_x_ns), ("nety", &peer_y_ns)] {
            let (ns, ip) = create_endpoint(host, net, &format!("{net}-h{}", i + 1)).unwrap();
            let rec = recorder(host, Some(&ns), &[VICTIM_PORT], &[], true);
            control(peer_ns, &ip, VICTIM_PORT, &format!("control-{net}"), &rec);
            targets.push((i, net, ip, rec));
        }
    }
    // Also a recorder on h1's own UDP 4789: the attacker sends there too.
    let own = recorder(h1, None, &[VXLAN_PORT], &[], false);

    let mut cases = Vec::new();
    for (i, net, ip, _) in &targets {
        let outer = bed.host(*i).underlay_ip();
        // (a) claiming a source on network Y; (b) claiming another endpoint of X.
        let (vni, src, tag) = if *net == "nety" {
            (vni_y, &peer_y, "inject-a")
        } else {
            (vni_x, &peer_x, "inject-b")
        };
        cases.push(format!("{outer},{vni},{src},{ip},{tag}"));
    }
    let (gateway_x, h1_ul) = ("10.62.0.1", h1.underlay_ip().to_string());
    let target_y = &targets.iter().find(|t| t.1 == "nety").unwrap().2;
    for outer in [gateway_x, h1_ul.as_str()] {
        cases.push(format!("{outer},{vni_y},{peer_y},{target_y},inject-own"));
    }
    let before = metrics(h1);
    let sent: u64 = python_in(&attacker_ns, VXLAN_INJECTOR, &[&cases.join(";")])
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));

    let mut leaks = Vec::new();
    for (i, net, ip, rec) in &targets {
        for line in arrivals(rec, "inject") {
            leaks.push(format!("{net} endpoint {ip} on h{}: {line}", i + 1));
        }
    }
    assert!(
        leaks.is_empty(),
        "crafted VXLAN delivered ({} of {sent} sent):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    let seen = arrivals(&own, "udp");
    assert!(
        seen.is_empty(),
        "the attacker reached its own host's UDP 4789:\n{}",
        seen.join("\n")
    );
    let moved = counter(&metrics(h1), CLUSTER_PORT) - counter(&before, CLUSTER_PORT);
    assert!(
        moved >= sent,
        "h1 counted {moved} cluster_port drops for {sent} crafted datagrams"
    );
}

/// From a workload: to every address in the first argument, 3 datagrams to UDP 4789
/// (VXLAN for [`UNKNOWN_VNI`], which a host passes to its stack, padded as in
/// [`UNKNOWN_VNI_SENDER`]) and 3 to UDP 7946, and
/// a TCP connection (1.5 s timeout, all at once) to 7946 and to the metrics port.
/// Prints `udp-sent N` and `connected ADDR:PORT` or `failed ADDR:PORT`.
const CLUSTER_PORT_PROBE: &str = r#"
import socket, struct, sys, threading
addrs, vni, metrics = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for a in addrs:
    for i in range(3):
        u.sendto(struct.pack("!B3xI", 0x08, vni << 8) + b"probe-4789" + bytes(40), (a, 4789))
        u.sendto(b"probe-7946 not a sealed gossip datagram", (a, 7946))
        sent += 2
print("udp-sent", sent)
results = []
def connect(a, p):
    try:
        socket.create_connection((a, p), timeout=1.5).close()
        results.append("connected %s:%d" % (a, p))
    except OSError as e:
        results.append("failed %s:%d %s" % (a, p, e))
threads = [threading.Thread(target=connect, args=(a, p)) for a in addrs for p in (7946, metrics)]
for t in threads: t.start()
for t in threads: t.join(5)
print("\n".join(results))
"#;

/// Sends one datagram of VXLAN for VNI (second argument) to UDP 4789 of the first; padded,
/// since shorter than an inner Ethernet and IPv4 header it is malformed VXLAN, dropped.
const UNKNOWN_VNI_SENDER: &str = r#"
import socket, struct, sys
head = struct.pack("!B3xI", 0x08, int(sys.argv[2]) << 8)
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(head + b"probe-4789" + bytes(40), (sys.argv[1], 4789))
"#;

/// A task as `service ps --format json` lists it: (name, id).
fn task_names(host: &Host, service: &str) -> Vec<(String, String)> {
    let out = skein_ok(host, &["service", "ps", service, "--format", "json"]).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    rows.iter()
        .filter(|r| r["state"] == "running")
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("id"))
        })
        .collect()
}

/// The network namespace of `service`'s task on `host`: `service ps` gives the task's
/// address, `endpoint ls` the namespace of the endpoint with that address.
fn task_netns(host: &Host, service: &str) -> String {
    let json = |args: &[&str]| -> Vec<Value> {
        serde_json::from_str(&skein_ok(host, args).unwrap()).unwrap()
    };
    let tasks = json(&["service", "ps", service, "--format", "json"]);
    let task = tasks
        .iter()
        .find(|t| t["hostname"] == host.netns() && t["state"] == "running")
        .unwrap_or_else(|| panic!("no running {service} task on {}: {tasks:?}", host.name()));
    let endpoints = json(&["endpoint", "ls", "--format", "json"]);
    let endpoint = endpoints
        .iter()
        .find(|e| e["ip"] == task["ip"])
        .unwrap_or_else(|| panic!("no endpoint for task {task:?} in {endpoints:?}"));
    endpoint["netns"].as_str().unwrap().to_owned()
}

#[test]
fn workloads_reach_no_cluster_port_and_the_cluster_still_works() {
    let bed = Testbed::new("fc-cluster-ports", TestbedConfig::with_hosts(3)).expect("testbed");
    let metrics_addr = |h: &Host| format!("{}:{METRICS_PORT}", h.underlay_ip());
    let _agents = start_cluster_with(
        &bed,
        |h| vec!["--metrics-addr".to_owned(), metrics_addr(h)],
        &[],
    )
    .expect("the cluster forms")
    .0;
    create_network(&bed, "net1", "10.64.0.0/24", 6301);
    let h1 = bed.host(0);
    // A task on every host, for `service logs` at the end.
    let bin = skein_binary().unwrap().display().to_string();
    let out = skein(
        h1,
        &[
            "service",
            "create",
            "web",
            "--mode",
            "global",
            "--network",
            "net1",
            "--",
            &bin,
            "whoami",
            "--port",
            "80",
        ],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "service create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The probe runs in h1's task's namespace: a workload as a service runs it.
    let probe_ns = task_netns(h1, "web");
    let recorders: Vec<Process> = bed
        .hosts()
        .iter()
        .map(|h| recorder(h, None, &[VXLAN_PORT], &[], false))
        .collect();
    // The recorders hear VXLAN for an unknown VNI from the underlay (so they would hear
    // the probe's, were it let through).
    let client_ns = bed.client().netns().to_owned();
    for (host, rec) in bed.hosts().iter().zip(&recorders) {
        let ip = host.underlay_ip().to_string();
        wait_until("the recorder hears the underlay", DEADLINE, || {
            python_in(
                &client_ns,
                UNKNOWN_VNI_SENDER,
                &[&ip, &UNKNOWN_VNI.to_string()],
            );
            !arrivals(rec, "probe-4789").is_empty()
        })
        .unwrap();
    }
    let rec_lines: Vec<usize> = recorders.iter().map(|r| r.log().lines().count()).collect();

    let mut addrs = vec!["10.64.0.1".to_owned()];
    addrs.extend(bed.hosts().iter().map(|h| h.underlay_ip().to_string()));
    let before: Vec<_> = bed
        .hosts()
        .iter()
        .map(|h| metrics_at(h, &metrics_addr(h)))
        .collect();
    let out = python_in(
        &probe_ns,
        CLUSTER_PORT_PROBE,
        &[
            &addrs.join(","),
            &UNKNOWN_VNI.to_string(),
            &METRICS_PORT.to_string(),
        ],
    );
    std::thread::sleep(Duration::from_millis(700));
    let after: Vec<_> = bed
        .hosts()
        .iter()
        .map(|h| metrics_at(h, &metrics_addr(h)))
        .collect();

    // Every way through is listed before failing, so one run shows all that leaks.
    let mut leaks: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("connected"))
        .map(|l| format!("TCP {l}"))
        .collect();
    for (i, rec) in recorders.iter().enumerate() {
        for line in rec.log().lines().skip(rec_lines[i]) {
            leaks.push(format!("h{}'s UDP 4789 received: {line}", i + 1));
        }
    }
    for (i, host) in bed.hosts().iter().enumerate() {
        let rejected = |m: &BTreeMap<String, u64>| family(m, "skein_gossip_rejected_total");
        let (was, is) = (rejected(&before[i]), rejected(&after[i]));
        if is != was {
            leaks.push(format!(
                "{}'s gossip socket rejected {} datagrams (the workload's)",
                host.name(),
                is - was
            ));
        }
    }
    let sent: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("udp-sent "))
        .unwrap()
        .parse()
        .unwrap();
    let syns = 2 * addrs.len() as u64;
    let moved = counter(&after[0], CLUSTER_PORT) - counter(&before[0], CLUSTER_PORT);
    if moved < sent + syns {
        leaks.push(format!(
            "h1 counted {moved} cluster_port drops for {sent} datagrams and {syns} connections"
        ));
    }
    assert!(
        leaks.is_empty(),
        "a workload reached cluster ports:\n{}",
        leaks.join("\n")
    );

    // The cluster itself is unaffected: gossip between hosts, and `service logs` (peer RPC).
    for host in bed.hosts() {
        assert_eq!(ready_count(host), Some(3), "{} sees all ready", host.name());
    }
    let tasks = wait_until("a web task on every host", DEADLINE, || {
        let tasks = task_names(h1, "web");
        (tasks.len() == 3).then_some(tasks)
    })
    .unwrap();
    let logs = wait_until("every task's output in service logs", DEADLINE, || {
        let logs = skein_ok(h1, &["service", "logs", "web"])?;
        let missing: Vec<&String> = tasks
            .iter()
            .filter(|(name, id)| {
                !logs.lines().any(|l| {
                    l.starts_with(&format!("{name}.{id} ")) && l.contains("whoami listening")
                })
            })
            .map(|(name, _)| name)
            .collect();
        if missing.is_empty() {
            Ok(logs)
        } else {
            Err(anyhow::anyhow!("no output of {missing:?} in:\n{logs}"))
        }
    })
    .unwrap();
    assert!(!logs.is_empty());
}

/// Sends UDP to port 7100 of its gateway and of every host given, from spoofed sources
/// (a raw socket with its own IPv4 header), 150 rounds 10 ms apart, as soon as the
/// namespace has a default route (waiting up to 20 s for one); then 5 datagrams from its
/// real address to the gateway (`control TAG`), and (with `stay`) sleeps.
/// Arguments: TAG, spoofed sources, hosts (comma-separated), `stay` or `exit`.
const SPOOFER: &str = r#"
import socket, struct, sys, time
tag, spoofs, hosts, stay = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), sys.argv[4]
def gateway():
    try:
        for line in open("/proc/net/route").read().splitlines()[1:]:
            f = line.split()
            if f[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<I", int(f[2], 16)))
    except OSError:
        pass
def packet(src, dst, payload):
    udp = struct.pack("!HHHH", 40001, 7100, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + udp
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
print("waiting", flush=True)
deadline = time.time() + 20
gw = gateway()
while gw is None and time.time() < deadline:
    time.sleep(0.002)
    gw = gateway()
sent = 0
for i in range(150):
    for dst in [gw] + hosts:
        for src in spoofs:
            try:
                raw.sendto(packet(src, dst, b"spoof %s %d" % (tag.encode(), i)), (dst, 0))
                sent += 1
            except OSError:
                pass
    time.sleep(0.01)
print("spoofed", sent, flush=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5):
    u.sendto(b"control " + tag.encode(), (gw, 7100))
    time.sleep(0.05)
print("control sent", flush=True)
if stay == "stay":
    time.sleep(120)
"#;

#[test]
fn first_packets_of_tasks_and_attached_namespaces_are_checked() {
    let bed = Testbed::new("fc-first-packets", TestbedConfig::with_hosts(2)).expect("testbed");
    let _agents = start_cluster_with(&bed, |_| Vec::new(), &[("SKEIN_TEST_NO_MAP_SYNC", "1")])
        .expect("the cluster forms")
        .0;
    create_network(&bed, "net1", "10.65.0.0/24", 6401);
    let recorders: Vec<Process> = bed
        .hosts()
        .iter()
        .map(|h| recorder(h, None, &[HOST_PORT], &[], false))
        .collect();
    let before: Vec<_> = bed.hosts().iter().map(metrics).collect();
    let hosts: Vec<String> = bed
        .hosts()
        .iter()
        .map(|h| h.underlay_ip().to_string())
        .collect();
    let spoofs = "10.65.0.250,192.0.2.66";
    // A file, not `python3 -c`: a service definition holds at most 1024 bytes.
    let script = bed.shared_dir().join("spoofer.py");
    std::fs::write(&script, SPOOFER).unwrap();
    let script = script.display().to_string();

    // A task whose first act is to spoof, on every host.
    let h1 = bed.host(0);
    let out = skein(
        h1,
        &[
            "service",
            "create",
            "spoofer",
            "--mode",
            "global",
            "--network",
            "net1",
            "--",
            "python3",
            &script,
            "task",
            spoofs,
            &hosts.join(","),
            "stay",
        ],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "service create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An attached namespace already spoofing in a loop when it is attached.
    let attached = format!("{}-attached", h1.resource_prefix());
    run_command(Command::new("ip").args(["netns", "add", &attached])).unwrap();
    let mut cmd = h1.command("ip");
    cmd.args(["netns", "exec", &attached, "python3", &script])
        .args(["attached", spoofs, &hosts.join(","), "exit"]);
    let mut early = h1.spawn(cmd, "attached-spoofer").unwrap();
    early.wait_for_log("waiting", DEADLINE).unwrap();
    skein_ok(
        h1,
        &[
            "endpoint",
            "attach",
            "--network",
            "net1",
            "--netns",
            &attached,
            "--name",
            "att",
        ],
    )
    .unwrap();
    let started = Instant::now();
    early
        .wait_for_log("control sent", DEADLINE)
        .expect("the attached namespace's spoofer ran");

    // The controls from the real addresses arrive: the paths are open, the recorders hear.
    for (i, rec) in recorders.iter().enumerate() {
        wait_until(
            &format!("the task's control on h{}", i + 1),
            DEADLINE,
            || !arrivals(rec, "control task").is_empty(),
        )
        .unwrap();
    }
    wait_until("the attached namespace's control", DEADLINE, || {
        !arrivals(&recorders[0], "control attached").is_empty()
    })
    .unwrap();
    eprintln!(
        "attached spoofer finished {:?} after attach",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_millis(300));

    // (host, sender, spoofed source) -> packets that got through
    let mut leaks: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for (i, rec) in recorders.iter().enumerate() {
        for line in arrivals(rec, "b'spoof ") {
            // udp 7100 SRC b'spoof TAG N'
            let fields: Vec<&str> = line.split(' ').collect();
            let key = (
                format!("h{}", i + 1),
                fields[4].to_owned(),
                fields[2].to_owned(),
            );
            *leaks.entry(key).or_default() += 1;
        }
    }
    assert!(
        leaks.is_empty(),
        "spoofed packets got through ((host, sender, source): packets): {leaks:?}"
    );
    let early_sent: u64 = early
        .log()
        .lines()
        .find_map(|l| l.strip_prefix("spoofed "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(early_sent > 0, "the attached spoofer sent nothing");
    for (i, host) in bed.hosts().iter().enumerate() {
        let after = metrics(host);
        let moved = |key| counter(&after, key) - counter(&before[i], key);
        // h1: its task's and the attached namespace's; each round sends 2 sources to the
        // gateway and the 2 hosts.
        let expected = if i == 0 {
            150 * 6 + early_sent
        } else {
            150 * 6
        };
        eprintln!(
            "{}: spoofed_source {} of {expected}, no_port {}",
            host.name(),
            moved(SPOOFED),
            moved(NO_PORT)
        );
        // Every spoofed packet met its port entry: none came before it (no_port), so
        // the entries were in place before the task ran and before the attached veth
        // came up, with no map sync to write them.
        assert_eq!(
            moved(NO_PORT),
            0,
            "{}: packets from a veth without its port entry",
            host.name()
        );
        assert!(
            moved(SPOOFED) >= expected,
            "{}: {} spoofed_source drops, expected {expected}",
            host.name(),
            moved(SPOOFED)
        );
    }
}
