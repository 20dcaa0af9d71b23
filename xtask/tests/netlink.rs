//! The agent's netlink module against the real kernel, in netns testbeds: named network
//! namespaces (also made from a process under `ip netns exec`), and endpoint links
//! created, adopted unchanged, repaired, changed and removed. Every check reads the
//! kernel's state back with `ip`, not with the module under test. Needs root; run by
//! `cargo xtask test`.
//!
//! The module's functions act on the calling thread's network namespace, so they run
//! through `netlink::run_in_netns` inside a testbed host, as an agent there would.

use std::{
    env,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use agent::netlink::{
    self, create_netns, delete_netns, ensure_endpoint_link, host_ifname, link_index,
    links_with_prefix, netns_exists, netns_path, remove_endpoint_link, run_in_netns, set_mtu,
    Change, EndpointLink, EndpointLinkState, NetlinkError, IFNAMSIZ_MAX,
};
use xtask::testbed::{run_command, wait_until, Host, Testbed, TestbedConfig};

/// Set for the helper test [`child_creates_netns`] to the namespace name it must create.
const CHILD_NETNS_ENV: &str = "SKEIN_NETLINK_TEST_CHILD_NETNS";

fn testbed(label: &str) -> Testbed {
    Testbed::new(label, TestbedConfig::with_hosts(1)).expect("building the testbed")
}

/// Runs `f` inside `host`'s network namespace, as the agent of that host would.
fn in_host<F, Fut, T>(host: &Host, f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    run_in_netns(&netns_path(host.netns()), f).expect("running in the host's namespace")
}

/// `ip ARGS` in the root namespace (use `-n NS` to reach into one); panics on failure.
fn ip(args: &[&str]) -> String {
    run_command(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("ip {args:?}: {e:#}"))
}

/// Whether `ip ARGS` succeeds.
fn ip_ok(args: &[&str]) -> bool {
    run_command(Command::new("ip").args(args)).is_ok()
}

fn ping_from(netns: &str, to: Ipv4Addr) -> Result<String, String> {
    run_command(
        Command::new("ip")
            .args(["netns", "exec", netns, "ping", "-n", "-c", "1", "-W", "2"])
            .arg(to.to_string()),
    )
    .map_err(|e| format!("{e:#}"))
}

/// Everything `ensure_endpoint_link` owns, as `ip` shows it, for before/after comparison.
/// IPv4 only: the endpoint namespace's IPv6 link-local addresses come and go on their own.
fn snapshot(host: &Host, ep_netns: &str, spec: &EndpointLink) -> String {
    let h = host.netns();
    [
        ip(&["-n", h, "-d", "link", "show", "dev", &spec.host_ifname]),
        ip(&["-n", h, "-4", "addr", "show", "dev", &spec.host_ifname]),
        ip(&["-n", h, "route", "show", "table", "main"]),
        ip(&["-n", ep_netns, "-d", "link", "show"]),
        ip(&["-n", ep_netns, "-4", "addr", "show"]),
        ip(&["-n", ep_netns, "route", "show", "table", "main"]),
    ]
    .join("----\n")
}

/// Waits until both sides report operstate UP (link watch settles asynchronously after
/// a link comes up), so snapshots compare settled states.
fn wait_for_operstate_up(host: &Host, ep_netns: &str, spec: &EndpointLink) {
    wait_until("both veth ends to be UP", Duration::from_secs(10), || {
        let h = ip(&["-n", host.netns(), "link", "show", "dev", &spec.host_ifname]);
        let e = ip(&["-n", ep_netns, "link", "show", "dev", &spec.ep_ifname]);
        h.contains("state UP") && e.contains("state UP")
    })
    .expect("veth ends come up");
}

fn ensure(host: &Host, spec: &EndpointLink) -> EndpointLinkState {
    in_host(host, || ensure_endpoint_link(spec))
        .unwrap_or_else(|e| panic!("ensure_endpoint_link: {:#}", anyhow::Error::from(e)))
}

/// After a testbed is dropped: no namespace with its prefix, no file under /run/netns,
/// and none of `ifnames` in the root namespace.
fn assert_nothing_left(prefix: &str, ifnames: &[&str]) {
    let list = ip(&["netns", "list"]);
    assert!(!list.contains(prefix), "namespaces left behind:\n{list}");
    let files: Vec<String> = std::fs::read_dir(netlink::NETNS_RUN_DIR)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(files.is_empty(), "files left in /run/netns: {files:?}");
    let links = ip(&["-o", "link", "show"]);
    for name in ifnames {
        assert!(
            !links.contains(name),
            "{name} left in the root namespace:\n{links}"
        );
    }
}

fn endpoint_spec(host: &Host, ep_path: PathBuf) -> EndpointLink {
    EndpointLink {
        host_ifname: host_ifname("sk", &format!("{}/ep1", host.netns())),
        netns: ep_path,
        ep_ifname: "eth0".to_owned(),
        mac: [0x02, 0x42, 0x0a, 0x09, 0x00, 0x05],
        mtu: 1450,
        ip: Ipv4Addr::new(10, 9, 0, 5),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 9, 0, 1),
    }
}

