//! Finding the cgroup hierarchies the agent needs, and mounting the missing ones where
//! only the agent sees them.
//!
//! The kernel says which hierarchies exist (`/proc/self/cgroup`: `ID:CONTROLLERS:PATH`,
//! `0::PATH` for v2); the agent's mount namespace says where they are mounted
//! (`/proc/self/mountinfo`). Under `ip netns exec`, `/sys` is a fresh sysfs and
//! `/sys/fs/cgroup` is empty, so a hierarchy found in the first but not the second is
//! mounted under the agent's state directory. That mount is made in the agent's own mount
//! namespace: under `ip netns exec` it dies with the agent; on a host the next agent finds
//! it again in mountinfo.

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use tracing::info;

/// The controllers limits use.
pub(super) const WANTED: [&str; 3] = ["memory", "pids", "cpu"];

/// A hierarchy the kernel has, from `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KernelHierarchy {
    /// Empty for v2.
    pub(super) controllers: BTreeSet<String>,
}

/// A mounted hierarchy with its root at the mount point (a bind mount of a subtree is not
/// usable: group paths would not be the kernel's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mounted {
    pub(super) path: PathBuf,
    /// `None` for cgroup2; a v1 hierarchy's controllers (and `name=` option) otherwise.
    pub(super) v1: Option<BTreeSet<String>>,
}

/// The lines of `/proc/self/cgroup` as hierarchies; malformed lines are skipped.
pub(super) fn parse_proc_cgroup(text: &str) -> Vec<KernelHierarchy> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_id, controllers) = (fields.next()?, fields.next()?);
            fields.next()?;
            Some(KernelHierarchy {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// The cgroup mounts of a mountinfo text whose root is the hierarchy's root.
pub(super) fn parse_mountinfo(text: &str) -> Vec<Mounted> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (root, mount_point) = (*left.get(3)?, *left.get(4)?);
            let (fstype, options) = (*right.first()?, *right.get(2)?);
            if root != "/" {
                return None;
            }
            let path = PathBuf::from(unescape(mount_point));
            match fstype {
                "cgroup2" => Some(Mounted { path, v1: None }),
                "cgroup" => Some(Mounted {
                    path,
                    v1: Some(
                        options
                            .split(',')
                            .filter(|o| is_v1_controller_option(o))
                            .map(str::to_owned)
                            .collect(),
                    ),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Mount options of a v1 cgroup mount that name its hierarchy (controllers, `name=`), not
/// the generic ones (`rw`, `relatime`, …).
fn is_v1_controller_option(option: &str) -> bool {
    !matches!(
        option,
        "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec" | "clone_children"
    ) && !option.starts_with("release_agent=")
        && !option.starts_with("xattr")
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|octal| u8::from_str_radix(octal, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the hierarchies the agent uses are mounted: v2 (membership and `cgroup.kill`)
/// and, for each wanted controller not on v2, its v1 hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) unified: Option<PathBuf>,
    /// (controller, v1 mount) for controllers not available on v2; one mount may serve
    /// several (`cpu,cpuacct`).
    pub(super) v1: Vec<(String, PathBuf)>,
    /// The v1 freezer, used to stop a group's processes while killing them when there is no
    /// v2 hierarchy.
    pub(super) freezer: Option<PathBuf>,
}

/// Finds (or mounts under `private`) the hierarchies, per the module docs.
pub(super) fn find_or_mount(private: &Path) -> io::Result<Layout> {
    let kernel = parse_proc_cgroup(&fs::read_to_string("/proc/self/cgroup")?);
    let mounted = || -> io::Result<Vec<Mounted>> {
        Ok(parse_mountinfo(&fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    };
    let mut mounts = mounted()?;
    let mut layout = Layout::default();

    let has_v2 = kernel.iter().any(|h| h.controllers.is_empty())
        || fs::read_to_string("/proc/filesystems")?.contains("cgroup2");
    if has_v2 {
        let unified = match mounts.iter().find(|m| m.v1.is_none()) {
            Some(m) => m.path.clone(),
            None => {
                let dir = private.join("unified");
                mount(&dir, "cgroup2", None)?;
                dir
            }
        };
        layout.unified = Some(unified);
    }
    let v2_controllers: BTreeSet<String> = match &layout.unified {
        Some(unified) => fs::read_to_string(unified.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        None => BTreeSet::new(),
    };
    let mut needed: Vec<&str> = WANTED
        .into_iter()
        .filter(|c| !v2_controllers.contains(*c))
        .collect();
    if layout.unified.is_none() {
        needed.push("freezer");
    }
    for controller in needed {
        let Some(hierarchy) = kernel.iter().find(|h| h.controllers.contains(controller)) else {
            continue;
        };
        let found = mounts
            .iter()
            .find(|m| m.v1.as_ref() == Some(&hierarchy.controllers))
            .map(|m| m.path.clone());
        let path = match found {
            Some(path) => path,
            None => {
                let options = hierarchy
                    .controllers
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(",");
                let dir = private.join(options.replace(['=', ','], "_"));
                mount(&dir, "cgroup", Some(&options))?;
                mounts = mounted()?;
                dir
            }
        };
        if controller == "freezer" {
            layout.freezer = Some(path);
        } else {
            layout.v1.push((controller.to_owned(), path));
        }
    }
    Ok(layout)
}

fn mount(dir: &Path, fstype: &str, options: Option<&str>) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let fstype_c = CString::new(fstype).map_err(io::Error::other)?;
    let data = options
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype_c.as_ptr(),
            target.as_ptr(),
            fstype_c.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    info!(path = %dir.display(), fstype, options, "mounted a cgroup hierarchy for tasks");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_hosts_are_read_from_proc() {
        let kernel = parse_proc_cgroup(
            "9:name=systemd:/\n4:memory:/process_api/x\n1:cpu,cpuacct:/\n0::/\nbad\n",
        );
        assert_eq!(kernel.len(), 4);
        assert!(kernel[1].controllers.contains("memory"));
        assert_eq!(kernel[2].controllers.len(), 2);
        assert!(kernel[3].controllers.is_empty());

        let mounts = parse_mountinfo(
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
             32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate\n\
             50 31 0:38 /sub /mnt/sub rw,relatime - cgroup2 cgroup2 rw\n\
             60 31 0:40 / /my\\040dir rw - cgroup cgroup rw,name=systemd,xattr\n\
             23 1 0:22 / /sys rw - sysfs sysfs rw\n",
        );
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        assert_eq!(mounts[0].path, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            mounts[1].v1.as_ref().unwrap(),
            &BTreeSet::from(["cpu".to_owned(), "cpuacct".to_owned()])
        );
        assert_eq!(mounts[2].v1, None);
        assert_eq!(mounts[3].path, Path::new("/my dir"));
        assert_eq!(
            mounts[3].v1.as_ref().unwrap(),
            &BTreeSet::from(["name=systemd".to_owned()])
        );
    }
}
