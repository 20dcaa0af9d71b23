//! Every task in its own cgroup: so that stopping a task ends every process it started
//! (daemonized, in another session, or not), and so that its memory, CPU and process
//! limits hold.
//!
//! # Groups
//! A task's group is `skein/<node-id>/<task-id>` in every hierarchy the agent uses: the
//! node ID keeps agents that share one kernel (the testbed) out of each other's groups.
//! The group is made fresh before each start of the task's process (so counters such as
//! `oom_kill` are that process's) and the child enters it before `execve` (pre-opened
//! `cgroup.procs` descriptors written in the pre-exec step, [`Entry::enter`]), so
//! everything it forks is in it.
//!
//! # Hierarchies
//! v2 holds membership and the kill (`cgroup.kill`); each wanted controller (`memory`,
//! `pids`, `cpu`) is used on v2 when the v2 root offers it, else on its v1 hierarchy.
//! Pure v2 hosts use v2 only; hybrid hosts like this project's test machines (v2 without
//! controllers, v1 `memory`/`pids`/`cpu`) put a task in four groups. Missing mounts (under
//! `ip netns exec`, `/sys/fs/cgroup` is empty) are mounted under the agent's state
//! directory (`hierarchy`). Without v2, the v1 freezer is used to kill.
//!
//! # Ending a task
//! Stop: SIGTERM to the main process (and its process group), then after the grace
//! [`TaskCgroup::kill`]. When the main process exits by itself the rest of the group is
//! killed too (a task ends with its main process, like a container). The group is
//! removed with the task ([`TaskCgroup::remove`]), and groups under the node's group that
//! belong to no task of the agent are removed after adoption (the supervisor's
//! `remove_stray_groups`).
//!
//! # Layout
//! - this file: [`Cgroups`] (the agent's hierarchies and node group), [`TaskCgroup`],
//!   [`Entry`] (the pre-exec step);
//! - `hierarchy`: finding and mounting hierarchies;
//! - `control`: limits, OOM counts, listing and killing processes.

mod control;
mod hierarchy;

use std::{
    collections::BTreeSet,
    fs, io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use manager::state::service::Limits;
use tracing::{debug, info, warn};

pub(crate) use control::oom_message;
use control::write_file;
use hierarchy::{Layout, WANTED};

/// The directory under each hierarchy's root holding every agent's groups.
pub(crate) const ROOT_GROUP: &str = "skein";
/// The most hierarchies a task is placed in: v2, v1 memory, pids, cpu, freezer.
const MAX_DIRS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    #[error("{what} {path} failed")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "this node has no {controller} cgroup controller, needed for {flag}: \
         enable it or create the service without {flag}"
    )]
    NoController {
        controller: &'static str,
        flag: &'static str,
    },
    #[error("this node has no usable cgroup hierarchy, needed for resource limits")]
    Unavailable,
}

/// The hierarchies this agent uses and its node group in each.
#[derive(Debug)]
pub(crate) struct Cgroups {
    layout: Layout,
    /// `skein/<node-id>`, relative to each hierarchy's root.
    node_group: PathBuf,
    /// Controllers enabled for the node's groups on v2.
    v2_controllers: BTreeSet<String>,
}

impl Cgroups {
    /// Finds (or mounts under `<state_dir>/cgroup`) the hierarchies, makes the node group
    /// in each and enables the wanted v2 controllers down to it.
    pub(crate) fn prepare(state_dir: &Path, node_id: &str) -> Result<Cgroups, CgroupError> {
        let private = state_dir.join("cgroup");
        let layout = hierarchy::find_or_mount(&private).map_err(|source| CgroupError::Io {
            what: "finding or mounting cgroup hierarchies under".to_owned(),
            path: private.clone(),
            source,
        })?;
        if layout.unified.is_none() && layout.v1.is_empty() && layout.freezer.is_none() {
            return Err(CgroupError::Unavailable);
        }
        let node_group = Path::new(ROOT_GROUP).join(node_id);
        let mut v2_controllers = BTreeSet::new();
        if let Some(unified) = &layout.unified {
            let node_dir = unified.join(&node_group);
            make_dir(&node_dir)?;
            let offered =
                fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
            for controller in WANTED {
                if !offered.split_whitespace().any(|c| c == controller) {
                    continue;
                }
                // Enabled from the root down to the node group, whose children are tasks.
                let enabled = [unified.clone(), unified.join(ROOT_GROUP), node_dir.clone()]
                    .iter()
                    .all(|dir| {
                        let control = dir.join("cgroup.subtree_control");
                        let already = fs::read_to_string(&control)
                            .is_ok_and(|c| c.split_whitespace().any(|c| c == controller));
                        already || write_file(&control, &format!("+{controller}")).is_ok()
                    });
                if enabled {
                    v2_controllers.insert(controller.to_owned());
                } else {
                    warn!(controller, "cannot enable a cgroup v2 controller for tasks");
                }
            }
        }
        for (_, mount) in &layout.v1 {
            make_dir(&mount.join(&node_group))?;
        }
        if let Some(freezer) = &layout.freezer {
            make_dir(&freezer.join(&node_group))?;
        }
        info!(
            unified = ?layout.unified,
            v2 = ?v2_controllers,
            v1 = ?layout.v1.iter().map(|(c, _)| c).collect::<Vec<_>>(),
            "task cgroups ready"
        );
        Ok(Cgroups {
            layout,
            node_group,
            v2_controllers,
        })
    }

