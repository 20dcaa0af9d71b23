//! Who a task's process is, recorded in its state directory, and its adoption by the next
//! agent.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{pidfd::pidfd_open, TaskProcess, OWN_CHILDREN};
use crate::tasks::cgroup::TaskCgroup;

/// Who the task's process is (see [`Identity`]), in its state directory.
const IDENTITY_FILE: &str = "identity.json";

/// The task's identity file in its state directory.
pub(super) fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

/// Who a task's process is, in its state directory: a PID alone could name another
/// process after a reboot or once the PID is reused; with its start time (clock ticks
/// after boot) and the boot ID it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Identity {
    pub(super) pid: u32,
    /// Field 22 of `/proc/PID/stat`.
    pub(super) start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub(super) boot_id: String,
}

pub(super) fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// Writes the identity file atomically: a temporary file, synced, renamed over it.
pub(super) fn write_identity(dir: &Path, identity: &Identity) -> io::Result<()> {
    let path = identity_path(dir);
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec(identity).map_err(io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    // The rename itself is durable once the directory is synced.
    fs::File::open(dir)?.sync_all()
}

pub(super) fn read_identity(dir: &Path) -> Option<Identity> {
    let bytes = fs::read(identity_path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// (parent PID, start time) from `/proc/PID/stat`.
pub(super) fn proc_stat(pid: u32) -> io::Result<(u32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

/// (field 4 ppid, field 22 starttime) of a `/proc/PID/stat` line. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3.
    let ppid = fields.get(4 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((ppid, start_time))
}

impl TaskProcess {
    /// After an agent restart: the task process recorded in `dir`'s identity file, if
    /// that PID is still alive, started at the recorded time in this boot (so it is not a
    /// reused PID). `None` otherwise, or outside a tokio runtime. Its exit code will not
    /// be known unless it is the agent's own child.
    pub(crate) fn adopt(dir: &Path, cgroup: Option<TaskCgroup>) -> Option<TaskProcess> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("TaskProcess::adopt called outside a tokio runtime");
            return None;
        };
        let identity = read_identity(dir)?;
        if boot_id().ok()? != identity.boot_id {
            debug!(dir = %dir.display(), "task identity is from another boot");
            return None;
        }
        // Open first, then compare: if the start time still matches after the pidfd was
        // opened, the pidfd is the recorded process's.
        let pidfd = pidfd_open(identity.pid).ok()?;
        let (ppid, start_time) = proc_stat(identity.pid).ok()?;
        if start_time != identity.start_time {
            debug!(
                pid = identity.pid,
                "task PID is alive but another process (start time differs)"
            );
            return None;
        }
        let child = ppid == std::process::id();
        if child {
            // Still the agent's own child (adopted without a restart): share the watcher
            // that already reaps it, so the exit code is not lost to a second one.
            let watched = OWN_CHILDREN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&identity.pid)
                .filter(|shared| shared.start_time == start_time)
                .cloned();
            if let Some(shared) = watched {
                return Some(TaskProcess { shared });
            }
        }
        Some(TaskProcess::watch(
            &runtime,
            identity.pid,
            start_time,
            pidfd,
            child,
            cgroup,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((17, 987_654)));
        assert_eq!(parse_stat("1 (x) S 0"), None);
        let (ppid, start) = proc_stat(std::process::id()).unwrap();
        assert!(ppid > 0 && start > 0);
    }
}
