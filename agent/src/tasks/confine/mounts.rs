//! The task's mount namespace: a fresh `/proc` for its PID namespace, `/proc/sys` and
//! `/sys` read-only, and empty tmpfs over every place an agent keeps its state directory,
//! API socket or bpffs — the defaults of every agent on the machine (`/var/lib/skein`,
//! `/run`, `/sys/fs/bpf`) and this agent's own paths, wherever its flags put them; a
//! `--token-file` elsewhere is covered by `/dev/null`.
//!
//! Other agents on the same kernel (the testbed runs one per network namespace) keep
//! their state in `/var/lib/skein/<netns>`, their sockets in `/run/skein/<netns>` and their
//! bpffs under `/run/skein-test/…`: covered by the same defaults, with no special case.
//! `/run` also holds `/run/netns` (every namespace's handle) and `/tmp` anything an agent
//! or operator left there; a task gets both empty, as in a container.
//!
//! [`MountPlan`] is prepared by the agent before the fork; [`MountPlan::apply`] runs in the
//! forked child (async-signal-safe: raw syscalls on prepared strings, no allocation).

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// Hidden in every task: where any agent keeps its state directory, socket and bpffs by
/// default (`config::paths`), and the machine's scratch directories.
pub(crate) const HIDDEN_BY_DEFAULT: [&str; 7] = [
    "/run",
    "/var/run",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/var/lib/skein",
    "/sys/fs/bpf",
];

/// `mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// What the child mounts, prepared before the fork.
#[derive(Debug, Clone)]
pub(crate) struct MountPlan {
    /// Directories covered by an empty tmpfs, outermost only, canonical, existing.
    hidden: Vec<CString>,
    /// Files (outside those directories) covered by `/dev/null`: a `--token-file` that
    /// lives somewhere tasks see, such as `/etc/skein/join-token`.
    hidden_files: Vec<CString>,
    resolv_conf: Option<ResolvConf>,
}

/// The task's resolv.conf bind-mounted over the host's (canonical) `/etc/resolv.conf`; if
/// that lies in a hidden directory (systemd-resolved's `/run/systemd/resolve/…`), the
/// path is made again inside the tmpfs first.
#[derive(Debug, Clone)]
struct ResolvConf {
    source: CString,
    target: CString,
    /// Directories to create inside a hidden tmpfs, outermost first.
    make_dirs: Vec<CString>,
    make_file: bool,
}

/// Steps of [`MountPlan::apply`], reported through `set_step` (see `process::child`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum MountStep {
    Proc,
    ReadOnly,
    Hide,
    ResolvConf,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path has a NUL byte"))
}

impl MountPlan {
    /// The plan for a task: [`HIDDEN_BY_DEFAULT`] and `agent_paths` (this agent's state
    /// directory, socket directory, bpffs) hidden, `resolv_conf` (a file in the task's
    /// state directory) over `/etc/resolv.conf`.
    pub(crate) fn new(
        agent_paths: &[PathBuf],
        resolv_conf: Option<&Path>,
    ) -> io::Result<MountPlan> {
        let hidden = hidden_dirs(
            HIDDEN_BY_DEFAULT
                .iter()
                .map(PathBuf::from)
                .chain(agent_paths.iter().cloned()),
        );
        let hidden_files = hidden_files(agent_paths, &hidden);
        let resolv_conf = match resolv_conf {
            None => None,
            Some(source) => {
                let target = std::fs::canonicalize("/etc/resolv.conf")?;
                let (make_dirs, make_file) = match hidden.iter().find(|h| target.starts_with(h)) {
                    None => (Vec::new(), false),
                    Some(hidden_dir) => {
                        let mut dirs: Vec<PathBuf> = target
                            .ancestors()
                            .skip(1)
                            .take_while(|a| a != hidden_dir)
                            .map(Path::to_path_buf)
                            .collect();
                        dirs.reverse();
                        (dirs, true)
                    }
                };
                Some(ResolvConf {
                    source: cstring(source)?,
                    target: cstring(&target)?,
                    make_dirs: make_dirs
                        .iter()
                        .map(|d| cstring(d))
                        .collect::<io::Result<_>>()?,
                    make_file,
                })
            }
        };
        Ok(MountPlan {
            hidden: hidden
                .iter()
                .map(|h| cstring(h))
                .collect::<io::Result<_>>()?,
            hidden_files: hidden_files
                .iter()
                .map(|f| cstring(f))
                .collect::<io::Result<_>>()?,
            resolv_conf,
        })
    }

