//! `skein agent` end to end, in netns testbeds: real attachments in native mode, real
//! traffic, counters read through `/metrics`, restarts without loss, cleanup, bad input.
//! Needs root; run by `cargo xtask test` (which builds the `skein` binary first).

use std::{process::Command, time::Duration};

use xtask::{
    scrape::{sample, scrape, TC_NO_PORT_PACKETS, XDP_PASS_BYTES, XDP_PASS_PACKETS},
    testbed::{run_command, wait_until, Host, Testbed, TestbedConfig},
};

/// Generous: starting includes verifying the programs, CPU-bound and slower when other
/// test binaries run beside this one.
const STARTUP: Duration = Duration::from_secs(60);

fn testbed(label: &str, hosts: usize) -> Testbed {
    Testbed::new(label, TestbedConfig::with_hosts(hosts)).expect("building the testbed")
}

/// Waits until the host's agent serves `/metrics`, and returns the XDP pass packets.
fn wait_for_metrics(host: &Host) -> u64 {
    wait_until("the agent's /metrics", STARTUP, || {
        scrape(host).and_then(|m| sample(&m, XDP_PASS_PACKETS))
    })
    .expect("agent serves /metrics")
}

/// What `ip link` says is attached to the host's underlay interface.
fn underlay_link(host: &Host) -> String {
    host.run("ip", ["-d", "link", "show", "dev", host.underlay_iface()])
        .expect("ip link show")
}

fn assert_native_xdp(host: &Host) {
    let link = underlay_link(host);
    assert!(
        link.contains("prog/xdp ")
            && link.contains("name xdp_underlay")
            && !link.contains("xdpgeneric"),
        "expected xdp_underlay attached in native mode on {}:\n{link}",
        host.name()
    );
}

fn assert_no_xdp(host: &Host) {
    let link = underlay_link(host);
    assert!(
        !link.contains("prog/xdp"),
        "expected no XDP program on {}:\n{link}",
        host.name()
    );
}

/// Pins under the host's bpffs, excluding the kernel's own `*.debug` files.
fn pins(host: &Host) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["maps", "links"] {
        if let Ok(entries) = std::fs::read_dir(host.bpf_dir().join(dir)) {
            found.extend(
                entries
                    .flatten()
                    .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy())),
            );
        }
    }
    found.sort();
    found
}

