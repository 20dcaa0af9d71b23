//! The overlay's packet path end to end, in netns testbeds: endpoints on three hosts
//! reach each other by overlay IP (same host: redirected; across hosts: VXLAN made and
//! taken apart by the eBPF programs), a 100 MB TCP transfer crosses hosts intact with
//! the veths' checksum offload on, the underlay carries VXLAN that `tshark` decodes with
//! valid checksums, a kernel VXLAN device works as an external VTEP, networks are
//! isolated, and an endpoint whose entries are removed is no longer reached.
//!
//! The test plays the reconciler: it loads the dataplane on each host (through the
//! agent's library, in a helper run inside the host's namespace — no agent daemon, so no
//! control plane rewrites the maps under the test) and programs the maps through
//! [`OverlayMaps`], exactly as the reconciler does. Needs root; run by `cargo xtask test`.

use std::{
    collections::BTreeMap,
    env,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use agent::dataplane::{Attachments, Counters, Dataplane, OverlayMaps, PinDirs, XdpMode};
use dataplane_ebpf::{
    counters::Verdict,
    names,
    overlay::{
        endpoint_mac, EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, VtepKey,
        VtepValue,
    },
};
use xtask::testbed::{run_command, wait_until, Host, Testbed, TestbedConfig};

/// Endpoint MTU: the underlay's 1500 minus the 50 bytes of VXLAN.
const ENDPOINT_MTU: &str = "1450";

/// A network: (VNI, subnet, prefix length).
type Net = (u32, [u8; 4], u32);
const NET_A: Net = (4096, [10, 210, 0, 0], 24);
const NET_B: Net = (4097, [10, 211, 0, 0], 24);

fn gateway(net: Net) -> [u8; 4] {
    let s = net.1;
    [s[0], s[1], s[2], s[3] + 1]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One endpoint: a namespace with `eth0`, its host-side veth on host `host`.
#[derive(Clone, Debug)]
struct Endpoint {
    host: usize,
    netns: String,
    host_side: String,
    ip: [u8; 4],
    net: Net,
}

impl Endpoint {
    fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip)
    }

    /// `ip netns exec <endpoint> args...`, run to completion.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Pings `to` `count` times; returns how many answers came back (waiting up to 2 s
    /// for the last one: the machine is shared).
    fn ping(&self, to: Ipv4Addr, count: u32) -> u32 {
        self.ping_waiting(to, count, "2")
    }

    /// Pings where no answer is expected: no need to wait long for one.
    fn ping_unanswered(&self, to: Ipv4Addr, count: u32) -> u32 {
        self.ping_waiting(to, count, "1")
    }

    fn ping_waiting(&self, to: Ipv4Addr, count: u32, wait_s: &str) -> u32 {
        let out = self.run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            wait_s,
            &to.to_string(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let stats = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary from {} in {text:?}", self.netns));
        stats
            .split(", ")
            .nth(1)
            .and_then(|received| received.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable ping summary {stats:?}"))
    }
}

/// Makes an endpoint as the reconciler will: a namespace whose `eth0` has the
/// IP-derived MAC, the overlay MTU, the address and a default route via the gateway;
/// the host side carries the gateway /32 (its MAC stays the kernel's random one: the
/// program marks what goes to the host as the host's), and the host routes the
/// endpoint's /32 into it.
fn create_endpoint(host: &Host, host_index: usize, n: usize, ip: [u8; 4], net: Net) -> Endpoint {
    let netns = format!("{}-ep{n}", host.resource_prefix());
    let host_side = format!("vep{n}");
    // From this process, not through `ip netns exec`: a namespace added inside that
    // command's private mount namespace would vanish with it.
    run_command(Command::new("ip").args(["netns", "add", &netns])).expect("endpoint namespace");
    run_command(Command::new("ip").args(["netns", "exec", &netns]).args([
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
    ]))
    .expect("no IPv6 in the endpoint");
    let cidr = format!("{}/{}", Ipv4Addr::from(ip), net.2);
    let gw = Ipv4Addr::from(gateway(net)).to_string();
    run_command(
        Command::new("ip")
            .args(["-n", &netns, "link", "add", "eth0", "address"])
            .arg(mac_text(endpoint_mac(ip)))
            .args([
                "mtu",
                ENDPOINT_MTU,
                "type",
                "veth",
                "peer",
                "name",
                &host_side,
            ])
            .args(["netns", host.netns()]),
    )
    .expect("endpoint veth");
    for args in [
        vec!["addr", "add", &cidr, "dev", "eth0"],
        vec!["link", "set", "lo", "up"],
        vec!["link", "set", "eth0", "up"],
        vec!["route", "add", "default", "via", &gw],
    ] {
        run_command(Command::new("ip").args(["-n", &netns]).args(&args)).expect("endpoint setup");
    }
    let gw32 = format!("{gw}/32");
    let ep32 = format!("{}/32", Ipv4Addr::from(ip));
    for args in [
        vec!["link", "set", &host_side, "mtu", ENDPOINT_MTU, "up"],
        vec!["addr", "add", &gw32, "dev", &host_side],
        vec!["route", "add", &ep32, "dev", &host_side],
    ] {
        run_command(Command::new("ip").args(["-n", host.netns()]).args(&args))
            .expect("host side setup");
    }
    Endpoint {
        host: host_index,
        netns,
        host_side,
        ip,
        net,
    }
}

/// The environment variable that makes [`dataplane_holder`] act; see [`hold_dataplane`].
const HOLDER_ENV: &str = "SKEIN_TEST_DATAPLANE";

/// Not a test on its own: run by [`hold_dataplane`] inside a host's namespace (through
/// `ip netns exec`, which gives it that namespace's `/sys`), it loads and attaches the
/// dataplane with the agent's library and exits; the pinned links keep it running.
#[test]
#[ignore = "a helper the other tests run inside a host namespace"]
fn dataplane_holder() {
    let Ok(spec) = env::var(HOLDER_ENV) else {
        return;
    };
    let field = |name: &str| {
        spec.split(';')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let list = |name: &str| -> Vec<String> {
        field(name)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let want = Attachments {
        underlay_iface: field("underlay"),
        underlay_ip: field("ip").parse().expect("underlay ip"),
        xdp_mode: XdpMode::Native,
        endpoint_ifaces: list("start"),
    };
    let mut dataplane =
        Dataplane::start(PinDirs::new(field("bpf")), &want).expect("the dataplane starts");
    for iface in list("attach") {
        dataplane.attach_endpoint(&iface).expect("attach_endpoint");
    }
    for iface in list("detach") {
        assert!(
            dataplane.detach_endpoint(&iface).expect("detach_endpoint"),
            "{iface} was attached"
        );
    }
    println!("attached: {}", dataplane.attached_endpoints().join(","));
}

/// Starts (or restarts, adopting what is attached) the dataplane on `host` with
/// `start` endpoints attached by `Dataplane::start`, then `attach`es and `detach`es
/// endpoints dynamically. Returns the endpoints attached afterwards.
fn hold_dataplane(host: &Host, start: &[&str], attach: &[&str], detach: &[&str]) -> Vec<String> {
    let spec = format!(
        "bpf={};underlay={};ip={};start={};attach={};detach={}",
        host.bpf_dir().display(),
        host.underlay_iface(),
        host.underlay_ip(),
        start.join(","),
        attach.join(","),
        detach.join(",")
    );
    let out = host
        .command(env::current_exe().expect("the test binary"))
        .args([
            "dataplane_holder",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, spec)
        .output()
        .expect("running the dataplane holder");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the dataplane did not start on {}:\n{stdout}\n{}",
        host.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("attached: ").map(|(_, list)| list))
        .map(|l| {
            l.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn ifindex(host: &Host, iface: &str) -> u32 {
    host.run("cat", [format!("/sys/class/net/{iface}/ifindex")])
        .expect("reading an ifindex")
        .trim()
        .parse()
        .expect("an ifindex")
}

/// Programs `host`'s maps as the reconciler would for `endpoints` on `hosts`.
fn program_maps(bed: &Testbed, host: usize, endpoints: &[Endpoint]) {
    let h = bed.host(host);
    let mut maps = OverlayMaps::open(&PinDirs::new(h.bpf_dir())).expect("overlay maps open");
    for net in [NET_A, NET_B] {
        maps.put_network(
            net.0,
            NetworkValue {
                subnet: net.1,
                prefix_len: net.2,
                gateway: gateway(net),
            },
        )
        .unwrap();
        maps.put_subnet(SubnetKey::new(net.1, net.2), net.0)
            .unwrap();
    }
    for ep in endpoints {
        let key = EndpointKey {
            vni: ep.net.0,
            ip: ep.ip,
        };
        let value = if ep.host == host {
            let ifindex = ifindex(h, &ep.host_side);
            maps.put_port(
                ifindex,
                PortValue {
                    vni: ep.net.0,
                    ip: ep.ip,
                },
            )
            .unwrap();
            EndpointValue {
                host_ip: h.underlay_ip().octets(),
                ifindex,
            }
        } else {
            EndpointValue {
                host_ip: bed.host(ep.host).underlay_ip().octets(),
                ifindex: 0,
            }
        };
        maps.put_endpoint(key, value).unwrap();
    }
}

/// Summed counters of every program on `host`, by (program, verdict).
fn counters(host: &Host) -> BTreeMap<(&'static str, u32), u64> {
    Counters::open(&PinDirs::new(host.bpf_dir()))
        .expect("counters open")
        .read()
        .into_iter()
        .map(|(program, verdict, counter)| ((program, verdict.slot()), counter.packets))
        .collect()
}

fn count(c: &BTreeMap<(&'static str, u32), u64>, program: &'static str, verdict: Verdict) -> u64 {
    c.get(&(program, verdict.slot())).copied().unwrap_or(0)
}

/// Three hosts, six endpoints: h1 has two of network A (local delivery), h2 and h3 one
/// of A and one of B each. Dataplanes loaded, maps programmed everywhere.
struct Overlay {
    bed: Testbed,
    endpoints: Vec<Endpoint>,
}

impl Overlay {
    fn build(label: &str) -> Overlay {
        let bed = Testbed::new(label, TestbedConfig::with_hosts(3)).expect("testbed");
        let layout: [(usize, [u8; 4], Net); 6] = [
            (0, [10, 210, 0, 11], NET_A),
            (0, [10, 210, 0, 12], NET_A),
            (1, [10, 210, 0, 21], NET_A),
            (1, [10, 211, 0, 22], NET_B),
            (2, [10, 210, 0, 31], NET_A),
            (2, [10, 211, 0, 32], NET_B),
        ];
        let endpoints: Vec<Endpoint> = layout
            .iter()
            .enumerate()
            .map(|(n, &(host, ip, net))| create_endpoint(bed.host(host), host, n + 1, ip, net))
            .collect();
        // h3 forwards IPv4, so its encapsulation takes the FIB-lookup path
        // (`bpf_fib_lookup` answers only where forwarding is on); h1 and h2 take the
        // `bpf_redirect_neigh` fallback.
        bed.host(2)
            .run("sysctl", ["-qw", "net.ipv4.conf.all.forwarding=1"])
            .expect("forwarding on h3");
        for (i, host) in bed.hosts().iter().enumerate() {
            let mine: Vec<&str> = endpoints
                .iter()
                .filter(|e| e.host == i)
                .map(|e| e.host_side.as_str())
                .collect();
            // h1 attaches its endpoints dynamically, the others at start.
            let attached = if i == 0 {
                hold_dataplane(host, &[], &mine, &[])
            } else {
                hold_dataplane(host, &mine, &[], &[])
            };
            assert_eq!(attached, mine, "endpoints attached on {}", host.name());
            program_maps(&bed, i, &endpoints);
        }
        Overlay { bed, endpoints }
    }

    fn host(&self, ep: &Endpoint) -> &Host {
        self.bed.host(ep.host)
    }
}

#[test]
fn endpoints_reach_each_other_networks_are_isolated_and_removal_stops_delivery() {
    let overlay = Overlay::build("overlay-reach");
    let eps = &overlay.endpoints;
    let before: Vec<_> = overlay.bed.hosts().iter().map(counters).collect();

    // Every endpoint reaches every other of its network (same host and across hosts)
    // and its gateway (the host); none reaches the other network.
    let mut failures = Vec::new();
    for from in eps {
        let gw = Ipv4Addr::from(gateway(from.net));
        let got = from.ping(gw, 2);
        if got != 2 {
            failures.push(format!("{} -> gateway {gw}: {got}/2", from.addr()));
        }
        for to in eps.iter().filter(|to| to.ip != from.ip) {
            let want = if to.net == from.net { 3 } else { 0 };
            let got = if want > 0 {
                from.ping(to.addr(), 3)
            } else {
                from.ping_unanswered(to.addr(), 3)
            };
            if got != want {
                failures.push(format!(
                    "{} (h{}) -> {} (h{}): {got}/3 answered, expected {want}",
                    from.addr(),
                    from.host + 1,
                    to.addr(),
                    to.host + 1
                ));
            }
        }
    }
    let after: Vec<_> = overlay.bed.hosts().iter().map(counters).collect();
    let moved = |h: usize, program, verdict| {
        count(&after[h], program, verdict) - count(&before[h], program, verdict)
    };
    let dump = || {
        overlay
            .bed
            .hosts()
            .iter()
            .map(|h| {
                let maps = OverlayMaps::open(&PinDirs::new(h.bpf_dir())).unwrap();
                format!("== {}\n{}{:?}\n", h.name(), maps.dump(), counters(h))
            })
            .collect::<String>()
    };
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), dump());

    const EP: &str = names::TC_ENDPOINT_INGRESS;
    const UL: &str = names::TC_UNDERLAY_INGRESS;
    // h1's two endpoints of A reach each other through LOCAL redirects: 2 x 3 echo
    // requests and as many replies.
    assert!(moved(0, EP, Verdict::LOCAL) >= 12, "{}", dump());
    for h in 0..3 {
        assert!(
            moved(h, EP, Verdict::ARP_REPLY) >= 1,
            "h{} answered ARP\n{}",
            h + 1,
            dump()
        );
        assert!(
            moved(h, EP, Verdict::ENCAP) >= 6,
            "h{} encapsulated\n{}",
            h + 1,
            dump()
        );
        assert!(
            moved(h, UL, Verdict::DECAP) >= 6,
            "h{} decapsulated\n{}",
            h + 1,
            dump()
        );
        assert!(
            moved(h, EP, Verdict::TO_HOST) >= 2,
            "h{} gateway pings\n{}",
            h + 1,
            dump()
        );
        assert_eq!(moved(h, UL, Verdict::MALFORMED), 0, "{}", dump());
        assert_eq!(
            moved(h, EP, Verdict::ERROR) + moved(h, UL, Verdict::ERROR),
            0,
            "{}",
            dump()
        );
    }
    // Isolation is enforced at the sender: A -> B and B -> A are dropped before any
    // host routing. Every host has endpoints pinging across: at least two of them,
    // three echo requests each.
    for h in 0..3 {
        assert!(
            moved(h, EP, Verdict::OTHER_NETWORK) >= 2 * 3,
            "h{} isolated\n{}",
            h + 1,
            dump()
        );
    }

    // Remove 10.210.0.21's entries on its own host only: senders still encapsulate, its
    // host drops what arrives for it.
    let (a1, a21) = (&eps[0], &eps[2]);
    let key = EndpointKey {
        vni: a21.net.0,
        ip: a21.ip,
    };
    let h2 = overlay.host(a21);
    let mut h2_maps = OverlayMaps::open(&PinDirs::new(h2.bpf_dir())).unwrap();
    assert!(h2_maps.remove_endpoint(key).unwrap());
    assert!(
        !h2_maps.remove_endpoint(key).unwrap(),
        "removal is idempotent"
    );
    let c = counters(h2);
    assert_eq!(
        a1.ping_unanswered(a21.addr(), 3),
        0,
        "no delivery to a removed endpoint"
    );
    let dropped = count(&counters(h2), UL, Verdict::UNKNOWN_ENDPOINT)
        - count(&c, UL, Verdict::UNKNOWN_ENDPOINT);
    assert!(
        dropped >= 3,
        "h2 dropped {dropped} echo requests for the removed endpoint"
    );

    // Removed on the sender's host too: dropped there, nothing is encapsulated.
    let h1 = overlay.host(a1);
    let mut h1_maps = OverlayMaps::open(&PinDirs::new(h1.bpf_dir())).unwrap();
    assert!(h1_maps.remove_endpoint(key).unwrap());
    let c = counters(h1);
    assert_eq!(a1.ping_unanswered(a21.addr(), 3), 0);
    let c2 = counters(h1);
    assert!(
        count(&c2, EP, Verdict::UNKNOWN_ENDPOINT) - count(&c, EP, Verdict::UNKNOWN_ENDPOINT) >= 3
    );
    assert_eq!(
        count(&c2, EP, Verdict::ENCAP),
        count(&c, EP, Verdict::ENCAP)
    );

    // Put back, it is reached again; the other endpoints were never affected.
    let value = EndpointValue {
        host_ip: h2.underlay_ip().octets(),
        ifindex: 0,
    };
    h1_maps.put_endpoint(key, value).unwrap();
    h2_maps
        .put_endpoint(
            key,
            EndpointValue {
                host_ip: h2.underlay_ip().octets(),
                ifindex: ifindex(h2, &a21.host_side),
            },
        )
        .unwrap();
    assert_eq!(a1.ping(a21.addr(), 3), 3, "reached again once put back");
    assert_eq!(a1.ping(eps[4].addr(), 3), 3);

    // The endpoint behind vep2 is recreated under the same names (a new veth, a new
    // ifindex): its old attachment is defunct, and a restarted dataplane replaces it.
    let h1 = overlay.host(&eps[1]);
    run_command(Command::new("ip").args(["netns", "del", &eps[1].netns])).unwrap();
    wait_until("the old veth to go", Duration::from_secs(10), || {
        h1.run("ip", ["link", "show", &eps[1].host_side]).is_err()
    })
    .unwrap();
    let old_ifindex = ifindex_of_port(&h1_maps, eps[1].ip);
    let again = create_endpoint(h1, 0, 2, eps[1].ip, eps[1].net);
    assert_eq!(again.host_side, eps[1].host_side);
    let new_ifindex = ifindex(h1, &again.host_side);
    assert!(h1_maps.remove_port(old_ifindex).unwrap());
    h1_maps
        .put_port(
            new_ifindex,
            PortValue {
                vni: again.net.0,
                ip: again.ip,
            },
        )
        .unwrap();
    h1_maps
        .put_endpoint(
            EndpointKey {
                vni: again.net.0,
                ip: again.ip,
            },
            EndpointValue {
                host_ip: h1.underlay_ip().octets(),
                ifindex: new_ifindex,
            },
        )
        .unwrap();
    let attached = hold_dataplane(h1, &[], &[], &[]);
    assert_eq!(attached, vec!["vep1".to_owned(), "vep2".to_owned()]);
    assert_eq!(again.ping(eps[4].addr(), 2), 2, "the recreated endpoint");
    assert_eq!(
        again.ping(a1.addr(), 2),
        2,
        "the recreated endpoint, locally"
    );

    // Detaching an endpoint's program (the reconciler removing it) takes it off the
    // overlay; the other endpoint is not affected.
    let attached = hold_dataplane(h1, &[], &[], &[again.host_side.as_str()]);
    assert_eq!(attached, vec![eps[0].host_side.clone()]);
    assert_eq!(
        again.ping_unanswered(eps[4].addr(), 2),
        0,
        "a detached endpoint is off the overlay"
    );
    assert_eq!(
        a1.ping(eps[4].addr(), 2),
        2,
        "the other endpoint still works"
    );
}

/// The host-side ifindex of the local endpoint `ip`, from the ports map.
fn ifindex_of_port(maps: &OverlayMaps, ip: [u8; 4]) -> u32 {
    maps.ports()
        .unwrap()
        .into_iter()
        .find(|(_, port)| port.ip == ip)
        .map(|(ifindex, _)| ifindex)
        .expect("a port for the endpoint")
}

/// Deterministic pseudo-random bytes (xorshift64), so a corrupted byte anywhere shows.
fn pseudo_random_file(path: &Path, len: usize) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, data).expect("writing the test file");
}

#[test]
fn tcp_crosses_hosts_intact_with_checksum_offload_and_the_underlay_carries_valid_vxlan() {
    let overlay = Overlay::build("overlay-tcp");
    let (client, server) = (&overlay.endpoints[0], &overlay.endpoints[2]);
    let (h1, h2) = (overlay.host(client), overlay.host(server));

    // The kernel's defaults on veths: checksum offload and TSO on, so the endpoints hand
    // over partial checksums and 64 KB super-packets (the XDP trap in ARCHITECTURE.md's kernel facts).
    for ep in [client, server] {
        let features =
            String::from_utf8_lossy(&ep.run(&["ethtool", "-k", "eth0"]).stdout).into_owned();
        for feature in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
            assert!(
                features.contains(feature),
                "{feature} in {}:\n{features}",
                ep.netns
            );
        }
    }

    const SIZE: usize = 100 * 1024 * 1024;
    let www = h2.dir().join("www");
    std::fs::create_dir_all(&www).unwrap();
    pseudo_random_file(&www.join("blob"), SIZE);
    let expected = run_command(Command::new("sha256sum").arg(www.join("blob"))).unwrap();
    let expected = expected.split_whitespace().next().unwrap().to_owned();

    let server_addr = server.addr().to_string();
    let mut cmd = h2.command("ip");
    cmd.args([
        "netns",
        "exec",
        &server.netns,
        "/usr/bin/python3",
        "-m",
        "http.server",
    ])
    .args(["--bind", &server_addr, "--directory"])
    .arg(&www)
    .arg("8080");
    let _http = h2.spawn(cmd, "http-server").expect("http server starts");
    let url = format!("http://{server_addr}:8080/blob");
    wait_until(
        "the http server in the endpoint",
        Duration::from_secs(20),
        || {
            client
                .run(&["curl", "-sf", "-o", "/dev/null", "-r", "0-0", &url])
                .status
                .success()
        },
    )
    .expect("the server answers across the overlay");

    // Capture h1's underlay while pings and the first part of the transfer cross it.
    let pcap = h1.dir().join("underlay.pcap");
    let mut cmd = h1.command("tcpdump");
    cmd.args(["-i", "eth0", "-n", "-U", "-Z", "root", "-c", "4000", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "4789"]);
    let mut capture = h1.spawn(cmd, "tcpdump").expect("tcpdump starts");
    capture
        .wait_for_log("listening on", Duration::from_secs(10))
        .expect("tcpdump listens");
    assert_eq!(client.ping(server.addr(), 5), 5);

    let started = Instant::now();
    let out = client.run(&["sh", "-c", &format!("curl -sf {url} | sha256sum")]);
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.split_whitespace().next(),
        Some(expected.as_str()),
        "100 MB across hosts arrived intact"
    );
    eprintln!(
        "100 MB h2 -> h1 over the overlay in {elapsed:.2?}: {:.0} Mbit/s",
        SIZE as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    capture
        .terminate(Duration::from_secs(5))
        .expect("tcpdump stops");

    // tshark decodes it as VXLAN of network A, with valid outer and inner IPv4 and UDP
    // checksums, nothing malformed.
    let out = run_command(
        Command::new("tshark")
            .arg("-r")
            .arg(&pcap)
            .args(["-n", "-d", "udp.port==4789,vxlan"])
            .args([
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
            ])
            .args(["-T", "fields", "-E", "separator=|"])
            .args([
                "-e",
                "vxlan.vni",
                "-e",
                "ip.checksum.status",
                "-e",
                "udp.checksum.status",
            ])
            .args(["-e", "_ws.malformed", "-e", "ip.proto"]),
    )
    .expect("tshark reads the capture");
    let frames: Vec<&str> = out.lines().collect();
    assert!(
        frames.len() >= 100,
        "captured {} frames:\n{out}",
        frames.len()
    );
    eprintln!(
        "tshark: {} VXLAN frames on h1's underlay, e.g. (vni|ip csum|udp csum|malformed|proto) {:?}",
        frames.len(),
        &frames[..3]
    );
    let mut seen_tcp = false;
    for frame in &frames {
        let fields: Vec<&str> = frame.split('|').collect();
        assert_eq!(fields[0], NET_A.0.to_string(), "VNI of {frame}");
        // Outer and inner IPv4: both verified good (1); a bad checksum is 0.
        assert_eq!(fields[1], "1,1", "IPv4 checksums of {frame}");
        assert!(
            !fields[2].split(',').any(|s| s == "0"),
            "UDP checksum of {frame}"
        );
        assert!(fields[3].is_empty(), "malformed: {frame}");
        seen_tcp |= fields[4] == "17,6";
    }
    assert!(seen_tcp, "the capture holds encapsulated TCP");
}

#[test]
fn a_kernel_vxlan_device_works_as_external_vtep_and_owns_vnis_the_overlay_does_not_know() {
    let overlay = Overlay::build("overlay-vtep");
    let bed = &overlay.bed;
    let (ep, h1, client) = (&overlay.endpoints[0], bed.host(0), bed.client());
    let vtep_mac = [0x02, 0xaa, 0, 0, 0, 1];
    let vtep_ip = [10, 210, 0, 200];
    let client_ul = client.underlay_ip().to_string();
    let h1_ul = h1.underlay_ip().to_string();

    // The client namespace is an external VTEP of network A: a kernel VXLAN device
    // (VNI 4096) that knows where the endpoint lives.
    let ep_mac = mac_text(endpoint_mac(ep.ip));
    let batch = |host: &Host, lines: &[String]| {
        for line in lines {
            let args: Vec<&str> = line.split(' ').collect();
            host.run(args[0], &args[1..])
                .unwrap_or_else(|e| panic!("{line}: {e:#}"));
        }
    };
    batch(
        client,
        &[
            format!("ip link add vx0 type vxlan id {} dstport 4789 local {client_ul} dev eth0 nolearning", NET_A.0),
            format!("ip link set vx0 address {} mtu 1450 up", mac_text(vtep_mac)),
            "ip addr add 10.210.0.200/24 dev vx0".to_owned(),
            format!("bridge fdb add {ep_mac} dev vx0 dst {h1_ul}"),
            format!("ip neigh add {} lladdr {ep_mac} dev vx0 nud permanent", ep.addr()),
        ],
    );
    let mut maps = OverlayMaps::open(&PinDirs::new(h1.bpf_dir())).unwrap();
    maps.put_vtep(
        VtepKey::new(NET_A.0, vtep_ip, 32),
        VtepValue {
            underlay_ip: client.underlay_ip().octets(),
            mac: vtep_mac,
            _pad: [0; 2],
        },
    )
    .unwrap();
    assert_eq!(maps.vteps().unwrap().len(), 1);
    let before = counters(h1);
    assert_eq!(
        ep.ping(Ipv4Addr::from(vtep_ip), 3),
        3,
        "endpoint -> external VTEP\n{}",
        maps.dump()
    );
    let out = client.run(
        "ping",
        [
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.05",
            "-W",
            "1",
            &ep.addr().to_string(),
        ],
    );
    assert!(out.is_ok(), "external VTEP -> endpoint: {out:?}");
    let after = counters(h1);
    let moved =
        |program, verdict| count(&after, program, verdict) - count(&before, program, verdict);
    assert!(moved(names::TC_ENDPOINT_INGRESS, Verdict::ENCAP) >= 6);
    assert!(moved(names::TC_UNDERLAY_INGRESS, Verdict::DECAP) >= 6);

    // A VNI the overlay does not serve passes to the host untouched: here a kernel VXLAN
    // device on h1 owns VNI 9999, and its traffic flows while the programs are attached.
    batch(
        h1,
        &[
            format!(
                "ip link add vx9 type vxlan id 9999 dstport 4789 local {h1_ul} dev eth0 nolearning"
            ),
            "ip link set vx9 mtu 1450 up".to_owned(),
            "ip addr add 10.250.0.1/24 dev vx9".to_owned(),
            format!("bridge fdb append 00:00:00:00:00:00 dev vx9 dst {client_ul}"),
        ],
    );
    batch(
        client,
        &[
            format!("ip link add vx9 type vxlan id 9999 dstport 4789 local {client_ul} dev eth0 nolearning"),
            "ip link set vx9 mtu 1450 up".to_owned(),
            "ip addr add 10.250.0.2/24 dev vx9".to_owned(),
            format!("bridge fdb append 00:00:00:00:00:00 dev vx9 dst {h1_ul}"),
        ],
    );
    let before = counters(h1);
    let out = client.run(
        "ping",
        ["-n", "-q", "-c", "3", "-i", "0.05", "-W", "2", "10.250.0.1"],
    );
    assert!(
        out.is_ok(),
        "kernel VXLAN VNI 9999 through h1's programs: {out:?}"
    );
    let unknown = count(
        &counters(h1),
        names::TC_UNDERLAY_INGRESS,
        Verdict::UNKNOWN_VNI,
    ) - count(&before, names::TC_UNDERLAY_INGRESS, Verdict::UNKNOWN_VNI);
    assert!(
        unknown >= 3,
        "VNI 9999 counted as unknown and passed: {unknown}"
    );
    // And the overlay keeps working next to the kernel's VXLAN socket.
    assert_eq!(ep.ping(overlay.endpoints[4].addr(), 3), 3);
}
