//! `skein node` and `skein join-token`: the cluster's members.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;

use super::{
    args::{non_empty, FormatArg},
    client,
    output::Format,
};
use crate::api::Request;

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
}

impl NodeCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        let (request, format) = match self {
            NodeCommand::Ls(f) => (Request::NodeLs, f.format),
            NodeCommand::Rm { id } => (Request::NodeRm { id }, Format::Table),
        };
        client::request(socket, &request, format)
    }
}

/// `skein join-token [--rotate]`.
pub(super) fn join_token(socket: &Path, rotate: bool) -> Result<ExitCode> {
    client::request(socket, &Request::JoinToken { rotate }, Format::Table)
}