#[test]
fn endpoint_link_is_created_adopted_repaired_changed_and_removed() {
    let bed = testbed("netlink-endpoint");
    let host = bed.host(0);
    let h = host.netns();
    let ep_name = format!("{}-ep1", host.resource_prefix());

    // The endpoint's namespace, made from inside the host; twice is the same.
    let ep_path = in_host(host, || create_netns(&ep_name)).expect("create_netns");
    assert_eq!(ep_path, Path::new("/run/netns").join(&ep_name));
    assert!(ip(&["netns", "list"]).contains(&ep_name));
    assert!(
        ip_ok(&["-n", &ep_name, "link", "show", "lo"]),
        "usable by ip -n"
    );
    assert_eq!(
        in_host(host, || create_netns(&ep_name)).expect("create_netns again"),
        ep_path
    );
    assert!(in_host(host, || netns_exists(&ep_name)).unwrap());

    let mut spec = endpoint_spec(host, ep_path.clone());
    let ifname = spec.host_ifname.clone();
    assert!(ifname.len() <= IFNAMSIZ_MAX, "{ifname}");

    // Created.
    let first = ensure(host, &spec);
    assert_eq!(
        first.changes,
        vec![
            Change::CreatedPair,
            // Neither side is created up (see prepare_endpoint_link).
            Change::EndpointUp,
            Change::LoopbackUp,
            Change::EndpointAddress,
            Change::DefaultRoute,
            // Offloads for the decapsulated path: GRO in the endpoint, TSO off outside.
            Change::EndpointGro,
            Change::HostTso,
            Change::HostUp,
            Change::HostGatewayAddress,
            Change::HostEndpointRoute,
        ]
    );
    let host_link = ip(&["-n", h, "-d", "link", "show", "dev", &ifname]);
    assert!(
        host_link.contains(&format!("{}: {ifname}@", first.host_ifindex)),
        "{host_link}"
    );
    assert!(
        host_link.contains("mtu 1450") && host_link.contains("veth"),
        "{host_link}"
    );
    assert!(
        host_link.contains(&format!("link-netns {ep_name}")),
        "{host_link}"
    );
    let ep_link = ip(&["-n", &ep_name, "-d", "link", "show", "dev", "eth0"]);
    assert!(
        ep_link.contains(&format!("{}: eth0@", first.endpoint_ifindex)),
        "{ep_link}"
    );
    assert!(
        ep_link.contains("link/ether 02:42:0a:09:00:05"),
        "{ep_link}"
    );
    assert!(
        ep_link.contains("mtu 1450") && ep_link.contains(",UP"),
        "{ep_link}"
    );
    assert!(ip(&["-n", &ep_name, "link", "show", "lo"]).contains("LOOPBACK,UP"));
    let ep_addr = ip(&["-n", &ep_name, "-4", "addr", "show", "dev", "eth0"]);
    assert!(ep_addr.contains("inet 10.9.0.5/24"), "{ep_addr}");
    let ep_routes = ip(&["-n", &ep_name, "route"]);
    assert!(
        ep_routes.contains("default via 10.9.0.1 dev eth0"),
        "{ep_routes}"
    );
    let host_addr = ip(&["-n", h, "-4", "addr", "show", "dev", &ifname]);
    assert!(host_addr.contains("inet 10.9.0.1/32"), "{host_addr}");
    let host_routes = ip(&["-n", h, "route"]);
    assert!(
        host_routes.contains(&format!("10.9.0.5 dev {ifname} proto static scope link")),
        "{host_routes}"
    );

    // What a reconciler sees of it.
    let found = in_host(host, || links_with_prefix("sk")).unwrap();
    assert_eq!(found, vec![(ifname.clone(), first.host_ifindex)]);
    assert_eq!(
        in_host(host, || link_index(&ifname)).unwrap(),
        Some(first.host_ifindex)
    );
    assert_eq!(in_host(host, || link_index("nosuch0")).unwrap(), None);

    // Traffic: the endpoint reaches the gateway the host side owns, and the host reaches
    // the endpoint through its /32 route.
    wait_for_operstate_up(host, &ep_name, &spec);
    ping_from(&ep_name, spec.gateway).expect("endpoint pings its gateway");
    ping_from(h, spec.ip).expect("host pings the endpoint");

    // Ensured again (a new connection, as after an agent restart): nothing changes.
    let before = snapshot(host, &ep_name, &spec);
    let second = ensure(host, &spec);
    assert_eq!(second.changes, vec![], "second ensure changed things");
    assert_eq!(
        (second.host_ifindex, second.endpoint_ifindex),
        (first.host_ifindex, first.endpoint_ifindex)
    );
    assert_eq!(snapshot(host, &ep_name, &spec), before);

    // Drift repaired: someone flushed the address, changed the MAC, deleted the routes and
    // took the host side down.
    ip(&["-n", &ep_name, "addr", "flush", "dev", "eth0"]);
    ip(&[
        "-n",
        &ep_name,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:00:01",
    ]);
    ip(&["-n", &ep_name, "link", "set", "lo", "down"]);
    ip(&["-n", h, "link", "set", &ifname, "down"]);
    ip(&["-n", h, "addr", "add", "192.0.2.7/32", "dev", &ifname]);
    assert!(
        !ip(&["-n", h, "route"]).contains("10.9.0.5"),
        "down drops the route"
    );
    let ethtool = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec"])
            .args(args)
            .output()
            .expect("ethtool runs");
        assert!(out.status.success(), "ethtool {args:?}: {out:?}");
    };
    ethtool(&[&ep_name, "ethtool", "-K", "eth0", "gro", "off"]);
    ethtool(&[h, "ethtool", "-K", &ifname, "tso", "on"]);
    let repaired = ensure(host, &spec);
    assert_eq!(
        repaired.changes,
        vec![
            Change::EndpointMac,
            Change::LoopbackUp,
            Change::EndpointAddress,
            // Removing eth0's last address flushed the routes through it.
            Change::DefaultRoute,
            Change::EndpointGro,
            Change::HostTso,
            Change::HostUp,
            Change::HostStaleAddress,
            // Taking the host side down flushed its route.
            Change::HostEndpointRoute,
        ]
    );
    wait_for_operstate_up(host, &ep_name, &spec);
    assert_eq!(
        snapshot(host, &ep_name, &spec),
        before,
        "repaired to the same state"
    );
    assert_eq!(ensure(host, &spec).changes, vec![]);

    // A new MTU is applied to both sides, and nothing else.
    spec.mtu = 1400;
    let resized = ensure(host, &spec);
    assert_eq!(resized.changes, vec![Change::EndpointMtu, Change::HostMtu]);
    assert!(ip(&["-n", h, "link", "show", "dev", &ifname]).contains("mtu 1400"));
    assert!(ip(&["-n", &ep_name, "link", "show", "dev", "eth0"]).contains("mtu 1400"));
    // set_mtu, used from the host, is seen by ensure as drift and put back.
    in_host(host, || set_mtu(&ifname, 1300)).expect("set_mtu");
    assert!(ip(&["-n", h, "link", "show", "dev", &ifname]).contains("mtu 1300"));
    assert_eq!(ensure(host, &spec).changes, vec![Change::HostMtu]);

    // A new address: the old one and its host route go.
    spec.ip = Ipv4Addr::new(10, 9, 0, 6);
    assert_eq!(
        ensure(host, &spec).changes,
        vec![
            Change::EndpointStaleAddress,
            Change::EndpointAddress,
            // Removing eth0's last address flushed the routes through it.
            Change::DefaultRoute,
            Change::HostEndpointRoute,
            Change::HostStaleRoute,
        ]
    );
    let ep_addr = ip(&["-n", &ep_name, "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        ep_addr.contains("inet 10.9.0.6/24") && !ep_addr.contains("10.9.0.5"),
        "{ep_addr}"
    );
    let host_routes = ip(&["-n", h, "route"]);
    assert!(
        host_routes.contains(&format!("10.9.0.6 dev {ifname} proto static scope link"))
            && !host_routes.contains("10.9.0.5"),
        "{host_routes}"
    );

    // A new gateway: the default route is replaced in place, the host side gets the new
    // address before losing the old one (so its route to the endpoint stays).
    spec.gateway = Ipv4Addr::new(10, 9, 0, 254);
    assert_eq!(
        ensure(host, &spec).changes,
        vec![
            Change::DefaultRoute,
            Change::HostGatewayAddress,
            Change::HostStaleAddress,
        ]
    );
    let ep_routes = ip(&["-n", &ep_name, "route"]);
    assert!(
        ep_routes.contains("default via 10.9.0.254 dev eth0") && !ep_routes.contains("10.9.0.1 "),
        "{ep_routes}"
    );
    let host_addr = ip(&["-n", h, "-4", "addr", "show", "dev", &ifname]);
    assert!(
        host_addr.contains("inet 10.9.0.254/32") && !host_addr.contains("10.9.0.1/"),
        "{host_addr}"
    );
    wait_for_operstate_up(host, &ep_name, &spec);
    ping_from(&ep_name, spec.gateway).expect("endpoint pings its new gateway");
    assert_eq!(ensure(host, &spec).changes, vec![]);

    // Removed: both ends go; removing again is fine.
    assert!(in_host(host, || remove_endpoint_link(&ifname)).unwrap());
    assert!(!ip_ok(&["-n", h, "link", "show", "dev", &ifname]));
    assert!(!ip_ok(&["-n", &ep_name, "link", "show", "dev", "eth0"]));
    assert!(!in_host(host, || remove_endpoint_link(&ifname)).unwrap());
    assert_eq!(in_host(host, || links_with_prefix("sk")).unwrap(), vec![]);

    // The namespace too; deleting again is fine.
    in_host(host, || delete_netns(&ep_name)).expect("delete_netns");
    assert!(!ip(&["netns", "list"]).contains(&ep_name));
    assert!(!ep_path.exists());
    assert!(!in_host(host, || netns_exists(&ep_name)).unwrap());
    in_host(host, || delete_netns(&ep_name)).expect("delete_netns again");

    let prefix = bed.prefix().to_owned();
    drop(bed);
    assert_nothing_left(&prefix, &[&ifname]);
}

