//! Every task in its own cgroup (issue 14, parts 1 and 2), end to end through the CLI on a
//! one-host testbed: processes a task daemonized (`setsid`) end with it across restarts,
//! `service rm`, and a `kill -9` of the agent with a restart in between; tasks ignoring
//! SIGTERM are gone within the stop grace period after `service scale` down and `rm`;
//! `--limit-memory` gets a task killed by the kernel, restarted, and `service ps` says so;
//! `--limit-pids` stops a fork storm inside its task and nothing else. No group is left.
//! Needs root.
//!
//! Processes are found by a marker only they carry: a unique `sleep` duration in argv and a
//! unique environment variable (every process a task starts inherits it), whatever session
//! or process group they moved to.

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use xtask::{
    cluster::{service_tasks, skein, skein_ok, start_cluster_with, DEADLINE},
    testbed::{wait_until, Host, Process, Testbed, TestbedConfig},
};

/// The agents' drain window here: short, so stops are quick to observe.
const DRAIN: Duration = Duration::from_secs(1);
/// The agent's stop grace (SIGTERM → kill), `supervisor::task::STOP_GRACE`.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Slack for a loaded machine on top of drain + grace.
const SLACK: Duration = Duration::from_secs(6);

/// A marker unique to this test run and `what`: a number used as a `sleep` duration.
fn marker(what: u32) -> u32 {
    900_000_000 + (std::process::id() % 10_000) * 100 + what
}

/// Processes (PID → task ID from their environment) whose argv holds `marker` as a word or
/// whose environment holds `SKEIN_CG_MARK=<marker>`.
fn marked(marker: u32) -> Vec<(u32, String)> {
    let word = marker.to_string();
    let env = format!("SKEIN_CG_MARK={marker}");
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        let in_argv = cmdline.split(|&b| b == 0).any(|a| a == word.as_bytes());
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        let in_env = vars.contains(&env.as_bytes());
        if in_argv || in_env {
            let task = vars
                .iter()
                .find_map(|v| v.strip_prefix(b"SKEIN_TASK="))
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default();
            found.push((pid, task));
        }
    }
    found
}

/// The distinct tasks with marked processes.
fn marked_tasks(marker: u32) -> BTreeSet<String> {
    marked(marker).into_iter().map(|(_, t)| t).collect()
}

