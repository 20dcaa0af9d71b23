//! What a forked child does before `execve`, and how it tells the agent which step failed.

use std::{
    ffi::CString,
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicU32, Ordering},
};

use super::SpawnError;
use crate::tasks::cgroup::EntryFds;

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
    /// A file bind-mounted over `/etc/resolv.conf` in the new mount namespace (the task's
    /// resolver: the agent's DNS server at 127.0.0.11).
    pub(super) resolv_conf: Option<CString>,
    pub(super) ids: Option<(u32, u32)>,
    /// Where the child records how far it got (see [`StepPage`]).
    pub(super) step: usize,
    /// The task's cgroup, entered first, so everything after runs (and is charged) in it.
    pub(super) cgroup: EntryFds,
}

/// The steps of [`ChildSetup::run`], for error messages. Index 0: std's own preparation
/// (stdio, cwd) before ours.
const STEPS: [&str; 11] = [
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
    "entering its cgroup",
];
const STEP_EXEC: u32 = 8;
const STEP_RESOLV_CONF: u32 = 9;
const STEP_CGROUP: u32 = 10;

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
            self.set_step(STEP_CGROUP);
            self.cgroup.enter()?;
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
                    if let Some(resolv_conf) = &self.resolv_conf {
                        self.set_step(STEP_RESOLV_CONF);
                        check(libc::mount(
                            resolv_conf.as_ptr(),
                            c"/etc/resolv.conf".as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ))?;
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
            if let Some((uid, gid)) = self.ids {
                self.set_step(7);
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
            }
            // No descriptor of the agent's may leak into the task, even one a library
            // opened without O_CLOEXEC; stdio is 0-2. Best effort: kernels before 5.11
            // lack close_range.
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            self.set_step(STEP_EXEC);
        }
        Ok(())
    }

    fn set_step(&self, step: u32) {
        // SAFETY: `self.step` is the address of a live, aligned AtomicU32 in a shared
        // mapping (see StepPage); an atomic store is async-signal-safe.
        unsafe { (*(self.step as *const AtomicU32)).store(step, Ordering::Relaxed) };
    }
}

/// A page shared between the agent and a forked child (`MAP_SHARED`), in which the child
/// records its setup step, so a failure std reports as a bare errno can say what failed
/// and an `execve` error can be told from a setup error.
pub(super) struct StepPage {
    ptr: *mut libc::c_void,
}

const STEP_PAGE_LEN: usize = 4096;

impl StepPage {
    pub(super) fn new() -> Result<StepPage, SpawnError> {
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

    pub(super) fn addr(&self) -> usize {
        self.ptr as usize
    }

    fn step(&self) -> u32 {
        // SAFETY: the live mapping holds an AtomicU32 at its start.
        unsafe { (*(self.ptr as *const AtomicU32)).load(Ordering::Relaxed) }
    }

    /// Turns std's spawn error into a [`SpawnError`] naming the step that failed.
    pub(super) fn error(&self, command: &str, source: io::Error) -> SpawnError {
        let command = command.to_owned();
        match self.step() {
            STEP_EXEC => SpawnError::Exec { command, source },
            step => SpawnError::Setup {
                command,
                step: STEPS.get(step as usize).copied().unwrap_or(STEPS[0]),
                source,
            },
        }
    }
}

impl Drop for StepPage {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, STEP_PAGE_LEN) };
    }
}
