//! The overlay end to end, driven by the cluster as a user drives it: `skein network
//! create`, `skein endpoint create` on every host, then endpoints reach each other by
//! overlay IP across hosts, networks are isolated, removals and host deaths leave nothing
//! stale, and an agent restart does not break a transfer. Needs root.

use std::{
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use xtask::{
    cluster::{create_endpoint, in_netns, skein_ok, start_cluster, DEADLINE},
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig},
};

fn ping(netns: &str, ip: &str) -> bool {
    in_netns(
        netns,
        &["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", ip],
    )
    .unwrap()
    .status
    .success()
}

#[test]
fn endpoints_on_three_hosts_reach_each_other_and_nothing_stale_remains() {
    let bed = Testbed::new("overlay-mesh", TestbedConfig::with_hosts(3)).expect("testbed");
    let (mut agents, _token) = start_cluster(&bed).unwrap();
    skein_ok(bed.host(0), &["network", "create", "net1"]).unwrap();
    skein_ok(bed.host(1), &["network", "create", "net2"]).unwrap();
    for host in bed.hosts() {
        wait_until("networks everywhere", DEADLINE, || {
            let ls = skein_ok(host, &["network", "ls"]).unwrap();
            ls.contains("net1") && ls.contains("net2")
        })
        .unwrap();
    }
    let mut endpoints = Vec::new();
    for (i, host) in bed.hosts().iter().enumerate() {
        for k in 0..2 {
            endpoints.push((
                i,
                create_endpoint(host, "net1", &format!("e{i}{k}")).unwrap(),
            ));
        }
    }
    // The overlay MTU is derived from the underlay (1500 - 50).
    let link = String::from_utf8_lossy(
        &in_netns(&endpoints[0].1 .0, &["ip", "link", "show", "eth0"])
            .unwrap()
            .stdout,
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
    let mut server = tcp_sink(bed.host(2), server_ns, "tcp-server");
    std::thread::sleep(Duration::from_millis(500));
    let sender = send_tcp(client_ns, server_ip, 100);
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

    // Egress: an endpoint reaches a host outside the overlay (the client namespace, on
    // the underlay) through its host, source-NATed to the host's address.
    let client = bed.client();
    let mut peer_logger = client
        .spawn(
            {
                let mut cmd = client.command("python3");
                cmd.arg("-c").arg(
                    "import socket\n\
                     s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                     s.bind(('0.0.0.0', 5002)); s.listen(1); c,a=s.accept(); print(a[0]); c.close()\n",
                );
                cmd
            },
            "egress-peer",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client_ip = client.underlay_ip().to_string();
    wait_until("endpoint -> client (egress)", DEADLINE, || {
        ping(&endpoints[0].1 .0, &client_ip)
    })
    .unwrap();
    let connect = in_netns(
        &endpoints[0].1 .0,
        &[
            "python3",
            "-c",
            &format!(
                "import socket; socket.create_connection(('{client_ip}', 5002), timeout=5).close()"
            ),
        ],
    )
    .unwrap();
    assert!(
        connect.status.success(),
        "egress TCP: {}",
        String::from_utf8_lossy(&connect.stderr)
    );
    peer_logger
        .wait(Duration::from_secs(10))
        .expect("peer saw the connection");
    assert_eq!(
        peer_logger.log().trim(),
        bed.host(0).underlay_ip().to_string(),
        "egress is source-NATed to the host's address"
    );

    // Networks are isolated: an endpoint on net2 cannot reach net1's.
    let (other_ns, _) = create_endpoint(bed.host(1), "net2", "iso").unwrap();
    assert!(!ping(&other_ns, &endpoints[0].1 .1), "net2 reached net1");

    // Removing an endpoint removes it everywhere.
    let (gone_ns, gone_ip) = endpoints.pop().unwrap().1;
    skein_ok(bed.host(2), &["endpoint", "rm", "e21"]).unwrap();
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
            !skein_ok(host, &["debug", "maps"])
                .unwrap()
                .contains(&format!("{gone_ip} "))
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
            let maps = skein_ok(host, &["debug", "maps"]).unwrap();
            h3_ips.iter().all(|ip| !maps.contains(&format!("{ip} ")))
        })
        .unwrap();
    }
}

/// Sends `megabytes` × 1 MiB over TCP from `netns` to `ip:5001` (a [`tcp_sink`]); prints
/// "<bytes> <sha256>" like the sink does.
fn send_tcp(netns: &str, ip: &str, megabytes: u32) -> Output {
    in_netns(
        netns,
        &[
            "python3",
            "-c",
            &format!(
                "import socket,hashlib\n\
                 data=bytes(range(256))*4096\n\
                 h=hashlib.sha256(); s=socket.create_connection(('{ip}', 5001))\n\
                 for i in range({megabytes}):\n\
                 \x20   s.sendall(data); h.update(data)\n\
                 s.close(); print({megabytes}*len(data), h.hexdigest())\n"
            ),
        ],
    )
    .unwrap()
}

