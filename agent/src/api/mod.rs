//! The local API between the `skein` CLI and its agent, over a root-only Unix socket.
//!
//! Layout:
//! - [`proto`]: the messages ([`Request`], [`Response`]) and the [`Backend`] the daemon
//!   implements; re-exported here.
//! - [`server`]: [`bind`] the socket, [`serve`] it (the agent's side).
//! - [`client`]: [`call`] (the CLI's side).
//! - [`update`]: the rollout and node-availability requests' types.

pub(crate) mod client;
pub(crate) mod proto;
pub(crate) mod server;
pub(crate) mod update;

pub(crate) use client::call;
pub(crate) use proto::*;
pub(crate) use server::{bind, serve};
pub(crate) use update::*;
