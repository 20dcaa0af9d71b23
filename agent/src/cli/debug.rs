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
    /// Ask the agent's DNS server for NAME as an endpoint would (its answer, NODATA,
    /// NXDOMAIN or the upstream's), from the server's own answering path.
    Dns {
        /// The name, like web, tasks.web, _80._tcp.web or 2.0.10.10.in-addr.arpa.
        name: String,
        /// The record type: A, AAAA, SRV, PTR, ...
        #[arg(long = "type", short = 't', default_value = "A", value_name = "TYPE")]
        record_type: String,
        /// Ask as the endpoints in this network namespace do (a name under /run/netns or
        /// a path); without it, as the operator on the host (every network).
        #[arg(long, value_name = "NS")]
        netns: Option<String>,
    },
}

impl DebugCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        match self {
            DebugCommand::Maps => client::request(socket, &Request::DebugMaps, Format::Table),
            DebugCommand::Conntrack(f) => {
                client::request(socket, &Request::DebugConntrack, f.format)
            }
            DebugCommand::Dns {
                name,
                record_type,
                netns,
            } => client::request(
                socket,
                &Request::DebugDns {
                    name,
                    record_type,
                    netns,
                },
                Format::Table,
            ),
        }
    }
}
