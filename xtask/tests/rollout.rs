//! Rolling updates and node drain end to end (issue 17, parts 1 and 3), on three hosts and a
//! client namespace, through the `skein` CLI: `web` (3 replicas of whoami, `--publish
//! 8080:80`, a health check) under a bounded curl loop through every node's published port
//! is updated stop-first and start-first, then to a command that exits at once with
//! `--update-failure-action rollback` (it rolls back by itself), each with 0 failed requests;
//! a node is drained under load with 0 failed requests; the node that writes rollout steps
//! (and ran the command) is killed mid-rollout and the rollout still completes. A second
//! testbed covers `--update-failure-action pause`, an update continuing a paused rollout,
//! `service update --rollback` / `service rollback` (with `--rollback-*`), and a node on
//! `--availability pause`, each under the same curl loop. Needs root.
//! Every wait is bounded; the testbed removes everything on failure.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use xtask::{
    cluster::{
        create_service, in_netns, kill_host, node_rows, running_tasks, skein, skein_ok,
        start_cluster_with, whoami, DEADLINE,
    },
    testbed::{wait_until, Host, Testbed, TestbedConfig},
};

/// Rollouts of three tasks with a 2 s delay and a 1 s monitor take ~15 s on a quiet
/// machine; the helpers' machine is not quiet.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(180);

/// A curl loop from the client through every node's published port, round robin, until
/// stopped (or 20,000 requests): how many succeeded and the failures.
struct Load {
    stop: Arc<AtomicBool>,
    worker: thread::JoinHandle<(usize, Vec<String>)>,
}

impl Load {
    fn start(bed: &Testbed) -> Load {
        let netns = bed.client().netns().to_owned();
        let urls: Vec<String> = bed
            .hosts()
            .iter()
            .map(|h| format!("http://{}:8080/", h.underlay_ip()))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            for i in 0..20_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let url = &urls[i % urls.len()];
                match in_netns(&netns, &["curl", "-sS", "-f", "--max-time", "5", url]) {
                    Ok(out) if out.status.success() => ok += 1,
                    Ok(out) => failed.push(format!(
                        "request {i} to {url}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                    Err(e) => failed.push(format!("request {i} to {url}: {e}")),
                }
            }
            (ok, failed)
        });
        Load { stop, worker }
    }

    /// Stops the loop; panics unless every request succeeded (and enough were made).
    fn assert_none_failed(self, what: &str) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = self.worker.join().expect("the load thread");
        assert!(
            failed.is_empty(),
            "{what}: {} of {} requests failed: {failed:?}",
            failed.len(),
            ok + failed.len()
        );
        assert!(ok >= 10, "{what}: only {ok} requests made");
        eprintln!("{what}: {ok} requests, 0 failed");
        ok
    }
}

fn run_ok(host: &Host, args: &[&str]) -> String {
    let out = skein(host, args).expect("running skein");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "skein {args:?}: {text}");
    text
}

fn task_ids(host: &Host) -> BTreeSet<String> {
    running_tasks(host, "web")
        .into_iter()
        .map(|t| t.id)
        .collect()
}

fn inspect(host: &Host) -> Value {
    serde_json::from_str(&skein_ok(host, &["service", "inspect", "web"]).unwrap()).unwrap()
}

fn env_of(host: &Host) -> Vec<Value> {
    inspect(host)["env"].as_array().cloned().unwrap_or_default()
}

/// Waits until every host lists 3 running tasks of web.
fn wait_three_running(bed: &Testbed) {
    for host in bed.hosts() {
        wait_until(
            &format!("3 running web tasks on {}", host.name()),
            DEADLINE,
            || running_tasks(host, "web").len() == 3,
        )
        .unwrap();
    }
}

