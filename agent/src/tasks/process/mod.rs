//! The process of one task (a replica of a service): started inside its endpoint's
//! network namespace with a UTS and a mount namespace of its own, watched through a
//! pidfd, adopted again after an agent restart, stopped, and health-checked.
//!
//! # What a task process gets
//! - the endpoint's network namespace (`setns` on a descriptor opened before the fork);
//! - a new UTS namespace whose hostname is the task ID, and a new mount namespace whose
//!   mounts are private (nothing it mounts leaks to the host, nor the host's to it later);
//! - a session and process group of its own (`setsid`): a SIGINT to the agent's process
//!   group (Ctrl-C on `skein agent`) does not reach it, and it outlives the agent;
//! - default signal dispositions, no signal mask, and no descriptor of the agent's but
//!   stdin (`/dev/null`) and stdout and stderr, appended to [`log_path`] in its state
//!   directory, so its output survives restarts of the task and of the agent;
//! - cwd `/`, and a clean environment: `PATH` (the spec's, else the agent's), `HOME`,
//!   `HOSTNAME`, the spec's variables, then `SKEIN_SERVICE`, `SKEIN_TASK`, `SKEIN_NODE`;
//! - with a user, that uid and gid and no supplementary groups; root otherwise;
//! - `/etc/resolv.conf` bind-mounted (in its own mount namespace) from `resolv.conf` in
//!   its state directory: `nameserver 127.0.0.11`, `options ndots:0` — the agent's DNS
//!   server, served inside the endpoint's namespace (`crate::dns`).
//!
//! # Lifetime and reaping
//! [`TaskProcess::spawn`] and [`TaskProcess::adopt`] start a watcher on the current tokio
//! runtime that waits for the pidfd to become readable. When the task's main process
//! exits, the watcher SIGKILLs whatever is left of its process group (like a container,
//! a task ends with its main process) and, for the agent's own child, reaps it with
//! `waitid(P_PIDFD)`. So no zombie stays while the agent runs, whether or not anybody
//! awaits [`TaskProcess::exited`], and dropping a [`TaskProcess`] neither kills nor leaks
//! the task. Nothing kills tasks when the agent exits: they are re-parented and adopted
//! by the next agent through the identity file (PID, start time and boot ID), which is
//! robust against PID reuse.
//!
//! The agent must not ignore SIGCHLD (`SIG_IGN` would let the kernel reap children
//! before the watcher reads their exit code).
//!
//! # Layout
//! - this file: [`TaskProcess`], the handle and its watcher (exit, reaping, signals);
//! - `spawn`: [`TaskSpec`] and [`TaskProcess::spawn`]: checks, command lookup, fork/exec;
//! - `child`: what the forked child does before `execve` (namespaces, session, user);
//! - `users`: `--user` lookups in the host's user database;
//! - `identity`: the identity file and [`TaskProcess::adopt`] after an agent restart;
//! - `pidfd`: the pidfd and `waitid` syscalls (signal, poll, reap);
//! - `health`: [`health_check`], a command run in a task's namespaces.

mod child;
mod health;
mod identity;
mod pidfd;
mod spawn;
mod users;

