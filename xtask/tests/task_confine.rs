//! Issue 14, parts 3 and 4, end to end: tasks run confined. A task (root inside) cannot
//! reach any agent's socket, state directory (join token) or bpffs — its own host's nor
//! another's on the same kernel — cannot load a BPF program or change any network; with
//! `--cap-add NET_ADMIN` it changes its own namespace's network and still not the host's.
//! The same probe run unconfined (plain root in the host namespace) reaches everything,
//! so each probe can fail. `sh -c 'sleep …'` stops promptly on SIGTERM under the init;
//! health checks run with the service's user and environment, in the task's PID
//! namespace and cgroups; after kill -9 of the agent the tasks are adopted through their
//! init and still stop promptly. Needs root.

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use xtask::{
    cluster::{
        create_service, in_netns, netns_with_ip, running_tasks, service_tasks, skein_ok,
        start_cluster, start_cluster_with, DEADLINE,
    },
    testbed::{skein_binary, wait_until, Host, Testbed, TestbedConfig},
};

/// A raw `bpf(BPF_PROG_LOAD)` of a two-instruction socket filter (`r0 = 0; exit`).
const BPF_PROBE: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
insns = (ctypes.c_uint64 * 2)(0xb7, 0x95)
lic = ctypes.create_string_buffer(b"GPL")
attr = (ctypes.c_uint8 * 128)()
ctypes.c_uint32.from_buffer(attr, 0).value = 1
ctypes.c_uint32.from_buffer(attr, 4).value = 2
ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(lic)
fd = libc.syscall(321, 5, attr, 128)
print("loaded" if fd >= 0 else "refused")
"#;

/// Prints `PROBE <what> <outcome>` lines, then `PROBE done`. `$H1 $H2`: the hosts'
/// namespaces (their agents' socket and state directory names), `$B1 $B2`: their
/// bpffs, `$SKEIN`: the binary, `$BPF`: a file holding [`BPF_PROBE`]. Run from a file in
/// the testbed's shared directory: a service definition holds at most 1024 bytes.
const PROBE: &str = r#"
r() { echo "PROBE $1 $2"; }
n=0
for h in "$H1" "$H2"; do
  n=$((n+1))
  if [ -e "/run/skein/$h/skein.sock" ]; then r socket$n seen; else r socket$n hidden; fi
  if "$SKEIN" --socket "/run/skein/$h/skein.sock" node ls >/dev/null 2>&1; then r api$n answered; else r api$n refused; fi
  if cat "/var/lib/skein/$h/join-token" >/dev/null 2>&1; then r token$n read; else r token$n unreadable; fi
  if [ -n "$(ls -A "/var/lib/skein/$h" 2>/dev/null)" ]; then r state$n listed; else r state$n hidden; fi
  if ip netns exec "$h" ip link add skph$n type veth peer name skph${n}p 2>/dev/null; then r hostnet$n changed; else r hostnet$n refused; fi
done
n=0
for b in "$B1" "$B2"; do
  n=$((n+1))
  if [ -n "$(ls -A "$b" 2>/dev/null)" ]; then r bpffs$n listed; else r bpffs$n hidden; fi
done
if [ -n "$(ls -A /sys/fs/bpf 2>/dev/null)" ]; then r sysbpf listed; else r sysbpf hidden; fi
r bpf "$(python3 "$BPF" 2>/dev/null || echo refused)"
if ip link add skpown type veth peer name skpownp 2>/dev/null; then r ownnet changed; else r ownnet refused; fi
r caps "$(grep CapEff /proc/self/status | tr -d ' \t' | cut -d: -f2)"
r nnp "$(grep NoNewPrivs /proc/self/status | tr -d ' \t' | cut -d: -f2)"
r init "$(cat /proc/1/comm)"
r procs "$(ls /proc | grep -c '^[0-9]')"
echo "PROBE done"
"#;

/// Docker's default capabilities as a `CapEff` mask.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

