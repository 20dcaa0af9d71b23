//! A task group's interface files: limits written, OOM kills read, processes listed,
//! the group killed.

use std::{
    fs,
    io::{self, Write},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use manager::state::service::{Bytes, Limits};

use super::{CgroupError, TaskCgroup};

/// The CFS period limits are expressed in (`cpu.max`'s default), microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// How long a group may take to empty after its processes were killed.
const EMPTY_WAIT: Duration = Duration::from_secs(5);
/// How many freeze-and-kill rounds the v1 fallback makes (a fork bomb may refill a group
/// between a listing and the kills unless frozen; frozen, one round is enough).
const KILL_ROUNDS: usize = 50;

pub(super) fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Io {
            what: format!("writing {value:?} to"),
            path: path.to_owned(),
            source,
        })
}

/// The `cpu.max` line of a limit in thousandths of a CPU.
pub(super) fn cpu_max(millis: u32) -> String {
    format!(
        "{} {CPU_PERIOD_US}",
        u64::from(millis) * CPU_PERIOD_US / 1000
    )
}

/// A counter of a flat-keyed file such as `memory.events` or v1 `memory.oom_control`.
pub(super) fn keyed_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Why a process was killed by its limit, for `service ps`.
pub(crate) fn oom_message(limits: &Limits) -> String {
    match limits.memory_bytes {
        Some(bytes) => format!("OOM killed: memory limit {}", Bytes(bytes)),
        None => "OOM killed".to_owned(),
    }
}

impl TaskCgroup {
    /// Writes the limits into the freshly made group: v2 files where the controller is on
    /// v2, else its v1 hierarchy's. A limit whose controller this node lacks is an error.
    pub(super) fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            let (dir, v2) = self.controller_dir("memory", "--limit-memory")?;
            if v2 {
                write_file(&dir.join("memory.max"), &bytes.to_string())?;
                // No swap beyond the limit, so it is a limit (absent without swap support).
                let _ = write_file(&dir.join("memory.swap.max"), "0");
            } else {
                write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                let _ = write_file(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
            }
        }
        if let Some(pids) = limits.pids {
            let (dir, _) = self.controller_dir("pids", "--limit-pids")?;
            write_file(&dir.join("pids.max"), &pids.to_string())?;
        }
        if let Some(millis) = limits.cpu_millis {
            let (dir, v2) = self.controller_dir("cpu", "--limit-cpu")?;
            if v2 {
                write_file(&dir.join("cpu.max"), &cpu_max(millis))?;
            } else {
                write_file(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let quota = u64::from(millis) * CPU_PERIOD_US / 1000;
                write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
        Ok(())
    }

    /// How many of the group's processes the kernel killed for exceeding its memory limit
    /// (since the group was made: one group per process start). `None` if unknown.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        let (dir, v2) = self.controller_dir("memory", "").ok()?;
        let file = if v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        keyed_counter(&fs::read_to_string(dir.join(file)).ok()?, "oom_kill")
    }

    /// The processes in the group (of its main hierarchy).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let Some(dir) = self.main_dir() else {
            return vec![];
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether any process is left in the group (a missing group has none).
    pub(crate) fn is_populated(&self) -> bool {
        match &self.unified {
            Some(dir) => match fs::read_to_string(dir.join("cgroup.events")) {
                Ok(events) => keyed_counter(&events, "populated") != Some(0),
                Err(_) => false,
            },
            None => !self.pids().is_empty(),
        }
    }

    /// Kills every process in the group at once: `cgroup.kill` (v2, Linux ≥ 5.14), else
    /// freeze, SIGKILL each listed process, thaw, until the group is empty.
    pub(crate) fn kill(&self) {
        if let Some(dir) = &self.unified {
            match write_file(&dir.join("cgroup.kill"), "1") {
                Ok(()) => return,
                Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    // The group is gone, or the kernel has no cgroup.kill: fall back.
                    if !dir.exists() {
                        return;
                    }
                }
                Err(_) => {}
            }
        }
        for _ in 0..KILL_ROUNDS {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            self.freeze(true);
            for pid in self.pids() {
                // SAFETY: kill takes no pointers. A listed PID is in the group until it is
                // reaped; the group's processes are not reaped while frozen.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            self.freeze(false);
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn freeze(&self, frozen: bool) {
        if let Some(dir) = &self.unified {
            let _ = write_file(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" });
        } else if let Some(dir) = &self.freezer {
            let state = if frozen { "FROZEN" } else { "THAWED" };
            let _ = write_file(&dir.join("freezer.state"), state);
        }
    }

    /// Waits (bounded, blocking) until no process is left in the group.
    pub(super) fn wait_empty(&self) -> bool {
        let deadline = Instant::now() + EMPTY_WAIT;
        while self.is_populated() {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_limits_are_written_as_the_kernel_reads_them() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_counter(events, "oom_kill"), Some(2));
        assert_eq!(keyed_counter(events, "oom"), Some(3));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n";
        assert_eq!(keyed_counter(v1, "oom_kill"), Some(1));
        assert_eq!(
            keyed_counter("populated 0\nfrozen 0\n", "populated"),
            Some(0)
        );
        assert_eq!(keyed_counter("", "oom_kill"), None);
        assert_eq!(cpu_max(1500), "150000 100000");
        assert_eq!(cpu_max(1), "100 100000");
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            ..Limits::default()
        };
        assert_eq!(oom_message(&limits), "OOM killed: memory limit 64MiB");
    }
}