use std::{
    collections::HashMap,
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::{debug, warn};

pub(crate) use child::{StepPage, STEP_CAPS, STEP_EXEC, STEP_NO_NEW_PRIVS, STEP_USER};
pub(crate) use health::health_check;
pub(crate) use spawn::{resolve_command, TaskSpec};
pub(crate) use users::resolve_user;

use crate::{
    netlink::NetlinkError,
    tasks::cgroup::{CgroupError, TaskCgroup},
};
use pidfd::{pidfd_exited, pidfd_send_signal, reap, reap_peek};

/// The task's stdout and stderr, appended, in its state directory.
const LOG_FILE: &str = "task.log";

/// Why a task process (or a health check) could not be started. Those a user can cause
/// name the bad value and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("the task has no command: give one after `--`")]
    EmptyCommand,
    #[error("command {command:?} not found in PATH ({path}): install it or give its full path")]
    CommandNotFound { command: String, path: String },
    #[error("command {command:?} ({path}) is not executable: give an executable file")]
    NotExecutable { command: String, path: PathBuf },
    #[error("unknown user {user:?}: give a user of this host's /etc/passwd, a uid or uid:gid")]
    UnknownUser { user: String },
    #[error("unknown group {group:?}: give a group of this host's /etc/group or a gid")]
    UnknownGroup { group: String },
    #[error("task ID {task_id:?} cannot be a hostname: use 1 to 64 bytes without NUL or '/'")]
    InvalidTaskId { task_id: String },
    #[error("environment variable name {name:?} is invalid: use a non-empty name without '='")]
    InvalidEnvName { name: String },
    #[error("the task's {what} contains a NUL byte: {value:?}")]
    NulByte { what: &'static str, value: String },
    #[error("opening the task's network namespace {path} failed")]
    Netns {
        path: PathBuf,
        #[source]
        source: Box<NetlinkError>,
    },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("setting up the process of {command:?} failed while {step}")]
    Setup {
        command: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{command:?} is under {dir}, which tasks see as an empty directory (the host's {dir} is \
         hidden from them): put the program somewhere else, such as /usr/local/bin"
    )]
    CommandHidden { command: String, dir: PathBuf },
    #[error("executing {command:?} failed")]
    Exec {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("task process {pid} has exited")]
    TaskExited { pid: u32 },
    #[error("task processes are watched on a tokio runtime: call this from within one")]
    NoRuntime,
    #[error("preparing the task's cgroup failed: {0}")]
    Cgroup(#[from] CgroupError),
}

impl SpawnError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> SpawnError {
        let what = what.into();
        move |source| SpawnError::Io { what, source }
    }
}

/// The task's log file (stdout and stderr, appended) in its state directory.
pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Running,
    /// The exit code when known (128 + N for signal N).
    Exited(Option<i32>),
}

/// The agent's own unreaped children being watched, by PID, so [`TaskProcess::adopt`]
/// of one returns the existing watcher instead of starting a second reaper.
static OWN_CHILDREN: LazyLock<Mutex<HashMap<u32, Arc<Shared>>>> = LazyLock::new(Default::default);

struct Shared {
    pid: u32,
    start_time: u64,
    pidfd: OwnedFd,
    /// The agent's own child (reaped by the watcher), not an adopted one.
    child: bool,
    status: watch::Sender<Status>,
    /// Held while signalling the process group and while reaping, so a group is never
    /// signalled after its leader's PID was freed (and could be reused).
    reap_lock: Mutex<()>,
    /// The task's cgroup: emptied when the main process exits or ignores SIGTERM.
    cgroup: Option<TaskCgroup>,
}

/// A running (or exited) task process, watched by a task on the tokio runtime it was
/// spawned or adopted on. Cheap to clone; dropping it neither kills the process nor
/// stops the watcher (see the [module docs](self)).
#[derive(Clone)]
pub(crate) struct TaskProcess {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TaskProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskProcess")
            .field("pid", &self.shared.pid)
            .field("start_time", &self.shared.start_time)
            .field("child", &self.shared.child)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl TaskProcess {
    fn watch(
        runtime: &tokio::runtime::Handle,
        pid: u32,
        start_time: u64,
        pidfd: OwnedFd,
        child: bool,
        cgroup: Option<TaskCgroup>,
    ) -> TaskProcess {
        let (status, _) = watch::channel(Status::Running);
        let shared = Arc::new(Shared {
            pid,
            start_time,
            pidfd,
            child,
            status,
            reap_lock: Mutex::new(()),
            cgroup,
        });
        if child {
            OWN_CHILDREN
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pid, shared.clone());
        }
        let watched = shared.clone();
        // Register the pidfd on the runtime's reactor from within it.
        let _enter = runtime.enter();
        let registered = watched.pidfd.try_clone().and_then(|fd| {
            // SAFETY: the AsyncFd owns this descriptor, which stays open and unchanged
            // until it is dropped.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(io::Error::from)
        });
        match registered {
            Ok(pidfd) => {
                runtime.spawn(async move { watched.watch(pidfd).await });
            }
            Err(error) => {
                // Only under descriptor exhaustion; poll instead of leaking a zombie.
                warn!(%error, pid, "cannot register a pidfd; polling it instead");
                runtime.spawn(async move {
                    while !pidfd_exited(&watched.pidfd) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    watched.finish();
                });
            }
        }
        TaskProcess { shared }
    }

