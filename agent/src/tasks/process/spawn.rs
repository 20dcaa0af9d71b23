//! Starting a task's process: the spec's checks, the command's lookup, the fork and exec.

use std::{
    ffi::{CString, OsStr, OsString},
    fs::{self, OpenOptions},
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{
            fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use manager::state::service::Security;
use tracing::{debug, warn};

use super::{
    child::{step_error, ChildSetup, StepPage, STEP_INIT},
    identity::{boot_id, identity_path, proc_stat, write_identity, Identity},
    log_path,
    pidfd::{abort_child, pidfd_open},
    users::{lookup_user, User},
    SpawnError, TaskProcess,
};
use crate::{
    netlink,
    tasks::{
        cgroup::{CgroupError, TaskCgroup},
        confine::{init::init_args, MountPlan, Privileges},
    },
};
use manager::state::service::Limits;

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The `PATH` of a task, and the one commands are resolved in, when neither the spec nor
/// the agent has one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// A hostname is at most this many bytes (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// What to run as one task.
#[derive(Debug, Clone)]
pub(crate) struct TaskSpec {
    /// The task's ID; it becomes the hostname in the task's UTS namespace, so it must be
    /// a hostname: 1 to 64 bytes, no NUL, no '/'.
    pub(crate) task_id: String,
    /// The service the task belongs to, for `SKEIN_SERVICE`.
    pub(crate) service: String,
    /// The node running it, for `SKEIN_NODE`.
    pub(crate) node_id: String,
    /// The endpoint's network namespace: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub(crate) netns_path: PathBuf,
    /// argv; `argv[0]` is looked up in `PATH` (the spec's `PATH` if it sets one, else
    /// the agent's) unless it contains a '/'; a relative path is taken from `/`, the
    /// task's working directory.
    pub(crate) command: Vec<String>,
    /// Extra environment variables. `SKEIN_SERVICE`, `SKEIN_TASK` and `SKEIN_NODE` are set
    /// from the fields above and win over these.
    pub(crate) env: Vec<(String, String)>,
    /// `name`, `uid`, `name:group` or `uid:gid`; `None` runs the task as root.
    pub(crate) user: Option<String>,
    /// The task's state directory, created if missing (mode 0700): its log
    /// ([`log_path`]) and identity file.
    pub(crate) dir: PathBuf,
    /// The task's cgroup, made fresh with `limits` and entered before `execve`. `None`
    /// (no cgroup support on this node) runs it without one, and refuses limits.
    pub(crate) cgroup: Option<TaskCgroup>,
    pub(crate) limits: Limits,
    /// Capabilities and `no_new_privs` (the service's `--cap-add`, `--cap-drop`,
    /// `--allow-new-privileges`).
    pub(crate) security: Security,
    /// This agent's own state directory, socket directory and bpffs, hidden from the task
    /// besides every agent's defaults (`confine::HIDDEN_BY_DEFAULT`).
    pub(crate) hidden: Vec<PathBuf>,
}

impl TaskSpec {
    /// The `PATH` of the task: the spec's, else the agent's, else [`DEFAULT_PATH`].
    pub(super) fn path(&self) -> OsString {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.into())
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| DEFAULT_PATH.into())
    }

    /// The task's environment (and its health check's): `PATH`, `HOME` (the user's, or
    /// `/root`), `HOSTNAME`, the spec's variables, then `SKEIN_SERVICE`, `SKEIN_TASK`,
    /// `SKEIN_NODE`; later entries win.
    pub(super) fn environment(&self, user: Option<&User>) -> Vec<(OsString, OsString)> {
        let home: OsString = match user {
            Some(user) => user.home.clone().unwrap_or_else(|| "/".into()).into(),
            None => "/root".into(),
        };
        let mut env = vec![
            ("PATH".into(), self.path()),
            ("HOME".into(), home),
            ("HOSTNAME".into(), self.task_id.clone().into()),
        ];
        env.extend(
            self.env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        env.extend([
            ("SKEIN_SERVICE".into(), self.service.clone().into()),
            ("SKEIN_TASK".into(), self.task_id.clone().into()),
            ("SKEIN_NODE".into(), self.node_id.clone().into()),
        ]);
        env
    }
}

/// Looks `argv0` up like `execvp` would in the agent's `PATH` (or [`DEFAULT_PATH`]), and
/// checks it is an executable file. A name with a '/' is not looked up; a relative one
/// is taken from `/`, where tasks run.
pub(crate) fn resolve_command(argv0: &str) -> Result<PathBuf, SpawnError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    resolve_command_in(argv0, &path)
}

