//! The testbed's own tests. All but `wait_until_*` need root (they build namespaces and mount
//! bpffs); `cargo test -p xtask` runs as root like the rest of the privileged tier.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, process::ExitStatusExt},
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{cleanup, *};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn fs_magic(path: &Path) -> i64 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    assert_eq!(
        rc,
        0,
        "statfs {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
    st.f_type as i64
}

/// Everything still on the machine that is named after run `prefix`.
fn leftovers(prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(cleanup::NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(&format!("{prefix}-")))
                .map(|name| format!("namespace {name}"))
                .collect()
        })
        .unwrap_or_default();
    let dir = cleanup::run_dir(prefix);
    found.extend(
        cleanup::mounts_under(&dir)
            .unwrap()
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    if dir.exists() {
        found.push(format!("run dir {}", dir.display()));
    }
    found
}

fn ping(from: &Host, to: Ipv4Addr) -> Result<String> {
    from.run("ping", ["-c1", "-W2", &to.to_string()])
}

/// A ping expected to fail: a shorter wait keeps the test fast.
fn ping_fails(from: &Host, to: Ipv4Addr) -> bool {
    from.run("ping", ["-c1", "-W1", &to.to_string()]).is_err()
}

fn sleeper(host: &Host) -> Command {
    let mut cmd = host.command("sleep");
    cmd.arg("60");
    cmd
}

/// Waits for a child of ours to be killed by SIGKILL and reaps it.
fn expect_sigkilled(child: &mut std::process::Child) {
    let status = wait_until("the child to die", Duration::from_secs(5), || {
        child.try_wait().unwrap()
    })
    .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

#[test]
fn hosts_reach_each_other_and_drop_removes_everything() {
    let tb = Testbed::new(
        "two-hosts",
        TestbedConfig {
            hosts: 2,
            underlay_mtu: 1400,
            routed: false,
        },
    )
    .unwrap();
    let prefix = tb.prefix().to_owned();
    let (h1, h2, client) = (tb.host(0), tb.host(1), tb.client());
    assert_eq!(tb.hosts().len(), 2);
    assert_eq!(
        (h1.name(), h2.name(), client.name()),
        ("h1", "h2", "client")
    );
    assert_eq!(h1.netns(), format!("{prefix}-h1"));
    assert_eq!(h1.resource_prefix(), h1.netns());
    assert_eq!(h2.underlay_ip(), Ipv4Addr::new(10, 200, 0, 12));
    assert_eq!(tb.run_dir(), Path::new(RUN_ROOT).join(&prefix));

    ping(h1, h2.underlay_ip()).unwrap();
    ping(h1, client.underlay_ip()).unwrap();
    assert!(
        ping_fails(h1, Ipv4Addr::new(10, 200, 0, 99)),
        "nothing has .99"
    );

    let link = h1.run("ip", ["-o", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("mtu 1400"), "{link}");
    let v6 = h1.run("ip", ["-6", "-o", "addr", "show"]).unwrap();
    assert!(v6.trim().is_empty(), "IPv6 should be off: {v6}");
    for host in tb.hosts().iter().chain([client]) {
        assert_eq!(
            fs_magic(host.bpf_dir()),
            BPF_FS_MAGIC,
            "{}",
            host.bpf_dir().display()
        );
    }

    // Partitioning a host cuts it off; healing restores it.
    tb.set_underlay_link(1, false).unwrap();
    assert!(ping_fails(h1, h2.underlay_ip()), "h2 is partitioned");
    tb.set_underlay_link(1, true).unwrap();
    wait_until("h2 to be reachable again", Duration::from_secs(10), || {
        ping(h1, h2.underlay_ip())
    })
    .unwrap();

    // Logs capture stdout and stderr; a second process with the same log name gets its own.
    let echo = |host: &Host| {
        let mut cmd = host.command("sh");
        cmd.args(["-c", "echo to-stdout; echo to-stderr >&2"]);
        host.spawn(cmd, "echo").unwrap()
    };
    let (mut first, mut second) = (echo(h2), echo(h2));
    assert!(first.wait(Duration::from_secs(5)).unwrap().success());
    assert!(second.wait(Duration::from_secs(5)).unwrap().success());
    assert_eq!(first.log_path(), h2.dir().join("echo.log"));
    assert_eq!(second.log_path(), h2.dir().join("echo-2.log"));
    for p in [&first, &second] {
        assert!(
            p.log().contains("to-stdout") && p.log().contains("to-stderr"),
            "{}",
            p.log()
        );
    }
    assert!(
        h1.spawn(Command::new("sleep"), "outside").is_err(),
        "must refuse the root netns"
    );

    // A registered process that outlives the testbed is stopped by its drop (SIGTERM), and
    // unregistered ones inside its namespaces are SIGKILLed, also in a namespace an agent
    // would have made under its resource prefix.
    let mut registered = h1.spawn(sleeper(h1), "sleep").unwrap();
    let mut stray = sleeper(h2).spawn().unwrap();
    let agent_ns = format!("{}-ep1", h1.resource_prefix());
    run_command(Command::new("ip").args(["netns", "add", &agent_ns])).unwrap();
    let mut agent_stray = Command::new("ip")
        .args(["netns", "exec", &agent_ns, "sleep", "60"])
        .spawn()
        .unwrap();
    let comm = format!("/proc/{}/comm", agent_stray.id());
    wait_until("the stray to exec sleep", Duration::from_secs(5), || {
        fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
    })
    .unwrap();
    assert!(registered.is_running());
    drop(tb);
    assert!(!registered.is_running());
    assert_eq!(
        registered.exit_status().unwrap().signal(),
        Some(libc::SIGTERM)
    );
    expect_sigkilled(&mut stray);
    expect_sigkilled(&mut agent_stray);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn testbed_dropped_while_panicking_leaves_nothing() {
    let seen: Mutex<Option<(String, u32)>> = Mutex::new(None);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        // Declared first so it is dropped after the testbed: the testbed must stop it itself.
        let _process: Process;
        let tb = Testbed::new("panics", TestbedConfig::with_hosts(1)).unwrap();
        let mut cmd = tb.host(0).command("sh");
        cmd.args([
            "-c",
            "echo marker-line-from-the-panicking-test; exec sleep 60",
        ]);
        _process = tb.host(0).spawn(cmd, "marker").unwrap();
        *seen.lock().unwrap() = Some((tb.prefix().to_owned(), _process.pid()));
        panic!("deliberate panic with a live testbed");
    }));
    assert!(result.is_err());
    let (prefix, pid) = seen.lock().unwrap().clone().expect("the testbed was built");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} was killed and reaped"
    );
}

