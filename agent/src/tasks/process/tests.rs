//! Real task processes: spawned, adopted, health-checked and stopped. All but the first
//! need root (namespaces, sethostname, setuid): they are `#[ignore]`d, and the privileged
//! tier of `cargo xtask test` runs them with `--ignored`, where they fail, never skip,
//! without root.

use std::{
    ffi::CString,
    fs, io,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use super::{
    health_check,
    identity::{identity_path, read_identity, write_identity},
    log_path, SpawnError, TaskProcess, TaskSpec,
};
use crate::netlink;
use manager::state::service::Security;

#[tokio::test]
async fn a_command_in_a_directory_tasks_do_not_see_fails_to_spawn() {
    let dir = TempDir::new();
    // /tmp is covered by an empty tmpfs in every task: a program there would be missing.
    let program = std::env::temp_dir().join(unique("skein-hidden-program"));
    fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let spec = TaskSpec {
        command: vec![program.to_str().unwrap().into()],
        ..spec("t-hidden", Path::new("/proc/self/ns/net"), &dir.0)
    };
    let e = TaskProcess::spawn(&spec).unwrap_err();
    fs::remove_file(&program).unwrap();
    assert!(
        matches!(&e, SpawnError::CommandHidden { dir, .. } if dir == Path::new("/tmp")),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("tasks see as an empty directory"),
        "{e}"
    );
    assert!(!identity_path(&dir.0).exists(), "nothing was started");
}

#[tokio::test]
async fn a_command_that_cannot_be_found_fails_to_spawn() {
    let dir = TempDir::new();
    let spec = TaskSpec {
        command: vec!["skein-no-such-command".into()],
        ..spec("t-missing", Path::new("/proc/self/ns/net"), &dir.0)
    };
    let e = TaskProcess::spawn(&spec).unwrap_err();
    assert!(matches!(e, SpawnError::CommandNotFound { .. }), "{e:?}");
    assert!(
        !identity_path(&dir.0).exists(),
        "nothing was started, so nothing is recorded"
    );
}

// ---- privileged tests: root, a network namespace and real processes ----

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Root is required: without it the test fails, saying so (it is only run by the
/// privileged tier, as root; a skip must never count as a pass).
fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (namespaces, sethostname, setuid): run it as root, as \
             `cargo xtask test` does in its privileged tier"
    );
}

/// A named network namespace, deleted on drop (also when the test panics).
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn new() -> NetnsGuard {
        let name = unique("skein-trt");
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("running ip netns add");
        assert!(status.success(), "ip netns add {name} failed");
        NetnsGuard { name }
    }

    fn path(&self) -> PathBuf {
        netlink::netns_path(&self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        // Not under /tmp: tasks get a private tmpfs there (`confine::mounts`), so the
        // scripts and files a test shares with its task live in the target directory.
        TempDir(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/task-tests")
                .join(unique("skein-task-test")),
        )
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills a task's process group on drop, so a failing test leaves no process.
struct KillOnDrop(TaskProcess);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.signal(libc::SIGKILL);
    }
}

fn spec(task_id: &str, netns: &Path, dir: &Path) -> TaskSpec {
    TaskSpec {
        task_id: task_id.to_owned(),
        service: "web".to_owned(),
        node_id: "node-a".to_owned(),
        netns_path: netns.to_owned(),
        command: vec![],
        env: vec![("GREETING".into(), "hello".into())],
        user: None,
        dir: dir.join("task"),
        security: Default::default(),
        hidden: vec![],
        cgroup: None,
        limits: Default::default(),
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Waits until `f` holds, for up to 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ns_id(path: impl AsRef<Path>) -> (u64, u64) {
    let meta = fs::metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.as_ref().display()));
    (meta.dev(), meta.ino())
}