/// `service update web ARGS` on `host` under load: it converges, prints Swarm's lines,
/// replaces every task, and no request fails.
fn update_under_load(bed: &Testbed, host: &Host, args: &[&str], what: &str) {
    let before = task_ids(host);
    let load = Load::start(bed);
    thread::sleep(Duration::from_millis(500));
    let mut all = vec!["service", "update", "web", "--update-monitor", "1s"];
    all.extend_from_slice(args);
    let out = run_ok(host, &all);
    assert!(
        out.contains("overall progress: 3 out of 3 tasks")
            && out.contains("verify: Service converged"),
        "{what}: {out}"
    );
    wait_three_running(bed);
    thread::sleep(Duration::from_millis(500));
    load.assert_none_failed(what);
    let after = task_ids(host);
    assert!(
        before.is_disjoint(&after),
        "{what}: every task replaced: {before:?} → {after:?}"
    );
}

/// `host`'s node hostname as the cluster lists it (its `node ls` row by address).
fn node_hostname(seen_from: &Host, host: &Host) -> String {
    let ip = host.underlay_ip().to_string();
    node_rows(seen_from)
        .unwrap()
        .iter()
        .find(|r| {
            r["address"]
                .as_str()
                .is_some_and(|a| a.split(':').next() == Some(ip.as_str()))
        })
        .and_then(|r| r["hostname"].as_str())
        .unwrap()
        .to_owned()
}

fn has_env(env: &[Value], key: &str, value: &str) -> bool {
    env.iter()
        .any(|e| e[0].as_str() == Some(key) && e[1].as_str() == Some(value))
}

/// The cluster of three agents (`--drain-window 2s`) on the wire-like underlay, and `web`
/// (3× whoami, `--publish 8080:80`, a health check) answering through every node.
fn start_web(bed: &Testbed) -> Vec<xtask::testbed::Process> {
    // The mesh's published ports need the wire-like underlay (as in mesh.rs).
    bed.make_wire_like().expect("wire-like underlay");
    let (agents, _) = start_cluster_with(
        bed,
        |_| vec!["--drain-window".to_owned(), "2s".to_owned()],
        &[],
    )
    .expect("cluster");
    create_service(
        bed,
        "web",
        &[
            "--replicas",
            "3",
            "--publish",
            "8080:80",
            "--health-cmd",
            "curl -sf -o /dev/null http://127.0.0.1:80/",
            "--health-interval",
            "300ms",
        ],
        &whoami(&["--port", "80"]),
    );
    wait_three_running(bed);
    for host in bed.hosts() {
        let url = format!("http://{}:8080/", host.underlay_ip());
        wait_until(&format!("the mesh answering on {url}"), DEADLINE, || {
            in_netns(
                bed.client().netns(),
                &["curl", "-sSf", "--max-time", "3", &url],
            )
            .ok()
            .filter(|o| o.status.success())
        })
        .unwrap();
    }
    agents
}

