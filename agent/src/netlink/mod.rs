//! The only code that touches rtnetlink: named network namespaces, netlink connections
//! bound to a namespace, and the plumbing of endpoints (veth pairs, addresses, routes).
//!
//! Everything here is idempotent in the "ensure" style reconcilers need: running an
//! operation twice changes nothing the second time, and an agent that restarts adopts
//! what an earlier run made instead of recreating it.
//!
//! Namespaces matter in three ways:
//! - a netlink socket stays bound to the network namespace it was created in, so a
//!   connection to another namespace is made by a short-lived thread that `setns`es
//!   into it, creates the socket and hands it to the tokio runtime (`Netlink::with_netns_fd`);
//! - named namespaces are bind mounts under `/run/netns`, like `ip netns add` makes them.
//!   A bind mount lives in the mount namespace it was made in, and the agent may run
//!   under `ip netns exec`, which gives it a private one: a namespace mounted there would
//!   be invisible to `ip netns` outside and would die with the agent. So [`create_netns`]
//!   and its siblings act in the mount namespace of PID 1 (where that cannot be opened, of
//!   the agent's outermost ancestor that can: whoever ran `ip netns exec`). `/run/netns`
//!   is a shared mount there and the agent's copy its slave, so the agent sees the result;
//! - threads whose namespaces are changed are always dedicated threads that end
//!   afterwards, never tokio workers or blocking-pool threads, which would carry the
//!   changed namespace into unrelated work.
//!
//! Nothing else in the agent uses rtnetlink or netlink-packet-route.
//!
//! # Layout
//! - `netns`: named namespaces ([`create_netns`], [`delete_netns`], [`netns_exists`],
//!   [`netns_path`], [`NETNS_RUN_DIR`]), opening one (`open_netns_blocking`), and
//!   `current_netns_name`, the name of the one this process runs in.
//! - `conn`: `Netlink`, a connection to the current or another namespace, and
//!   [`run_in_netns`].
//! - `link`: interfaces by name, MTU, addresses and routes as `Netlink` methods, and
//!   the free functions [`link_index`], [`links_with_prefix`], [`set_mtu`] that act on the
//!   calling thread's namespace.
//! - `endpoint`: [`ensure_endpoint_link`] (in two halves, [`prepare_endpoint_link`] and
//!   [`PreparedLink::bring_up`], for callers with work in between) and
//!   [`remove_endpoint_link`].
//! - `offload`: GRO/TSO of a link through the ethtool ioctl.
//! - `names`: the one interface-name rule (`check_ifname`, also behind every flag that
//!   names an interface) and [`host_ifname`].

mod conn;
mod endpoint;
mod host_path;
mod link;
mod names;
mod netns;
mod offload;

use std::{io, path::PathBuf};

pub use conn::run_in_netns;
use conn::Netlink;
pub use endpoint::{
    ensure_endpoint_link, prepare_endpoint_link, remove_endpoint_link, Change, EndpointLink,
    EndpointLinkState, PreparedLink,
};
pub(crate) use host_path::{ensure_host_path_link, remove_link, sync_routes_through};
pub use link::{link_index, links_with_prefix, set_mtu};
pub(crate) use names::check_ifname;
pub use names::{host_ifname, IfnameError, IFNAMSIZ_MAX};
pub use netns::{create_netns, delete_netns, netns_exists, netns_path, NETNS_RUN_DIR};
pub(crate) use netns::{current_netns_name, open_netns_blocking};

/// Errors from namespaces and netlink. Those a caller can cause name the bad value and
/// the fix; the kernel's own reasons are in the source.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace name {name:?} is invalid: use 1 to 255 characters, none of them '/', and not \".\" or \"..\"")]
    InvalidNetnsName { name: String },
    #[error("interface name {name:?} is invalid: {reason}")]
    InvalidIfname { name: String, reason: IfnameError },
    #[error("prefix length /{prefix_len} is invalid for IPv4: use 0 to 32")]
    InvalidPrefixLen { prefix_len: u8 },
    #[error("MTU {mtu} is invalid: use 68 to 65535")]
    InvalidMtu { mtu: u32 },
    #[error("{path} is not a network namespace: create it first (create_netns or `ip netns add`)")]
    NotANetns { path: PathBuf },
    #[error("endpoint namespace {path} is the agent's own network namespace: give each endpoint a namespace of its own")]
    OwnNetns { path: PathBuf },
    #[error("interface {name} does not exist in {netns}")]
    NoSuchLink { name: String, netns: String },
    #[error("interface {name} in {netns} is a {kind}, not a veth, so it is not Skein's: remove it or pick another endpoint interface name")]
    NotAVeth {
        name: String,
        netns: String,
        kind: String,
    },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} in {netns} failed")]
    Request {
        what: String,
        netns: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("a namespace helper thread panicked while {what}")]
    ThreadPanicked { what: String },
}

pub(crate) type Result<T, E = NetlinkError> = std::result::Result<T, E>;

impl NetlinkError {
    /// A [`NetlinkError::Io`] with the OS error just reported by a libc call.
    fn last_os(what: impl Into<String>) -> NetlinkError {
        NetlinkError::Io {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetlinkError {
        let what = what.into();
        move |source| NetlinkError::Io { what, source }
    }
}

/// The errno of a netlink error reply, if `e` is one (positive, like `libc::ENODEV`).
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| -code.get()),
        _ => None,
    }
}
