//! Real groups on this machine's hierarchies: entered before exec, limits applied, every
//! process killed, the group removed. Need root: `#[ignore]`d, run by the privileged tier
//! (`--ignored`), where they fail, never skip, without root.

use std::{
    fs,
    os::unix::process::CommandExt,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use manager::state::service::Limits;

use super::*;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
}

/// A node group of its own under a temporary state directory, and a task in it.
fn fixture(name: &str) -> (PathBuf, Cgroups, TaskCgroup) {
    let state = std::env::temp_dir().join(format!("skein-cg-{name}-{}", std::process::id()));
    fs::create_dir_all(&state).unwrap();
    let node = format!("test-{name}-{}", std::process::id());
    let cgroups = Cgroups::prepare(&state, &node).expect("cgroups on this machine");
    let task = cgroups.task("t1");
    (state, cgroups, task)
}

/// Removes a fixture's groups and state directory when dropped: also when the test fails.
struct Cleanup<'a>(&'a Path, &'a Cgroups);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let Cleanup(state, cgroups) = *self;
        for id in cgroups.task_ids() {
            let _ = cgroups.task(&id).remove();
        }
        for dir in [
            cgroups.layout.unified.iter().collect::<Vec<_>>(),
            cgroups.layout.v1.iter().map(|(_, d)| d).collect(),
        ]
        .concat()
        {
            let _ = fs::remove_dir(dir.join(&cgroups.node_group));
        }
        let _ = fs::remove_dir_all(state);
    }
}

/// Spawns `sh -c script` entering `entry` before exec.
fn spawn_in(entry: &Entry, script: &str) -> std::process::Child {
    let fds = entry.fds();
    let mut command = Command::new("sh");
    command.args(["-c", script]);
    // SAFETY: `enter` only writes to descriptors opened before the fork.
    unsafe { command.pre_exec(move || fds.enter()) };
    command.spawn().unwrap()
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
fn daemonized_processes_are_in_the_group_and_killed_with_it() {
    require_root();
    let (state, cgroups, task) = fixture("kill");
    let _cleanup = Cleanup(&state, &cgroups);
    let entry = task.create(&Limits::default()).unwrap();
    let mut child = spawn_in(&entry, "setsid sleep 1000 & echo $!; exec sleep 1000");
    let deadline = Instant::now() + Duration::from_secs(10);
    while task.pids().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the child and its daemon join the group"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let pids = task.pids();
    assert!(pids.contains(&child.id()), "{pids:?}");
    assert!(task.is_populated());
    assert_eq!(cgroups.task_ids(), BTreeSet::from(["t1".to_owned()]));

    task.kill();
    child.wait().unwrap();
    assert!(task.wait_empty(), "left: {:?}", task.pids());
    for pid in pids {
        assert!(!alive(pid), "{pid} survived the kill");
    }
    task.remove().unwrap();
    assert!(task.dirs().iter().all(|d| !d.exists()));
    assert!(cgroups.task_ids().is_empty());
}

#[test]
#[ignore = "needs root: run by cargo xtask test's privileged tier"]
fn limits_are_applied_and_oom_kills_counted() {
    require_root();
    let (state, cgroups, task) = fixture("limits");
    let _cleanup = Cleanup(&state, &cgroups);
    let limits = Limits {
        memory_bytes: Some(32 << 20),
        cpu_millis: Some(500),
        pids: Some(5),
    };
    let entry = task.create(&limits).unwrap();
    let (memory, v2) = task.controller_dir("memory", "").unwrap();
    let max = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    assert_eq!(
        fs::read_to_string(memory.join(max)).unwrap().trim(),
        (32u64 << 20).to_string()
    );
    let (pids, _) = task.controller_dir("pids", "").unwrap();
    assert_eq!(
        fs::read_to_string(pids.join("pids.max")).unwrap().trim(),
        "5"
    );
    assert_eq!(task.oom_kills(), Some(0));

    // Reads 128 MiB into one buffer (so touches it) against 32: the kernel kills it. One
    // process (dd), so the pids limit of 5 does not get in the way.
    let mut child = spawn_in(
        &entry,
        "exec dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null",
    );
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status:?}");
    assert_eq!(task.oom_kills(), Some(1), "the kill is counted");

    // A fresh group for the next process: counters start again.
    task.create(&limits).unwrap();
    assert_eq!(task.oom_kills(), Some(0));
    task.remove().unwrap();
}
