//! Child processes started inside a host ([`Process`]) and the testbed's record of them.
//!
//! A [`Process`] owns its [`Child`] and is the only one that reaps it. The testbed keeps just
//! the PIDs of the ones not yet reaped, to stop them when it is dropped first. A PID is only
//! safe to signal while its process is unreaped (until then the kernel cannot reuse it), so
//! reaping and deregistering happen under the same lock the testbed signals under.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{cleanup::read_proc_stat, wait_until};

/// The testbed's record of the processes started through its hosts.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    /// PIDs of processes not yet reaped by their [`Process`].
    live: Vec<u32>,
    /// Every log file written, in start order, kept after the process is gone so a failing
    /// test can still show it.
    logs: Vec<PathBuf>,
}

impl Registry {
    /// Locks the record; a panic elsewhere while it was held leaves it usable (it is a plain
    /// list), and cleanup during unwinding must not panic on a poisoned lock.
    fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every log file written so far.
    pub(crate) fn logs(&self) -> Vec<PathBuf> {
        self.lock().logs.clone()
    }

    /// SIGTERMs every registered process that still runs, waits up to `grace` for them to
    /// exit, then SIGKILLs the rest. Returns how many needed SIGKILL. They stay zombies until
    /// their [`Process`] reaps them.
    pub(crate) fn terminate_all(&self, grace: Duration) -> usize {
        // Held throughout so no Process reaps (freeing the PID for reuse) while we signal it.
        let inner = self.lock();
        let running = |pid: u32| read_proc_stat(pid).is_some_and(|s| !s.is_dead());
        let mut pending: Vec<u32> = inner.live.iter().copied().filter(|&p| running(p)).collect();
        for &pid in &pending {
            signal(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while !pending.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            pending.retain(|&pid| running(pid));
        }
        for &pid in &pending {
            signal(pid, libc::SIGKILL);
        }
        pending.len()
    }
}

/// Sends `sig` to `pid`; errors (the process is already gone) do not matter to callers.
fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a PID we own and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// A child process started inside a host with [`Host::spawn`](super::Host::spawn); its stdout
/// and stderr go to a log file in the run directory. Dropping it SIGKILLs and reaps it.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// `<host>/<log name>`, for messages.
    name: String,
    log_path: PathBuf,
    registry: Arc<Registry>,
    /// Set once reaped.
    status: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` and registers it, under the registry's lock so that the testbed's `Drop`
    /// never misses a process started concurrently.
    pub(crate) fn spawn(
        registry: Arc<Registry>,
        cmd: &mut std::process::Command,
        name: String,
        log_path: PathBuf,
    ) -> Result<Process> {
        let child = {
            let mut inner = registry.lock();
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {name}: {cmd:?}"))?;
            inner.live.push(child.id());
            inner.logs.push(log_path.clone());
            child
        };
        Ok(Process {
            child,
            name,
            log_path,
            registry,
            status: None,
        })
    }

    /// The process ID (of the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the process and reaps it, as a crash would end it (restart tests). Does
    /// nothing if it has already exited.
    pub fn kill9(&mut self) -> Result<()> {
        self.kill_and_reap().map(|_| ())
    }

    /// Asks the process to stop with SIGTERM and waits up to `timeout` for it to exit, then
    /// SIGKILLs it. Returns how it exited (a signal, if it had to be killed).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_reap()? {
            return Ok(status);
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "{} (pid {}) still runs {timeout:?} after SIGTERM; killing it",
                    self.name,
                    self.pid()
                );
                return self.kill_and_reap();
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself and returns how it exited.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), timeout, || {
            self.try_reap().transpose()
        })
        .and_then(|status| status)
    }

    /// Whether the process still runs (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_reap(), Ok(None))
    }

    /// How the process exited, if it has been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// The file its stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// What it has written so far (stdout and stderr interleaved); empty if unreadable.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` until its log contains `needle`. Fails early, showing the log,
    /// if the process exits first.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let what = format!("{} to log {needle:?}", self.name);
        // Some(true): logged; Some(false): exited without logging it.
        let outcome = wait_until(&what, timeout, || {
            if self.log().contains(needle) {
                Some(true)
            } else if !self.is_running() {
                // It may have written the line just before exiting.
                Some(self.log().contains(needle))
            } else {
                None
            }
        });
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "{} exited ({}) before logging {needle:?}\n--- {} ---\n{}",
                self.name,
                self.status.map(|s| s.to_string()).unwrap_or_default(),
                self.log_path.display(),
                self.log()
            ),
            Err(e) => bail!("{e:#}\n--- {} ---\n{}", self.log_path.display(), self.log()),
        }
    }

    /// Reaps the process if it has exited, deregistering it under the registry lock.
    fn try_reap(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut inner = self.registry.lock();
        let status = self
            .child
            .try_wait()
            .with_context(|| format!("checking on {}", self.name))?;
        if let Some(status) = status {
            self.status = Some(status);
            let pid = self.pid();
            inner.live.retain(|&p| p != pid);
        }
        Ok(status)
    }

    /// SIGKILLs and reaps; returns the exit status (the earlier one if it had already exited).
    fn kill_and_reap(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let mut inner = self.registry.lock();
        signal(self.pid(), libc::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.status = Some(status);
        let pid = self.pid();
        inner.live.retain(|&p| p != pid);
        Ok(status)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Err(e) = self.kill_and_reap() {
            eprintln!("stopping {} (pid {}): {e:#}", self.name, self.pid());
        }
    }
}
