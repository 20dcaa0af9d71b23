//! Health checks: a command run inside a task's namespaces and cgroups, with the
//! service's user, environment and privileges.

use std::{
    ffi::{CStr, OsStr},
    fs,
    os::{
        fd::{AsFd, AsRawFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    process::{Command, Stdio},
    time::Duration,
};

use tracing::debug;

use super::{
    child::{ChildSetup, StepPage, STEP_EXEC},
    pidfd::{abort_child, pidfd_exited, pidfd_open},
    spawn::{no_nul, spawn_in_pid_ns},
    users::lookup_user,
    SpawnError, TaskProcess, TaskSpec,
};
use crate::tasks::confine::{cgroup_join, Privileges};

/// The shell health checks run with, resolved in the task's mount namespace.
const HEALTH_SHELL: &CStr = c"/bin/sh";

/// Runs `sh -c cmd` inside the task's PID, network, UTS and mount namespaces and its
/// cgroups, as the service's user (`spec.user`), with the service's environment (as the
/// task got it: [`TaskSpec::environment`]) and privileges, in a session of its own; stdin,
/// stdout and stderr are `/dev/null`. Nothing is taken from the task's running process
/// but its namespaces and groups, so a task cannot change what its checks run with.
/// `Ok(true)` iff it exits with status 0 within `timeout`; on timeout its process group is
/// killed and the check counts as failed (`Ok(false)`). An error if the task has exited
/// or the check could not be started.
pub(crate) async fn health_check(
    task: &TaskProcess,
    spec: &TaskSpec,
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
    let user = spec.user.as_deref().map(lookup_user).transpose()?;
    let open = |kind: &str| {
        fs::File::open(format!("/proc/{pid}/ns/{kind}")).map_err(|_| SpawnError::TaskExited { pid })
    };
    let (net, uts, mnt, pidns) = (open("net")?, open("uts")?, open("mnt")?, open("pid")?);
    let cgroups = cgroup_join::task_cgroups(pid).map_err(|_| gone())?;
    // Everything above was read from the PID; it was the task's only if it still runs.
    if pidfd_exited(&task.shared.pidfd) {
        return Err(gone());
    }

    let mut command = Command::new(OsStr::from_bytes(HEALTH_SHELL.to_bytes()));
    command
        .arg("-c")
        .arg(cmd)
        .env_clear()
        .envs(spec.environment(user.as_ref()))
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
            // It enters the task's mount namespace: its /proc, covers and resolv.conf.
            mounts: None,
            cgroups,
            ids: user.as_ref().map(|u| (u.uid, u.gid)),
            privileges: Some(Privileges::of(&spec.security)),
            keep_fd: None,
            exec_step: STEP_EXEC,
            step: steps.addr(),
            cgroup: Default::default(),
        };
        // SAFETY: see `TaskProcess::spawn`.
        unsafe { command.pre_exec(move || setup.run()) };
        spawn_in_pid_ns(&mut command, Some(pidns.as_fd()))
            .map_err(|_| gone())?
            .map_err(|source| steps.error("/bin/sh", source))?
    };
    let check_pid = child.id();
    drop(child);
    drop((net, uts, mnt, pidns));
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
