//! One full map does not stop the others (issue 9): an agent whose `OVERLAY_ENDPOINTS`
//! holds only a few entries (the test-only `SKEIN_TEST_MAP_CAPACITY`, see
//! `agent::dataplane::CAPACITY_OVERRIDE_ENV`) learns of one endpoint more than fit, on
//! another host. The error shows in the log, in `/metrics` and in `skein debug maps`; a
//! new network still reaches `OVERLAY_NETWORKS`, and an endpoint removal still reaches
//! `OVERLAY_ENDPOINTS` (and, removals coming first, makes room for the endpoint that did
//! not fit). An endpoint created on the full host itself is refused, saying so: its
//! entries are written before it comes up, and cannot be (fail closed). Needs root.
//!
//! The metric is rendered by the agent's `/metrics` (the `MapSyncErrors` the reconciler
//! records into); this test checks it by name.

use std::time::Duration;

use serde_json::Value;
use xtask::{
    cluster::{create_endpoint, ready_count, skein, skein_ok, DEADLINE},
    scrape::{sample, scrape},
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig},
};

/// What the test makes `OVERLAY_ENDPOINTS` hold.
const CAPACITY: usize = 3;
const FULL_METRIC: &str =
    "skein_dataplane_sync_errors_total{map=\"OVERLAY_ENDPOINTS\",reason=\"full\"}";

/// `skein agent --init` with the endpoints map made small.
fn start_small_agent(host: &Host) -> Process {
    let mut cmd = host.skein().expect("skein binary");
    cmd.arg("agent")
        .args(["--underlay-iface", host.underlay_iface()])
        .arg("--bpf-dir")
        .arg(host.bpf_dir())
        .args(["--resource-prefix", host.resource_prefix(), "--init"])
        .env(
            agent::dataplane::CAPACITY_OVERRIDE_ENV,
            format!("OVERLAY_ENDPOINTS={CAPACITY}"),
        )
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    host.spawn(cmd, "agent").expect("agent starts")
}

/// The IPs in `debug maps`' endpoints section.
fn mapped_endpoint_ips(maps: &str) -> Vec<String> {
    maps.lines()
        .skip_while(|l| !l.starts_with("endpoints ("))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect()
}

fn debug_maps(host: &Host) -> String {
    skein_ok(host, &["debug", "maps"]).expect("skein debug maps")
}

#[test]
fn a_full_endpoints_map_does_not_stop_new_networks_or_removals() {
    let bed = Testbed::new("map-sync", TestbedConfig::with_hosts(2)).expect("testbed");
    let (host, other) = (bed.host(0), bed.host(1));
    let mut agent = start_small_agent(host);
    let token = wait_until("the join token", DEADLINE, || {
        skein_ok(host, &["join-token"]).map(|t| t.trim().to_owned())
    })
    .unwrap();
    let _other_agent = other
        .start_agent(&["--join", &host.underlay_ip().to_string(), "--token", &token])
        .expect("second agent");
    wait_until("2 ready nodes", DEADLINE, || ready_count(host) == Some(2)).unwrap();
    skein_ok(host, &["network", "create", "net1"]).unwrap();
    wait_until("net1 on the other host", DEADLINE, || {
        skein_ok(other, &["network", "ls"]).map(|ls| ls.contains("net1"))
    })
    .unwrap();
    // Created on the other host (whose map is of normal size): remote entries on this one.
    let endpoints: Vec<(String, String)> = (0..=CAPACITY)
        .map(|i| {
            let name = format!("e{i}");
            let (_, ip) = create_endpoint(other, "net1", &name).unwrap();
            (name, ip)
        })
        .collect();

    // The map is full: CAPACITY of the endpoints are in it, and the error is everywhere.
    let maps = wait_until("OVERLAY_ENDPOINTS reported full", DEADLINE, || {
        let maps = debug_maps(host);
        maps.lines()
            .any(|l| l.starts_with("not converged: OVERLAY_ENDPOINTS: full:"))
            .then_some(maps)
    })
    .unwrap();
    let mapped = mapped_endpoint_ips(&maps);
    assert_eq!(mapped.len(), CAPACITY, "{maps}");
    let missing: Vec<&(String, String)> = endpoints
        .iter()
        .filter(|(_, ip)| !mapped.contains(ip))
        .collect();
    assert_eq!(missing.len(), 1, "{maps}");
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("map did not converge")
            && l.contains("OVERLAY_ENDPOINTS")
            && l.contains("full")),
        "no warning about the full map in the agent's log:\n{log}"
    );

    // An endpoint of this host cannot get its entries in: refused, saying why, and
    // nothing of it is left.
    let refused = skein(
        host,
        &["endpoint", "create", "--network", "net1", "--name", "late"],
    )
    .expect("skein endpoint create");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "created on a full map");
    assert!(
        stderr.contains("OVERLAY_ENDPOINTS") && stderr.contains("full"),
        "{stderr}"
    );
    assert!(
        !skein_ok(host, &["endpoint", "ls"])
            .unwrap()
            .contains("late"),
        "the refused endpoint is gone"
    );

    // A new network still reaches its map.
    skein_ok(host, &["network", "create", "net2"]).unwrap();
    let networks: Vec<Value> =
        serde_json::from_str(&skein_ok(host, &["network", "ls", "--format", "json"]).unwrap())
            .unwrap();
    let vni = networks
        .iter()
        .find(|n| n["name"] == "net2")
        .and_then(|n| n["vni"].as_u64())
        .expect("net2's VNI");
    wait_until("net2 in OVERLAY_NETWORKS", DEADLINE, || {
        debug_maps(host)
            .lines()
            .any(|l| l.trim().starts_with(&format!("vni {vni} subnet")))
    })
    .unwrap();

    // An endpoint removal still reaches the endpoints map, and frees the room the
    // missing endpoint waited for (after the add-only warm-up, which DEADLINE outlasts).
    let (removed_name, removed_ip) = endpoints
        .iter()
        .find(|(_, ip)| mapped.contains(ip))
        .unwrap();
    skein_ok(other, &["endpoint", "rm", removed_name]).unwrap();
    let maps = wait_until(
        "the removal and the missing endpoint in the map",
        DEADLINE,
        || {
            let maps = debug_maps(host);
            let now = mapped_endpoint_ips(&maps);
            (!now.contains(removed_ip)
                && now.contains(&missing[0].1)
                && !maps.contains("not converged:"))
            .then_some(maps)
        },
    )
    .unwrap();
    assert_eq!(mapped_endpoint_ips(&maps).len(), CAPACITY, "{maps}");

    // The metric counts the full passes (it stays after the map converged).
    let full = wait_until("the full-map metric", DEADLINE, || {
        scrape(host).and_then(|m| sample(&m, FULL_METRIC))
    })
    .unwrap();
    assert!(full >= 1, "{FULL_METRIC} = {full}");
    agent.terminate(Duration::from_secs(10)).expect("SIGTERM");
}
