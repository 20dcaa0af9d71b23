//! Netlink connections bound to a network namespace.
//!
//! A netlink socket acts on the network namespace it was created in, for its whole life,
//! whichever thread later uses it. So a connection to another namespace is made by a
//! dedicated thread that `setns`es into the namespace, creates the socket (registered
//! with the caller's tokio runtime) and ends; the connection is then driven by the runtime
//! like any other.

use std::{future::Future, os::fd::OwnedFd, path::Path};

use rtnetlink::Handle;
use tokio::task::JoinHandle;

use super::{
    netns::{enter_netns, on_dedicated_thread, on_dedicated_thread_blocking, open_netns_blocking},
    NetlinkError, Result,
};

/// How the current namespace is named in messages.
const CURRENT_NETNS: &str = "the current network namespace";

/// An rtnetlink connection to one network namespace. Its operations (in `link` and
/// `endpoint`) act on that namespace. Dropping it closes the connection.
#[derive(Debug)]
pub(super) struct Netlink {
    pub(super) handle: Handle,
    /// The namespace, for messages: a path, or [`CURRENT_NETNS`].
    netns: String,
    connection: JoinHandle<()>,
}

impl Netlink {
    /// A connection to the calling thread's network namespace (the agent's own, unless
    /// the thread was moved). Must be called inside a tokio runtime with IO enabled.
    pub(super) fn current() -> Result<Netlink> {
        let (handle, connection) = connect()?;
        Ok(Netlink {
            handle,
            netns: CURRENT_NETNS.to_owned(),
            connection,
        })
    }

    /// A connection to the network namespace open as `ns` (see `open_netns`), called
    /// `netns` in messages, driven by the current tokio runtime.
    pub(super) async fn with_netns_fd(ns: OwnedFd, netns: String) -> Result<Netlink> {
        let runtime = tokio::runtime::Handle::current();
        let label = netns.clone();
        let (handle, connection) =
            on_dedicated_thread(format!("opening a netlink socket in {netns}"), move || {
                enter_netns(&ns, &label)?;
                // The socket is registered with (and its connection spawned on) the
                // caller's runtime; only its creation happens on this thread.
                let _runtime = runtime.enter();
                connect()
            })
            .await?;
        Ok(Netlink {
            handle,
            netns,
            connection,
        })
    }

    /// The namespace this connection acts on, as shown in messages.
    pub(super) fn netns(&self) -> &str {
        &self.netns
    }

    /// Wraps a failed request `what` (e.g. "setting the MTU of eth0") with the namespace.
    pub(super) fn request_error(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
        let what = what.into();
        move |source| NetlinkError::Request {
            what,
            netns: self.netns.clone(),
            source,
        }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // The connection task would otherwise outlive every handle until the socket
        // reported an error.
        self.connection.abort();
    }
}

/// A socket in the calling thread's namespace, its connection spawned on the entered
/// runtime.
fn connect() -> Result<(Handle, JoinHandle<()>)> {
    let (connection, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(NetlinkError::io("opening a netlink socket"))?;
    Ok((handle, tokio::spawn(connection)))
}

/// Runs the future `f()` to completion on a new thread inside the network namespace at
/// `path`, on a single-threaded tokio runtime of its own, and returns its output. Blocks
/// the caller: from async code, wrap it in `spawn_blocking`.
///
/// Everything the future does that depends on the calling thread's namespace — sockets,
/// [`Netlink::current`], the free functions of this module — happens in `path`'s
/// namespace. For tests, and for one-off work in a host namespace. To run in the caller's
/// own namespace, pass `/proc/thread-self/ns/net`.
pub fn run_in_netns<F, Fut, T>(path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T>,
    T: Send,
{
    let ns = open_netns_blocking(path)?;
    let label = path.display().to_string();
    on_dedicated_thread_blocking(format!("running in {label}"), move || {
        enter_netns(&ns, &label)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NetlinkError::io("starting a tokio runtime"))?;
        Ok(runtime.block_on(f()))
    })
}
