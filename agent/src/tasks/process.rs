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
//! - with a user, that uid and gid and no supplementary groups; root otherwise.
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

use std::{
    collections::HashMap,
    ffi::{CStr, CString, OsStr, OsString},
    fs::{self, OpenOptions},
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, LazyLock, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::{debug, warn};

use crate::netlink::{self, NetlinkError};

/// The `PATH` of a task, and the one commands are resolved in, when neither the spec nor
/// the agent has one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The task's stdout and stderr, appended, in its state directory.
const LOG_FILE: &str = "task.log";
/// Who the task's process is (see [`Identity`]), in its state directory.
const IDENTITY_FILE: &str = "identity.json";
/// A hostname is at most this many bytes (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;
/// The shell health checks run with, resolved in the task's mount namespace.
const HEALTH_SHELL: &CStr = c"/bin/sh";

/// What to run as one task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The task's ID; it becomes the hostname in the task's UTS namespace, so it must be
    /// a hostname: 1 to 64 bytes, no NUL, no '/'.
    pub task_id: String,
    /// The service the task belongs to, for `SKEIN_SERVICE`.
    pub service: String,
    /// The node running it, for `SKEIN_NODE`.
    pub node_id: String,
    /// The endpoint's network namespace: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub netns_path: PathBuf,
    /// argv; `argv[0]` is looked up in `PATH` (the spec's `PATH` if it sets one, else
    /// the agent's) unless it contains a '/'; a relative path is taken from `/`, the
    /// task's working directory.
    pub command: Vec<String>,
    /// Extra environment variables. `SKEIN_SERVICE`, `SKEIN_TASK` and `SKEIN_NODE` are set
    /// from the fields above and win over these.
    pub env: Vec<(String, String)>,
    /// `name`, `uid`, `name:group` or `uid:gid`; `None` runs the task as root.
    pub user: Option<String>,
    /// The task's state directory, created if missing (mode 0700): its log
    /// ([`log_path`]) and identity file.
    pub dir: PathBuf,
}

/// Why a task process (or a health check) could not be started. Those a user can cause
/// name the bad value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
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
}

impl SpawnError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> SpawnError {
        let what = what.into();
        move |source| SpawnError::Io { what, source }
    }
}

/// The task's log file (stdout and stderr, appended) in its state directory.
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// The task's identity file in its state directory.
pub fn identity_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

/// Looks `argv0` up like `execvp` would in the agent's `PATH` (or [`DEFAULT_PATH`]), and
/// checks it is an executable file. A name with a '/' is not looked up; a relative one
/// is taken from `/`, where tasks run.
pub fn resolve_command(argv0: &str) -> Result<PathBuf, SpawnError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    resolve_command_in(argv0, &path)
}

/// [`resolve_command`] in the given `PATH`.
pub fn resolve_command_in(argv0: &str, path: &OsStr) -> Result<PathBuf, SpawnError> {
    if argv0.is_empty() {
        return Err(SpawnError::EmptyCommand);
    }
    let not_executable = |candidate: PathBuf| SpawnError::NotExecutable {
        command: argv0.to_owned(),
        path: candidate,
    };
    if argv0.contains('/') {
        let candidate = Path::new("/").join(argv0);
        return match fs::metadata(&candidate) {
            Ok(meta) if is_executable(&meta) => Ok(candidate),
            Ok(_) => Err(not_executable(candidate)),
            Err(_) => Err(SpawnError::CommandNotFound {
                command: argv0.to_owned(),
                path: "not looked up: the name has a '/'".to_owned(),
            }),
        };
    }
    // Like execvp: the first executable match wins; a match that is not executable is
    // reported only if nothing else is found.
    let mut found_but_not_executable = None;
    for dir in std::env::split_paths(path) {
        if dir.as_os_str().is_empty() || dir.is_relative() {
            continue;
        }
        let candidate = dir.join(argv0);
        if let Ok(meta) = fs::metadata(&candidate) {
            if is_executable(&meta) {
                return Ok(candidate);
            }
            found_but_not_executable.get_or_insert(candidate);
        }
    }
    Err(match found_but_not_executable {
        Some(candidate) => not_executable(candidate),
        None => SpawnError::CommandNotFound {
            command: argv0.to_owned(),
            path: path.to_string_lossy().into_owned(),
        },
    })
}

fn is_executable(meta: &fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// Resolves `name`, `uid`, `name:group` or `uid:gid` to (uid, gid) with this host's user
/// database. Without a group: the user's primary group, or gid 0 for a uid that has no
/// entry (as Docker does).
pub fn resolve_user(user: &str) -> Result<(u32, u32), SpawnError> {
    lookup_user(user).map(|u| (u.uid, u.gid))
}

/// A resolved `--user`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    uid: u32,
    gid: u32,
    home: Option<PathBuf>,
}