/// A TCP receiver in `netns` on port 5001 that prints "<bytes> <sha256>" when the sender
/// closes.
fn tcp_sink(host: &Host, netns: &str, log: &str) -> Process {
    let mut cmd = host.command("ip");
    cmd.args(["netns", "exec", netns, "python3", "-c"]).arg(
        "import socket,hashlib\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', 5001)); s.listen(1); c,_=s.accept(); h=hashlib.sha256(); n=0\n\
         while True:\n\
         \x20   b=c.recv(1<<16)\n\
         \x20   if not b: break\n\
         \x20   h.update(b); n+=len(b)\n\
         print(n, h.hexdigest())\n",
    );
    host.spawn(cmd, log).expect("tcp sink")
}

#[test]
fn a_transfer_survives_agent_restarts_and_the_kernel_vxlan_device_is_a_vtep() {
    let bed = Testbed::new("overlay-restart", TestbedConfig::with_hosts(2)).expect("testbed");
    let (mut agents, _token) = start_cluster(&bed).unwrap();
    skein_ok(
        bed.host(0),
        &["network", "create", "net1", "--subnet", "10.44.0.0/24"],
    )
    .unwrap();
    wait_until("net1 on h2", DEADLINE, || {
        skein_ok(bed.host(1), &["network", "ls"])
            .unwrap()
            .contains("net1")
    })
    .unwrap();
    let (a_ns, _) = create_endpoint(bed.host(0), "net1", "a").unwrap();
    let (b_ns, b_ip) = create_endpoint(bed.host(1), "net1", "b").unwrap();
    wait_until("a -> b", DEADLINE, || ping(&a_ns, &b_ip)).unwrap();

    // A paced 60 MB transfer (~6 s) while both agents are killed and restarted.
    let mut sink = tcp_sink(bed.host(1), &b_ns, "sink");
    std::thread::sleep(Duration::from_millis(500));
    let mut sender = bed
        .host(0)
        .spawn(
            {
                let mut cmd = bed.host(0).command("ip");
                cmd.args(["netns", "exec", &a_ns, "python3", "-c"])
                    .arg(format!(
                        "import socket,hashlib,time\n\
                     data=bytes(range(256))*4096\n\
                     h=hashlib.sha256(); s=socket.create_connection(('{b_ip}', 5001))\n\
                     for i in range(60):\n\
                     \x20   s.sendall(data); h.update(data); time.sleep(0.1)\n\
                     s.close(); print(60*len(data), h.hexdigest())\n"
                    ));
                cmd
            },
            "sender",
        )
        .unwrap();
    let token = skein_ok(bed.host(0), &["join-token"])
        .unwrap()
        .trim()
        .to_owned();
    let seed = bed.host(0).underlay_ip().to_string();
    std::thread::sleep(Duration::from_millis(1500));
    agents[1].kill9().unwrap();
    agents[0].kill9().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    agents[0] = bed.host(0).start_agent(&["--init"]).unwrap();
    agents[1] = bed
        .host(1)
        .start_agent(&["--join", &seed, "--token", &token])
        .unwrap();
    let status = sender
        .wait(Duration::from_secs(60))
        .expect("sender finishes");
    assert!(status.success(), "sender failed:\n{}", sender.log());
    sink.wait(Duration::from_secs(30)).expect("sink finishes");
    let (sent, received) = (sender.log().trim().to_owned(), sink.log().trim().to_owned());
    assert!(sent.starts_with("62914560 "), "{sent}");
    assert_eq!(
        received, sent,
        "the transfer arrived intact across both agents' restarts"
    );
    // The restarted agents adopted everything: the endpoint still answers.
    wait_until("a -> b after the restarts", DEADLINE, || ping(&a_ns, &b_ip)).unwrap();

    // The kernel's own VXLAN device in the client namespace, registered with
    // `skein network vtep add`, talks to a Skein endpoint both ways.
    let client = bed.client();
    let a_ip = {
        let rows: Vec<Value> = serde_json::from_str(
            &skein_ok(bed.host(0), &["endpoint", "ls", "--format", "json"]).unwrap(),
        )
        .unwrap();
        rows.iter().find(|r| r["name"] == "a").unwrap()["ip"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let octets: Vec<u8> = a_ip.split('.').map(|o| o.parse().unwrap()).collect();
    let a_mac = format!(
        "02:53:{:02x}:{:02x}:{:02x}:{:02x}",
        octets[0], octets[1], octets[2], octets[3]
    );
    let vni = {
        let rows: Vec<Value> = serde_json::from_str(
            &skein_ok(bed.host(0), &["network", "ls", "--format", "json"]).unwrap(),
        )
        .unwrap();
        rows[0]["vni"].as_u64().unwrap()
    };
    let client_ul = client.underlay_ip().to_string();
    let h1_ul = bed.host(0).underlay_ip().to_string();
    for line in [
        format!("ip link add vx0 type vxlan id {vni} dstport 4789 local {client_ul} dev eth0 nolearning"),
        "ip link set vx0 address 02:aa:00:00:00:01 mtu 1450 up".to_owned(),
        "ip addr add 10.44.0.250/24 dev vx0".to_owned(),
        format!("bridge fdb add {a_mac} dev vx0 dst {h1_ul}"),
        format!("ip neigh add {a_ip} lladdr {a_mac} dev vx0 nud permanent"),
    ] {
        let args: Vec<&str> = line.split(' ').collect();
        client.run(args[0], &args[1..]).unwrap_or_else(|e| panic!("{line}: {e:#}"));
    }
    skein_ok(
        bed.host(1),
        &[
            "network",
            "vtep",
            "add",
            "net1",
            "--underlay",
            &client_ul,
            "--mac",
            "02:aa:00:00:00:01",
            "--cidr",
            "10.44.0.250/32",
        ],
    )
    .unwrap();
    wait_until("the VTEP listed on h1", DEADLINE, || {
        skein_ok(bed.host(0), &["network", "vtep", "ls"])
            .unwrap()
            .contains("10.44.0.250/32")
    })
    .unwrap();
    wait_until("endpoint -> kernel VTEP", DEADLINE, || {
        ping(&a_ns, "10.44.0.250")
    })
    .unwrap();
    let back = client.run(
        "ping",
        ["-n", "-q", "-c", "3", "-i", "0.1", "-W", "2", &a_ip],
    );
    assert!(back.is_ok(), "kernel VTEP -> endpoint: {back:?}");
    skein_ok(
        bed.host(0),
        &["network", "vtep", "rm", "net1", "--cidr", "10.44.0.250/32"],
    )
    .unwrap();
    wait_until("the VTEP gone from the maps", DEADLINE, || {
        !skein_ok(bed.host(0), &["debug", "maps"])
            .unwrap()
            .contains("vtep 10.200.0.2")
    })
    .unwrap();
}

#[test]
fn hosts_on_different_underlay_subnets_behind_a_router() {
    let config = TestbedConfig {
        routed: true,
        ..TestbedConfig::with_hosts(2)
    };
    let bed = Testbed::new("overlay-routed", config).expect("testbed");
    assert_ne!(
        bed.host(0).underlay_ip().octets()[1],
        bed.host(1).underlay_ip().octets()[1],
        "the hosts are on different underlay subnets"
    );
    let (_agents, _token) = start_cluster(&bed).unwrap();
    skein_ok(bed.host(0), &["network", "create", "net1"]).unwrap();
    wait_until("net1 on h2", DEADLINE, || {
        skein_ok(bed.host(1), &["network", "ls"])
            .unwrap()
            .contains("net1")
    })
    .unwrap();
    let (a_ns, a_ip) = create_endpoint(bed.host(0), "net1", "a").unwrap();
    let (b_ns, b_ip) = create_endpoint(bed.host(1), "net1", "b").unwrap();
    wait_until("a -> b through the router", DEADLINE, || ping(&a_ns, &b_ip)).unwrap();
    wait_until("b -> a through the router", DEADLINE, || ping(&b_ns, &a_ip)).unwrap();

    // 20 MB of TCP across the router arrives intact.
    let mut sink = tcp_sink(bed.host(1), &b_ns, "sink");
    std::thread::sleep(Duration::from_millis(400));
    let sender = send_tcp(&a_ns, &b_ip, 20);
    assert!(
        sender.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&sender.stderr)
    );
    sink.wait(Duration::from_secs(30)).expect("sink finishes");
    assert_eq!(
        sink.log().trim(),
        String::from_utf8_lossy(&sender.stdout).trim(),
        "intact across the router"
    );
}

/// Sum of a counter family on `host` for the given reason.
fn reason_count(host: &Host, program: &str, reason: &str) -> u64 {
    xtask::scrape::scrape(host)
        .expect("metrics")
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("skein_{program}_packets_total{{"))
                && k.contains(&format!("reason=\"{reason}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn malformed_underlay_traffic_is_dropped_or_passed_with_a_counter_never_misdelivered() {
    let bed = Testbed::new("overlay-malformed", TestbedConfig::with_hosts(2)).expect("testbed");
    let (_agents, _token) = start_cluster(&bed).unwrap();
    skein_ok(bed.host(0), &["network", "create", "net1", "--vni", "5000"]).unwrap();
    let (ep_ns, ep_ip) = create_endpoint(bed.host(0), "net1", "victim").unwrap();
    let rx = || -> u64 {
        String::from_utf8_lossy(
            &in_netns(
                &ep_ns,
                &["cat", "/sys/class/net/eth0/statistics/rx_packets"],
            )
            .unwrap()
            .stdout,
        )
        .trim()
        .parse()
        .unwrap()
    };
    let h1 = bed.host(0);
    let malformed_before = reason_count(h1, "tc_underlay_ingress", "malformed");
    let unknown_vni_before = reason_count(h1, "tc_underlay_ingress", "unknown_vni");
    let unknown_ep_before = reason_count(h1, "tc_underlay_ingress", "unknown_endpoint");
    let rx_before = rx();

    // From the client namespace, with raw sockets: hand-made IPv4/UDP to h1:4789.
    let octets: Vec<u8> = ep_ip.split('.').map(|o| o.parse().unwrap()).collect();
    let script = format!(
        r#"
import os, socket, struct
dst = "{h1}"
src = "{client}"
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def ip(payload, options=b"", frag=0):
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 7, frag, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst)) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload
def udp(payload, dport=4789):
    return struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
def vxlan(vni, inner, flags=0x08):
    return struct.pack("!B3xI", flags, vni << 8) + inner
ep = bytes([{o0}, {o1}, {o2}, {o3}])
inner_ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, socket.inet_aton("10.99.99.99"), ep) + udp(b"x" * 0, 9)
inner = bytes([0x02, 0x53]) + ep + bytes(6) + b"\x08\x00" + inner_ip
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
cases = {{
    "truncated vxlan": ip(udp(b"\x08\x00\x00")),
    "wrong flags": ip(udp(vxlan(5000, inner, flags=0x00))),
    "random bytes": ip(udp(os.urandom(60))),
    "ip options": ip(udp(vxlan(5000, inner)), options=b"\x01\x01\x01\x00"),
    "first fragment": ip(udp(vxlan(5000, inner)), frag=0x2000),
    "truncated inner frame": ip(udp(vxlan(5000, inner[:20]))),
}}
for name, packet in cases.items():
    for _ in range(5):
        s.sendto(packet, (dst, 0))
# Well-formed VXLAN for a VNI nobody serves, and for a served VNI but an address with no endpoint.
for _ in range(5):
    s.sendto(ip(udp(vxlan(777, inner))), (dst, 0))
other = bytes([0x02, 0x53, {o0}, {o1}, {o2}, 250]) + bytes(6) + b"\x08\x00" + inner_ip[:16] + bytes([{o0}, {o1}, {o2}, 250]) + inner_ip[20:]
for _ in range(5):
    s.sendto(ip(udp(vxlan(5000, other))), (dst, 0))
print("sent")
"#,
        h1 = h1.underlay_ip(),
        client = bed.client().underlay_ip(),
        o0 = octets[0],
        o1 = octets[1],
        o2 = octets[2],
        o3 = octets[3],
    );
    let out = bed
        .client()
        .run("python3", ["-c", &script])
        .expect("sending crafted packets");
    assert!(out.contains("sent"));
    std::thread::sleep(Duration::from_millis(500));

    let malformed = reason_count(h1, "tc_underlay_ingress", "malformed") - malformed_before;
    let unknown_vni = reason_count(h1, "tc_underlay_ingress", "unknown_vni") - unknown_vni_before;
    let unknown_ep =
        reason_count(h1, "tc_underlay_ingress", "unknown_endpoint") - unknown_ep_before;
    // 6 malformed cases x 5 (the random-bytes case may happen to carry the I flag and then
    // count as an unknown VNI or malformed inner frame instead).
    assert!(malformed >= 25, "malformed counted: {malformed}");
    assert!(
        unknown_vni >= 5,
        "unknown VNI passed and counted: {unknown_vni}"
    );
    assert!(
        unknown_ep >= 5,
        "unknown endpoint dropped and counted: {unknown_ep}"
    );
    assert_eq!(rx(), rx_before, "nothing was delivered to the endpoint");
    // And the agent and the overlay are fine afterwards.
    let (other_ns, _) = create_endpoint(bed.host(1), "net1", "peer").unwrap();
    wait_until("the overlay still works", DEADLINE, || {
        ping(&other_ns, &ep_ip)
    })
    .unwrap();
}
