//! What a forked child does before `execve`, and how it tells the agent which step failed.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicU32, Ordering},
};

use super::SpawnError;
use crate::tasks::{
    cgroup::EntryFds,
    confine::{cgroup_join, switch_user, MountPlan, MountStep, Privileges},
};

/// What the forked child does before `execve`. Runs after `fork` in a multi-threaded
/// process, so only async-signal-safe syscalls and no allocation: everything it needs
/// was prepared before the fork.
pub(super) struct ChildSetup {
    /// Namespaces to enter, in order: (descriptor, `CLONE_NEW*` type).
    pub(super) namespaces: [Option<(RawFd, libc::c_int)>; 3],
    /// `CLONE_NEW*` flags for namespaces of its own (0: none). A new mount namespace's
    /// mounts are made private.
    pub(super) unshare: libc::c_int,
    pub(super) hostname: Option<CString>,
    /// What to mount in the new mount namespace (a task's init: `/proc`, covers,
    /// resolv.conf; see `confine::mounts`).
    pub(super) mounts: Option<MountPlan>,
    /// `cgroup.procs` of groups to join (a health check: its task's).
    pub(super) cgroups: Vec<File>,
    pub(super) ids: Option<(u32, u32)>,
    /// Capabilities and `no_new_privs` to take (a health check: its task's; a task's init
    /// takes none here, it confines the command it starts).
    pub(super) privileges: Option<Privileges>,
    /// A descriptor to keep open across `execve`, as descriptor 3 (the init's report).
    pub(super) keep_fd: Option<RawFd>,
    /// The step recorded just before `execve` ([`STEP_EXEC`] or [`STEP_INIT`]).
    pub(super) exec_step: u32,
    /// Where the child records how far it got (see [`StepPage`]).
    pub(super) step: usize,
    /// The task's cgroup, entered first, so everything after runs (and is charged) in it.
    pub(super) cgroup: EntryFds,
}

/// The steps of [`ChildSetup::run`] and of `skein task-init`, for error messages. Index
/// 0: std's own preparation (stdio, cwd) before ours.
const STEPS: [&str; 18] = [
    "redirecting stdio or changing to /",
    "entering a namespace",
    "creating its UTS and mount namespaces",
    "making its mounts private",
    "setting its hostname",
    "creating its session",
    "resetting its signals",
    "switching to its user",
    "executing it",
    "mounting its resolv.conf",
    "mounting its /proc",
    "making /proc/sys and /sys read-only",
    "hiding the agents' directories",
    "limiting its capabilities",
    "setting no_new_privs",
    "joining its task's cgroups",
    "starting its init (skein task-init)",
    "entering its cgroup",
];
pub(crate) const STEP_USER: u32 = 7;
pub(crate) const STEP_EXEC: u32 = 8;
const STEP_RESOLV_CONF: u32 = 9;
const STEP_PROC: u32 = 10;
const STEP_READ_ONLY: u32 = 11;
const STEP_HIDE: u32 = 12;
pub(crate) const STEP_CAPS: u32 = 13;
pub(crate) const STEP_NO_NEW_PRIVS: u32 = 14;
const STEP_CGROUPS: u32 = 15;
pub(super) const STEP_INIT: u32 = 16;
const STEP_CGROUP: u32 = 17;

