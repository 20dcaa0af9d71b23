//! Services' tasks on this node: starting, supervising and adopting their processes, and
//! the `service` commands' answers.
//!
//! - [`process`]: one task's process: spawned into its endpoint's network namespace (and
//!   its own UTS and mount namespaces), detached, logged, adopted after an agent restart.
//! - [`supervisor`]: converges this node's tasks to what placement gives it.
//! - [`status`]: `service ls`/`ps` rows and convergence, from a cluster view.

pub mod process;
pub mod status;
pub mod supervisor;