    /// The process ID.
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// Its start time, clock ticks after boot (field 22 of `/proc/PID/stat`).
    #[cfg(test)]
    pub(crate) fn start_time(&self) -> u64 {
        self.shared.start_time
    }

    /// Resolves once the process has exited and (if it is the agent's child) was reaped.
    /// The exit code, 128 + N after signal N, when known: `None` for an adopted process
    /// that is not the agent's child. Any number of callers may wait.
    pub(crate) async fn exited(&self) -> Option<i32> {
        let mut status = self.shared.status.subscribe();
        let result = status
            .wait_for(|s| matches!(s, Status::Exited(_)))
            .await
            .map(|s| *s);
        match result {
            Ok(Status::Exited(code)) => code,
            // The sender lives in `shared`, which we hold.
            _ => unreachable!("the status sender outlives its receivers"),
        }
    }

    /// Whether the process has exited (and was reaped, if ours).
    pub(crate) fn has_exited(&self) -> bool {
        matches!(*self.shared.status.borrow(), Status::Exited(_))
    }

    /// Sends SIGTERM to the task's process group and main process, after `grace` kills
    /// its whole cgroup (or SIGKILLs the main process and its group without one), and
    /// waits until the main process is gone (what is left is then killed by the watcher).
    pub(crate) async fn stop(&self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            debug!(pid = self.pid(), "task ignored SIGTERM; killing it");
            if let Some(cgroup) = &self.shared.cgroup {
                cgroup.kill();
            }
            self.signal(libc::SIGKILL);
            self.exited().await;
        }
    }

    /// Sends `signal` to the main process and to its process group, unless it has exited.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        self.shared.signal_group(signal);
    }
}

impl Shared {
    fn signal_group(&self, signal: libc::c_int) {
        let _lock = self.reap_lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*self.status.borrow(), Status::Exited(_)) {
            return;
        }
        if let Err(error) = pidfd_send_signal(&self.pidfd, signal) {
            if error.raw_os_error() != Some(libc::ESRCH) {
                warn!(%error, pid = self.pid, signal, "signalling a task failed");
            }
        }
        // The group bears the leader's PID (setsid), which is not freed before the
        // reap, which waits for this lock. ESRCH: no group (left it, or all gone).
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(-(self.pid as libc::pid_t), signal) };
    }

    async fn watch(&self, pidfd: AsyncFd<OwnedFd>) {
        loop {
            let mut ready = match pidfd.readable().await {
                Ok(ready) => ready,
                Err(error) => {
                    warn!(%error, pid = self.pid, "waiting on a pidfd failed; polling it");
                    while !pidfd_exited(&self.pidfd) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    break;
                }
            };
            if !self.child {
                break;
            }
            // Readable: the process exited. A child must also be reapable now; if not
            // (spurious wakeup), wait again.
            match reap_peek(&self.pidfd) {
                Ok(true) | Err(_) => break,
                Ok(false) => ready.clear_ready(),
            }
        }
        self.finish();
    }

    /// The main process has exited: kill what is left of its group, then reap it (if
    /// ours) and publish its status.
    fn finish(&self) {
        let _lock = self.reap_lock.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: kill takes no pointers. For our child the PID is still held by the
        // zombie, so the group cannot be another's.
        unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        // And every other process the task started, in whatever session.
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        let code = if self.child {
            match reap(&self.pidfd) {
                Ok(code) => code,
                Err(error) => {
                    // ECHILD: somebody else reaped it (another handle of the same child).
                    if error.raw_os_error() != Some(libc::ECHILD) {
                        warn!(%error, pid = self.pid, "reaping a task process failed");
                    }
                    None
                }
            }
        } else {
            None
        };
        if self.child {
            let mut children = OWN_CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
            if children
                .get(&self.pid)
                .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), self))
            {
                children.remove(&self.pid);
            }
        }
        debug!(pid = self.pid, ?code, "task process exited");
        self.status.send_replace(Status::Exited(code));
    }
}

#[cfg(test)]
mod tests;