#[test]
fn rolling_updates_rollback_and_drain_lose_no_request_and_survive_the_writer() {
    let bed = Testbed::new("rollout", TestbedConfig::with_hosts(3)).expect("testbed");
    let mut agents = start_web(&bed);
    let h1 = bed.host(0);

    // Stop-first, one at a time, 2 s apart.
    update_under_load(
        &bed,
        h1,
        &[
            "--env-add",
            "V=2",
            "--update-parallelism",
            "1",
            "--update-delay",
            "2s",
        ],
        "stop-first update",
    );
    assert!(has_env(&env_of(bed.host(1)), "V", "2"), "{:?}", inspect(h1));
    let pretty = run_ok(h1, &["service", "inspect", "--pretty", "web"]);
    assert!(
        pretty.contains("State: completed") && pretty.contains("Order: stop-first"),
        "{pretty}"
    );

    // Start-first.
    update_under_load(
        &bed,
        bed.host(1),
        &[
            "--env-add",
            "V=3",
            "--update-parallelism",
            "1",
            "--update-delay",
            "2s",
            "--update-order",
            "start-first",
        ],
        "start-first update",
    );
    assert!(has_env(&env_of(h1), "V", "3"), "{:?}", inspect(h1));

    // A command that exits at once: rolled back by itself, no request lost.
    let before = task_ids(h1);
    let load = Load::start(&bed);
    let out = skein(
        h1,
        &[
            "service",
            "update",
            "web",
            "--env-add",
            "V=4",
            "--update-failure-action",
            "rollback",
            "--update-order",
            "stop-first",
            "--",
            "false",
        ],
    )
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a rolled-back update fails: {text}");
    assert!(
        text.contains("rollback: update rolled back due to failure")
            && text.contains("verify: Service converged"),
        "{text}"
    );
    wait_three_running(&bed);
    // The rollback is quick: keep the load on while the replaced slot settles.
    thread::sleep(Duration::from_secs(3));
    load.assert_none_failed("update rolled back");
    let service = inspect(h1);
    assert!(
        has_env(&env_of(h1), "V", "3") && !has_env(&env_of(h1), "V", "4"),
        "{service:?}"
    );
    assert!(
        service["command"][1].as_str() == Some("whoami"),
        "the previous command: {service:?}"
    );
    let after = task_ids(h1);
    assert!(
        before.len() - before.intersection(&after).count() <= 1,
        "only the failed slot was replaced: {before:?} → {after:?}"
    );

    // Drain h2 under load: its tasks move, no request fails.
    let h2 = bed.host(1);
    let h2_name = node_hostname(h1, h2);
    let load = Load::start(&bed);
    thread::sleep(Duration::from_millis(500));
    run_ok(
        h1,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            h2_name.as_str(),
        ],
    );
    wait_until("no web task on the drained node", ROLLOUT_DEADLINE, || {
        let tasks = running_tasks(h1, "web");
        (tasks.len() == 3 && tasks.iter().all(|t| t.host != h2_name.as_str())).then_some(())
    })
    .unwrap();
    wait_until("the drained node's tasks stopped", ROLLOUT_DEADLINE, || {
        (xtask::cluster::service_tasks(h1, "web")
            .iter()
            .all(|t| t.host != h2_name.as_str()))
        .then_some(())
    })
    .unwrap();
    thread::sleep(Duration::from_millis(500));
    load.assert_none_failed("node drain");
    let ls = run_ok(h1, &["node", "ls"]);
    assert!(ls.contains("drain"), "node ls shows the availability: {ls}");
    let node: Value =
        serde_json::from_str(&run_ok(h1, &["node", "inspect", h2_name.as_str()])).unwrap();
    assert_eq!(node["availability"], "drain", "{node}");
    run_ok(
        h1,
        &[
            "node",
            "update",
            "--availability",
            "active",
            h2_name.as_str(),
        ],
    );
    wait_until(
        "a task back on the re-activated node, none left over",
        ROLLOUT_DEADLINE,
        || {
            let tasks = xtask::cluster::service_tasks(h1, "web");
            (tasks.len() == 3
                && tasks.iter().all(|t| t.state == "running")
                && tasks.iter().any(|t| t.host == h2_name.as_str()))
            .then_some(())
        },
    )
    .unwrap();

    // Kill the rollout's writer (the lowest node ID), where the update runs, mid-rollout.
    let rows = node_rows(h1).unwrap();
    let writer_addr = rows
        .iter()
        .min_by_key(|r| r["id"].as_str().unwrap_or_default().to_owned())
        .and_then(|r| r["address"].as_str())
        .unwrap()
        .to_owned();
    let writer = bed
        .hosts()
        .iter()
        .position(|h| writer_addr.split(':').next() == Some(h.underlay_ip().to_string().as_str()))
        .unwrap();
    let survivor = bed.host((writer + 1) % 3);
    let before = task_ids(survivor);
    run_ok(
        bed.host(writer),
        &[
            "service",
            "update",
            "web",
            "--env-add",
            "V=5",
            "--update-delay",
            "3s",
            "--update-monitor",
            "1s",
            "--detach",
        ],
    );
    wait_until("the first task replaced", ROLLOUT_DEADLINE, || {
        let now = task_ids(survivor);
        (now.len() == 3 && before.difference(&now).count() >= 1).then_some(())
    })
    .unwrap();
    let started = Instant::now();
    kill_host(bed.host(writer), &mut agents[writer]).unwrap();
    wait_until(
        "the rollout completed after its writer died",
        ROLLOUT_DEADLINE,
        || {
            let pretty = skein_ok(survivor, &["service", "inspect", "--pretty", "web"]).ok()?;
            let ids = task_ids(survivor);
            (pretty.contains("State: completed") && ids.len() == 3 && before.is_disjoint(&ids))
                .then_some(())
        },
    )
    .unwrap();
    eprintln!(
        "rollout completed {:.1} s after its writer was killed",
        started.elapsed().as_secs_f64()
    );
    assert!(has_env(&env_of(survivor), "V", "5"));
}

