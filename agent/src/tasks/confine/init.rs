//! `skein task-init` (hidden): PID 1 of a task's PID namespace, like Docker's `--init`
//! (tini). The agent starts it already inside the task's namespaces and mounts; it starts
//! the task's command confined (capabilities, user, `no_new_privs`, a session of its
//! own), forwards every signal it gets to the command's process group, reaps whatever is
//! re-parented to it, and exits with the command's status as soon as the command exits —
//! and when PID 1 exits the kernel kills everything left in the namespace, so a task
//! ends with its command, daemons and all.
//!
//! Why an init at all: PID 1 gets no default signal actions, so `sleep` or `sh -c` as
//! PID 1 would ignore SIGTERM; and nobody would reap orphans.
//!
//! It reports a failure to start the command to the agent through `--report-fd` (8
//! bytes: the `process::child` step, then the errno); the agent sees the descriptor
//! close without a report once the command runs.

use std::{
    io,
    os::unix::process::CommandExt,
    process::{Command, ExitCode},
};

use clap::Args;

use super::caps::{switch_user, Privileges, CAP_KILL};
use crate::tasks::process::{StepPage, STEP_CAPS, STEP_EXEC, STEP_NO_NEW_PRIVS, STEP_USER};

/// Arguments of `skein task-init`, written by the agent (`process::spawn`).
#[derive(Args, Debug)]
pub(crate) struct TaskInitArgs {
    /// The descriptor start failures are written to.
    #[arg(long)]
    report_fd: i32,
    /// The command's capability mask, hexadecimal.
    #[arg(long, value_parser = parse_hex)]
    caps: u64,
    /// The highest capability number of this kernel.
    #[arg(long)]
    last_cap: u32,
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    #[arg(long)]
    no_new_privs: bool,
    /// The program's path, then its argv (argv[0] first).
    #[arg(last = true, required = true, num_args = 2..)]
    command: Vec<String>,
}

fn parse_hex(value: &str) -> Result<u64, String> {
    u64::from_str_radix(value.trim_start_matches("0x"), 16).map_err(|e| format!("{value:?}: {e}"))
}

/// Signals that are the process's own faults, never forwarded (as in tini).
const SYNCHRONOUS: [libc::c_int; 9] = [
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The arguments the agent passes (after `task-init`), in order.
pub(crate) fn init_args(
    report_fd: i32,
    privileges: &Privileges,
    ids: Option<(u32, u32)>,
) -> Vec<String> {
    let mut args = vec![
        "--report-fd".to_owned(),
        report_fd.to_string(),
        "--caps".to_owned(),
        format!("{:x}", privileges.caps),
        "--last-cap".to_owned(),
        privileges.last_cap.to_string(),
    ];
    if let Some((uid, gid)) = ids {
        args.extend(["--uid".to_owned(), uid.to_string()]);
        args.extend(["--gid".to_owned(), gid.to_string()]);
    }
    if privileges.no_new_privs {
        args.push("--no-new-privs".to_owned());
    }
    args
}

/// Runs as PID 1 until the command exits; its exit status (128 + N after signal N).
pub(crate) fn run(args: TaskInitArgs) -> ExitCode {
    // Executed through /proc/self/exe it would be called `exe` in `ps`.
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"skein-init".as_ptr(), 0, 0, 0) };
    // SAFETY: fcntl on a descriptor number; a bad one only fails.
    unsafe { libc::fcntl(args.report_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let signals = forwarded_signals();
    // SAFETY: a valid set; this thread is the only one.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    let privileges = Privileges {
        caps: args.caps,
        no_new_privs: args.no_new_privs,
        last_cap: args.last_cap,
    };
    let child = match start(&args, &privileges) {
        Ok(child) => child,
        Err((step, error)) => {
            report(args.report_fd, step, &error);
            return ExitCode::from(127);
        }
    };
    // SAFETY: our descriptor, closed once: the agent sees EOF once the command's copy
    // closes on exec too.
    unsafe { libc::close(args.report_fd) };
    // The init needs nothing but to signal a command that may run as another user; a
    // task that could trace it then gains nothing.
    let own = Privileges {
        caps: 1 << CAP_KILL,
        no_new_privs: true,
        last_cap: args.last_cap,
    };
    let _ = own
        .limit_bounding_set()
        .and_then(|()| own.set_capabilities());
    ExitCode::from(supervise(child, &signals))
}

