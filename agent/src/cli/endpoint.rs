//! `skein endpoint`: attach network namespaces to overlay networks.

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
pub(crate) enum EndpointCommand {
    /// Create a fresh network namespace on this host attached to NET; prints its
    /// namespace name and address.
    Create {
        #[arg(long, value_parser = non_empty("a network name"))]
        network: String,
        /// A name for the endpoint (and its namespace); default: its ID.
        #[arg(long, value_parser = parse_endpoint_name)]
        name: Option<String>,
    },
    /// Attach an existing network namespace (e.g. a container's) to NET.
    Attach {
        #[arg(long, value_parser = non_empty("a network name"))]
        network: String,
        /// A name under /run/netns, or a path such as /proc/PID/ns/net.
        #[arg(long, value_name = "NAME|PATH", value_parser = non_empty("a namespace"))]
        netns: String,
        #[arg(long, value_parser = parse_endpoint_name)]
        name: Option<String>,
    },
    /// List the cluster's endpoints.
    Ls(FormatArg),
    /// Remove an endpoint of this host (a namespace it created is deleted; an attached
    /// one is only detached).
    Rm {
        /// The endpoint's ID or name.
        #[arg(value_parser = non_empty("an endpoint"))]
        id: String,
    },
}

impl EndpointCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        let (request, format) = match self {
            EndpointCommand::Create { network, name } => {
                (Request::EndpointCreate { network, name }, Format::Table)
            }
            EndpointCommand::Attach {
                network,
                netns,
                name,
            } => (
                Request::EndpointAttach {
                    network,
                    netns,
                    name,
                },
                Format::Table,
            ),
            EndpointCommand::Ls(f) => (Request::EndpointLs, f.format),
            EndpointCommand::Rm { id } => (Request::EndpointRm { id }, Format::Table),
        };
        client::request(socket, &request, format)
    }
}

/// Endpoint names become namespace names: letters, digits, `-`, `_`, `.`, up to 32.
fn parse_endpoint_name(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 32
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(value.to_owned())
    } else {
        Err("use 1-32 letters, digits, '-', '_' or '.', starting with a letter or digit".to_owned())
    }
}
