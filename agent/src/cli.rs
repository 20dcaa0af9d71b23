//! The `skein` command line. Doc comments are the help text.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::{daemon, dataplane::XdpMode};

/// Skein: Swarm-style service networking — VXLAN overlay, routing mesh, service
/// discovery — with the packet path in eBPF/XDP.
#[derive(Parser, Debug)]
#[command(name = "skein", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent daemon on this host (privileged), or manage its dataplane.
    Agent(AgentArgs),
}

/// `skein agent`: every flag can also be given as an environment variable `SKEIN_*`.
#[derive(Args, Debug)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub action: Option<AgentAction>,

    /// The host's underlay interface: VXLAN and published ports arrive here.
    #[arg(
        long,
        env = "SKEIN_UNDERLAY_IFACE",
        value_name = "IFACE",
        required = true
    )]
    pub underlay_iface: Option<String>,

    /// How to attach the underlay XDP program: native where the driver supports it
    /// (auto), native only, or generic.
    #[arg(long, env = "SKEIN_XDP_MODE", value_enum, default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,

    /// Where `/metrics` is served (Prometheus text format).
    #[arg(
        long,
        env = "SKEIN_METRICS_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:9946"
    )]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub pins: PinArgs,

    /// Host-side veth of an endpoint to attach the endpoint program to (repeatable).
    /// Until the overlay creates endpoints itself, this attaches existing veths.
    #[arg(
        long = "endpoint-iface",
        env = "SKEIN_ENDPOINT_IFACES",
        value_name = "IFACE",
        value_delimiter = ','
    )]
    pub endpoint_ifaces: Vec<String>,

    /// Prefix of every namespace and interface this agent creates, so a sweep can tell
    /// whose leftovers are whose.
    #[arg(
        long,
        env = "SKEIN_RESOURCE_PREFIX",
        value_name = "PREFIX",
        default_value = "skein"
    )]
    pub resource_prefix: String,
}

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// This agent's bpffs directory: maps and links are pinned here so the dataplane
    /// outlives the agent. Mounted if absent.
    #[arg(
        long,
        env = "SKEIN_BPF_DIR",
        value_name = "DIR",
        default_value = "/sys/fs/bpf/skein"
    )]
    pub bpf_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// Detach and unpin everything this agent owns (under --bpf-dir) and nothing else.
    /// Stop the agent first: a running agent re-creates its attachments on restart only.
    Cleanup(PinArgs),
}

/// Entry point of the `skein` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Agent(args) => daemon::run_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("skein").chain(args.iter().copied()))
    }

    #[test]
    fn agent_flags_and_defaults() {
        let Command::Agent(args) = parse(&["agent", "--underlay-iface", "eth0"])
            .unwrap()
            .command;
        assert_eq!(args.underlay_iface.as_deref(), Some("eth0"));
        assert_eq!(args.xdp_mode, XdpMode::Auto);
        assert_eq!(args.metrics_addr, "127.0.0.1:9946".parse().unwrap());
        assert_eq!(args.pins.bpf_dir, PathBuf::from("/sys/fs/bpf/skein"));
        assert!(args.action.is_none());

        let Command::Agent(args) = parse(&[
            "agent",
            "--underlay-iface",
            "eth0",
            "--xdp-mode",
            "generic",
            "--endpoint-iface",
            "a,b",
        ])
        .unwrap()
        .command;
        assert_eq!(args.xdp_mode, XdpMode::Generic);
        assert_eq!(args.endpoint_ifaces, ["a", "b"]);
    }

    #[test]
    fn bad_arguments_are_errors_naming_the_value() {
        let error = parse(&[
            "agent",
            "--underlay-iface",
            "eth0",
            "--metrics-addr",
            "nope",
        ])
        .unwrap_err();
        assert!(error.to_string().contains("nope"), "{error}");
        let error =
            parse(&["agent", "--underlay-iface", "eth0", "--xdp-mode", "fast"]).unwrap_err();
        assert!(error.to_string().contains("fast"), "{error}");
        assert!(
            parse(&["agent"]).is_err(),
            "--underlay-iface is required to run"
        );
    }

    #[test]
    fn cleanup_needs_no_underlay() {
        let Command::Agent(args) = parse(&["agent", "cleanup", "--bpf-dir", "/x"])
            .unwrap()
            .command;
        let Some(AgentAction::Cleanup(pins)) = args.action else {
            panic!("cleanup parsed as {:?}", args.action);
        };
        assert_eq!(pins.bpf_dir, PathBuf::from("/x"));
    }
}