/// `ping` from `from` to `to`: `count` echoes at `interval_s`; returns (sent, received).
fn ping(from: &Host, to: std::net::Ipv4Addr, count: u32, interval_s: &str) -> (u32, u32) {
    let out = from
        .command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval_s,
            "-W",
            "1",
        ])
        .arg(to.to_string())
        .output()
        .expect("running ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let stats = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
    let numbers: Vec<u32> = stats
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn agent_attaches_natively_counts_real_traffic_and_serves_metrics() {
    let bed = testbed("agent-metrics", 2);
    let (h1, h2) = (bed.host(0), bed.host(1));

    // An endpoint: a namespace under the host's resource prefix (so the testbed removes
    // it) with a veth whose host side carries the endpoint program.
    let ep = format!("{}-ep1", h1.resource_prefix());
    // From this process, not through `ip netns exec`: a namespace added inside that
    // command's private mount namespace would vanish with it.
    run_command(Command::new("ip").args(["netns", "add", &ep])).expect("endpoint namespace");
    run_command(
        Command::new("ip")
            .args(["-n", &ep, "link", "add", "eth0", "type", "veth"])
            .args(["peer", "name", "ep1", "netns", h1.netns()]),
    )
    .expect("endpoint veth");
    h1.run("ip", ["addr", "add", "10.201.0.1/24", "dev", "ep1"])
        .expect("host side address");
    h1.run("ip", ["link", "set", "ep1", "up"])
        .expect("host side up");
    let in_ep = |args: &[&str]| {
        h1.run("ip", [&["netns", "exec", &ep][..], args].concat())
            .expect("command in the endpoint")
    };
    in_ep(&["ip", "addr", "add", "10.201.0.2/24", "dev", "eth0"]);
    in_ep(&["ip", "link", "set", "eth0", "up"]);

    let _agent = h1
        .start_agent(&["--init", "--endpoint-iface", "ep1"])
        .expect("agent starts");
    let before = wait_for_metrics(h1);
    assert_native_xdp(h1);
    // Debian's bpftool cannot list tcx attachments; the pinned link shows it, and the
    // counter below proves the program runs.
    assert!(
        pins(h1).contains(&"links/tc_endpoint_ingress@ep1".to_owned()),
        "{:?}",
        pins(h1)
    );

    // Real traffic from the other host, over the underlay, into h1's XDP program.
    let (sent, received) = ping(h2, h1.underlay_ip(), 20, "0.01");
    assert_eq!((sent, received), (20, 20), "ping h2 -> h1");
    let metrics = scrape(h1).expect("scrape");
    let after = sample(&metrics, XDP_PASS_PACKETS).unwrap();
    assert!(
        after >= before + 20,
        "xdp_underlay pass counter moved by {} for 20 echo requests",
        after - before
    );
    assert!(
        sample(&metrics, XDP_PASS_BYTES).unwrap() >= 20 * 98,
        "bytes for 20 x 98-byte echo requests"
    );

    // Real traffic from the endpoint into its veth's tc ingress. No endpoint record
    // gives this veth a port entry, so the program drops all of it (fail closed). A
    // static neighbour, since no ARP answer could come back either: 10 echoes, 10 drops.
    let host_mac = h1
        .run("cat", ["/sys/class/net/ep1/address"])
        .expect("ep1's MAC");
    in_ep(&[
        "ip",
        "neigh",
        "replace",
        "10.201.0.1",
        "lladdr",
        host_mac.trim(),
        "dev",
        "eth0",
    ]);
    let tc_before = sample(&metrics, TC_NO_PORT_PACKETS).unwrap();
    let pinged = h1
        .command("ip")
        .args([
            "netns", "exec", &ep, "ping", "-n", "-q", "-c", "10", "-i", "0.01",
        ])
        .args(["-W", "1", "10.201.0.1"])
        .output()
        .expect("ping in the endpoint");
    assert!(
        !pinged.status.success(),
        "no echo answered from a veth without its port entry"
    );
    let tc_after = sample(&scrape(h1).unwrap(), TC_NO_PORT_PACKETS).unwrap();
    assert!(
        tc_after >= tc_before + 10,
        "tc_endpoint_ingress no_port counter moved by {} for 10 echo requests",
        tc_after - tc_before
    );

    // Anything but GET /metrics is refused cleanly.
    let status = h1
        .run(
            "curl",
            [
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:9946/nope",
            ],
        )
        .unwrap();
    assert_eq!(status, "404");
}

#[test]
fn kill_9_and_restart_loses_no_traffic_and_keeps_counting() {
    let bed = testbed("agent-restart", 2);
    let (h1, h2) = (bed.host(0), bed.host(1));
    let mut agent = h1.start_agent(&["--init"]).expect("agent starts");
    let before = wait_for_metrics(h1);
    assert_native_xdp(h1);

    // 600 echoes over ~6 s; the agent is killed and restarted in the middle.
    let mut pinger = h2
        .spawn(
            {
                let mut cmd = h2.command("ping");
                cmd.args(["-n", "-q", "-c", "600", "-i", "0.01", "-W", "1"])
                    .arg(h1.underlay_ip().to_string());
                cmd
            },
            "ping",
        )
        .expect("ping starts");
    std::thread::sleep(Duration::from_millis(1500));
    agent.kill9().expect("kill -9 the agent");
    // Dead agent, programs still attached.
    assert_native_xdp(h1);
    std::thread::sleep(Duration::from_millis(1000));
    let _agent = h1.start_agent(&["--init"]).expect("agent restarts");
    wait_for_metrics(h1);
    assert_native_xdp(h1);

    let status = pinger.wait(Duration::from_secs(30)).expect("ping finishes");
    let log = pinger.log();
    assert!(
        status.success(),
        "ping lost packets across the restart:\n{log}"
    );
    assert!(
        log.contains("600 packets transmitted, 600 received"),
        "ping summary:\n{log}"
    );

    // Counted while no agent ran, and not reset by the new one: every echo request is in.
    let after = sample(&scrape(h1).unwrap(), XDP_PASS_PACKETS).unwrap();
    assert!(
        after >= before + 600,
        "xdp_underlay counted {} packets over 600 echo requests across the restart",
        after - before
    );
    let restarted = std::fs::read_to_string(h1.dir().join("agent-2.log")).unwrap_or_default();
    assert!(
        restarted.contains("mode=adopted"),
        "the new agent adopted the pinned link:\n{restarted}"
    );
}

#[test]
fn graceful_exit_keeps_the_dataplane_and_cleanup_removes_only_its_own() {
    let bed = testbed("agent-cleanup", 2);
    let (h1, h2) = (bed.host(0), bed.host(1));
    let mut a1 = h1.start_agent(&["--init"]).expect("agent 1 starts");
    let mut a2 = h2.start_agent(&["--init"]).expect("agent 2 starts");
    wait_for_metrics(h1);
    wait_for_metrics(h2);
    // Every map and link of the agent is pinned (as many as the object has maps).
    let expected: Vec<String> = [
        "links/xdp_underlay@eth0",
        "links/tc_underlay_ingress@eth0",
        "links/tc_host_egress@skein-mesh",
        "links/sock_connect4@cgroup",
        "links/sock_sendmsg4@cgroup",
        "links/sock_recvmsg4@cgroup",
        "links/sock_getpeername4@cgroup",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(
        dataplane_ebpf::maps::PINNED
            .iter()
            .map(|m| format!("maps/{}", m.name)),
    )
    .collect::<std::collections::BTreeSet<_>>()
    .into_iter()
    .collect();
    assert_eq!(pins(h1), expected);

    let status = a1.terminate(Duration::from_secs(10)).expect("SIGTERM");
    assert!(
        status.success(),
        "agent exits 0 on SIGTERM: {status:?}\n{}",
        a1.log()
    );
    assert_native_xdp(h1);
    assert_eq!(pins(h1), expected, "pins survive a graceful exit");
    assert_eq!(ping(h2, h1.underlay_ip(), 3, "0.05"), (3, 3));

    let out = h1
        .skein()
        .unwrap()
        .args(["agent", "cleanup", "--bpf-dir"])
        .arg(h1.bpf_dir())
        .output()
        .expect("skein agent cleanup");
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_xdp(h1);
    assert!(
        pins(h1).is_empty(),
        "pins left after cleanup: {:?}",
        pins(h1)
    );

    // The other host's agent, on the same kernel, is untouched.
    assert!(a2.is_running());
    assert_native_xdp(h2);
    assert_eq!(pins(h2), expected);
    let m2 = wait_for_metrics(h2);
    assert_eq!(ping(h1, h2.underlay_ip(), 3, "0.05"), (3, 3));
    assert!(sample(&scrape(h2).unwrap(), XDP_PASS_PACKETS).unwrap() >= m2 + 3);
}

#[test]
fn bad_arguments_fail_with_one_sentence_and_attach_nothing() {
    let bed = testbed("agent-badargs", 1);
    let h1 = bed.host(0);
    let run = |args: &[&str]| {
        let out = h1
            .skein()
            .unwrap()
            .args(["agent", "--bpf-dir"])
            .arg(h1.bpf_dir())
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("running skein");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stderr) = run(&["--underlay-iface", "nosuchif"]);
    assert_ne!(code, Some(0), "nosuchif must fail");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains("\"nosuchif\""),
        "names the interface: {stderr}"
    );
    assert_no_xdp(h1);
    assert!(pins(h1).is_empty(), "nothing pinned: {:?}", pins(h1));

    let (code, stderr) = run(&[
        "--underlay-iface",
        "eth0",
        "--metrics-addr",
        "not-an-address",
    ]);
    assert_eq!(
        code,
        Some(2),
        "unparsable --metrics-addr is a usage error: {stderr}"
    );
    assert!(
        stderr.contains("not-an-address"),
        "names the value: {stderr}"
    );
    assert_no_xdp(h1);
    assert!(pins(h1).is_empty(), "nothing pinned: {:?}", pins(h1));
}
