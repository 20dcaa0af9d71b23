//! Removing the task cgroups of a dead run's agents: `skein/<node-id>/<task-id>` in every
//! mounted cgroup hierarchy (the agent's `tasks::cgroup`). The node IDs come from the
//! agents' state directories (`node-id`), read before those are deleted, so groups of
//! other runs' and real agents' nodes are never touched.

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// The directory under each hierarchy's root holding every agent's groups
/// (`agent::tasks::cgroup::ROOT_GROUP`).
const ROOT_GROUP: &str = "skein";
/// How long the processes of a killed group may take to exit.
const EMPTY_WAIT: Duration = Duration::from_secs(3);

/// The node ID an agent's state directory holds, if any.
pub(crate) fn node_id_of(state_dir: &Path) -> Option<String> {
    let id = fs::read_to_string(state_dir.join("node-id")).ok()?;
    let id = id.trim();
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Mount points of cgroup hierarchies (v1 and v2) in this process's mount namespace.
fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mount_point = fields.get(4)?;
            (matches!(fstype, "cgroup" | "cgroup2") && fields.get(3) == Some(&"/"))
                .then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Kills every process in node `node_id`'s task groups and removes the groups and the node
/// group; returns how many task groups were removed.
pub(crate) fn remove_node_groups(node_id: &str) -> Result<usize, String> {
    let mut removed = 0;
    let mut errors = Vec::new();
    for mount in cgroup_mounts() {
        let node_dir = mount.join(ROOT_GROUP).join(node_id);
        let Ok(entries) = fs::read_dir(&node_dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let group = entry.path();
            if !group.is_dir() {
                continue;
            }
            kill_group(&group);
            match fs::remove_dir(&group) {
                Ok(()) => removed += 1,
                Err(e) => errors.push(format!("removing {}: {e}", group.display())),
            }
        }
        if let Err(e) = fs::remove_dir(&node_dir) {
            errors.push(format!("removing {}: {e}", node_dir.display()));
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(errors.join("; "))
    }
}

/// `cgroup.kill` where there is one (v2), else SIGKILL to each listed process, until the
/// group is empty (bounded).
fn kill_group(group: &Path) {
    let _ = fs::write(group.join("cgroup.kill"), "1");
    let deadline = Instant::now() + EMPTY_WAIT;
    loop {
        let pids: Vec<i32> = fs::read_to_string(group.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill takes no pointers; the PID is listed in a group of a dead run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_node_ids_are_taken() {
        let dir = std::env::temp_dir().join(format!("skein-cg-sweep-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("node-id"), "00ff\n").unwrap();
        assert_eq!(node_id_of(&dir).as_deref(), Some("00ff"));
        fs::write(dir.join("node-id"), "../etc\n").unwrap();
        assert_eq!(node_id_of(&dir), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