/// A child in the root namespace that must not outlive a failing test (the testbed and the
/// sweep only clean up inside namespaces).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root_sleeper() -> KillOnDrop {
    KillOnDrop(Command::new("sleep").arg("60").spawn().unwrap())
}

/// Writes a run's owner record the way a testbed does: atomically, so a concurrent sweep in
/// another test process never reads half of it.
fn write_owner(run_dir: &Path, pid: u32, start_time: u64) {
    let tmp = run_dir.join("owner.tmp");
    fs::write(&tmp, format!("pid {pid}\nstart_time {start_time}\n")).unwrap();
    fs::rename(&tmp, run_dir.join(cleanup::OWNER_FILE)).unwrap();
}

fn start_time(pid: u32) -> u64 {
    cleanup::read_proc_stat(pid).unwrap().start_time
}

#[test]
fn sweep_removes_dead_runs_and_spares_live_ones() {
    let live = Testbed::new("live-during-sweep", TestbedConfig::with_hosts(1)).unwrap();

    // A dead run: its owner (here a stand-in process, alive while the run is built so that
    // sweeps by other test processes leave it alone) dies, leaving a process it started
    // running in its namespace and its bpffs mounted.
    let owner = root_sleeper();
    let owner_pid = owner.0.id();
    let dead = format!("sk-{owner_pid}-0");
    let dead_dir = cleanup::run_dir(&dead);
    let dead_bpf = dead_dir.join("h1/bpf");
    fs::create_dir_all(&dead_bpf).unwrap();
    write_owner(&dead_dir, owner_pid, start_time(owner_pid));
    mount_bpffs(&dead_bpf).unwrap();
    let dead_ns = format!("{dead}-h1");
    run_command(Command::new("ip").args(["netns", "add", &dead_ns])).unwrap();
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &dead_ns, "sleep", "60"])
        .spawn()
        .unwrap();
    // Once it is `sleep`, `ip netns exec` has entered the namespace.
    let comm = format!("/proc/{}/comm", orphan.id());
    wait_until("the orphan to exec sleep", Duration::from_secs(5), || {
        fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
    })
    .unwrap();
    drop(owner);

    // A dead run whose PID now belongs to another, live process: the start time differs.
    let mut reuser = root_sleeper();
    let reuser_pid = reuser.0.id();
    let reused = format!("sk-{reuser_pid}-0");
    let reused_dir = cleanup::run_dir(&reused);
    fs::create_dir_all(&reused_dir).unwrap();
    write_owner(&reused_dir, reuser_pid, start_time(reuser_pid));
    run_command(Command::new("ip").args(["netns", "add", &format!("{reused}-h1")])).unwrap();
    write_owner(&reused_dir, reuser_pid, 1);

    // Another test process's sweep may get there first, so what this one counted is not
    // checked; that everything is gone is.
    let report = sweep_dead_runs().unwrap();
    eprintln!("swept {report}");
    assert_eq!(leftovers(&dead), Vec::<String>::new());
    assert_eq!(leftovers(&reused), Vec::<String>::new());
    expect_sigkilled(&mut orphan);
    // The sweep kills only processes inside dead runs' namespaces.
    assert!(
        reuser.0.try_wait().unwrap().is_none(),
        "the live reuser was killed"
    );

    // The live testbed is untouched.
    assert!(Path::new(cleanup::NETNS_DIR)
        .join(live.host(0).netns())
        .exists());
    assert!(live.run_dir().join(cleanup::OWNER_FILE).exists());
    assert_eq!(fs_magic(live.host(0).bpf_dir()), BPF_FS_MAGIC);
    ping(live.host(0), live.client().underlay_ip()).unwrap();
}