/// `service create NAME FLAGS -e SKEIN_CG_MARK=<marker> --detach -- sh -c SCRIPT`.
fn create(host: &Host, name: &str, flags: &[&str], marker: u32, script: &str) {
    let env = format!("SKEIN_CG_MARK={marker}");
    let mut args = vec!["service", "create", name, "-e", &env, "--detach"];
    args.extend_from_slice(flags);
    args.extend(["--", "sh", "-c", script]);
    let out = skein(host, &args).unwrap();
    assert!(
        out.status.success(),
        "service create {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The task groups of this host's agent: `skein/<node>/<task>` in every mounted hierarchy.
fn task_groups(node_id: &str) -> Vec<PathBuf> {
    let mut groups = Vec::new();
    for hierarchy in fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let node = hierarchy.path().join("skein").join(node_id);
        if let Ok(entries) = fs::read_dir(&node) {
            groups.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    groups
}

fn node_id(host: &Host) -> String {
    let out = skein_ok(host, &["node", "ls", "--format", "json"]).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    rows[0]["id"].as_str().unwrap().to_owned()
}

/// How many times the agent logged that a task of `service` ended.
fn ends_logged(agent: &Process, service: &str) -> usize {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("task process ended") && l.contains(&format!("service={service}")))
        .count()
}

fn rm(host: &Host, name: &str) {
    skein_ok(host, &["service", "rm", name]).unwrap();
}

/// Waits until no process carries `marker`, at most `within`; panics naming what is left.
fn none_left(marker: u32, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    wait_until(what, within, || marked(marker).is_empty()).unwrap_or_else(|e| {
        panic!("{e:#}: left {:?}", marked(marker));
    });
    started.elapsed()
}

/// A task script forking up to 60 `sleep <marker>`, reporting a refused fork and how many
/// it got, then staying up (a shell would exit at its first refused fork).
fn forker(marker: u32) -> String {
    format!(
        "exec python3 -c '\
import os, time
n = 0
for i in range(60):
    try:
        if os.fork() == 0:
            os.execvp(\"sleep\", [\"sleep\", \"{marker}\"])
        n += 1
    except OSError as e:
        print(\"fork refused:\", e, flush=True)
        break
print(\"forked\", n, flush=True)
time.sleep(100000)
'"
    )
}

fn start(bed: &Testbed) -> Vec<Process> {
    let drain = format!("{}s", DRAIN.as_secs());
    let (agents, _) =
        start_cluster_with(bed, |_| vec!["--drain-window".into(), drain.clone()], &[]).unwrap();
    agents
}

#[test]
fn every_process_of_a_task_ends_with_it() {
    let bed = Testbed::new("cg-end", TestbedConfig::with_hosts(1)).expect("testbed");
    let mut agents = start(&bed);
    let h1 = bed.host(0);
    let node = node_id(h1);

    // A task that daemonizes a sleep and exits: restarted again and again, nothing piles up.
    let leak = marker(1);
    create(
        h1,
        "leak",
        &["--restart-delay", "1s"],
        leak,
        &format!("setsid sleep {leak} & sleep 1; exit 0"),
    );
    wait_until("leak restarted 3 times", DEADLINE * 2, || {
        assert!(
            // One run: its init (`skein task-init`), sh, its `sleep 1`, the daemonized sleep.
            marked_tasks(leak).len() <= 1 && marked(leak).len() <= 4,
            "processes of earlier runs of the task accumulate: {:?}",
            marked(leak)
        );
        ends_logged(&agents[0], "leak") >= 4
    })
    .unwrap();
    rm(h1, "leak");
    none_left(leak, DEADLINE, "no process of leak after rm");

    // The same with the agent killed (-9) and restarted while the task runs.
    let killed = marker(2);
    create(
        h1,
        "killed",
        &["--restart-delay", "1s"],
        killed,
        &format!("setsid sleep {killed} & sleep 4; exit 0"),
    );
    wait_until("killed restarted 3 times", DEADLINE * 2, || {
        ends_logged(&agents[0], "killed") >= 3
    })
    .unwrap();
    wait_until("a run of killed with its daemon", DEADLINE, || {
        marked(killed).len() >= 2
    })
    .unwrap();
    agents[0].kill9().unwrap();
    assert!(
        !marked(killed).is_empty(),
        "the task outlives its agent (it is adopted, not restarted)"
    );
    agents[0] = h1
        .start_agent(&["--drain-window", &format!("{}s", DRAIN.as_secs())])
        .unwrap();
    wait_until("the agent answers again", DEADLINE, || {
        skein_ok(h1, &["service", "ls"]).is_ok()
    })
    .unwrap();
    wait_until(
        "killed restarted after the agent restart",
        DEADLINE * 2,
        || ends_logged(&agents[0], "killed") >= 2,
    )
    .unwrap();
    rm(h1, "killed");
    none_left(killed, DEADLINE, "no process of killed after rm");

    // Tasks that ignore SIGTERM (and a child in another session that does too) are gone
    // within drain + grace after scale down and rm.
    let stubborn = marker(3);
    create(
        h1,
        "stubborn",
        &["--replicas", "3"],
        stubborn,
        &format!(
            "trap '' TERM; setsid sh -c \"trap '' TERM; sleep {stubborn}\" & \
             while :; do sleep 1; done"
        ),
    );
    wait_until("3 stubborn tasks running", DEADLINE * 2, || {
        marked_tasks(stubborn).len() == 3
            && service_tasks(h1, "stubborn")
                .iter()
                .filter(|t| t.state == "running")
                .count()
                == 3
    })
    .unwrap();
    let started = Instant::now();
    skein_ok(h1, &["service", "scale", "stubborn=1", "--detach"]).unwrap();
    wait_until("scaled down to 1 task", DRAIN + STOP_GRACE + SLACK, || {
        marked_tasks(stubborn).len() == 1
    })
    .unwrap_or_else(|e| panic!("{e:#}: left {:?}", marked(stubborn)));
    let scaled = started.elapsed();
    let started = Instant::now();
    rm(h1, "stubborn");
    none_left(
        stubborn,
        DRAIN + STOP_GRACE + SLACK,
        "no stubborn process after rm",
    );
    println!(
        "SIGTERM ignored: scale 3→1 done in {scaled:?}, rm in {:?} (drain {DRAIN:?} + grace {STOP_GRACE:?})",
        started.elapsed()
    );

    wait_until("every task group removed", DEADLINE, || {
        task_groups(&node).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", task_groups(&node)));
}

#[test]
fn limits_hold_and_say_why_a_task_died() {
    let bed = Testbed::new("cg-limits", TestbedConfig::with_hosts(1)).expect("testbed");
    let agents = start(&bed);
    let h1 = bed.host(0);
    let node = node_id(h1);

    // 64 MiB, then allocate 256 MiB: killed by the kernel, restarted, and `service ps` says
    // why.
    let hog = marker(4);
    create(
        h1,
        "hog",
        &["--limit-memory", "64M", "--restart-delay", "1s"],
        hog,
        "exec python3 -c 'import time; a = bytearray(256 << 20); time.sleep(1000)'",
    );
    wait_until("hog OOM killed and shown", DEADLINE * 2, || {
        service_tasks(h1, "hog")
            .iter()
            .any(|t| t.state != "running")
            && skein_ok(h1, &["service", "ps", "hog"])
                .is_ok_and(|out| out.contains("OOM killed: memory limit 64MiB"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: {}",
            skein_ok(h1, &["service", "ps", "hog"]).unwrap_or_default()
        )
    });
    wait_until("hog restarted after its OOM kill", DEADLINE * 2, || {
        ends_logged(&agents[0], "hog") >= 2
    })
    .unwrap();
    assert!(
        agents[0].log().contains("OOM killed: memory limit 64MiB"),
        "the agent logs why"
    );

    // --limit-pids 20: a task forking 60 sleeps gets 18 of them (its init and python are
    // the other two) and is told so; a task without the limit beside it gets all 60.
    let storm = marker(5);
    create(h1, "storm", &["--limit-pids", "20"], storm, &forker(storm));
    let free = marker(6);
    create(h1, "free", &[], free, &forker(free));
    // Its init, python and the 60 sleeps.
    wait_until("the unlimited task has all 60 sleeps", DEADLINE * 2, || {
        marked(free).len() == 62
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", marked(free).len()));
    wait_until("the limited task is held at 20", DEADLINE, || {
        marked(storm).len() == 20
    })
    .unwrap_or_else(|e| panic!("{e:#}: {}", marked(storm).len()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(marked(storm).len(), 20, "the pids limit holds");
    wait_until("the task saw its forks refused", DEADLINE, || {
        skein_ok(h1, &["service", "logs", "storm"])
            .is_ok_and(|log| log.contains("fork refused") && log.contains("forked 18"))
    })
    .unwrap();

    for name in ["hog", "storm", "free"] {
        rm(h1, name);
    }
    for m in [hog, storm, free] {
        none_left(m, DEADLINE, "no limited process after rm");
    }
    wait_until("every task group removed", DEADLINE, || {
        task_groups(&node).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", task_groups(&node)));
}