/// Forks and executes the command, confined. The step that failed and why, otherwise.
fn start(args: &TaskInitArgs, privileges: &Privileges) -> Result<libc::pid_t, (u32, io::Error)> {
    let steps = StepPage::new().map_err(|e| (STEP_EXEC, io::Error::other(e.to_string())))?;
    let (program, argv) = args.command.split_first().expect("clap requires 2 values");
    let (argv0, rest) = argv.split_first().expect("clap requires 2 values");
    let mut command = Command::new(program);
    command.arg0(argv0).args(rest);
    let (privileges, ids, step) = (*privileges, args.uid.zip(args.gid), steps.addr());
    // SAFETY: only async-signal-safe syscalls, on values copied into the closure.
    unsafe {
        command.pre_exec(move || {
            let set_step = |s: u32| StepPage::set_at(step, s);
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Its own session and process group: signals are forwarded to the group.
            libc::setsid();
            set_step(STEP_CAPS);
            privileges.limit_bounding_set()?;
            if let Some((uid, gid)) = ids {
                set_step(STEP_USER);
                switch_user(uid, gid)?;
            }
            set_step(STEP_CAPS);
            privileges.set_capabilities()?;
            set_step(STEP_NO_NEW_PRIVS);
            privileges.set_no_new_privs()?;
            set_step(STEP_EXEC);
            Ok(())
        })
    };
    match command.spawn() {
        Ok(child) => Ok(child.id() as libc::pid_t),
        Err(error) => Err((steps.step(), error)),
    }
}

fn report(fd: i32, step: u32, error: &io::Error) {
    let mut message = [0u8; 8];
    message[..4].copy_from_slice(&step.to_le_bytes());
    message[4..].copy_from_slice(&error.raw_os_error().unwrap_or(libc::EIO).to_le_bytes());
    // SAFETY: a valid buffer; a closed descriptor only fails.
    unsafe { libc::write(fd, message.as_ptr().cast(), message.len()) };
}

/// Every signal but SIGKILL, SIGSTOP and the synchronous ones (SIGCHLD included: it is
/// waited for, not handled).
fn forwarded_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in 1..=libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP && !SYNCHRONOUS.contains(&signal)
            {
                libc::sigaddset(&mut set, signal);
            }
        }
        set
    }
}

/// Waits for signals: SIGCHLD reaps (the command's exit ends the wait), anything else
/// goes to the command's process group (or the command, if it left it).
fn supervise(child: libc::pid_t, signals: &libc::sigset_t) -> u8 {
    loop {
        // SAFETY: a valid set; no siginfo wanted.
        let signal = unsafe { libc::sigwaitinfo(signals, std::ptr::null_mut()) };
        if signal < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Cannot wait for signals: wait for the command alone.
            return wait_for(child);
        }
        if signal == libc::SIGCHLD {
            if let Some(code) = reap_all(child) {
                return code;
            }
            continue;
        }
        // SAFETY: kill takes no pointers; the group is the command's (setsid).
        unsafe {
            if libc::kill(-child, signal) != 0 {
                libc::kill(child, signal);
            }
        }
    }
}

/// Reaps every exited child; the command's status if it was among them.
fn reap_all(child: libc::pid_t) -> Option<u8> {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == child {
            result = Some(exit_code(status));
        }
    }
}

fn wait_for(child: libc::pid_t) -> u8 {
    let mut status = 0;
    // SAFETY: a valid out-pointer.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0 {
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
    }
    exit_code(status)
}

/// The shell's convention: the exit code, or 128 + N after signal N.
fn exit_code(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else {
        (128 + libc::WTERMSIG(status)) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_arguments_parse_back() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: TaskInitArgs,
        }
        let privileges = Privileges {
            caps: 0xa80425fb,
            no_new_privs: true,
            last_cap: 40,
        };
        let mut argv = vec!["task-init".to_owned()];
        argv.extend(init_args(3, &privileges, Some((1000, 100))));
        argv.extend(["--", "/bin/sh", "sh", "-c", "--caps x"].map(String::from));
        let args = <Cli as clap::Parser>::try_parse_from(argv).unwrap().args;
        assert_eq!(
            (args.report_fd, args.caps, args.last_cap),
            (3, 0xa80425fb, 40)
        );
        assert_eq!(
            (args.uid, args.gid, args.no_new_privs),
            (Some(1000), Some(100), true)
        );
        assert_eq!(args.command, ["/bin/sh", "sh", "-c", "--caps x"]);
        let forwarded = forwarded_signals();
        // SAFETY: a valid set.
        unsafe {
            assert_eq!(libc::sigismember(&forwarded, libc::SIGTERM), 1);
            assert_eq!(libc::sigismember(&forwarded, libc::SIGCHLD), 1);
            assert_eq!(libc::sigismember(&forwarded, libc::SIGSEGV), 0);
        }
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(15), 143);
    }
}