    /// The group of task `task_id` (not made yet, or made earlier: nothing is done here).
    pub(crate) fn task(&self, task_id: &str) -> TaskCgroup {
        let group = self.node_group.join(task_id);
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        for (controller, mount) in &self.layout.v1 {
            if self.v2_controllers.contains(controller) {
                continue;
            }
            v1.push((controller.clone(), mount.join(&group)));
        }
        TaskCgroup {
            id: task_id.to_owned(),
            unified: self.layout.unified.as_ref().map(|u| u.join(&group)),
            v1,
            freezer: self.layout.freezer.as_ref().map(|f| f.join(&group)),
            v2_controllers: self.v2_controllers.clone(),
        }
    }

    /// The task IDs that have a group under this node's group, in any hierarchy.
    pub(crate) fn task_ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        let mounts = self
            .layout
            .unified
            .iter()
            .chain(self.layout.v1.iter().map(|(_, m)| m))
            .chain(self.layout.freezer.iter());
        for mount in mounts {
            if let Ok(entries) = fs::read_dir(mount.join(&self.node_group)) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        ids.insert(entry.file_name().to_string_lossy().into_owned());
                    }
                }
            }
        }
        ids
    }
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
        what: "creating the cgroup".to_owned(),
        path: dir.to_owned(),
        source,
    })
}

/// One task's group, in each hierarchy the agent uses.
#[derive(Debug, Clone)]
pub(crate) struct TaskCgroup {
    id: String,
    unified: Option<PathBuf>,
    /// (controller, group) on v1, for controllers not on v2; a combined hierarchy
    /// (`cpu,cpuacct`) appears once per controller with the same path.
    v1: Vec<(String, PathBuf)>,
    freezer: Option<PathBuf>,
    v2_controllers: BTreeSet<String>,
}

impl TaskCgroup {
    /// Every directory of the group, without repeats.
    fn dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = Vec::new();
        let all = self
            .unified
            .iter()
            .chain(self.v1.iter().map(|(_, d)| d))
            .chain(self.freezer.iter());
        for dir in all {
            if !dirs.contains(&dir.as_path()) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Where processes are listed and counted: v2, else the first v1 group.
    fn main_dir(&self) -> Option<&Path> {
        self.dirs().first().copied()
    }

    /// The group holding `controller` and whether it is v2; `flag` names the limit that
    /// needs it, for the error.
    fn controller_dir(
        &self,
        controller: &'static str,
        flag: &'static str,
    ) -> Result<(&Path, bool), CgroupError> {
        if self.v2_controllers.contains(controller) {
            if let Some(unified) = &self.unified {
                return Ok((unified, true));
            }
        }
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, d)| (d.as_path(), false))
            .ok_or(CgroupError::NoController { controller, flag })
    }

    /// Makes the group fresh for a new process (an old one is emptied and removed first)
    /// with `limits`, and opens what the child writes to enter it.
    pub(crate) fn create(&self, limits: &Limits) -> Result<Entry, CgroupError> {
        self.remove()?;
        for dir in self.dirs() {
            make_dir(dir)?;
        }
        if let Err(error) = self.apply(limits) {
            let _ = self.remove();
            return Err(error);
        }
        let mut files = Vec::with_capacity(MAX_DIRS);
        for dir in self.dirs().into_iter().take(MAX_DIRS) {
            let path = dir.join("cgroup.procs");
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| CgroupError::Io {
                    what: "opening".to_owned(),
                    path,
                    source,
                })?;
            files.push(OwnedFd::from(file));
        }
        Ok(Entry { files })
    }

    /// Kills whatever is in the group, waits until it is empty and removes the group from
    /// every hierarchy. A group that does not exist is removed already.
    pub(crate) fn remove(&self) -> Result<(), CgroupError> {
        if !self.dirs().iter().any(|d| d.exists()) {
            return Ok(());
        }
        self.kill();
        if !self.wait_empty() {
            warn!(task = %self.id, pids = ?self.pids(), "a task's cgroup did not empty after SIGKILL");
        }
        for dir in self.dirs() {
            let mut result = Ok(());
            // A process still exiting keeps a group busy for a moment.
            for _ in 0..50 {
                result = match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        thread::sleep(Duration::from_millis(10));
                        Err(e)
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                };
                if result.is_ok() {
                    break;
                }
            }
            result.map_err(|source| CgroupError::Io {
                what: "removing the cgroup".to_owned(),
                path: dir.to_owned(),
                source,
            })?;
        }
        debug!(task = %self.id, "task cgroup removed");
        Ok(())
    }
}

/// The open `cgroup.procs` files of a fresh task group; the child writes its own PID
/// ("0") to each before `execve`. Keep it alive until the child has been spawned.
#[derive(Debug)]
pub(crate) struct Entry {
    files: Vec<OwnedFd>,
}

impl Entry {
    /// What the pre-exec step needs: plain descriptors, copyable into the child's closure.
    pub(crate) fn fds(&self) -> EntryFds {
        let mut fds = EntryFds::default();
        for (slot, file) in fds.fds.iter_mut().zip(&self.files) {
            *slot = file.as_raw_fd();
        }
        fds
    }
}

/// The descriptors [`EntryFds::enter`] writes to; -1 marks an unused slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryFds {
    fds: [RawFd; MAX_DIRS],
}

impl Default for EntryFds {
    fn default() -> EntryFds {
        EntryFds {
            fds: [-1; MAX_DIRS],
        }
    }
}

impl EntryFds {
    /// Moves the calling process into the group: the pre-exec step. Async-signal-safe
    /// (one `write` per hierarchy, no allocation); does nothing without a group.
    pub(crate) fn enter(&self) -> io::Result<()> {
        for &fd in self.fds.iter().filter(|&&fd| fd >= 0) {
            // SAFETY: writes one byte from a static buffer to a descriptor the parent
            // opened and keeps open across the fork.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
