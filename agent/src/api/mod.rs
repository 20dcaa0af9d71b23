//! The local API between the `skein` CLI and its agent, over a root-only Unix socket.
//!
//! Layout:
//! - [`proto`]: the messages ([`Request`], [`Response`]) and the [`Backend`] the daemon
//!   implements; re-exported here.
//! - [`server`]: [`bind`] the socket, [`serve`] it (the agent's side).
//! - [`client`]: [`call`] (the CLI's side).

pub mod client;
pub mod proto;
pub mod server;

pub use client::call;
pub use proto::*;
pub use server::{bind, serve};