/// `service update web ARGS -- false` with `--update-failure-action pause` on `host` under
/// load: the CLI reports the pause, the rollout stays paused and replaces nothing more, and
/// no request fails. Returns the running task IDs (the untouched ones).
fn pause_under_load(bed: &Testbed, host: &Host, env: &str, what: &str) -> BTreeSet<String> {
    let before = task_ids(host);
    let load = Load::start(bed);
    thread::sleep(Duration::from_millis(500));
    let out = skein(
        host,
        &[
            "service",
            "update",
            "web",
            "--env-add",
            env,
            "--update-failure-action",
            "pause",
            "--update-parallelism",
            "1",
            "--update-monitor",
            "1s",
            "--timeout",
            "60s",
            "--",
            "false",
        ],
    )
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: a paused update fails: {text}"
    );
    assert!(
        text.contains("error: update paused due to failure"),
        "{what}: {text}"
    );
    // Paused means no other slot is touched: past several monitor periods, the two other
    // old tasks still run (`continue` would have replaced the next one within ~1 s).
    thread::sleep(Duration::from_secs(4));
    let pretty = run_ok(host, &["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("State: paused"), "{what}: {pretty}");
    let now = task_ids(host);
    let untouched: BTreeSet<String> = before.intersection(&now).cloned().collect();
    assert!(
        untouched.len() == 2,
        "{what}: only the failed slot was touched: {before:?} → {now:?}"
    );
    load.assert_none_failed(what);
    untouched
}

/// `skein ARGS` on `host` under load ends with `verify: Service converged` and 3 running
/// tasks; no request fails.
fn converges_under_load(bed: &Testbed, host: &Host, args: &[&str], what: &str) -> String {
    let load = Load::start(bed);
    thread::sleep(Duration::from_millis(500));
    let out = run_ok(host, args);
    assert!(out.contains("verify: Service converged"), "{what}: {out}");
    wait_three_running(bed);
    thread::sleep(Duration::from_millis(500));
    load.assert_none_failed(what);
    out
}

fn runs_whoami(host: &Host) -> bool {
    inspect(host)["command"][1].as_str() == Some("whoami")
}

/// The untested paths of issue 17: `--update-failure-action pause` pauses; a new update
/// continues a paused rollout; `service update --rollback` and `service rollback` go back
/// to the previous definition; a node on `pause` keeps its tasks and gets no new one.
/// Under the curl loop through every node: 0 failed requests in each step.
#[test]
fn pause_continue_manual_rollback_and_a_paused_node() {
    let bed = Testbed::new("rollout", TestbedConfig::with_hosts(3)).expect("testbed");
    let _agents = start_web(&bed);
    let h1 = bed.host(0);
    let original = task_ids(h1);
    let whoami_cmd = whoami(&["--port", "80"]);
    let whoami_args: Vec<&str> = whoami_cmd.iter().map(String::as_str).collect();

    // A failing update pauses after its first task; a new update continues from there.
    let untouched = pause_under_load(&bed, h1, "V=2", "paused update");
    assert!(untouched.is_subset(&original));
    let mut args = vec![
        "service",
        "update",
        "web",
        "--env-add",
        "V=3",
        "--update-monitor",
        "1s",
        "--",
    ];
    args.extend_from_slice(&whoami_args);
    converges_under_load(&bed, bed.host(1), &args, "update after a pause");
    let env = env_of(h1);
    assert!(
        has_env(&env, "V", "3") && runs_whoami(h1),
        "{:?}",
        inspect(h1)
    );
    let v3 = task_ids(h1);
    assert!(v3.is_disjoint(&original), "{original:?} → {v3:?}");

    // Paused again; `service update --rollback` returns to the previous definition (V=3).
    pause_under_load(&bed, h1, "V=4", "paused again");
    let out = converges_under_load(
        &bed,
        bed.host(2),
        &["service", "update", "--rollback", "web"],
        "service update --rollback",
    );
    assert!(
        out.contains("rollback: manually requested rollback"),
        "{out}"
    );
    let env = env_of(h1);
    assert!(
        has_env(&env, "V", "3") && !has_env(&env, "V", "4") && runs_whoami(h1),
        "{:?}",
        inspect(h1)
    );
    let pretty = run_ok(h1, &["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("State: rolled back"), "{pretty}");

    // A completed update, then `service rollback` with its own rollback config (all at
    // once, each old task draining once its replacement serves).
    converges_under_load(
        &bed,
        h1,
        &[
            "service",
            "update",
            "web",
            "--env-add",
            "V=5",
            "--update-monitor",
            "1s",
            "--rollback-parallelism",
            "0",
            "--rollback-order",
            "start-first",
            "--rollback-monitor",
            "1s",
        ],
        "update to V=5",
    );
    assert!(has_env(&env_of(h1), "V", "5"));
    let pretty = run_ok(h1, &["service", "inspect", "--pretty", "web"]);
    assert!(
        pretty.contains("RollbackConfig:\n Parallelism: 0")
            && pretty.ends_with("Order: start-first\n"),
        "{pretty}"
    );
    converges_under_load(
        &bed,
        bed.host(1),
        &["service", "rollback", "web"],
        "service rollback",
    );
    let env = env_of(h1);
    assert!(
        has_env(&env, "V", "3") && !has_env(&env, "V", "5"),
        "{:?}",
        inspect(h1)
    );

    // A paused node keeps its tasks and gets none of the new ones.
    let h3 = bed.host(2);
    let h3_name = node_hostname(h1, h3);
    let on_h3 = |tasks: Vec<xtask::cluster::TaskInfo>| -> BTreeSet<String> {
        tasks
            .into_iter()
            .filter(|t| t.host == h3_name)
            .map(|t| t.id)
            .collect()
    };
    let kept = on_h3(running_tasks(h1, "web"));
    assert!(!kept.is_empty(), "h3 runs a web task before the pause");
    run_ok(
        h1,
        &[
            "node",
            "update",
            "--availability",
            "pause",
            h3_name.as_str(),
        ],
    );
    let ls = run_ok(h1, &["node", "ls"]);
    assert!(ls.contains("pause"), "{ls}");
    run_ok(h1, &["service", "scale", "web=6"]);
    wait_until("6 running web tasks", ROLLOUT_DEADLINE, || {
        (running_tasks(h1, "web").len() == 6).then_some(())
    })
    .unwrap();
    // Spread evenly, h3 would get a second task: paused, it keeps exactly its own.
    let all = xtask::cluster::service_tasks(h1, "web");
    assert_eq!(on_h3(all.clone()), kept, "{all:?}");
    run_ok(
        h1,
        &[
            "node",
            "update",
            "--availability",
            "active",
            h3_name.as_str(),
        ],
    );
}