fn lookup_user(user: &str) -> Result<User, SpawnError> {
    let unknown_user = || SpawnError::UnknownUser {
        user: user.to_owned(),
    };
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    if name.is_empty() || name.contains('\0') {
        return Err(unknown_user());
    }
    let entry = match parse_id(name) {
        Some(uid) => passwd_entry(PasswdKey::Uid(uid)).map_err(|_| unknown_user())?,
        None => Some(
            passwd_entry(PasswdKey::Name(name))
                .map_err(|_| unknown_user())?
                .ok_or_else(unknown_user)?,
        ),
    };
    let uid = match (&entry, parse_id(name)) {
        (_, Some(uid)) => uid,
        (Some(entry), None) => entry.0,
        (None, None) => return Err(unknown_user()),
    };
    let gid = match group {
        None => entry.as_ref().map_or(0, |e| e.1),
        Some(group) => {
            let unknown_group = || SpawnError::UnknownGroup {
                group: group.to_owned(),
            };
            match parse_id(group) {
                Some(gid) => gid,
                None if group.is_empty() || group.contains('\0') => return Err(unknown_group()),
                None => group_gid(group)
                    .map_err(|_| unknown_group())?
                    .ok_or_else(unknown_group)?,
            }
        }
    };
    Ok(User {
        uid,
        gid,
        home: entry.map(|e| e.2),
    })
}

/// A decimal ID (no sign, no blanks).
fn parse_id(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

enum PasswdKey<'a> {
    Name(&'a str),
    Uid(u32),
}

/// (uid, gid, home) of a passwd entry, through NSS (`getpwnam_r`/`getpwuid_r`).
fn passwd_entry(key: PasswdKey) -> io::Result<Option<(u32, u32, PathBuf)>> {
    let name = match key {
        PasswdKey::Name(name) => Some(CString::new(name)?),
        PasswdKey::Uid(_) => None,
    };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value to be overwritten.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        let (buf_ptr, buf_len) = (buf.as_mut_ptr().cast(), buf.len());
        // SAFETY: valid name, out-pointers and buffer of the given length.
        let rc = unsafe {
            match (&name, &key) {
                (Some(name), _) => {
                    libc::getpwnam_r(name.as_ptr(), &mut pw, buf_ptr, buf_len, &mut result)
                }
                (None, PasswdKey::Uid(uid)) => {
                    libc::getpwuid_r(*uid, &mut pw, buf_ptr, buf_len, &mut result)
                }
                (None, PasswdKey::Name(_)) => unreachable!("names were made CStrings above"),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        let home = if pw.pw_dir.is_null() {
            PathBuf::from("/")
        } else {
            // SAFETY: getpw*_r points pw_dir into `buf`, NUL-terminated.
            PathBuf::from(OsStr::from_bytes(
                unsafe { CStr::from_ptr(pw.pw_dir) }.to_bytes(),
            ))
        };
        return Ok(Some((pw.pw_uid, pw.pw_gid, home)));
    }
}

/// The gid of a group name, through NSS (`getgrnam_r`).
fn group_gid(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero group is a valid value to be overwritten.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut result = std::ptr::null_mut();
        // SAFETY: valid name, out-pointers and buffer of the given length.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        return Ok((!result.is_null()).then_some(gr.gr_gid));
    }
}

fn validate_task_id(task_id: &str) -> Result<(), SpawnError> {
    if task_id.is_empty() || task_id.len() > HOST_NAME_MAX || task_id.contains(['\0', '/']) {
        return Err(SpawnError::InvalidTaskId {
            task_id: task_id.to_owned(),
        });
    }
    Ok(())
}

/// Who a task's process is, in its state directory: a PID alone could name another
/// process after a reboot or once the PID is reused; with its start time (clock ticks
/// after boot) and the boot ID it cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    pid: u32,
    /// Field 22 of `/proc/PID/stat`.
    start_time: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    boot_id: String,
}

fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// Writes the identity file atomically: a temporary file, synced, renamed over it.
fn write_identity(dir: &Path, identity: &Identity) -> io::Result<()> {
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

fn read_identity(dir: &Path) -> Option<Identity> {
    let bytes = fs::read(identity_path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// (parent PID, start time) from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> io::Result<(u32, u64)> {
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

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(pid, flags) takes no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns (pidfds are always CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid pidfd, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind a pidfd has exited (the pidfd is readable).
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents != 0
}

/// Reaps an exited child through its pidfd without blocking. `Ok(None)`: not exited yet.
/// An exit by signal N is reported as 128 + N, as shells do.
fn reap(pidfd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: an all-zero siginfo is a valid value to be overwritten.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pidfd and out-pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` for SIGCHLD, or left si_pid 0 (WNOHANG, not exited).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        status
    } else {
        128 + status
    }))
}

/// SIGKILLs a child that could not be set up and reaps it, blocking (it dies at once).
fn abort_child(pid: u32) {
    // SAFETY: `pid` is our unreaped child, so the PID cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
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
}

/// A running (or exited) task process, watched by a task on the tokio runtime it was
/// spawned or adopted on. Cheap to clone; dropping it neither kills the process nor
/// stops the watcher (see the [module docs](self)).
#[derive(Clone)]
pub struct TaskProcess {
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
    /// Starts the task's process (see the [module docs](self) for its namespaces,
    /// session, environment and files), writes its identity file and starts watching it.
    /// Bad commands and users, and failures of namespace setup and of `execve` itself
    /// (`ENOENT`, `EACCES`), are errors here, never a child that silently died.
    ///
    /// Blocks briefly (fork and exec); call it from within a tokio runtime.
    pub fn spawn(spec: &TaskSpec) -> Result<TaskProcess, SpawnError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
        validate_task_id(&spec.task_id)?;
        let (argv0, args) = spec.command.split_first().ok_or(SpawnError::EmptyCommand)?;
        for arg in &spec.command {
            no_nul("command", arg)?;
        }
        for (key, value) in &spec.env {
            no_nul("environment", key)?;
            no_nul("environment", value)?;
            if key.is_empty() || key.contains('=') {
                return Err(SpawnError::InvalidEnvName { name: key.clone() });
            }
        }
        no_nul("service", &spec.service)?;
        no_nul("node ID", &spec.node_id)?;
        let path: OsString = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.into())
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| DEFAULT_PATH.into());
        let program = resolve_command_in(argv0, &path)?;
        let user = spec.user.as_deref().map(lookup_user).transpose()?;

        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&spec.dir)
            .map_err(SpawnError::io(format!(
                "creating the task's directory {}",
                spec.dir.display()
            )))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(log_path(&spec.dir))
            .map_err(SpawnError::io(format!(
                "opening the task's log {}",
                log_path(&spec.dir).display()
            )))?;
        let log_err = log
            .try_clone()
            .map_err(SpawnError::io("duplicating the log descriptor"))?;
        let boot_id = boot_id().map_err(SpawnError::io("reading the boot ID"))?;
        let netns =
            netlink::open_netns_blocking(&spec.netns_path).map_err(|source| SpawnError::Netns {
                path: spec.netns_path.clone(),
                source: Box::new(source),
            })?;

        let home = match &user {
            Some(user) => user.home.clone().unwrap_or_else(|| "/".into()),
            None => "/root".into(),
        };
        let mut command = Command::new(&program);
        command
            .arg0(argv0)
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", home)
            .env("HOSTNAME", &spec.task_id)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("SKEIN_SERVICE", &spec.service)
            .env("SKEIN_TASK", &spec.task_id)
            .env("SKEIN_NODE", &spec.node_id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .current_dir("/");
        let steps = StepPage::new()?;
        let setup = ChildSetup {
            namespaces: [Some((netns.as_raw_fd(), libc::CLONE_NEWNET)), None, None],
            unshare: libc::CLONE_NEWUTS | libc::CLONE_NEWNS,
            hostname: Some(
                CString::new(spec.task_id.as_str()).expect("task IDs were checked for NUL"),
            ),
            ids: user.as_ref().map(|u| (u.uid, u.gid)),
            step: steps.addr(),
        };
        // SAFETY: `ChildSetup::run` makes only async-signal-safe syscalls and allocates
        // nothing; the descriptors and strings it uses outlive the spawn.
        unsafe { command.pre_exec(move || setup.run()) };
        let child = command
            .spawn()
            .map_err(|source| steps.error(argv0, source))?;
        let pid = child.id();
        // std does not reap on drop; the watcher does.
        drop(child);
        drop(netns);

        let started = (|| {
            let pidfd = pidfd_open(pid).map_err(SpawnError::io("opening a pidfd"))?;
            let (_, start_time) =
                proc_stat(pid).map_err(SpawnError::io(format!("reading /proc/{pid}/stat")))?;
            let identity = Identity {
                pid,
                start_time,
                boot_id,
            };
            write_identity(&spec.dir, &identity).map_err(SpawnError::io(format!(
                "writing the task's identity file {}",
                identity_path(&spec.dir).display()
            )))?;
            Ok((pidfd, start_time))
        })();
        let (pidfd, start_time) = match started {
            Ok(started) => started,
            Err(e) => {
                abort_child(pid);
                return Err(e);
            }
        };
        debug!(pid, task = spec.task_id, "started task process");
        Ok(TaskProcess::watch(&runtime, pid, start_time, pidfd, true))
    }

    /// After an agent restart: the task process recorded in `dir`'s identity file, if
    /// that PID is still alive, started at the recorded time in this boot (so it is not a
    /// reused PID). `None` otherwise, or outside a tokio runtime. Its exit code will not
    /// be known unless it is the agent's own child.
    pub fn adopt(dir: &Path) -> Option<TaskProcess> {
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
        ))
    }

    fn watch(
        runtime: &tokio::runtime::Handle,
        pid: u32,
        start_time: u64,
        pidfd: OwnedFd,
        child: bool,
    ) -> TaskProcess {
        let (status, _) = watch::channel(Status::Running);
        let shared = Arc::new(Shared {
            pid,
            start_time,
            pidfd,
            child,
            status,
            reap_lock: Mutex::new(()),
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
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// Its start time, clock ticks after boot (field 22 of `/proc/PID/stat`).
    pub fn start_time(&self) -> u64 {
        self.shared.start_time
    }

    /// Resolves once the process has exited and (if it is the agent's child) was reaped.
    /// The exit code, 128 + N after signal N, when known: `None` for an adopted process
    /// that is not the agent's child. Any number of callers may wait.
    pub async fn exited(&self) -> Option<i32> {
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
    pub fn has_exited(&self) -> bool {
        matches!(*self.shared.status.borrow(), Status::Exited(_))
    }

    /// Sends SIGTERM to the task's process group and main process, SIGKILL after
    /// `grace`, and waits until the main process is gone (its group is then swept by the
    /// watcher).
    pub async fn stop(&self, grace: Duration) {
        if self.has_exited() {
            return;
        }
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            debug!(pid = self.pid(), "task ignored SIGTERM; sending SIGKILL");
            self.signal(libc::SIGKILL);
            self.exited().await;
        }
    }

    /// Sends `signal` to the main process and to its process group, unless it has exited.
    pub fn signal(&self, signal: libc::c_int) {
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

/// Whether an exited child is waiting to be reaped, without reaping it.
fn reap_peek(pidfd: &OwnedFd) -> io::Result<bool> {
    // SAFETY: an all-zero siginfo is a valid value to be overwritten.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pidfd and out-pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled by waitid, or si_pid left 0.
    Ok(unsafe { info.si_pid() } != 0)
}

fn no_nul(what: &'static str, value: &str) -> Result<(), SpawnError> {
    if value.contains('\0') {
        return Err(SpawnError::NulByte {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Runs `sh -c cmd` inside the task's network, UTS and mount namespaces, as the task's
/// user, with the task's initial environment, in a session of its own; stdin, stdout and
/// stderr are `/dev/null`. `Ok(true)` iff it exits with status 0 within `timeout`; on
/// timeout its process group is killed and the check counts as failed (`Ok(false)`).
/// An error if the task has exited or the check could not be started.
pub async fn health_check(
    task: &TaskProcess,
    cmd: &str,
    timeout: Duration,
) -> Result<bool, SpawnError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SpawnError::NoRuntime)?;
    no_nul("health check", cmd)?;
    let pid = task.pid();
    let gone = || SpawnError::TaskExited { pid };
    if task.has_exited() {
        return Err(gone());
    }
    let open = |kind: &str| {
        fs::File::open(format!("/proc/{pid}/ns/{kind}")).map_err(|_| SpawnError::TaskExited { pid })
    };
    let (net, uts, mnt) = (open("net")?, open("uts")?, open("mnt")?);
    let environ = fs::read(format!("/proc/{pid}/environ")).map_err(|_| gone())?;
    let ids = proc_ids(pid).map_err(|_| gone())?;
    // Everything above was read from the PID; it was the task's only if it still runs.
    if pidfd_exited(&task.shared.pidfd) {
        return Err(gone());
    }

    let mut command = Command::new(OsStr::from_bytes(HEALTH_SHELL.to_bytes()));
    command
        .arg("-c")
        .arg(cmd)
        .env_clear()
        .envs(environ.split(|&b| b == 0).filter_map(|var| {
            let eq = var.iter().position(|&b| b == b'=')?;
            (eq > 0).then(|| {
                (
                    OsStr::from_bytes(&var[..eq]),
                    OsStr::from_bytes(&var[eq + 1..]),
                )
            })
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // A block: the step page is only for spawn errors and must be gone before any await,
    // or the check's future is not Send.
    let child = {
        let steps = StepPage::new()?;
        let setup = ChildSetup {
            namespaces: [
                Some((net.as_raw_fd(), libc::CLONE_NEWNET)),
                Some((uts.as_raw_fd(), libc::CLONE_NEWUTS)),
                // Last: it also moves the root and cwd to the task's.
                Some((mnt.as_raw_fd(), libc::CLONE_NEWNS)),
            ],
            unshare: 0,
            hostname: None,
            ids: (ids != (0, 0)).then_some(ids),
            step: steps.addr(),
        };
        // SAFETY: see `TaskProcess::spawn`.
        unsafe { command.pre_exec(move || setup.run()) };
        command
            .spawn()
            .map_err(|source| steps.error("/bin/sh", source))?
    };
    let check_pid = child.id();
    drop(child);
    drop((net, uts, mnt));
    let pidfd = match pidfd_open(check_pid) {
        Ok(pidfd) => pidfd,
        Err(source) => {
            abort_child(check_pid);
            return Err(SpawnError::Io {
                what: "opening a pidfd".to_owned(),
                source,
            });
        }
    };
    let check = TaskProcess::watch(&runtime, check_pid, 0, pidfd, true);
    match tokio::time::timeout(timeout, check.exited()).await {
        Ok(code) => Ok(code == Some(0)),
        Err(_) => {
            debug!(task_pid = pid, cmd, "health check timed out");
            check.signal(libc::SIGKILL);
            check.exited().await;
            Ok(false)
        }
    }
}

/// (effective uid, effective gid) from `/proc/PID/status`.
fn proc_ids(pid: u32) -> io::Result<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.split_ascii_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    match (field("Uid:"), field("Gid:")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no Uid/Gid in /proc/{pid}/status"),
        )),
    }
}

/// What the forked child does before `execve`. Runs after `fork` in a multi-threaded
/// process, so only async-signal-safe syscalls and no allocation: everything it needs
/// was prepared before the fork.
struct ChildSetup {
    /// Namespaces to enter, in order: (descriptor, `CLONE_NEW*` type).
    namespaces: [Option<(RawFd, libc::c_int)>; 3],
    /// `CLONE_NEW*` flags for namespaces of its own (0: none). A new mount namespace's
    /// mounts are made private.
    unshare: libc::c_int,
    hostname: Option<CString>,
    ids: Option<(u32, u32)>,
    /// Where the child records how far it got (see [`StepPage`]).
    step: usize,
}

/// The steps of [`ChildSetup::run`], for error messages. Index 0: std's own preparation
/// (stdio, cwd) before ours.
const STEPS: [&str; 9] = [
    "redirecting stdio or changing to /",
    "entering a namespace",
    "creating its UTS and mount namespaces",
    "making its mounts private",
    "setting its hostname",
    "creating its session",
    "resetting its signals",
    "switching to its user",
    "executing it",
];
const STEP_EXEC: u32 = 8;

impl ChildSetup {
    fn run(&self) -> io::Result<()> {
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
struct StepPage {
    ptr: *mut libc::c_void,
}

const STEP_PAGE_LEN: usize = 4096;

impl StepPage {
    fn new() -> Result<StepPage, SpawnError> {
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

    fn addr(&self) -> usize {
        self.ptr as usize
    }

    fn step(&self) -> u32 {
        // SAFETY: the live mapping holds an AtomicU32 at its start.
        unsafe { (*(self.ptr as *const AtomicU32)).load(Ordering::Relaxed) }
    }

    /// Turns std's spawn error into a [`SpawnError`] naming the step that failed.
    fn error(&self, command: &str, source: io::Error) -> SpawnError {
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

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::MetadataExt,
        process::Command,
        sync::atomic::{AtomicUsize, Ordering},
        time::Instant,
    };

    use super::*;

    #[test]
    fn commands_resolve_in_path_or_fail_naming_the_command() {
        let path = OsStr::new("/nonexistent-dir:/usr/bin:/bin");
        let sh = resolve_command_in("sh", path).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            resolve_command_in("/bin/sh", path).unwrap(),
            Path::new("/bin/sh")
        );
        // Relative to `/`, where tasks run.
        assert_eq!(
            resolve_command_in("bin/sh", path).unwrap(),
            Path::new("/bin/sh")
        );

        let e = resolve_command_in("skein-no-such-command", path).unwrap_err();
        assert!(matches!(e, SpawnError::CommandNotFound { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "command \"skein-no-such-command\" not found in PATH \
             (/nonexistent-dir:/usr/bin:/bin): install it or give its full path"
        );
        let e = resolve_command_in("/nonexistent/skein", path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command \"/nonexistent/skein\" not found"),
            "{e}"
        );
        for not_executable in ["/etc/passwd", "/tmp"] {
            let e = resolve_command_in(not_executable, path).unwrap_err();
            assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e:?}");
            assert!(e.to_string().contains("is not executable"), "{e}");
        }
        // Found in PATH but not executable: `passwd` under /etc.
        let e = resolve_command_in("passwd", OsStr::new("/etc")).unwrap_err();
        assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e:?}");
        // Relative PATH entries are skipped, as they would be resolved from `/`.
        assert!(resolve_command_in("sh", OsStr::new("bin:.")).is_err());
        assert!(matches!(
            resolve_command_in("", path),
            Err(SpawnError::EmptyCommand)
        ));
    }

    #[test]
    fn users_resolve_or_fail_naming_the_user() {
        assert_eq!(resolve_user("root").unwrap(), (0, 0));
        assert_eq!(resolve_user("0").unwrap(), (0, 0));
        assert_eq!(resolve_user("1234:5678").unwrap(), (1234, 5678));
        assert_eq!(resolve_user("root:0").unwrap(), (0, 0));
        assert_eq!(resolve_user("root:root").unwrap(), (0, 0));
        // A uid without an entry gets gid 0, as with Docker.
        assert_eq!(resolve_user("4000000").unwrap(), (4_000_000, 0));
        let root = lookup_user("root").unwrap();
        assert_eq!(root.home.as_deref(), Some(Path::new("/root")));

        for (bad, message) in [
            (
                "skein-no-such-user",
                "unknown user \"skein-no-such-user\": give a user of this host's /etc/passwd, a uid or uid:gid",
            ),
            ("", "unknown user \"\""),
            ("-1", "unknown user \"-1\""),
            (":0", "unknown user \":0\""),
            (
                "root:skein-no-such-group",
                "unknown group \"skein-no-such-group\"",
            ),
            ("0:", "unknown group \"\""),
        ] {
            let e = resolve_user(bad).unwrap_err().to_string();
            assert!(e.starts_with(message), "{bad:?}: {e}");
        }
    }

    #[test]
    fn task_ids_must_be_hostnames() {
        for good in ["web.1.abc", "x", &"t".repeat(64)] {
            assert!(validate_task_id(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a/b", "nul\0", &"t".repeat(65)] {
            assert!(validate_task_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((17, 987_654)));
        assert_eq!(parse_stat("1 (x) S 0"), None);
        let (ppid, start) = proc_stat(std::process::id()).unwrap();
        assert!(ppid > 0 && start > 0);
    }

    #[tokio::test]
    async fn a_command_that_cannot_be_found_fails_to_spawn() {
        let dir = TempDir::new();
        let spec = TaskSpec {
            command: vec!["skein-no-such-command".into()],
            ..spec("t-missing", Path::new("/proc/self/ns/net"), &dir.0)
        };
        let e = TaskProcess::spawn(&spec).unwrap_err();
        assert!(matches!(e, SpawnError::CommandNotFound { .. }), "{e:?}");
        assert!(
            !identity_path(&dir.0).exists(),
            "nothing was started, so nothing is recorded"
        );
    }

    // ---- privileged tests: root, a network namespace and real processes ----

    static UNIQUE: AtomicUsize = AtomicUsize::new(0);

    fn unique(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Root is required; say so rather than pass silently.
    fn skip_unless_root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED {test}: needs root (namespaces, sethostname, setuid)");
            return true;
        }
        false
    }

    /// A named network namespace, deleted on drop (also when the test panics).
    struct NetnsGuard {
        name: String,
    }

    impl NetnsGuard {
        fn new() -> NetnsGuard {
            let name = unique("skein-trt");
            let status = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .expect("running ip netns add");
            assert!(status.success(), "ip netns add {name} failed");
            NetnsGuard { name }
        }

        fn path(&self) -> PathBuf {
            netlink::netns_path(&self.name)
        }
    }

    impl Drop for NetnsGuard {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            TempDir(std::env::temp_dir().join(unique("skein-task-test")))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Kills a task's process group on drop, so a failing test leaves no process.
    struct KillOnDrop(TaskProcess);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            self.0.signal(libc::SIGKILL);
        }
    }

    fn spec(task_id: &str, netns: &Path, dir: &Path) -> TaskSpec {
        TaskSpec {
            task_id: task_id.to_owned(),
            service: "web".to_owned(),
            node_id: "node-a".to_owned(),
            netns_path: netns.to_owned(),
            command: vec![],
            env: vec![("GREETING".into(), "hello".into())],
            user: None,
            dir: dir.join("task"),
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Waits until `f` holds, for up to 10 s.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn ns_id(path: impl AsRef<Path>) -> (u64, u64) {
        let meta = fs::metadata(path.as_ref())
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.as_ref().display()));
        (meta.dev(), meta.ino())
    }

    #[tokio::test]
    async fn task_runs_in_its_namespaces_and_session_and_is_adopted_and_stopped() {
        if skip_unless_root("task_runs_in_its_namespaces...") {
            return;
        }
        let netns = NetnsGuard::new();
        let tmp = TempDir::new();
        let task_id = unique("web.1");
        let spec = TaskSpec {
            command: sh(
                "hostname; echo $SKEIN_TASK $SKEIN_SERVICE $SKEIN_NODE $GREETING; \
                 echo oops >&2; sleep 30",
            ),
            ..spec(&task_id, &netns.path(), &tmp.0)
        };
        let task = TaskProcess::spawn(&spec).unwrap();
        let _kill = KillOnDrop(task.clone());
        let pid = task.pid();

        let log = log_path(&spec.dir);
        eventually("three lines of log", || {
            fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 3)
        })
        .await;
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            format!("{task_id}\n{task_id} web node-a hello\noops\n")
        );

        // Namespaces: the endpoint's network namespace, its own UTS and mount ones.
        assert_eq!(ns_id(format!("/proc/{pid}/ns/net")), ns_id(netns.path()));
        for kind in ["uts", "mnt"] {
            assert_ne!(
                ns_id(format!("/proc/{pid}/ns/{kind}")),
                ns_id(format!("/proc/self/ns/{kind}")),
                "{kind} namespace is the agent's"
            );
        }
        // Its own session and process group; a child of the agent until adopted.
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        assert_eq!(fields[5 - 3], pid.to_string(), "process group");
        assert_eq!(fields[6 - 3], pid.to_string(), "session");
        // No descriptors but stdio.
        let fds: Vec<_> = fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(fds.len(), 3, "descriptors {fds:?}");
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.contains(&format!("HOSTNAME={task_id}\0")),
            "{environ}"
        );
        assert!(environ.contains("HOME=/root\0"), "{environ}");

        // Adopt: same PID and start time; a forged start time is another process.
        let adopted = TaskProcess::adopt(&spec.dir).expect("the task is adopted");
        assert_eq!(adopted.pid(), pid);
        assert_eq!(adopted.start_time(), task.start_time());
        let forged_dir = tmp.0.join("forged");
        fs::create_dir_all(&forged_dir).unwrap();
        let mut identity = read_identity(&spec.dir).unwrap();
        identity.start_time += 1;
        write_identity(&forged_dir, &identity).unwrap();
        assert!(TaskProcess::adopt(&forged_dir).is_none());
        identity.start_time -= 1;
        identity.boot_id = "00000000-0000-0000-0000-000000000000".into();
        write_identity(&forged_dir, &identity).unwrap();
        assert!(TaskProcess::adopt(&forged_dir).is_none(), "another boot");
        assert!(TaskProcess::adopt(&tmp.0.join("nothing-here")).is_none());

        // Health checks run in the task's namespaces, with its environment.
        let check = |cmd: String| {
            let task = task.clone();
            async move {
                health_check(&task, &cmd, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("health check {cmd:?}: {e}"))
            }
        };
        assert!(check("true".into()).await);
        assert!(!check("false".into()).await);
        assert!(check(format!("test \"$(hostname)\" = {task_id}")).await);
        assert!(check("test \"$GREETING\" = hello".into()).await);
        // The fresh namespace has only `lo`.
        assert!(check("test \"$(ip -o link | wc -l)\" = 1".into()).await);
        assert!(!check("test \"$(hostname)\" = not-the-task".into()).await);
        let started = Instant::now();
        assert!(!health_check(&task, "sleep 20", Duration::from_millis(200))
            .await
            .unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the timeout bounds it"
        );

        // Stop: SIGTERM kills `sh`; the exit code says so; nothing is left, not even a
        // zombie.
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), task.stop(Duration::from_secs(5)))
            .await
            .expect("stop finishes");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "SIGTERM sufficed"
        );
        assert_eq!(task.exited().await, Some(128 + libc::SIGTERM));
        adopted.exited().await;
        assert!(task.has_exited() && adopted.has_exited());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the task was reaped"
        );
        assert!(matches!(
            health_check(&task, "true", Duration::from_secs(1)).await,
            Err(SpawnError::TaskExited { .. })
        ));
    }

    #[tokio::test]
    async fn exit_code_is_reported_and_the_child_reaped() {
        if skip_unless_root("exit_code_is_reported_and_the_child_reaped") {
            return;
        }
        let netns = NetnsGuard::new();
        let tmp = TempDir::new();
        let spec = TaskSpec {
            command: sh("exit 3"),
            ..spec(&unique("t"), &netns.path(), &tmp.0)
        };
        let task = TaskProcess::spawn(&spec).unwrap();
        let _kill = KillOnDrop(task.clone());
        let code = tokio::time::timeout(Duration::from_secs(10), task.exited())
            .await
            .expect("the task exits");
        assert_eq!(code, Some(3));
        assert!(!Path::new(&format!("/proc/{}", task.pid())).exists());
        assert!(
            TaskProcess::adopt(&spec.dir).is_none(),
            "gone, so not adopted"
        );
    }

    #[tokio::test]
    async fn group_of_the_task_dies_with_its_main_process() {
        if skip_unless_root("group_of_the_task_dies_with_its_main_process") {
            return;
        }
        let netns = NetnsGuard::new();
        let tmp = TempDir::new();
        let pid_file = tmp.0.join("bg.pid");
        let spec = TaskSpec {
            command: sh(&format!(
                "sleep 30 & echo $! > {}; exit 0",
                pid_file.display()
            )),
            ..spec(&unique("t"), &netns.path(), &tmp.0)
        };
        let task = TaskProcess::spawn(&spec).unwrap();
        let _kill = KillOnDrop(task.clone());
        assert_eq!(task.exited().await, Some(0));
        let bg: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // If the test fails, the sleep must not outlive it; a pidfd cannot hit another
        // process that reused the PID.
        struct KillOnDropFd(Option<OwnedFd>);
        impl Drop for KillOnDropFd {
            fn drop(&mut self) {
                if let Some(fd) = &self.0 {
                    let _ = pidfd_send_signal(fd, libc::SIGKILL);
                }
            }
        }
        let _bg_guard = KillOnDropFd(pidfd_open(bg).ok());
        // The background sleep was SIGKILLed; it is the test's grandchild, reaped by init.
        eventually("the background process to die", || {
            // Gone, or a zombie not yet reaped by init. (Not "not sleep": between fork
            // and exec it is still called sh.)
            fs::read_to_string(format!("/proc/{bg}/stat")).map_or(true, |s| s.contains(") Z "))
        })
        .await;
    }

    #[tokio::test]
    async fn mounts_of_a_task_stay_in_its_mount_namespace() {
        if skip_unless_root("mounts_of_a_task_stay_in_its_mount_namespace") {
            return;
        }
        let netns = NetnsGuard::new();
        let tmp = TempDir::new();
        let mount_point = tmp.0.join("m");
        fs::create_dir_all(&mount_point).unwrap();
        // The host's mounts may all be private already (then nothing could leak and this
        // test could not fail): make the mount point a shared mount of the host's, which
        // the task's namespace starts as a peer of.
        struct Unmount(CString);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // Whatever is stacked on it (a leaked mount), then the bind mount.
                for _ in 0..4 {
                    // SAFETY: a valid path.
                    if unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) } != 0 {
                        break;
                    }
                }
            }
        }
        let c_mount_point = CString::new(mount_point.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid paths, no data.
        unsafe {
            let p = c_mount_point.as_ptr();
            let null = std::ptr::null();
            assert_eq!(libc::mount(p, p, null, libc::MS_BIND, null.cast()), 0);
            let _unmount = Unmount(c_mount_point.clone());
            assert_eq!(libc::mount(null, p, null, libc::MS_SHARED, null.cast()), 0);
            std::mem::forget(_unmount);
        }
        let _unmount = Unmount(c_mount_point);
        let spec = TaskSpec {
            command: sh(&format!(
                "mount -t tmpfs skein-test {0} && touch {0}/inside && echo mounted; sleep 30",
                mount_point.display()
            )),
            ..spec(&unique("t"), &netns.path(), &tmp.0)
        };
        let task = TaskProcess::spawn(&spec).unwrap();
        let _kill = KillOnDrop(task.clone());
        eventually("the task's mount", || {
            fs::read_to_string(log_path(&spec.dir)).is_ok_and(|s| s == "mounted\n")
        })
        .await;
        let leaked = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(mount_point.to_str().unwrap()) && l.contains("skein-test"));
        assert!(!leaked, "the task's mount propagated to the host");
        assert!(!mount_point.join("inside").exists());
        task.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn user_and_exec_errors() {
        if skip_unless_root("user_and_exec_errors") {
            return;
        }
        let netns = NetnsGuard::new();
        let tmp = TempDir::new();
        let spec = TaskSpec {
            command: sh("id -u; id -g; id -G; echo $HOME"),
            user: Some("1234:5678".into()),
            ..spec(&unique("t"), &netns.path(), &tmp.0)
        };
        let task = TaskProcess::spawn(&spec).unwrap();
        let _kill = KillOnDrop(task.clone());
        assert_eq!(task.exited().await, Some(0));
        assert_eq!(
            fs::read_to_string(log_path(&spec.dir)).unwrap(),
            "1234\n5678\n5678\n/\n"
        );

        // A script only root may execute: execve fails with EACCES for uid 1234, and
        // that is an error of spawn, not a dead child.
        let script = tmp.0.join("root-only.sh");
        fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).unwrap();
        let e = TaskProcess::spawn(&TaskSpec {
            command: vec![script.to_str().unwrap().into()],
            ..spec.clone()
        })
        .unwrap_err();
        let SpawnError::Exec { source, .. } = &e else {
            panic!("expected an exec error, got {e:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::PermissionDenied, "{e:?}");

        // A path that is not a network namespace.
        let e = TaskProcess::spawn(&TaskSpec {
            netns_path: "/proc/self/ns/uts".into(),
            ..spec.clone()
        })
        .unwrap_err();
        assert!(matches!(e, SpawnError::Netns { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn stop_kills_a_task_that_ignores_sigterm() {
        if skip_unless_root("stop_kills_a_task_that_ignores_sigterm") {
            return;
        }
        let netns = NetnsGuard::new();
        let tmp = TempDir::new();
        let spec = TaskSpec {
            command: sh("trap '' TERM; echo ready; while :; do sleep 1; done"),
            ..spec(&unique("t"), &netns.path(), &tmp.0)
        };
        let task = TaskProcess::spawn(&spec).unwrap();
        let _kill = KillOnDrop(task.clone());
        eventually("the trap to be set", || {
            fs::read_to_string(log_path(&spec.dir)).is_ok_and(|s| s == "ready\n")
        })
        .await;
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            task.stop(Duration::from_millis(300)),
        )
        .await
        .expect("stop finishes");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(task.exited().await, Some(128 + libc::SIGKILL));
    }
}
