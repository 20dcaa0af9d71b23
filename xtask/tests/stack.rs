//! `skein stack deploy` end to end (issue 17 part 2), on a two-host testbed driven through
//! the CLI:
//! - seed 000's compose file (`image` replaced by `command`: redis from Debian's
//!   `redis-server`, the counter a `redis-cli INCR` loop) deploys as the stack `app`; the
//!   counter reaches redis by its short name `redis` (`REDIS_HOST=redis`, unchanged);
//!   `stack ls|services|ps` list it;
//! - deploying the same file again leaves every task alone; a file with one changed
//!   environment variable updates that service only (a rolling update replaces every one
//!   of its tasks), redis untouched;
//! - a file with `image:` fails naming the key and its line, and creates nothing;
//! - `stack rm` removes the services, their tasks' namespaces and the stack's network.
//!
//! Needs root, `redis-server` and `redis-cli`. DNS forwarding goes only to an address of
//! the test's own client namespace (nothing listens there).

use std::{path::Path, time::Instant};

use serde_json::Value;
use xtask::{
    cluster::{agent_namespaces, service_tasks, skein, skein_ok, start_cluster_with, DEADLINE},
    testbed::{wait_until, Host, Testbed, TestbedConfig, CLIENT_UNDERLAY_IP},
};

