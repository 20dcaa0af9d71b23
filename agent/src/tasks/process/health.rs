//! Health checks: a command run inside a task's namespaces, as its user.

use std::{
    ffi::{CStr, OsStr},
    fs, io,
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    process::{Command, Stdio},
    time::Duration,
};

use tracing::debug;

use super::{
    child::{ChildSetup, StepPage},
    pidfd::{abort_child, pidfd_exited, pidfd_open},
    spawn::no_nul,
    SpawnError, TaskProcess,
};

/// The shell health checks run with, resolved in the task's mount namespace.
const HEALTH_SHELL: &CStr = c"/bin/sh";

/// Runs `sh -c cmd` inside the task's network, UTS and mount namespaces, as the task's
/// user, with the task's initial environment, in a session of its own; stdin, stdout and
/// stderr are `/dev/null`. `Ok(true)` iff it exits with status 0 within `timeout`; on
/// timeout its process group is killed and the check counts as failed (`Ok(false)`).
/// An error if the task has exited or the check could not be started.
pub(crate) async fn health_check(
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
            // It enters the task's mount namespace, which has the task's resolv.conf.
            resolv_conf: None,
            ids: (ids != (0, 0)).then_some(ids),
            step: steps.addr(),
            cgroup: Default::default(),
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
    let check = TaskProcess::watch(&runtime, check_pid, 0, pidfd, true, None);
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
