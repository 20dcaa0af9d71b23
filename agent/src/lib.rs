//! The Skein agent: the privileged daemon that runs on every host, and the `skein`
//! command line.
//!
//! Layout:
//! - [`cli`]: the `skein` command line (clap), one file per command group, and its entry
//!   point [`cli::main`].
//! - `compose`: compose files (`skein stack deploy`) read into services and networks.
//! - `build_info`: this binary's version, git commit and eBPF object hash (`skein
//!   version`, `skein_build_info` in `/metrics`).
//! - `api`: the local API between the CLI and its agent (messages, Unix-socket server
//!   and client).
//! - `daemon`: `skein agent`: the composition root, the API's handlers per object, the
//!   background loops and the draining shutdown.
//! - `dns`: the service-discovery DNS server (hickory-server): the live view's names,
//!   served at 127.0.0.11:53 in every endpoint namespace and at `--dns-addr`.
//! - [`dataplane`]: the only code that touches aya: load, attach, pin, adopt, counters.
//! - `http_server`: the bounded hyper HTTP/1.1 server under `/metrics` and `whoami`.
//! - `metrics`: `/metrics` in the OpenMetrics text format (prometheus-client).
//! - `peer`: the sealed peer RPC between agents (TCP on the gossip port): remote logs.
//! - [`tasks`]: services' tasks on this node (processes, supervision, status).
//! - [`whoami`]: `skein whoami`, a diagnostic HTTP/UDP server to run as a task.

mod api;
mod build_info;
pub mod cli;
mod compose;
mod config;
mod daemon;
pub mod dataplane;
mod dns;
mod egress;
mod http_server;
mod metrics;
mod netif;
pub mod netlink;
mod peer;
pub mod reconcile;
mod state_dir;
pub mod tasks;
pub mod whoami;

/// A fresh random ID: 12 hex digits, like Docker's short IDs (endpoints, tasks).
pub(crate) fn random_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let value = RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{:012x}", value & 0xffff_ffff_ffff)
}