impl ChildSetup {
    pub(super) fn run(&self) -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY (whole function): plain syscalls with pointers to memory prepared before
        // the fork; `step` points into a live shared mapping.
        unsafe {
            // The task's own group first (a task's init: everything it starts is in it),
            // then a health check's task groups.
            self.set_step(STEP_CGROUP);
            self.cgroup.enter()?;
            self.set_step(STEP_CGROUPS);
            cgroup_join::join(&self.cgroups)?;
            self.set_step(1);
            for &(fd, kind) in self.namespaces.iter().flatten() {
                check(libc::setns(fd, kind))?;
            }
            if self.unshare != 0 {
                self.set_step(2);
                check(libc::unshare(self.unshare))?;
                if self.unshare & libc::CLONE_NEWNS != 0 {
                    self.set_step(3);
                    check(libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    if let Some(mounts) = &self.mounts {
                        mounts.apply(&|step| {
                            self.set_step(match step {
                                MountStep::Proc => STEP_PROC,
                                MountStep::ReadOnly => STEP_READ_ONLY,
                                MountStep::Hide => STEP_HIDE,
                                MountStep::ResolvConf => STEP_RESOLV_CONF,
                            })
                        })?;
                    }
                }
            }
            if let Some(hostname) = &self.hostname {
                self.set_step(4);
                let bytes = hostname.as_bytes();
                check(libc::sethostname(bytes.as_ptr().cast(), bytes.len()))?;
            }
            self.set_step(5);
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            self.set_step(6);
            // Handlers are reset by execve, but ignored signals stay ignored (an agent
            // started under nohup ignores SIGHUP): start every task with the defaults.
            for signal in 1..32 {
                if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
            if let Some(privileges) = &self.privileges {
                self.set_step(STEP_CAPS);
                privileges.limit_bounding_set()?;
            }
            if let Some((uid, gid)) = self.ids {
                self.set_step(STEP_USER);
                switch_user(uid, gid)?;
            }
            if let Some(privileges) = &self.privileges {
                self.set_step(STEP_CAPS);
                privileges.set_capabilities()?;
                self.set_step(STEP_NO_NEW_PRIVS);
                privileges.set_no_new_privs()?;
            }
            let first_closed = match self.keep_fd {
                Some(fd) => {
                    // dup2 clears close-on-exec on the copy; onto itself it does nothing.
                    if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0);
                    } else if libc::dup2(fd, 3) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    4
                }
                None => 3,
            };
            // No descriptor of the agent's may leak into the task, even one a library
            // opened without O_CLOEXEC; stdio is 0-2. Best effort: kernels before 5.11
            // lack close_range.
            libc::syscall(
                libc::SYS_close_range,
                first_closed as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            self.set_step(self.exec_step);
        }
        Ok(())
    }

    fn set_step(&self, step: u32) {
        StepPage::set_at(self.step, step);
    }
}

/// A page shared between the agent and a forked child (`MAP_SHARED`), in which the child
/// records its setup step, so a failure std reports as a bare errno can say what failed
/// and an `execve` error can be told from a setup error.
pub(crate) struct StepPage {
    ptr: *mut libc::c_void,
}

const STEP_PAGE_LEN: usize = 4096;

impl StepPage {
    pub(crate) fn new() -> Result<StepPage, SpawnError> {
        // SAFETY: a fresh anonymous mapping; no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STEP_PAGE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SpawnError::Io {
                what: "mapping a page shared with the child".to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // Anonymous mappings are zero-filled: step 0.
        Ok(StepPage { ptr })
    }

    pub(crate) fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Records `step` in the page at `addr` (from [`StepPage::addr`]). Async-signal-safe.
    pub(crate) fn set_at(addr: usize, step: u32) {
        // SAFETY: `addr` is the address of a live, aligned AtomicU32 in a shared mapping;
        // an atomic store is async-signal-safe.
        unsafe { (*(addr as *const AtomicU32)).store(step, Ordering::Relaxed) };
    }

    pub(crate) fn step(&self) -> u32 {
        // SAFETY: the live mapping holds an AtomicU32 at its start.
        unsafe { (*(self.ptr as *const AtomicU32)).load(Ordering::Relaxed) }
    }

    /// Turns std's spawn error into a [`SpawnError`] naming the step that failed.
    pub(super) fn error(&self, command: &str, source: io::Error) -> SpawnError {
        step_error(self.step(), command, source)
    }
}

/// The [`SpawnError`] for a failure at `step` (recorded by a child or reported by
/// `skein task-init`).
pub(super) fn step_error(step: u32, command: &str, source: io::Error) -> SpawnError {
    let command = command.to_owned();
    match step {
        STEP_EXEC => SpawnError::Exec { command, source },
        step => SpawnError::Setup {
            command,
            step: STEPS.get(step as usize).copied().unwrap_or(STEPS[0]),
            source,
        },
    }
}

impl Drop for StepPage {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, STEP_PAGE_LEN) };
    }
}
