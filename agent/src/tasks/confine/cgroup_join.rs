//! Putting a health check into its task's cgroups: the task's membership read from
//! `/proc/<pid>/cgroup`, each hierarchy found among the agent's own mounts
//! (`/proc/self/mountinfo`: cgroup2, and cgroup v1 by its controllers), and its
//! `cgroup.procs` opened by the agent; the forked child writes `0` to each
//! ([`join`], async-signal-safe) and so is counted, limited and killed with the task.
//!
//! Independent of how the groups were made (the `cgroup` helper's module, or a task
//! that inherited the agent's group): whatever the task is in, its check is in too. A
//! hierarchy the agent has not mounted is skipped (the check stays in the agent's group
//! there).

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// The `cgroup.procs` files of `pid`'s cgroups that the agent can reach, opened for
/// writing.
pub(crate) fn task_cgroups(pid: u32) -> io::Result<Vec<File>> {
    let membership = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut files = Vec::new();
    let mut seen = Vec::new();
    for path in procs_paths(&membership, &mountinfo) {
        if seen.contains(&path) {
            continue;
        }
        if let Ok(file) = OpenOptions::new().write(true).open(&path) {
            files.push(file);
        }
        seen.push(path);
    }
    Ok(files)
}

/// Moves the calling process into each group. Async-signal-safe.
pub(crate) fn join(files: &[File]) -> io::Result<()> {
    for file in files {
        // SAFETY: a valid descriptor and a 1-byte buffer.
        if unsafe { libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A cgroup mount: (fs type, its root inside the hierarchy, mount point, super options).
struct CgroupMount<'a> {
    v2: bool,
    root: &'a str,
    point: &'a str,
    options: Vec<&'a str>,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount<'_>> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or("").split(',').collect();
            let (root, point) = (*fields.get(3)?, *fields.get(4)?);
            match fstype {
                "cgroup2" => Some(CgroupMount {
                    v2: true,
                    root,
                    point,
                    options,
                }),
                "cgroup" => Some(CgroupMount {
                    v2: false,
                    root,
                    point,
                    options,
                }),
                _ => None,
            }
        })
        .collect()
}

/// `cgroup.procs` paths for each line of a `/proc/PID/cgroup` that a mount reaches.
fn procs_paths(membership: &str, mountinfo: &str) -> Vec<PathBuf> {
    let mounts = cgroup_mounts(mountinfo);
    membership
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mount = mounts.iter().find(|m| {
                if controllers.is_empty() {
                    m.v2
                } else {
                    !m.v2 && controllers.split(',').all(|c| m.options.contains(&c))
                }
            })?;
            // The group as seen from the mount's root (a mount of a subtree sees less).
            let relative = match mount.root {
                "/" => path,
                root => path.strip_prefix(root)?,
            };
            let relative = relative.trim_start_matches('/');
            Some(Path::new(mount.point).join(relative).join("cgroup.procs"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_found_through_the_agents_mounts() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 /skein /run/agent/pids rw - cgroup cgroup rw,pids
34 25 0:30 / /proc rw - proc proc rw";
        let membership = "\
0::/skein/n1/t1
5:memory:/skein/n1/t1
4:cpu,cpuacct:/skein/n1/t1
3:pids:/skein/n1/t1
2:blkio:/skein/n1/t1";
        let paths = procs_paths(membership, mountinfo);
        assert_eq!(
            paths,
            [
                "/sys/fs/cgroup/unified/skein/n1/t1/cgroup.procs",
                "/sys/fs/cgroup/memory/skein/n1/t1/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/skein/n1/t1/cgroup.procs",
                "/run/agent/pids/n1/t1/cgroup.procs",
            ]
            .map(PathBuf::from)
        );
        // Our own groups resolve and open (whatever this machine mounts).
        task_cgroups(std::process::id()).unwrap();
    }
}