/// [`resolve_command`] in the given `PATH`.
fn resolve_command_in(argv0: &str, path: &OsStr) -> Result<PathBuf, SpawnError> {
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

/// What a task's `/etc/resolv.conf` says: the agent's DNS server in its own namespace,
/// and `ndots:0` (as Docker writes it) so a dotted name is asked as given first.
pub(crate) const TASK_RESOLV_CONF: &str = "nameserver 127.0.0.11\noptions ndots:0\n";

/// Writes `<dir>/resolv.conf` (world-readable: tasks may run as any user) and returns
/// its path for the child to bind-mount; `None` when the host has no `/etc/resolv.conf`
/// to mount over (the task then resolves as the host does).
fn write_resolv_conf(dir: &Path) -> Result<Option<PathBuf>, SpawnError> {
    if fs::metadata("/etc/resolv.conf").is_err() {
        return Ok(None);
    }
    let path = dir.join("resolv.conf");
    let what = format!("writing the task's resolv.conf {}", path.display());
    fs::write(&path, TASK_RESOLV_CONF).map_err(SpawnError::io(what.clone()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .map_err(SpawnError::io(what.clone()))?;
    Ok(Some(path))
}

/// The `skein` binary that runs `task-init`: the agent's own, through the task's new
/// `/proc`. Unit tests run in the test harness's binary, so they name the built `skein`.
fn init_program() -> PathBuf {
    #[cfg(test)]
    {
        std::env::var_os("SKEIN_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/skein"))
    }
    #[cfg(not(test))]
    {
        PathBuf::from("/proc/self/exe")
    }
}

/// How long the agent waits for `skein task-init` to report whether the command started.
const INIT_REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Forks from a new thread whose PID namespace for children is a fresh one, so the child
/// is PID 1 there (a thread may unshare its PID namespace only once; see
/// `confine`). `enter_pid_ns`: `setns` into an existing PID namespace instead. The outer
/// error: the namespace could not be made or entered; the inner one is std's spawn.
pub(super) fn spawn_in_pid_ns(
    command: &mut Command,
    enter_pid_ns: Option<BorrowedFd<'_>>,
) -> Result<io::Result<Child>, SpawnError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: plain syscalls on this thread's own namespace state.
                let rc = unsafe {
                    match enter_pid_ns {
                        None => libc::unshare(libc::CLONE_NEWPID),
                        Some(fd) => libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID),
                    }
                };
                if rc != 0 {
                    return Err(SpawnError::io("entering the task's PID namespace")(
                        io::Error::last_os_error(),
                    ));
                }
                Ok(command.spawn())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SpawnError::io("forking the task")(io::Error::other(
                    "the forking thread panicked",
                )))
            })
    })
}

/// Waits for `skein task-init`'s report on `report` (the read end): `Ok` once it closes
/// without one (the command was executed), the failing step otherwise.
fn read_init_report(report: &OwnedFd, command: &str) -> Result<(), SpawnError> {
    let deadline = Instant::now() + INIT_REPORT_TIMEOUT;
    let mut message = [0u8; 8];
    let mut len = 0;
    while len < message.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn!(
                command,
                "skein task-init did not report within 10s; assuming it runs"
            );
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: report.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        if rc <= 0 {
            continue;
        }
        // SAFETY: reading into the rest of a local buffer.
        let n = unsafe {
            libc::read(
                report.as_raw_fd(),
                message[len..].as_mut_ptr().cast(),
                message.len() - len,
            )
        };
        match n {
            0 => return Ok(()),
            n if n > 0 => len += n as usize,
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Ok(()),
        }
    }
    let step = u32::from_le_bytes(message[..4].try_into().expect("4 bytes"));
    let errno = i32::from_le_bytes(message[4..].try_into().expect("4 bytes"));
    Err(step_error(
        step,
        command,
        io::Error::from_raw_os_error(errno),
    ))
}

fn validate_task_id(task_id: &str) -> Result<(), SpawnError> {
    if task_id.is_empty() || task_id.len() > HOST_NAME_MAX || task_id.contains(['\0', '/']) {
        return Err(SpawnError::InvalidTaskId {
            task_id: task_id.to_owned(),
        });
    }
    Ok(())
}