/// Seed 000's file with `command:` for `image:`; `$$` is compose's literal `$`.
fn seed_000(counter_env: &str) -> String {
    format!(
        r#"version: '3'

services:
    counter:
        command: ["sh", "-c", "while true; do redis-cli -h \"$$REDIS_HOST\" -p 6379 INCR hits; sleep 0.5; done"]
        networks:
            - backend
        ports:
            - "4568:4567"
        environment:
            - REDIS_HOST=redis
            - {counter_env}
        depends_on:
            - redis
        deploy:
            replicas: 6
    redis:
        command: ["redis-server", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
        networks:
            - backend
networks:
    backend:
        driver: overlay
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Task IDs of `service` as `host` lists them, sorted.
fn task_ids(host: &Host, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = service_tasks(host, service)
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    ids
}

fn running(host: &Host, service: &str) -> usize {
    service_tasks(host, service)
        .iter()
        .filter(|t| t.state == "running")
        .count()
}

fn network_names(host: &Host) -> Vec<String> {
    let rows: Vec<Value> =
        serde_json::from_str(&skein_ok(host, &["network", "ls", "--format", "json"]).unwrap())
            .unwrap();
    rows.iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_compose_file_deploys_as_a_stack_and_is_removed_whole() {
    let started = Instant::now();
    let stage = |what: &str| eprintln!("[{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    let bed = Testbed::new("stack", TestbedConfig::with_hosts(2)).expect("testbed");
    let upstream = format!("--dns-upstream={CLIENT_UNDERLAY_IP}");
    let (_agents, _token) =
        start_cluster_with(&bed, |_| vec![upstream.clone()], &[]).expect("cluster");
    let (h1, h2) = (bed.host(0), bed.host(1));
    let dir = bed.run_dir().to_owned();
    stage("cluster up");

    // A file with `image:` fails naming the key and its line; nothing is created.
    let bad = write(
        &dir,
        "bad.yaml",
        &seed_000("V=1").replace(
            "    redis:\n        command",
            "    redis:\n        image: redis:latest\n        command",
        ),
    );
    let out = skein(h1, &["stack", "deploy", "-c", &bad, "app"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deployed a file with image:");
    assert!(
        stderr.contains("line 18") && stderr.contains("services.redis.image"),
        "the error names the key and its line: {stderr}"
    );
    assert!(
        !skein_ok(h1, &["service", "ls"]).unwrap().contains("app_"),
        "nothing created"
    );
    assert!(!network_names(h1).iter().any(|n| n.starts_with("app_")));
    stage("image: refused");

    // Seed 000 deploys; depends_on is ignored with a warning.
    let file = write(&dir, "stack.yaml", &seed_000("V=1"));
    let out = skein(h1, &["stack", "deploy", "-c", &file, "app"]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stack deploy: {stdout}{stderr}");
    for line in [
        "Creating network app_backend",
        "Creating service app_counter",
        "Creating service app_redis",
    ] {
        assert!(stdout.contains(line), "{line:?} missing: {stdout}");
    }
    assert!(stderr.contains("depends_on"), "warning: {stderr}");
    wait_until("6 + 1 tasks running", 4 * DEADLINE, || {
        running(h2, "app_counter") == 6 && running(h2, "app_redis") == 1
    })
    .unwrap();
    stage("deployed");

    // The counter reaches `redis` by its short name: redis counts its INCRs.
    let counted = wait_until("the counter counting in redis", 2 * DEADLINE, || {
        let logs = skein_ok(h1, &["service", "logs", "app_counter"]).ok()?;
        logs.lines()
            .filter_map(|l| l.rsplit(['|', ' ']).next()?.trim().parse::<u64>().ok())
            .max()
            .filter(|n| *n >= 10)
    })
    .unwrap();
    stage(&format!(
        "counter reached redis by its short name ({counted} hits)"
    ));

    let ls = skein_ok(h2, &["stack", "ls"]).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["app", "2"]),
        "{ls}"
    );
    let services = skein_ok(h2, &["stack", "services", "app"]).unwrap();
    assert!(
        services.contains("app_counter") && services.contains("app_redis"),
        "{services}"
    );
    assert!(services.contains("6/6"), "{services}");
    let ps = skein_ok(h2, &["stack", "ps", "app", "--format", "json"]).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&ps).unwrap();
    assert_eq!(rows.len(), 7, "{ps}");

    // The same file again: nothing changes.
    let counter_ids = task_ids(h1, "app_counter");
    let redis_ids = task_ids(h1, "app_redis");
    let again = skein_ok(h1, &["stack", "deploy", "-c", &file, "app"]).unwrap();
    assert!(
        again.contains("Service app_counter is unchanged")
            && again.contains("Service app_redis is unchanged")
            && !again.contains("Creating"),
        "{again}"
    );

    // One changed variable: only that service is updated (a rolling update), redis is
    // left alone.
    let changed = write(&dir, "changed.yaml", &seed_000("V=2"));
    let out = skein_ok(h1, &["stack", "deploy", "-c", &changed, "app"]).unwrap();
    assert!(
        out.contains("Updating service app_counter (environment)")
            && out.contains("Service app_redis is unchanged")
            && !out.contains("Creating"),
        "{out}"
    );
    wait_until(
        "every counter task replaced",
        std::time::Duration::from_secs(240),
        || {
            let running: Vec<_> = service_tasks(h1, "app_counter")
                .into_iter()
                .filter(|t| t.state == "running")
                .collect();
            running.len() == 6 && running.iter().all(|t| !counter_ids.contains(&t.id))
        },
    )
    .unwrap();
    assert_eq!(task_ids(h1, "app_redis"), redis_ids, "redis untouched");
    let inspect = skein_ok(h1, &["service", "inspect", "app_counter"]).unwrap();
    assert!(
        inspect.contains("\"V\"") && inspect.contains("\"2\""),
        "{inspect}"
    );
    stage("re-deploys: unchanged left alone, a change rolled out to that service only");

    // `stack rm` removes everything: services, task namespaces, the network.
    let rm = skein_ok(h1, &["stack", "rm", "app"]).unwrap();
    assert!(rm.contains("Removing network app_backend"), "{rm}");
    assert!(!skein_ok(h2, &["service", "ls"]).unwrap().contains("app_"));
    wait_until("no stack network on either host", DEADLINE, || {
        bed.hosts()
            .iter()
            .all(|h| !network_names(h).iter().any(|n| n.starts_with("app_")))
    })
    .unwrap();
    wait_until("no task namespace left", DEADLINE, || {
        bed.hosts()
            .iter()
            .all(|h| agent_namespaces(h).is_ok_and(|n| n.is_empty()))
    })
    .unwrap();
    let ls = skein_ok(h1, &["stack", "ls"]).unwrap();
    assert_eq!(ls.lines().count(), 1, "only the header: {ls}");
    stage("stack rm left nothing");
}
