//! `skein debug`: look inside the agent.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;

use super::{client, output::Format};
use crate::api::Request;

#[derive(Subcommand, Debug)]
pub(crate) enum DebugCommand {
    /// Print the dataplane's maps.
    Maps,
}

impl DebugCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        match self {
            DebugCommand::Maps => client::request(socket, &Request::DebugMaps, Format::Table),
        }
    }
}
