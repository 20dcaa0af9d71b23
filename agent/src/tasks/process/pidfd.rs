//! The pidfd and `waitid` syscalls a task's process is watched, signalled and reaped with.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

pub(super) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(pid, flags) takes no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns (pidfds are always CLOEXEC).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

pub(super) fn pidfd_send_signal(pidfd: &OwnedFd, signal: libc::c_int) -> io::Result<()> {
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
pub(super) fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents != 0
}

/// `waitid(P_PIDFD, WEXITED | WNOHANG | extra)`: the child's siginfo, whose `si_pid` is 0
/// if it has not exited.
fn wait_exited(pidfd: &OwnedFd, extra: libc::c_int) -> io::Result<libc::siginfo_t> {
    // SAFETY: an all-zero siginfo is a valid value to be overwritten.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pidfd and out-pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | extra,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Reaps an exited child through its pidfd without blocking. `Ok(None)`: not exited yet.
/// An exit by signal N is reported as 128 + N, as shells do.
pub(super) fn reap(pidfd: &OwnedFd) -> io::Result<Option<i32>> {
    let info = wait_exited(pidfd, 0)?;
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
pub(super) fn abort_child(pid: u32) {
    // SAFETY: `pid` is our unreaped child, so the PID cannot have been reused.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
}

/// Whether an exited child is waiting to be reaped, without reaping it.
pub(super) fn reap_peek(pidfd: &OwnedFd) -> io::Result<bool> {
    let info = wait_exited(pidfd, libc::WNOWAIT)?;
    // SAFETY: filled by waitid, or si_pid left 0.
    Ok(unsafe { info.si_pid() } != 0)
}
