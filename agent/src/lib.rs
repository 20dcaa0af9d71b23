//! The Skein agent: the privileged daemon that runs on every host, and the `skein`
//! command line.
//!
//! Layout:
//! - [`cli`]: the `skein` command line (clap) and its entry point.
//! - [`daemon`]: `skein agent`: wires the dataplane, metrics and shutdown together.
//! - [`dataplane`]: the only code that touches aya: load, attach, pin, adopt, counters.
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`tasks`]: the processes of service tasks, in their endpoints' namespaces.
//! - [`whoami`]: `skein whoami`, a diagnostic HTTP/UDP server to run as a task.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod egress;
pub mod metrics;
pub mod netif;
pub mod netlink;
pub mod output;
pub mod reconcile;
pub mod state_dir;
pub mod tasks;
pub mod whoami;