#[tokio::test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
async fn task_runs_in_its_namespaces_and_session_and_is_adopted_and_stopped() {
    require_root();
    let netns = NetnsGuard::new();
    let tmp = TempDir::new();
    let task_id = unique("web.1");
    let spec = TaskSpec {
        command: sh(
            "hostname; echo $SKEIN_TASK $SKEIN_SERVICE $SKEIN_NODE $GREETING; \
                 echo oops >&2; sleep 30",
        ),
        ..spec(&task_id, &netns.path(), &tmp.0)
    };
    let task = TaskProcess::spawn(&spec).unwrap();
    let _kill = KillOnDrop(task.clone());
    let pid = task.pid();

    let log = log_path(&spec.dir);
    eventually("three lines of log", || {
        fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 3)
    })
    .await;
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("{task_id}\n{task_id} web node-a hello\noops\n")
    );

    // Namespaces: the endpoint's network namespace, its own UTS and mount ones.
    assert_eq!(ns_id(format!("/proc/{pid}/ns/net")), ns_id(netns.path()));
    for kind in ["uts", "mnt"] {
        assert_ne!(
            ns_id(format!("/proc/{pid}/ns/{kind}")),
            ns_id(format!("/proc/self/ns/{kind}")),
            "{kind} namespace is the agent's"
        );
    }
    // Its own session and process group; a child of the agent until adopted.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    assert_eq!(fields[5 - 3], pid.to_string(), "process group");
    assert_eq!(fields[6 - 3], pid.to_string(), "session");
    // No descriptors but stdio.
    let fds: Vec<_> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(fds.len(), 3, "descriptors {fds:?}");
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.contains(&format!("HOSTNAME={task_id}\0")),
        "{environ}"
    );
    assert!(environ.contains("HOME=/root\0"), "{environ}");

    // Adopt: same PID and start time; a forged start time is another process.
    let adopted = TaskProcess::adopt(&spec.dir, None).expect("the task is adopted");
    assert_eq!(adopted.pid(), pid);
    assert_eq!(adopted.start_time(), task.start_time());
    let forged_dir = tmp.0.join("forged");
    fs::create_dir_all(&forged_dir).unwrap();
    let mut identity = read_identity(&spec.dir).unwrap();
    identity.start_time += 1;
    write_identity(&forged_dir, &identity).unwrap();
    assert!(TaskProcess::adopt(&forged_dir, None).is_none());
    identity.start_time -= 1;
    identity.boot_id = "00000000-0000-0000-0000-000000000000".into();
    write_identity(&forged_dir, &identity).unwrap();
    assert!(
        TaskProcess::adopt(&forged_dir, None).is_none(),
        "another boot"
    );
    assert!(TaskProcess::adopt(&tmp.0.join("nothing-here"), None).is_none());

    // Health checks run in the task's namespaces, with its environment.
    let check = |cmd: String| {
        let (task, spec) = (task.clone(), spec.clone());
        async move {
            health_check(&task, &spec, &cmd, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("health check {cmd:?}: {e}"))
        }
    };
    assert!(check("true".into()).await);
    assert!(!check("false".into()).await);
    assert!(check(format!("test \"$(hostname)\" = {task_id}")).await);
    assert!(check("test \"$GREETING\" = hello".into()).await);
    // The fresh namespace has only `lo`.
    assert!(check("test \"$(ip -o link | wc -l)\" = 1".into()).await);
    assert!(!check("test \"$(hostname)\" = not-the-task".into()).await);
    let started = Instant::now();
    assert!(
        !health_check(&task, &spec, "sleep 20", Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout bounds it"
    );

    // Stop: SIGTERM kills `sh`; the exit code says so; nothing is left, not even a
    // zombie.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), task.stop(Duration::from_secs(5)))
        .await
        .expect("stop finishes");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "SIGTERM sufficed"
    );
    assert_eq!(task.exited().await, Some(128 + libc::SIGTERM));
    adopted.exited().await;
    assert!(task.has_exited() && adopted.has_exited());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the task was reaped"
    );
    assert!(matches!(
        health_check(&task, &spec, "true", Duration::from_secs(1)).await,
        Err(SpawnError::TaskExited { .. })
    ));
}

#[tokio::test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
async fn exit_code_is_reported_and_the_child_reaped() {
    require_root();
    let netns = NetnsGuard::new();
    let tmp = TempDir::new();
    let spec = TaskSpec {
        command: sh("exit 3"),
        ..spec(&unique("t"), &netns.path(), &tmp.0)
    };
    let task = TaskProcess::spawn(&spec).unwrap();
    let _kill = KillOnDrop(task.clone());
    let code = tokio::time::timeout(Duration::from_secs(10), task.exited())
        .await
        .expect("the task exits");
    assert_eq!(code, Some(3));
    assert!(!Path::new(&format!("/proc/{}", task.pid())).exists());
    assert!(
        TaskProcess::adopt(&spec.dir, None).is_none(),
        "gone, so not adopted"
    );
}

#[tokio::test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
async fn group_of_the_task_dies_with_its_main_process() {
    require_root();
    let netns = NetnsGuard::new();
    let tmp = TempDir::new();
    // The task has a PID namespace of its own, so `$!` would not name the process here:
    // the background process carries a marker in its arguments instead (`; true` keeps
    // the shell from exec'ing sleep, so the marker stays in its command line).
    let marker = unique("skein-bg-marker");
    let spec = TaskSpec {
        command: sh(&format!(
            "sh -c 'sleep 30; true' {marker} & sleep 0.2; exit 0"
        )),
        ..spec(&unique("t"), &netns.path(), &tmp.0)
    };
    let task = TaskProcess::spawn(&spec).unwrap();
    let _kill = KillOnDrop(task.clone());
    assert_eq!(task.exited().await, Some(0));
    // The background process was killed with the task (its PID namespace's init exited);
    // a zombie not yet reaped counts as gone.
    eventually("the background process to die", || {
        processes_with(&marker).is_empty()
    })
    .await;
}