    /// The covered directory `path` lies in, if any: a program there does not exist for
    /// the task. `path` is resolved first (the covered directories are canonical); one
    /// that cannot be resolved is left to `execve` to report.
    pub(crate) fn covering(&self, path: &Path) -> Option<PathBuf> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::fs::canonicalize(path).ok()?;
        self.hidden
            .iter()
            .map(|c| Path::new(std::ffi::OsStr::from_bytes(c.as_bytes())))
            .find(|dir| path.starts_with(dir))
            .map(Path::to_path_buf)
    }

    /// The directories covered by tmpfs.
    #[cfg(test)]
    pub(crate) fn hidden(&self) -> Vec<PathBuf> {
        use std::os::unix::ffi::OsStringExt;
        self.hidden
            .iter()
            .map(|c| PathBuf::from(std::ffi::OsString::from_vec(c.as_bytes().to_vec())))
            .collect()
    }

    /// Mounts, in a new mount namespace whose mounts are already private, in the first
    /// process of a new PID namespace: `/proc`, the read-only views, the tmpfs covers and
    /// the resolv.conf. Async-signal-safe. Only for a forked child before `execve`, with
    /// its mounts private: elsewhere it would change the agent's own mounts.
    pub(crate) fn apply(&self, set_step: &dyn Fn(MountStep)) -> io::Result<()> {
        // SAFETY: syscalls on NUL-terminated strings prepared before the fork.
        unsafe { self.apply_unchecked(set_step) }
    }

    unsafe fn apply_unchecked(&self, set_step: &dyn Fn(MountStep)) -> io::Result<()> {
        unsafe {
            set_step(MountStep::Proc);
            check(libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
            set_step(MountStep::ReadOnly);
            // Sysctls outside the network namespace are the host's (kernel.core_pattern runs
            // a program as root on the host), and writable with plain root permissions.
            for path in [c"/proc/sys", c"/proc/sysrq-trigger"] {
                bind_read_only(path, false)?;
            }
            // Opened before the covers: the source is in the agent's state directory.
            let source = match &self.resolv_conf {
                Some(resolv) => {
                    let fd = libc::open(resolv.source.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    if fd < 0 {
                        set_step(MountStep::ResolvConf);
                        return Err(io::Error::last_os_error());
                    }
                    Some((resolv, fd))
                }
                None => None,
            };
            set_step(MountStep::Hide);
            for dir in &self.hidden {
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=755,size=64m".as_ptr().cast(),
                ))?;
            }
            // As Docker masks /proc/kcore: reads give nothing, writes go nowhere.
            for file in &self.hidden_files {
                check(libc::mount(
                    c"/dev/null".as_ptr(),
                    file.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            if let Some((resolv, fd)) = source {
                set_step(MountStep::ResolvConf);
                for dir in &resolv.make_dirs {
                    if libc::mkdir(dir.as_ptr(), 0o755) != 0 {
                        let error = io::Error::last_os_error();
                        if error.raw_os_error() != Some(libc::EEXIST) {
                            return Err(error);
                        }
                    }
                }
                if resolv.make_file {
                    let file = libc::open(
                        resolv.target.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    );
                    if file < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(file);
                }
                let mut buf = [0u8; 32];
                check(libc::mount(
                    fd_path(&mut buf, fd),
                    resolv.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
                libc::close(fd);
            }
            set_step(MountStep::ReadOnly);
            // Recursive: cgroup hierarchies and the tmpfs over /sys/fs/bpf too.
            set_read_only(c"/sys", true)?;
            Ok(())
        }
    }
}

/// `/proc/self/fd/<fd>`, NUL-terminated, written into `buf` without allocating.
fn fd_path(buf: &mut [u8; 32], fd: libc::c_int) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bind-mounts `path` on itself and makes that mount read-only; a missing path is
/// skipped.
fn bind_read_only(path: &std::ffi::CStr, recursive: bool) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; no data.
    let rc = unsafe {
        libc::mount(
            path.as_ptr(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENOENT) => Ok(()),
            _ => Err(error),
        };
    }
    set_read_only(path, recursive)
}

fn set_read_only(path: &std::ffi::CStr, recursive: bool) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path and a mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            if recursive { AT_RECURSIVE } else { 0 },
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The existing files among `candidates`, canonical, outside every directory in `dirs`.
fn hidden_files(candidates: &[PathBuf], dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = candidates
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.is_file() && !dirs.iter().any(|d| p.starts_with(d)))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The existing directories among `candidates`, canonical, without `/` and without any
/// that lies inside another (a tmpfs over the outer one hides it already), sorted.
fn hidden_dirs(candidates: impl IntoIterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = candidates
        .into_iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| p.is_dir() && p != Path::new("/"))
        .collect();
    dirs.sort();
    dirs.dedup();
    let outer: Vec<PathBuf> = dirs.clone();
    dirs.retain(|d| !outer.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_outside_hidden_directories_are_hidden_alone() {
        let tmp = std::env::temp_dir().join(format!("skein-hide-files-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("dir")).unwrap();
        std::fs::write(tmp.join("token"), "secret").unwrap();
        std::fs::write(tmp.join("dir/inner"), "secret").unwrap();
        let candidates = [tmp.join("token"), tmp.join("dir/inner"), tmp.join("gone")];
        let dirs = hidden_dirs([tmp.join("dir")]);
        let files = hidden_files(&candidates, &dirs);
        let token = std::fs::canonicalize(tmp.join("token")).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(files, [token]);
    }

    #[test]
    fn only_outermost_existing_directories_are_hidden() {
        let tmp = std::env::temp_dir().join(format!("skein-hide-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("a/b")).unwrap();
        let dirs = hidden_dirs([
            tmp.join("a/b"),
            tmp.join("a"),
            tmp.join("a/"),
            tmp.join("missing"),
            PathBuf::from("/"),
        ]);
        assert_eq!(dirs, vec![std::fs::canonicalize(tmp.join("a")).unwrap()]);
        std::fs::remove_dir_all(&tmp).unwrap();

        let plan = MountPlan::new(&[PathBuf::from("/proc/self")], None).unwrap();
        let hidden = plan.hidden();
        assert!(hidden.contains(&PathBuf::from("/tmp")), "{hidden:?}");
        // A program under a covered directory is named with it; others are not.
        let program = std::env::temp_dir().join(format!("skein-covered-{}", std::process::id()));
        std::fs::write(&program, "").unwrap();
        let covering = plan.covering(&program);
        std::fs::remove_file(&program).unwrap();
        assert_eq!(covering, Some(PathBuf::from("/tmp")));
        assert_eq!(plan.covering(Path::new("/bin/sh")), None);
        // /var/run is a link to /run here: hidden once.
        assert_eq!(
            hidden
                .iter()
                .filter(|h| h.as_path() == Path::new("/run"))
                .count(),
            1
        );
    }

    #[test]
    fn fd_paths_are_written_without_allocating() {
        let mut buf = [0u8; 32];
        for (fd, text) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let ptr = fd_path(&mut buf, fd);
            // SAFETY: fd_path NUL-terminates inside buf.
            let s = unsafe { std::ffi::CStr::from_ptr(ptr) };
            assert_eq!(s.to_str().unwrap(), text);
        }
    }
}