#[test]
fn foreign_links_are_replaced_or_refused() {
    let bed = testbed("netlink-foreign");
    let host = bed.host(0);
    let h = host.netns();
    let ep_name = format!("{}-ep1", host.resource_prefix());
    let ep_path = in_host(host, || create_netns(&ep_name)).expect("create_netns");
    let spec = endpoint_spec(host, ep_path);
    let ifname = spec.host_ifname.clone();

    // A veth with the host side's name whose peer stays in the host, and an unrelated
    // eth0 in the endpoint: both are replaced by the real pair.
    ip(&[
        "-n", h, "link", "add", &ifname, "type", "veth", "peer", "name", "stray0",
    ]);
    ip(&["-n", &ep_name, "link", "add", "eth0", "type", "bridge"]);
    let state = ensure(host, &spec);
    assert_eq!(
        state.changes[..3],
        [
            Change::ReplacedPair,
            Change::RemovedStrayEndpointLink,
            Change::CreatedPair
        ],
        "{state:?}"
    );
    assert!(!ip_ok(&["-n", h, "link", "show", "dev", "stray0"]));
    let ep_link = ip(&["-n", &ep_name, "-d", "link", "show", "dev", "eth0"]);
    assert!(
        ep_link.contains("veth") && !ep_link.contains("bridge"),
        "{ep_link}"
    );
    assert_eq!(ensure(host, &spec).changes, vec![]);

    // A non-veth with the host side's name is not Skein's: refused, left alone.
    assert!(in_host(host, || remove_endpoint_link(&ifname)).unwrap());
    ip(&["-n", h, "link", "add", &ifname, "type", "bridge"]);
    let refused = in_host(host, || ensure_endpoint_link(&spec));
    assert!(
        matches!(refused, Err(NetlinkError::NotAVeth { .. })),
        "{refused:?}"
    );
    let refused = in_host(host, || remove_endpoint_link(&ifname));
    assert!(
        matches!(refused, Err(NetlinkError::NotAVeth { .. })),
        "{refused:?}"
    );
    assert!(ip(&["-n", h, "-d", "link", "show", "dev", &ifname]).contains("bridge"));

    // Bad specs are refused before anything is touched, naming the value.
    let mut bad = spec.clone();
    bad.host_ifname = "sk0123456789abcdef".to_owned();
    let err = in_host(host, || ensure_endpoint_link(&bad)).unwrap_err();
    assert!(err.to_string().contains("sk0123456789abcdef"), "{err}");
    let mut bad = spec.clone();
    bad.netns = PathBuf::from("/run/netns/does-not-exist");
    let err = in_host(host, || ensure_endpoint_link(&bad)).unwrap_err();
    assert!(matches!(err, NetlinkError::NotANetns { .. }), "{err:?}");
    let mut bad = spec.clone();
    bad.netns = netns_path(h);
    let err = in_host(host, || ensure_endpoint_link(&bad)).unwrap_err();
    assert!(matches!(err, NetlinkError::OwnNetns { .. }), "{err:?}");
    assert!(
        ip_ok(&["-n", h, "link", "show", "dev", "eth0"]),
        "the underlay is untouched"
    );
    let err = in_host(host, || create_netns("a/b")).unwrap_err();
    assert!(
        matches!(err, NetlinkError::InvalidNetnsName { .. }),
        "{err:?}"
    );

    let prefix = bed.prefix().to_owned();
    drop(bed);
    assert_nothing_left(&prefix, &[&ifname, "stray0"]);
}

