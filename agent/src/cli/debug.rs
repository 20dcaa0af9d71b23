//! `skein debug`: look inside the agent.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;

use super::{args::FormatArg, client, output::Format};
use crate::api::Request;

#[derive(Subcommand, Debug)]
pub(crate) enum DebugCommand {
    /// Print the dataplane's maps.
    Maps,
    /// List the routing-mesh flows this node tracks as their ingress node: client,
    /// ingress (this node's published port), backend task, its host, service, TCP state,
    /// age and idle time.
    Conntrack(FormatArg),
}

impl DebugCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        match self {
            DebugCommand::Maps => client::request(socket, &Request::DebugMaps, Format::Table),
            DebugCommand::Conntrack(f) => {
                client::request(socket, &Request::DebugConntrack, f.format)
            }
        }
    }
}
