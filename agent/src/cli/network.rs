//! `skein network`: overlay networks and their external VTEPs.

use std::{net::Ipv4Addr, path::Path, process::ExitCode};

use anyhow::Result;
use clap::{Args, Subcommand};
use ipnet::Ipv4Net;

use super::{
    args::{non_empty, parse_mac, parse_subnet, FormatArg},
    client,
    output::Format,
};
use crate::api::Request;

#[derive(Subcommand, Debug)]
pub(crate) enum NetworkCommand {
    /// Create an overlay network; the cluster picks a free subnet and VNI unless given.
    Create(NetworkCreate),
    /// List the overlay networks.
    Ls(FormatArg),
    /// Remove an overlay network (refused while endpoints remain on it).
    Rm {
        #[arg(value_parser = non_empty("a network name"))]
        name: String,
    },
    /// Manage external VTEPs on a network.
    #[command(subcommand)]
    Vtep(VtepCommand),
}

#[derive(Args, Debug)]
pub(crate) struct NetworkCreate {
    /// The network's name.
    #[arg(value_parser = non_empty("a network name"))]
    pub(crate) name: String,
    /// The network's IPv4 subnet, like 10.10.0.0/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
    pub(crate) subnet: Option<Ipv4Net>,
    /// The network's VXLAN network identifier.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    pub(crate) vni: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum VtepCommand {
    /// Put an external VXLAN endpoint (a host outside Skein, e.g. the kernel's VXLAN
    /// device) on an overlay network: traffic to CIDR goes to it.
    Add {
        #[arg(value_parser = non_empty("a network name"))]
        network: String,
        /// Its underlay address.
        #[arg(long, value_name = "IP")]
        underlay: Ipv4Addr,
        /// The MAC its VXLAN device answers to.
        #[arg(long, value_name = "MAC", value_parser = parse_mac)]
        mac: [u8; 6],
        /// The overlay addresses behind it.
        #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
        cidr: Ipv4Net,
    },
    /// Remove an external VTEP.
    Rm {
        #[arg(value_parser = non_empty("a network name"))]
        network: String,
        #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
        cidr: Ipv4Net,
    },
    /// List external VTEPs.
    Ls {
        network: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
}

impl NetworkCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        let (request, format) = match self {
            NetworkCommand::Create(create) => (
                Request::NetworkCreate {
                    name: create.name,
                    subnet: create.subnet,
                    vni: create.vni,
                },
                Format::Table,
            ),
            NetworkCommand::Ls(f) => (Request::NetworkLs, f.format),
            NetworkCommand::Rm { name } => (Request::NetworkRm { name }, Format::Table),
            NetworkCommand::Vtep(vtep) => vtep.request(),
        };
        client::request(socket, &request, format)
    }
}

impl VtepCommand {
    fn request(self) -> (Request, Format) {
        match self {
            VtepCommand::Add {
                network,
                underlay,
                mac,
                cidr,
            } => (
                Request::VtepAdd {
                    network,
                    underlay,
                    mac,
                    cidr,
                },
                Format::Table,
            ),
            VtepCommand::Rm { network, cidr } => (Request::VtepRm { network, cidr }, Format::Table),
            VtepCommand::Ls { network, format } => (Request::VtepLs { network }, format.format),
        }
    }
}