#[test]
fn testbed_rejects_a_bad_config() {
    assert!(Testbed::new("no-hosts", TestbedConfig::with_hosts(0)).is_err());
    let tiny_mtu = TestbedConfig {
        underlay_mtu: 10,
        ..TestbedConfig::default()
    };
    assert!(Testbed::new("tiny-mtu", tiny_mtu).is_err());
}

#[test]
fn wait_until_returns_the_value() {
    let mut calls = 0;
    let value = wait_until("three calls", Duration::from_secs(5), || {
        calls += 1;
        (calls >= 3).then_some(calls * 10)
    })
    .unwrap();
    assert_eq!(value, 30);
    wait_until("a true condition", Duration::ZERO, || true).unwrap();
}

#[test]
fn wait_until_times_out_naming_what_and_why() {
    let start = Instant::now();
    let err = wait_until("the impossible", Duration::from_millis(200), || false).unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.to_string().contains("the impossible"), "{err}");
    assert!(elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2));

    let err = wait_until("a server", Duration::from_millis(100), || {
        Err::<(), _>("connection refused")
    })
    .unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[test]
fn a_wire_like_underlay_has_gro_on_its_switch_ports_and_a_client_without_tx_offload() {
    let tb = Testbed::new("wire-like", TestbedConfig::with_hosts(2)).unwrap();
    // Veths come with GRO off and tx checksumming on: not wire-like until asked.
    assert!(!tb.is_wire_like().unwrap());
    tb.make_wire_like().unwrap();
    assert!(tb.is_wire_like().unwrap());
    // Idempotent, and the underlay still carries traffic (the client's checksums now
    // computed by its stack).
    tb.make_wire_like().unwrap();
    ping(tb.client(), tb.host(1).underlay_ip()).unwrap();
    ping(tb.host(0), tb.client().underlay_ip()).unwrap();
    let tcp = run_command(tb.client().command("ethtool").args(["-k", UNDERLAY_IFACE])).unwrap();
    assert!(
        tcp.lines()
            .any(|l| l.starts_with("tcp-segmentation-offload:") && l.contains("off")),
        "TSO follows tx checksumming off on the client: {tcp}"
    );
}