/// The live (non-zombie) processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
                && fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains(") Z "))
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
async fn mounts_of_a_task_stay_in_its_mount_namespace() {
    require_root();
    let netns = NetnsGuard::new();
    let tmp = TempDir::new();
    let mount_point = tmp.0.join("m");
    fs::create_dir_all(&mount_point).unwrap();
    // The host's mounts may all be private already (then nothing could leak and this
    // test could not fail): make the mount point a shared mount of the host's, which
    // the task's namespace starts as a peer of.
    struct Unmount(CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Whatever is stacked on it (a leaked mount), then the bind mount.
            for _ in 0..4 {
                // SAFETY: a valid path.
                if unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) } != 0 {
                    break;
                }
            }
        }
    }
    let c_mount_point = CString::new(mount_point.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid paths, no data.
    unsafe {
        let p = c_mount_point.as_ptr();
        let null = std::ptr::null();
        assert_eq!(libc::mount(p, p, null, libc::MS_BIND, null.cast()), 0);
        let _unmount = Unmount(c_mount_point.clone());
        assert_eq!(libc::mount(null, p, null, libc::MS_SHARED, null.cast()), 0);
        std::mem::forget(_unmount);
    }
    let _unmount = Unmount(c_mount_point);
    let spec = TaskSpec {
        command: sh(&format!(
            "mount -t tmpfs skein-test {0} && touch {0}/inside && echo mounted && cat /etc/resolv.conf; sleep 30",
            mount_point.display()
        )),
        // Mounting needs CAP_SYS_ADMIN, outside Docker's default set.
        security: Security {
            cap_add: vec!["SYS_ADMIN".into()],
            ..Default::default()
        },
        ..spec(&unique("t"), &netns.path(), &tmp.0)
    };
    let task = TaskProcess::spawn(&spec).unwrap();
    let _kill = KillOnDrop(task.clone());
    // Its resolv.conf names the agent's DNS server; the host's is untouched.
    let host_resolv_conf = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    eventually("the task's mount", || {
        fs::read_to_string(log_path(&spec.dir))
            .is_ok_and(|s| s == format!("mounted\n{}", super::spawn::TASK_RESOLV_CONF))
    })
    .await;
    assert_eq!(
        fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_resolv_conf
    );
    let leaked = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(mount_point.to_str().unwrap()) && l.contains("skein-test"));
    assert!(!leaked, "the task's mount propagated to the host");
    assert!(!mount_point.join("inside").exists());
    task.stop(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
async fn user_and_exec_errors() {
    require_root();
    let netns = NetnsGuard::new();
    let tmp = TempDir::new();
    let spec = TaskSpec {
        command: sh("id -u; id -g; id -G; echo $HOME"),
        user: Some("1234:5678".into()),
        ..spec(&unique("t"), &netns.path(), &tmp.0)
    };
    let task = TaskProcess::spawn(&spec).unwrap();
    let _kill = KillOnDrop(task.clone());
    assert_eq!(task.exited().await, Some(0));
    assert_eq!(
        fs::read_to_string(log_path(&spec.dir)).unwrap(),
        "1234\n5678\n5678\n/\n"
    );

    // A script only root may execute: execve fails with EACCES for uid 1234, and
    // that is an error of spawn, not a dead child.
    let script = tmp.0.join("root-only.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
    let e = TaskProcess::spawn(&TaskSpec {
        command: vec![script.to_str().unwrap().into()],
        ..spec.clone()
    })
    .unwrap_err();
    let SpawnError::Exec { source, .. } = &e else {
        panic!("expected an exec error, got {e:?}");
    };
    assert_eq!(source.kind(), io::ErrorKind::PermissionDenied, "{e:?}");

    // A path that is not a network namespace.
    let e = TaskProcess::spawn(&TaskSpec {
        netns_path: "/proc/self/ns/uts".into(),
        ..spec.clone()
    })
    .unwrap_err();
    assert!(matches!(e, SpawnError::Netns { .. }), "{e:?}");
}

#[tokio::test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
async fn stop_kills_a_task_that_ignores_sigterm() {
    require_root();
    let netns = NetnsGuard::new();
    let tmp = TempDir::new();
    let spec = TaskSpec {
        command: sh("trap '' TERM; echo ready; while :; do sleep 1; done"),
        ..spec(&unique("t"), &netns.path(), &tmp.0)
    };
    let task = TaskProcess::spawn(&spec).unwrap();
    let _kill = KillOnDrop(task.clone());
    eventually("the trap to be set", || {
        fs::read_to_string(log_path(&spec.dir)).is_ok_and(|s| s == "ready\n")
    })
    .await;
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        task.stop(Duration::from_millis(300)),
    )
    .await
    .expect("stop finishes");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(task.exited().await, Some(128 + libc::SIGKILL));
}
