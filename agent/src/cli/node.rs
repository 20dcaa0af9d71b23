//! `skein node` and `skein join-token`: the cluster's members.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;

use super::{
    args::{non_empty, FormatArg},
    client,
    output::Format,
};
use crate::api::{AvailabilityArg, Request};

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCommand {
    /// List the cluster's nodes; `*` marks the one this command talks to.
    Ls(FormatArg),
    /// Forget a node that is down.
    Rm {
        /// The node's ID, or a prefix of it that only it has.
        #[arg(value_parser = non_empty("a node ID"))]
        id: String,
    },
    /// Set whether a node takes tasks: `active`, `pause` (keeps its tasks, gets no new
    /// ones) or `drain` (its tasks move away, each drained before it stops).
    Update {
        #[arg(long, value_enum)]
        availability: AvailabilityArg,
        /// The node's ID, a prefix of it that only it has, or its hostname.
        #[arg(value_parser = non_empty("a node"))]
        node: String,
    },
    /// Print a node's description, status, availability and tasks as JSON.
    Inspect {
        #[arg(value_parser = non_empty("a node"))]
        node: String,
    },
}

impl NodeCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        let (request, format) = match self {
            NodeCommand::Ls(f) => (Request::NodeLs, f.format),
            NodeCommand::Rm { id } => (Request::NodeRm { id }, Format::Table),
            NodeCommand::Update { availability, node } => {
                (Request::NodeUpdate { node, availability }, Format::Table)
            }
            NodeCommand::Inspect { node } => (Request::NodeInspect { node }, Format::Table),
        };
        client::request(socket, &request, format)
    }
}

/// `skein join-token [--rotate]`.
pub(super) fn join_token(socket: &Path, rotate: bool) -> Result<ExitCode> {
    client::request(socket, &Request::JoinToken { rotate }, Format::Table)
}