/// The probe's results: what → outcome.
fn parse_probe(text: &str) -> Option<BTreeMap<String, String>> {
    if !text.contains("PROBE done") {
        return None;
    }
    Some(
        text.lines()
            // `service logs` puts the task's name before each line.
            .filter_map(|l| Some(&l[l.find("PROBE ")? + "PROBE ".len()..]))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

fn probe_env(bed: &Testbed) -> Vec<(String, String)> {
    let bpf = bed.shared_dir().join("bpf.py");
    fs::write(&bpf, BPF_PROBE).unwrap();
    vec![
        ("H1".into(), bed.host(0).netns().into()),
        ("H2".into(), bed.host(1).netns().into()),
        ("B1".into(), bed.host(0).bpf_dir().display().to_string()),
        ("B2".into(), bed.host(1).bpf_dir().display().to_string()),
        (
            "SKEIN".into(),
            skein_binary().unwrap().display().to_string(),
        ),
        ("BPF".into(), bpf.display().to_string()),
    ]
}

/// Runs the probe as a service's task on h1 and returns its results.
fn probe_as_task(bed: &Testbed, name: &str, flags: &[&str]) -> BTreeMap<String, String> {
    let env = probe_env(bed);
    let mut all: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    for (k, v) in &env {
        all.extend(["-e".into(), format!("{k}={v}")]);
    }
    // Placed on whichever host; h1 and h2 are probed either way.
    all.extend(["--replicas".into(), "1".into()]);
    let flags: Vec<&str> = all.iter().map(String::as_str).collect();
    let probe = bed.shared_dir().join("probe.sh");
    fs::write(&probe, PROBE).unwrap();
    let script = format!("sh {}; exec sleep 100000", probe.display());
    create_service(bed, name, &flags, &["sh".into(), "-c".into(), script]);
    wait_until(&format!("{name}'s probe results"), DEADLINE, || {
        parse_probe(&skein_ok(bed.host(0), &["service", "logs", name]).ok()?)
    })
    .unwrap()
}

/// Whether `ip -o link` output lists `link` (a veth is listed as `N: NAME@PEER: ...`).
fn lists_link(ip_link: &str, link: &str) -> bool {
    ip_link.contains(&format!(": {link}:")) || ip_link.contains(&format!(": {link}@"))
}

fn host_has_link(host: &Host, link: &str) -> bool {
    lists_link(&host.run("ip", ["-o", "link", "show"]).unwrap(), link)
}

#[test]
fn confined_tasks_reach_no_agent_and_no_host_network() {
    let bed = Testbed::new("confine", TestbedConfig::with_hosts(2)).expect("testbed");
    let (_agents, _token) = start_cluster(&bed).expect("cluster");
    let (h1, h2) = (bed.host(0), bed.host(1));

    // The control: the same probe as plain root in h1 reaches all of it.
    let mut control = h1.command("sh");
    control.args(["-c", PROBE]).envs(probe_env(&bed));
    let out = control.output().unwrap();
    let open = parse_probe(&String::from_utf8_lossy(&out.stdout)).expect("control probe ran");
    for (what, reached) in [
        ("socket1", "seen"),
        ("socket2", "seen"),
        ("api1", "answered"),
        ("api2", "answered"),
        ("token1", "read"),
        ("token2", "read"),
        ("state1", "listed"),
        ("state2", "listed"),
        ("bpffs1", "listed"),
        ("bpffs2", "listed"),
        ("hostnet1", "changed"),
        ("hostnet2", "changed"),
        ("bpf", "loaded"),
        ("ownnet", "changed"),
    ] {
        assert_eq!(
            open.get(what).map(String::as_str),
            Some(reached),
            "unconfined {what}: {open:?}"
        );
    }
    for (host, links) in [(h1, ["skph1", "skpown"].as_slice()), (h2, &["skph2"])] {
        for link in links {
            host.run("ip", ["link", "del", link]).unwrap();
        }
    }

    // A task: root inside, confined.
    let task = probe_as_task(&bed, "probe", &[]);
    for (what, confined) in [
        ("socket1", "hidden"),
        ("socket2", "hidden"),
        ("api1", "refused"),
        ("api2", "refused"),
        ("token1", "unreadable"),
        ("token2", "unreadable"),
        ("state1", "hidden"),
        ("state2", "hidden"),
        ("bpffs1", "hidden"),
        ("bpffs2", "hidden"),
        ("sysbpf", "hidden"),
        ("hostnet1", "refused"),
        ("hostnet2", "refused"),
        ("bpf", "refused"),
        ("ownnet", "refused"),
        ("caps", DOCKER_DEFAULT_CAPS),
        ("nnp", "1"),
        ("init", "skein-init"),
    ] {
        assert_eq!(
            task.get(what).map(String::as_str),
            Some(confined),
            "task {what}: {task:?}"
        );
    }
    // Its PID namespace: the init, the shell (or sleep) and the probe's own commands.
    let procs: usize = task["procs"].parse().unwrap();
    assert!(procs <= 6, "the task sees {procs} processes");

    // With NET_ADMIN: its own namespace's network, still not the host's.
    let admin = probe_as_task(&bed, "netadmin", &["--cap-add", "NET_ADMIN"]);
    assert_eq!(
        admin.get("ownnet").map(String::as_str),
        Some("changed"),
        "{admin:?}"
    );
    for what in ["hostnet1", "hostnet2", "bpf", "api1", "api2"] {
        assert_eq!(
            admin.get(what).map(String::as_str),
            Some("refused"),
            "NET_ADMIN task {what}: {admin:?}"
        );
    }
    assert_ne!(admin["caps"], DOCKER_DEFAULT_CAPS, "NET_ADMIN is added");
    let netadmin = &running_tasks(h1, "netadmin")[0];
    let host = if netadmin.host == h1.netns() { h1 } else { h2 };
    let task_ns = netns_with_ip(host, &netadmin.ip).unwrap();
    let links = in_netns(&task_ns, &["ip", "-o", "link", "show"]).unwrap();
    assert!(
        lists_link(&String::from_utf8_lossy(&links.stdout), "skpown"),
        "the task's own namespace has its link"
    );
    for host in [h1, h2] {
        for link in ["skpown", "skph1", "skph2"] {
            assert!(!host_has_link(host, link), "{} got {link}", host.name());
        }
    }

    // Refused at create time, naming the value.
    let out = xtask::cluster::skein(
        h1,
        &[
            "service",
            "create",
            "bad",
            "--cap-add",
            "NET_WIZARD",
            "--",
            "true",
        ],
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NET_WIZARD"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PIDs of processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(marker)
            })
        })
        .filter(|&pid| pid != std::process::id())
        .collect()
}

