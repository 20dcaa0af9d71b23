//! Services end to end on three hosts, driven through `skein service ...` as a user does:
//! create converges with one task per host and every task answers on its overlay IP from
//! another host; `service logs` on one host shows every task's output, and notes the
//! tasks of a host that is down; scale and rm leave nothing behind; attach counts a namespace as a replica;
//! bad input is refused with one clear error and creates nothing; a host cut off or killed
//! has its task run elsewhere, and its return rebalances with one move; an agent restart
//! adopts its tasks without duplicating them. Needs root.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use xtask::{
    cluster::{create_endpoint, in_netns, skein, skein_ok, start_cluster, DEADLINE},
    testbed::{skein_binary, wait_until, Host, Testbed, TestbedConfig},
};

/// A task as `service ps --format json` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TaskInfo {
    name: String,
    id: String,
    host: String,
    ip: String,
    state: String,
}

fn tasks(host: &Host, service: &str) -> Vec<TaskInfo> {
    let Ok(out) = skein_ok(host, &["service", "ps", service, "--format", "json"]) else {
        return Vec::new();
    };
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    rows.iter()
        .map(|r| TaskInfo {
            name: r["name"].as_str().unwrap_or_default().to_owned(),
            id: r["id"].as_str().unwrap_or_default().to_owned(),
            host: r["hostname"].as_str().unwrap_or_default().to_owned(),
            ip: r["ip"].as_str().unwrap_or_default().to_owned(),
            state: r["state"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn running(host: &Host, service: &str) -> Vec<TaskInfo> {
    tasks(host, service)
        .into_iter()
        .filter(|t| t.state == "running")
        .collect()
}

/// Running tasks per host name.
fn per_host(tasks: &[TaskInfo]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in tasks {
        *counts.entry(t.host.clone()).or_default() += 1;
    }
    counts
}

fn whoami_command() -> Vec<String> {
    let bin = skein_binary().unwrap();
    vec![
        bin.display().to_string(),
        "whoami".into(),
        "--port".into(),
        "80".into(),
    ]
}

/// `service create NAME ARGS -- whoami` on `host`.
fn create(host: &Host, name: &str, args: &[&str]) -> std::process::Output {
    let command = whoami_command();
    let mut all: Vec<&str> = vec!["service", "create", name];
    all.extend_from_slice(args);
    all.push("--");
    all.extend(command.iter().map(String::as_str));
    skein(host, &all).unwrap()
}

fn run_ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ip {args:?}");
}

fn curl(netns: &str, ip: &str) -> Option<String> {
    let out = in_netns(
        netns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            &format!("http://{ip}:80/"),
        ],
    )
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces and host-side veths Skein made on `host` for endpoints and tasks.
fn leftovers(host: &Host) -> (usize, usize) {
    let namespaces = host
        .run("ip", ["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{}-", host.resource_prefix())))
        .count();
    let veths = host
        .run("ip", ["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        // Endpoint veths ("sk<hex>"), not the host path's pair (`skein-mesh`, `-p`).
        .filter(|l| {
            l.split(": ").nth(1).is_some_and(|n| {
                n.starts_with("sk") && !n.starts_with(dataplane_ebpf::sock::HOST_PATH_IFACE)
            })
        })
        .count();
    (namespaces, veths)
}

/// Processes running the whoami server anywhere on the machine whose namespace belongs to
/// `host`'s tasks.
fn whoami_processes(host: &Host) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        let environ = String::from_utf8_lossy(&environ);
        // A task's init (`skein task-init`, PID 1 of its namespace) names the command too.
        let init = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "skein-init");
        if !init && cmdline.contains("whoami") && environ.contains("SKEIN_TASK=") {
            // The task's namespace is named after the host's resource prefix.
            let mine = host
                .run("ip", ["netns", "identify", &pid.to_string()])
                .unwrap_or_default();
            if mine
                .trim()
                .starts_with(&format!("{}-", host.resource_prefix()))
            {
                count += 1;
            }
        }
    }
    count
}

#[test]
fn services_converge_answer_scale_attach_and_refuse_bad_input() {
    let bed = Testbed::new("services", TestbedConfig::with_hosts(3)).expect("testbed");
    let (_agents, _token) = start_cluster(&bed).unwrap();
    let h1 = bed.host(0);

    // Create: converges with one task per host, as the seeds show.
    let out = create(h1, "web", &["--replicas", "3", "--publish", "8080:80"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "service create failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("overall progress: 3 out of 3 tasks"),
        "{stdout}"
    );
    assert!(stdout.contains("verify: Service converged"), "{stdout}");
    let web = running(h1, "web");
    assert_eq!(web.len(), 3, "{web:?}");
    assert_eq!(
        per_host(&web).len(),
        3,
        "one task per host: {:?}",
        per_host(&web)
    );
    // Every node agrees.
    for host in bed.hosts() {
        wait_until("every node lists the 3 tasks", DEADLINE, || {
            running(host, "web").len() == 3
        })
        .unwrap();
    }

    // Each task answers on its overlay IP from an endpoint on another host.
    let probes: Vec<(String, String)> = bed
        .hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| create_endpoint(h, "skein", &format!("probe{i}")).unwrap())
        .collect();
    for task in &web {
        let (probe_ns, _) = probes
            .iter()
            .zip(bed.hosts())
            .find(|(_, h)| h.netns() != task.host)
            .map(|(p, _)| p)
            .unwrap();
        let body = wait_until(&format!("whoami of {}", task.name), DEADLINE, || {
            curl(probe_ns, &task.ip)
        })
        .unwrap();
        assert!(body.contains(&format!("Hostname: {}", task.id)), "{body}");
        assert!(body.contains(&format!("IP: {}", task.ip)), "{body}");
        assert!(body.contains("Service: web"), "{body}");
    }

    // Logs, cluster-wide from h1: every task's startup line, whichever host runs it.
    let out = skein(h1, &["service", "logs", "web"]).unwrap();
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "service logs failed: {logs}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for task in &web {
        let prefix = format!("{}.{}    | ", task.name, task.id);
        assert!(
            logs.lines()
                .any(|l| l.starts_with(&prefix) && l.contains("whoami listening")),
            "no startup line of {} (on {}) in:\n{logs}\nstderr: {}",
            task.name,
            task.host,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("note:"),
        "no task is unavailable: {stderr}"
    );

    // Bad input: one clear error each, nothing created.
    let before = skein_ok(h1, &["service", "ls"]).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["service", "ps", "nosuch"], "does not exist"),
        (vec!["service", "scale", "nosuch=2"], "does not exist"),
        (vec!["service", "rm", "nosuch"], "does not exist"),
        (
            vec!["service", "create", "bad1", "--publish", "80", "--", "true"],
            "PUBLISHED:TARGET",
        ),
        (
            vec![
                "service",
                "create",
                "bad2",
                "--replicas",
                "-1",
                "--",
                "true",
            ],
            "negative",
        ),
        (
            vec!["service", "create", "bad3", "--", "/no/such/command"],
            "not found",
        ),
        (
            vec!["service", "create", "bad4", "--", "no-such-command-xyz"],
            "not found",
        ),
        (
            vec![
                "service",
                "create",
                "bad5",
                "--publish",
                "8080:81",
                "--",
                "true",
            ],
            "already published by service \"web\"",
        ),
        (
            vec!["service", "create", "Bad6", "--", "true"],
            "is invalid",
        ),
        // Skein's own ports: VXLAN, gossip (and peer requests), this agent's metrics.
        (
            vec![
                "service",
                "create",
                "bad7",
                "-p",
                "4789:80/udp",
                "--",
                "true",
            ],
            "used by Skein itself (VXLAN between nodes)",
        ),
        (
            vec!["service", "create", "bad8", "-p", "7946:80", "--", "true"],
            "used by Skein itself (gossip",
        ),
        (
            vec!["service", "create", "bad9", "-p", "9946:80", "--", "true"],
            "used by Skein itself (this node's metrics",
        ),
    ];
    for (args, expected) in cases {
        let out = skein(h1, &args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(
            stderr
                .trim()
                .lines()
                .filter(|l| l.contains("error"))
                .count(),
            1,
            "{args:?}: one error line: {stderr}"
        );
    }
    assert_eq!(skein_ok(h1, &["service", "ls"]).unwrap(), before);

    // Scale up and down: balanced, and nothing left behind by the removed tasks.
    let out = skein(h1, &["service", "scale", "web=6"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let six = running(h1, "web");
    assert_eq!(six.len(), 6);
    assert!(
        per_host(&six).values().all(|&n| n == 2),
        "{:?}",
        per_host(&six)
    );
    let kept: BTreeSet<String> = web.iter().map(|t| t.id.clone()).collect();
    assert!(
        kept.iter().all(|id| six.iter().any(|t| &t.id == id)),
        "scaling up kept the running tasks"
    );
    let out = skein(h1, &["service", "scale", "web=2"]).unwrap();
    assert!(out.status.success());
    // The scaled-away tasks drain first (default window 10 s): listed as draining, their
    // processes still running. (At least 4: a kept slot may also move, and drain.)
    let draining = tasks(h1, "web")
        .into_iter()
        .filter(|t| t.state == "draining")
        .count();
    assert!(draining >= 4, "{:?}", tasks(h1, "web"));
    assert!(bed.hosts().iter().map(whoami_processes).sum::<usize>() >= 6);
    wait_until("2 tasks, the others gone", DEADLINE, || {
        tasks(h1, "web").len() == 2
            && bed.hosts().iter().map(|h| leftovers(h).0).sum::<usize>() == 2 + 3
        // 2 tasks + 3 probes
    })
    .unwrap_or_else(|e| {
        let left: Vec<_> = bed.hosts().iter().map(leftovers).collect();
        let names = bed.host(0).run("ip", ["netns", "list"]).unwrap_or_default();
        panic!(
            "{e}: tasks {:?}, namespaces and veths per host {left:?}, namespaces:\n{names}",
            tasks(h1, "web")
        )
    });
    let processes: usize = bed.hosts().iter().map(whoami_processes).sum();
    assert_eq!(processes, 2, "whoami processes after scaling to 2");

    // Attach: an existing namespace counts as a replica.
    let attached_ns = format!("{}-attached", bed.host(1).resource_prefix());
    // In the machine's mount namespace (not under `ip netns exec`), so the agent sees it.
    run_ip(&["netns", "add", &attached_ns]);
    skein_ok(
        bed.host(1),
        &["service", "attach", "web", "--netns", &attached_ns],
    )
    .unwrap();
    wait_until("the attached task listed", DEADLINE, || {
        tasks(h1, "web")
            .iter()
            .any(|t| t.name.starts_with("web.attached") && t.state == "running")
    })
    .unwrap();
    // It replaces one of the two started tasks.
    wait_until("one started task left", DEADLINE, || {
        bed.hosts().iter().map(whoami_processes).sum::<usize>() == 1
    })
    .unwrap();
    let ls = skein_ok(h1, &["service", "ls", "--format", "json"]).unwrap();
    assert!(
        ls.contains("\"replicas\": \"2/2\""),
        "attached counts as one of 2: {ls}"
    );

    // rm: every task's namespace, veth and process goes; the attached namespace stays.
    skein_ok(h1, &["service", "rm", "web"]).unwrap();
    wait_until("everything of web removed", DEADLINE, || {
        // 3 probes and the attached namespace
        bed.hosts().iter().map(|h| leftovers(h).0).sum::<usize>() == 4
            && bed.hosts().iter().map(whoami_processes).sum::<usize>() == 0
    })
    .unwrap();
    for (i, host) in bed.hosts().iter().enumerate() {
        let (_, veths) = leftovers(host);
        assert_eq!(
            veths, 1,
            "host {i}: only the probe's veth is left (attached: detached)"
        );
    }
    assert!(bed
        .host(1)
        .run("ip", ["netns", "list"])
        .unwrap()
        .contains(&attached_ns));
    run_ip(&["netns", "del", &attached_ns]);

    // Global mode with a health check: one healthy task per node.
    let whoami = whoami_command();
    let mut args = vec![
        "service",
        "create",
        "everywhere",
        "--mode",
        "global",
        "--health-cmd",
        "curl -sf -o /dev/null http://127.0.0.1:81/",
        "--health-interval",
        "300ms",
        "--",
        whoami[0].as_str(),
        "whoami",
        "--port",
        "81",
    ];
    let out = skein(h1, &args).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let global = running(h1, "everywhere");
    assert_eq!(per_host(&global).len(), 3, "{global:?}");
    skein_ok(h1, &["service", "rm", "everywhere"]).unwrap();

    // A service that cannot converge: the CLI gives up after --timeout with the reason.
    args = vec![
        "service",
        "create",
        "crashing",
        "--restart-delay",
        "200ms",
        "--timeout",
        "3s",
        "--",
        "sh",
        "-c",
        "exit 3",
    ];
    let out = skein(h1, &args).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("did not converge") && stderr.contains("exited with code 3"),
        "{stderr}"
    );
    let unhealthy = skein(
        h1,
        &[
            "service",
            "create",
            "never-healthy",
            "--health-cmd",
            "false",
            "--health-interval",
            "200ms",
            "--timeout",
            "2s",
            "--",
            whoami[0].as_str(),
            "whoami",
            "--port",
            "82",
        ],
    )
    .unwrap();
    assert!(
        !unhealthy.status.success(),
        "a never-healthy service does not converge"
    );
    let states: Vec<String> = tasks(h1, "never-healthy")
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, ["starting"], "its task is not counted as running");
    for name in ["crashing", "never-healthy"] {
        skein_ok(h1, &["service", "rm", name]).unwrap();
    }
}

