//! Confinement of a task's processes beyond their network, UTS and mount namespaces: a
//! PID namespace with an init of our own as PID 1, Docker's default capabilities, no new
//! privileges, and a mount namespace in which no agent's state directory, API socket or
//! bpffs is reachable. Health checks run in the same confinement and the task's cgroups.
//!
//! # The fork chain
//! `unshare(CLONE_NEWPID)` moves only the caller's future children, and a thread of the
//! agent may do it (per-thread state) but only once, so `process::spawn` forks from a
//! short-lived thread that has unshared its PID namespace: the child is PID 1 of a fresh
//! namespace from birth. In the child, before `execve` (`process::child`): the endpoint's
//! network namespace, new UTS and mount namespaces, [`MountPlan::apply`] (a `/proc` of
//! the new PID namespace, read-only `/proc/sys` and `/sys`, the covers, resolv.conf),
//! hostname, session; then it executes the agent's own binary through `/proc/self/exe`
//! (found even when the binary's directory is hidden) as `skein task-init` ([`init`]),
//! which forks the command confined ([`caps`]) and stays PID 1.
//!
//! ```text
//! agent ─ thread: unshare(NEWPID) ─ fork ─▶ skein task-init (PID 1, root, CAP_KILL only)
//!                                              └─ fork ─▶ the command (PID 2: caps, user,
//!                                                         no_new_privs, own session)
//! ```
//! The agent records the init's PID and start time (identity file): adoption after an
//! agent restart finds the init, signals go to it and it forwards them, and when it exits
//! the kernel kills the rest of the namespace.
//!
//! Health checks (`process::health`) fork from a thread that `setns`es into the task's
//! PID namespace, then enter its network, UTS and mount namespaces and cgroups
//! ([`cgroup_join`]) and take the same privileges, with the service's user and
//! environment.
//!
//! # Layout
//! - `caps`: [`Privileges`] (bounding, permitted/effective sets, `no_new_privs`) and the
//!   user switch;
//! - `mounts`: [`MountPlan`], what is mounted and hidden;
//! - `cgroup_join`: the task's cgroups for a health check;
//! - `init`: `skein task-init`.

mod caps;
pub(crate) mod cgroup_join;
pub(crate) mod init;
mod mounts;

pub(crate) use caps::{switch_user, Privileges};
pub(crate) use mounts::{MountPlan, MountStep};