/// `service rm NAME` and how long until no process with `marker` is left.
fn rm_and_time(host: &Host, name: &str, marker: &str) -> Duration {
    assert!(!pids_with(marker).is_empty(), "{marker} runs before rm");
    let started = Instant::now();
    skein_ok(host, &["service", "rm", name]).unwrap();
    wait_until(&format!("no {marker} left"), DEADLINE, || {
        pids_with(marker).is_empty().then_some(())
    })
    .unwrap();
    started.elapsed()
}

#[test]
fn the_init_stops_adopts_and_health_checks_run_in_the_task() {
    let bed = Testbed::new("confine-init", TestbedConfig::with_hosts(1)).expect("testbed");
    // No drain before a stop: what is timed is SIGTERM → gone.
    let no_drain = ["--drain-window", "0s"];
    let (mut agents, _token) =
        start_cluster_with(&bed, |_| no_drain.map(String::from).to_vec(), &[]).expect("cluster");
    let h1 = bed.host(0);

    // `sh -c` that execs sleep, and one that waits for it: both under the init.
    create_service(
        &bed,
        "execd",
        &[],
        &["sh".into(), "-c".into(), "sleep 4242".into()],
    );
    create_service(
        &bed,
        "waits",
        &[],
        &["sh".into(), "-c".into(), "sleep 4243; true".into()],
    );
    // The control: SIGTERM ignored (inherited by sleep), so only the SIGKILL after the
    // 5 s grace period ends it.
    create_service(
        &bed,
        "deaf",
        &[],
        &[
            "sh".into(),
            "-c".into(),
            "trap '' TERM; sleep 4246; true".into(),
        ],
    );
    // Health: the service's user and environment (the task changes neither for its
    // checks), inside the task's PID namespace (/proc/self resolves only there) and
    // cgroups; the negative twin shows the checks are really evaluated.
    let check = r#"test "$MARK" = svc && test "$(id -u)" = 65534 && test -r /proc/self/status && test "$(cat /proc/self/cgroup)" = "$(cat /proc/1/cgroup)" && test "$(hostname)" = "$SKEIN_TASK""#;
    for (name, cmd) in [
        ("healthy", check.to_owned()),
        ("rootcheck", r#"test "$(id -u)" = 0"#.to_owned()),
    ] {
        let flags = [
            "--user",
            "65534",
            "-e",
            "MARK=svc",
            "--health-cmd",
            &cmd,
            "--health-interval",
            "500ms",
            "--detach",
        ];
        create_service(
            &bed,
            name,
            &flags,
            &[
                "sh".into(),
                "-c".into(),
                "export MARK=changed; exec sleep 4244".into(),
            ],
        );
    }
    wait_until("the checked task runs", DEADLINE, || {
        (running_tasks(h1, "healthy").len() == 1).then_some(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let rootcheck = service_tasks(h1, "rootcheck");
    assert!(
        rootcheck.iter().all(|t| t.state != "running"),
        "a check as root passed for a --user 65534 service: {rootcheck:?}"
    );

    // kill -9 of the agent: the tasks keep running under their inits and are adopted.
    let before: Vec<u32> = pids_with("sleep 4242");
    agents[0].kill9().unwrap();
    agents[0] = h1
        .start_agent(&["--init", no_drain[0], no_drain[1]])
        .unwrap();
    // An agent's start verifies its programs: > 30 s when the machine is busy.
    wait_until("the restarted agent adopts its tasks", 2 * DEADLINE, || {
        agents[0]
            .log()
            .contains("adopted a running task")
            .then_some(())
    })
    .unwrap();
    assert_eq!(pids_with("sleep 4242"), before, "the same process");
    wait_until("the checked task runs again", DEADLINE, || {
        (running_tasks(h1, "healthy").len() == 1).then_some(())
    })
    .unwrap();

    // SIGTERM reaches sleep through the init: under the 5 s grace period (the rest is
    // the CLI, a supervisor pass and the teardown on a loaded machine), while the deaf
    // control needs the SIGKILL after it.
    let deaf = rm_and_time(h1, "deaf", "sleep 4246");
    assert!(deaf >= Duration::from_secs(5), "deaf: rm took {deaf:?}");
    for (name, marker) in [("execd", "sleep 4242"), ("waits", "sleep 4243")] {
        let took = rm_and_time(h1, name, marker);
        eprintln!("{name}: gone {took:?} after rm (deaf control: {deaf:?})");
        assert!(
            took < Duration::from_millis(4500),
            "{name}: rm took {took:?}"
        );
    }
    for name in ["healthy", "rootcheck"] {
        skein_ok(h1, &["service", "rm", name]).unwrap();
    }
    wait_until("no sleep 4244 left", DEADLINE, || {
        pids_with("sleep 4244").is_empty()
    })
    .unwrap();
}