#[test]
fn a_lost_host_has_its_task_moved_and_its_return_moves_one_back() {
    let bed = Testbed::new("svc-failover", TestbedConfig::with_hosts(3)).expect("testbed");
    let (mut agents, token) = start_cluster(&bed).unwrap();
    let h1 = bed.host(0);
    let out = create(h1, "web", &["--replicas", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = running(h1, "web");
    assert_eq!(per_host(&before).len(), 3);

    // h3 cut off: its slot runs on h1/h2.
    let h3 = bed.host(2).netns().to_owned();
    bed.set_underlay_link(2, false).unwrap();
    wait_until("3 running tasks on h1 and h2", DEADLINE, || {
        let r: Vec<TaskInfo> = running(h1, "web")
            .into_iter()
            .filter(|t| t.host != h3)
            .collect();
        r.len() == 3
    })
    .unwrap();
    let during: BTreeSet<String> = running(h1, "web")
        .into_iter()
        .filter(|t| t.host != h3)
        .map(|t| t.id)
        .collect();
    // h3 alone sees a minority and starts nothing new.
    let h3_own = tasks(bed.host(2), "web")
        .into_iter()
        .filter(|t| t.host == h3 && t.state == "running")
        .count();
    assert_eq!(
        h3_own, 1,
        "the cut-off host keeps its one task and takes no others"
    );

    // It returns: one task per host again, with one move.
    bed.set_underlay_link(2, true).unwrap();
    wait_until("one running task per host again", DEADLINE, || {
        let r = running(h1, "web");
        r.len() == 3 && per_host(&r).len() == 3 && tasks(h1, "web").len() == 3
    })
    .unwrap();
    let after: BTreeSet<String> = running(h1, "web").into_iter().map(|t| t.id).collect();
    let moved = during.difference(&after).count();
    assert_eq!(moved, 1, "one task moved on return: {during:?} → {after:?}");

    // kill -9 h2's agent: its tasks keep running; restarted, it adopts them (same IDs, no
    // duplicates).
    let h2_tasks: BTreeSet<String> = running(h1, "web")
        .into_iter()
        .filter(|t| t.host == bed.host(1).netns())
        .map(|t| t.id)
        .collect();
    agents[1].kill9().unwrap();
    agents[1] = bed
        .host(1)
        .start_agent(&["--join", &h1.underlay_ip().to_string(), "--token", &token])
        .unwrap();
    wait_until("h2 back with its own tasks", DEADLINE, || {
        let r = running(bed.host(1), "web");
        let mine: BTreeSet<String> = r
            .iter()
            .filter(|t| t.host == bed.host(1).netns())
            .map(|t| t.id.clone())
            .collect();
        r.len() == 3 && mine == h2_tasks
    })
    .unwrap();
    // The API may answer from the saved store before the first supervisor pass.
    wait_until("the restarted agent adopts its task", DEADLINE, || {
        agents[1].log().contains("adopted a running task")
    })
    .unwrap();
    assert_eq!(whoami_processes(bed.host(1)), h2_tasks.len());

    // A graceful stop (SIGTERM) announces a restart: for its grace period the others do
    // not take over its slot, even though they see it down; the next agent adopts it.
    let all: BTreeSet<String> = tasks(h1, "web").into_iter().map(|t| t.id).collect();
    agents[1]
        .terminate(std::time::Duration::from_secs(10))
        .unwrap();
    wait_until("h2 seen down", DEADLINE, || {
        tasks(h1, "web").iter().any(|t| t.state == "down")
    })
    .unwrap();
    // `service logs` does not wait for it: the others' output, and a note for its task.
    let started = std::time::Instant::now();
    let out = skein(h1, &["service", "logs", "web"]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "service logs took {:?}",
        started.elapsed()
    );
    for task in tasks(h1, "web") {
        let shown = stdout
            .lines()
            .any(|l| l.starts_with(&format!("{}.{}    | ", task.name, task.id)));
        if task.state == "down" {
            assert!(!shown, "{stdout}");
            assert!(
                stderr.contains(&format!("note: no output from {} on ", task.name))
                    && stderr.contains("node is down"),
                "{stderr}"
            );
        } else {
            assert!(shown, "output of {} missing: {stdout}", task.name);
        }
    }
    // Well past failure detection and the take-over delay, but inside the 15 s grace.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let now: BTreeSet<String> = tasks(h1, "web").into_iter().map(|t| t.id).collect();
    assert_eq!(
        now, all,
        "no task was started elsewhere during the grace period"
    );
    agents[1] = bed
        .host(1)
        .start_agent(&["--join", &h1.underlay_ip().to_string(), "--token", &token])
        .unwrap();
    wait_until("h2 back, the same tasks running", DEADLINE, || {
        let r: BTreeSet<String> = running(h1, "web").into_iter().map(|t| t.id).collect();
        r == all
    })
    .unwrap();
}