#[test]
fn host_ifnames_are_accepted_by_the_kernel() {
    let bed = testbed("netlink-names");
    let host = bed.host(0);
    let mut names = Vec::new();
    for (hint, id) in [
        ("sk", "a"),
        ("sk", "8f14e45fceea167a5a36dedd4bea2543"),
        ("", "x"),
        ("a-very-long-hint", "y"),
        ("s k/:", "z"),
    ] {
        let name = host_ifname(hint, id);
        assert!(name.len() <= IFNAMSIZ_MAX, "{name}");
        assert_eq!(name, host_ifname(hint, id), "deterministic");
        host.run("ip", ["link", "add", &name, "type", "bridge"])
            .unwrap_or_else(|e| panic!("the kernel refuses {name:?}: {e:#}"));
        names.push(name);
    }
    let found = in_host(host, || links_with_prefix("")).unwrap();
    for name in &names {
        assert!(found.iter().any(|(n, _)| n == name), "{name} in {found:?}");
    }

    let prefix = bed.prefix().to_owned();
    drop(bed);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_nothing_left(&prefix, &names);
}

#[test]
fn netns_created_under_ip_netns_exec_outlives_the_process() {
    let bed = testbed("netlink-netns-exec");
    let host = bed.host(0);
    let name = format!("{}-exec", host.resource_prefix());

    // This test binary again, under `ip netns exec` (a private mount namespace), running
    // only the helper below.
    let exe = env::current_exe().expect("the test binary's path");
    let out = run_command(
        host.command(exe)
            .args(["--exact", "child_creates_netns", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_NETNS_ENV, &name),
    )
    .expect("the helper process creates the namespace");
    assert!(out.contains("1 passed"), "the helper did not run:\n{out}");

    // The helper has exited; its mount namespace is gone. The namespace must still be
    // listed *and* mounted (an unmounted placeholder file would be listed too).
    assert!(ip(&["netns", "list"]).contains(&name));
    assert!(
        ip_ok(&["-n", &name, "link", "show", "lo"]),
        "{name} is listed but is not a mounted namespace"
    );
    let path = netns_path(&name);
    assert!(in_host(host, || netns_exists(&name)).unwrap());
    // Usable from another process (this one) for netlink too.
    let lo = run_in_netns(&path, || link_index("lo")).unwrap().unwrap();
    assert_eq!(lo, Some(1));

    in_host(host, || delete_netns(&name)).expect("delete_netns");
    assert!(!ip(&["netns", "list"]).contains(&name));
    assert!(!path.exists());

    let prefix = bed.prefix().to_owned();
    drop(bed);
    assert_nothing_left(&prefix, &[]);
}

/// Helper of [`netns_created_under_ip_netns_exec_outlives_the_process`], run by it in a
/// separate process under `ip netns exec`; does nothing when run any other way.
#[test]
#[ignore = "helper process of netns_created_under_ip_netns_exec_outlives_the_process"]
fn child_creates_netns() {
    let Ok(name) = env::var(CHILD_NETNS_ENV) else {
        eprintln!("{CHILD_NETNS_ENV} is not set: nothing to do outside its parent test");
        return;
    };
    // Otherwise the parent test would prove nothing. `ip netns exec` execs this binary, so
    // the parent is the test process that ran it.
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let parent = std::os::unix::process::parent_id();
    let theirs = std::fs::read_link(format!("/proc/{parent}/ns/mnt")).unwrap();
    assert_ne!(
        ours, theirs,
        "expected a private mount namespace under ip netns exec"
    );

    let here = Path::new("/proc/thread-self/ns/net");
    let path = run_in_netns(here, || create_netns(&name))
        .unwrap()
        .expect("create_netns under ip netns exec");
    // Seen from here too (the mount propagates into this mount namespace).
    assert!(run_in_netns(here, || netns_exists(&name)).unwrap().unwrap());
    let lo = run_in_netns(&path, || link_index("lo")).unwrap().unwrap();
    assert_eq!(lo, Some(1));
}