pub(super) fn no_nul(what: &'static str, value: &str) -> Result<(), SpawnError> {
    if value.contains('\0') {
        return Err(SpawnError::NulByte {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl TaskProcess {
    /// Starts the task's process (see the [module docs](self) for its namespaces,
    /// session, environment and files), writes its identity file and starts watching it.
    /// Bad commands and users, and failures of namespace setup and of `execve` itself
    /// (`ENOENT`, `EACCES`), are errors here, never a child that silently died.
    ///
    /// Blocks briefly (fork and exec); call it from within a tokio runtime.
    pub(crate) fn spawn(spec: &TaskSpec) -> Result<TaskProcess, SpawnError> {
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
        let program = resolve_command_in(argv0, &spec.path())?;
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
        let resolv_conf = write_resolv_conf(&spec.dir)?;
        let mounts = MountPlan::new(&spec.hidden, resolv_conf.as_deref())
            .map_err(SpawnError::io("preparing the task's mounts"))?;
        if let Some(dir) = mounts.covering(&program) {
            return Err(SpawnError::CommandHidden {
                command: program.display().to_string(),
                dir,
            });
        }
        let privileges = Privileges::of(&spec.security);
        let (report_read, report_write) =
            pipe().map_err(SpawnError::io("creating the init's report pipe"))?;
        let boot_id = boot_id().map_err(SpawnError::io("reading the boot ID"))?;
        let netns =
            netlink::open_netns_blocking(&spec.netns_path).map_err(|source| SpawnError::Netns {
                path: spec.netns_path.clone(),
                source: Box::new(source),
            })?;

        // The agent's own binary, found through the new /proc even if its directory is
        // hidden, as `skein task-init` (see `confine`); it starts `program`.
        let mut command = Command::new(init_program());
        command
            .arg0("skein")
            .arg("task-init")
            .args(init_args(
                3,
                &privileges,
                user.as_ref().map(|u| (u.uid, u.gid)),
            ))
            .arg("--")
            .arg(&program)
            .arg(argv0)
            .args(args)
            .env_clear()
            .envs(spec.environment(user.as_ref()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .current_dir("/");
        let steps = StepPage::new()?;
        let cgroup_entry = match &spec.cgroup {
            Some(cgroup) => Some(cgroup.create(&spec.limits)?),
            None if spec.limits.any() => return Err(CgroupError::Unavailable.into()),
            None => None,
        };
        let setup = ChildSetup {
            namespaces: [Some((netns.as_raw_fd(), libc::CLONE_NEWNET)), None, None],
            unshare: libc::CLONE_NEWUTS | libc::CLONE_NEWNS,
            hostname: Some(
                CString::new(spec.task_id.as_str()).expect("task IDs were checked for NUL"),
            ),
            mounts: Some(mounts),
            cgroups: Vec::new(),
            // The init stays root; it switches the command's user.
            ids: None,
            privileges: None,
            keep_fd: Some(report_write.as_raw_fd()),
            exec_step: STEP_INIT,
            step: steps.addr(),
            cgroup: cgroup_entry
                .as_ref()
                .map(|entry| entry.fds())
                .unwrap_or_default(),
        };
        // SAFETY: `ChildSetup::run` makes only async-signal-safe syscalls and allocates
        // nothing; the descriptors and strings it uses outlive the spawn.
        unsafe { command.pre_exec(move || setup.run()) };
        let child =
            spawn_in_pid_ns(&mut command, None)?.map_err(|source| steps.error(argv0, source))?;
        let pid = child.id();
        // std does not reap on drop; the watcher does.
        drop(child);
        drop(netns);
        drop(cgroup_entry);
        drop(report_write);
        if let Err(e) = read_init_report(&report_read, argv0) {
            abort_child(pid);
            return Err(e);
        }

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
        Ok(TaskProcess::watch(
            &runtime,
            pid,
            start_time,
            pidfd,
            true,
            spec.cgroup.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
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
    fn task_ids_must_be_hostnames() {
        for good in ["web.1.abc", "x", &"t".repeat(64)] {
            assert!(validate_task_id(good).is_ok(), "{good:?}");
        }
        for bad in ["", "a/b", "nul\0", &"t".repeat(65)] {
            assert!(validate_task_id(bad).is_err(), "{bad:?}");
        }
    }
}
