//! Services' tasks on this node: starting, supervising and adopting their processes, and
//! the `service` commands' answers.
//!
//! - [`process`]: one task's process: spawned into its endpoint's network namespace (and
//!   its own UTS and mount namespaces), detached, logged, adopted after an agent restart,
//!   health-checked; split into spawn, child setup, users, identity, pidfd and health.
//! - [`confine`]: what else confines a task: a PID namespace under `skein task-init`,
//!   capabilities, `no_new_privs`, agents' directories hidden; health checks alike.
//! - [`cgroup`]: each task's cgroup (every process of a task ends with it; limits),
//!   found or mounted on v2 and hybrid hosts, adopted after an agent restart.
//! - [`plan`]: the supervisor's decisions (adopt, start, drain, stop, move away, restart,
//!   replace, remove orphan endpoints) as pure functions of (view, local tasks, now).
//! - [`supervisor`]: converges this node's tasks to what placement gives it: runs the
//!   plans and applies their actions (endpoints, records, processes).
//! - [`status`]: `service ls`/`ps` rows and convergence, from a cluster view (the tasks
//!   of a service come from [`manager::view::ClusterView::tasks_of`]).

pub(crate) mod cgroup;
pub(crate) mod confine;
pub(crate) mod plan;
pub(crate) mod process;
pub(crate) mod status;
pub mod supervisor;
