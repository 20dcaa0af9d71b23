//! The `skein` command line. Doc comments are the help text.
//!
//! `skein agent` runs the daemon; every other command is a client of the local agent,
//! reached over its Unix socket (`--socket`, whose default is scoped to the network
//! namespace, so `ip netns exec H skein node ls` reaches H's agent).

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use tracing_subscriber::EnvFilter;

use crate::{
    api::{self, Request, Response},
    config::{self, AgentConfig, AgentSettings},
    daemon,
    output::{self, Format},
};

/// How long a client command waits for its agent: `network create` may wait for a
/// conflicting create elsewhere in the cluster to be resolved.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Skein: Swarm-style service networking — VXLAN overlay, routing mesh, service
/// discovery — with the packet path in eBPF/XDP.
#[derive(Parser, Debug)]
#[command(name = "skein", version)]
pub struct Cli {
    /// The agent's API socket: client commands connect to it, `skein agent` listens on
    /// it. [default: /run/skein/skein.sock, or /run/skein/<NETNS>/skein.sock inside the
    /// named network namespace NETNS]
    #[arg(long, global = true, env = "SKEIN_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the agent's variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent daemon on this host (privileged), or manage its dataplane.
    Agent(AgentCommand),
    /// List or remove the cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print the token other hosts pass to `skein agent --join ... --token` to join
    /// this cluster.
    JoinToken,
    /// Create, list or remove overlay networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Attach network namespaces to overlay networks.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Create and manage services: replicated or global tasks across the cluster.
    #[command(subcommand)]
    Service(crate::service_cli::ServiceCommand),
    /// Look inside the agent.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Serve HTTP (and UDP) answers saying which task, service and node answered; a
    /// diagnostic to run as a service.
    Whoami(crate::whoami::WhoamiArgs),
}

#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
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

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Print the dataplane's maps.
    Maps,
}

#[derive(Subcommand, Debug)]
pub enum VtepCommand {
    /// Put an external VXLAN endpoint (a host outside Skein, e.g. the kernel's VXLAN
    /// device) on an overlay network: traffic to CIDR goes to it.
    Add {
        #[arg(value_parser = non_empty("a network name"))]
        network: String,
        /// Its underlay address.
        #[arg(long, value_name = "IP")]
        underlay: std::net::Ipv4Addr,
        /// The MAC its VXLAN device answers to.
        #[arg(long, value_name = "MAC", value_parser = parse_mac)]
        mac: String,
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

/// A MAC address `aa:bb:cc:dd:ee:ff`.
fn parse_mac(value: &str) -> Result<String, String> {
    crate::netif::parse_mac(value)
        .map(crate::netif::format_mac)
        .ok_or_else(|| "not a MAC address; write it like 02:42:ac:11:00:02".to_owned())
}

/// `skein agent`: every flag can also be given as an environment variable `SKEIN_*` or
/// in the `--config` file; a flag beats the environment, which beats the file.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentCommand {
    #[command(subcommand)]
    pub action: Option<AgentAction>,

    /// A TOML file of settings, keyed by the flag names: `underlay-iface = "eth0"`.
    #[arg(long, env = "SKEIN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: AgentSettings,
}

#[derive(Args, Debug, Clone)]
pub struct PinArgs {
    /// The agent's bpffs directory, as given to `skein agent --bpf-dir`.
    #[arg(
        long,
        env = "SKEIN_BPF_DIR",
        value_name = "DIR",
        default_value_os_t = config::default_paths().bpf_dir
    )]
    pub bpf_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// Detach and unpin everything this agent owns (under --bpf-dir) and nothing else.
    /// Stop the agent first: a running agent re-creates its attachments on restart only.
    Cleanup(PinArgs),
    /// Tell the cluster this node is leaving, take its dataplane down and stop the agent.
    Leave,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the cluster's nodes; `*` marks the one this command talks to.
    Ls(FormatArg),
    /// Forget a node that is down.
    Rm {
        /// The node's ID, or a prefix of it that only it has.
        #[arg(value_parser = non_empty("a node ID"))]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
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
pub struct NetworkCreate {
    /// The network's name.
    #[arg(value_parser = non_empty("a network name"))]
    pub name: String,
    /// The network's IPv4 subnet, like 10.10.0.0/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_subnet)]
    pub subnet: Option<Ipv4Net>,
    /// The network's VXLAN network identifier.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    pub vni: Option<u32>,
}

#[derive(Args, Debug)]
pub struct FormatArg {
    /// How to print the list.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// A value parser refusing empty (or all-blank) strings.
pub(crate) fn non_empty(what: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |value| {
        if value.trim().is_empty() {
            Err(format!("{what} cannot be empty"))
        } else {
            Ok(value.to_owned())
        }
    }
}

/// An IPv4 network in CIDR notation with no host bits set.
fn parse_subnet(value: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = value
        .parse()
        .map_err(|_| "not an IPv4 subnet; write it like 10.10.0.0/24".to_owned())?;
    if net.addr() != net.network() {
        return Err(format!("has host bits set; did you mean {}?", net.trunc()));
    }
    Ok(net)
}

impl AgentCommand {
    /// The daemon's settings, resolved: these flags and env over the `--config` file
    /// over the defaults. `socket` is the global `--socket`.
    pub fn resolve(&self, socket: Option<PathBuf>) -> Result<AgentConfig> {
        let given = AgentSettings {
            socket,
            ..self.settings.clone()
        };
        Ok(config::resolve(&given, self.config.as_deref())?)
    }
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
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let socket = cli.socket;
    let (request, format) = match cli.command {
        Command::Agent(agent) => match agent.action {
            Some(AgentAction::Cleanup(pins)) => {
                daemon::cleanup(&pins.bpf_dir)?;
                return Ok(ExitCode::SUCCESS);
            }
            Some(AgentAction::Leave) => (Request::Leave, Format::Table),
            None => {
                let config = agent.resolve(socket)?;
                daemon::run(config)?;
                return Ok(ExitCode::SUCCESS);
            }
        },
        Command::Node(NodeCommand::Ls(f)) => (Request::NodeLs, f.format),
        Command::Node(NodeCommand::Rm { id }) => (Request::NodeRm { id }, Format::Table),
        Command::JoinToken => (Request::JoinToken, Format::Table),
        Command::Network(NetworkCommand::Create(create)) => (
            Request::NetworkCreate {
                name: create.name,
                subnet: create.subnet.map(|net| net.to_string()),
                vni: create.vni,
            },
            Format::Table,
        ),
        Command::Network(NetworkCommand::Ls(f)) => (Request::NetworkLs, f.format),
        Command::Network(NetworkCommand::Rm { name }) => {
            (Request::NetworkRm { name }, Format::Table)
        }
        Command::Network(NetworkCommand::Vtep(VtepCommand::Add {
            network,
            underlay,
            mac,
            cidr,
        })) => (
            Request::VtepAdd {
                network,
                underlay: underlay.to_string(),
                mac,
                cidr: cidr.to_string(),
            },
            Format::Table,
        ),
        Command::Network(NetworkCommand::Vtep(VtepCommand::Rm { network, cidr })) => (
            Request::VtepRm {
                network,
                cidr: cidr.to_string(),
            },
            Format::Table,
        ),
        Command::Network(NetworkCommand::Vtep(VtepCommand::Ls { network, format })) => {
            (Request::VtepLs { network }, format.format)
        }
        Command::Endpoint(EndpointCommand::Create { network, name }) => {
            (Request::EndpointCreate { network, name }, Format::Table)
        }
        Command::Endpoint(EndpointCommand::Attach {
            network,
            netns,
            name,
        }) => (
            Request::EndpointAttach {
                network,
                netns,
                name,
            },
            Format::Table,
        ),
        Command::Endpoint(EndpointCommand::Ls(f)) => (Request::EndpointLs, f.format),
        Command::Endpoint(EndpointCommand::Rm { id }) => {
            (Request::EndpointRm { id }, Format::Table)
        }
        Command::Debug(DebugCommand::Maps) => (Request::DebugMaps, Format::Table),
        Command::Service(command) => {
            let socket = socket.unwrap_or_else(|| config::default_paths().socket);
            return crate::service_cli::run(command, &socket);
        }
        Command::Whoami(args) => {
            crate::whoami::main(&args)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let socket = socket.unwrap_or_else(|| config::default_paths().socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    print_response(
        runtime.block_on(api::call(&socket, &request, CLIENT_TIMEOUT))?,
        format,
    )
}

/// Prints the agent's answer (lists in `format`) to stdout, or its error to stderr with a
/// failing exit status.
pub(crate) fn print_response(response: Response, format: Format) -> Result<ExitCode> {
    match response {
        Response::Ok { body } => {
            let text = output::body(&body, format, output::now_ms());
            // `skein node ls | head -1` closes the pipe early; that is not an error.
            match std::io::stdout().write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(e).context("writing to stdout")
                }
                _ => {}
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{merge, DefaultPaths, Defaults};
    use crate::dataplane::XdpMode;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("skein").chain(args.iter().copied()))
    }

    /// `skein agent ...` resolved against the root namespace's defaults and no file.
    fn resolve(args: &[&str]) -> Result<AgentConfig, config::ConfigError> {
        let cli = parse(args).unwrap();
        let Command::Agent(agent) = cli.command else {
            panic!("not an agent command: {args:?}");
        };
        let given = AgentSettings {
            socket: cli.socket,
            ..agent.settings
        };
        let defaults = Defaults {
            paths: DefaultPaths::for_netns(None),
            hostname: Some("host1".into()),
        };
        merge(&given, &AgentSettings::default(), &defaults)
    }

    #[test]
    fn agent_flags_and_defaults() {
        let config = resolve(&["agent", "--underlay-iface", "eth0"]).unwrap();
        assert_eq!(config.underlay_iface, "eth0");
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.metrics_addr, "127.0.0.1:9946".parse().unwrap());
        assert_eq!(config.bpf_dir, PathBuf::from("/sys/fs/bpf/skein"));
        assert_eq!(config.socket, PathBuf::from("/run/skein/skein.sock"));
        assert_eq!(config.gossip_port, 7946);
        let Command::Agent(agent) = parse(&["agent", "--underlay-iface", "eth0"])
            .unwrap()
            .command
        else {
            panic!("not an agent command");
        };
        assert!(agent.action.is_none());

        let config = resolve(&[
            "agent",
            "--underlay-iface",
            "eth0",
            "--xdp-mode",
            "generic",
            "--endpoint-iface",
            "a,b",
            "--socket",
            "/tmp/a.sock",
            "--gossip-port",
            "8000",
            "--join",
            "10.0.0.1,10.0.0.2:9000",
            "--join",
            "node-c",
            "--token",
            "t0k",
            "--join-timeout",
            "500ms",
            "--advertise-addr",
            "10.0.0.9",
            "--hostname",
            "alpha",
            "--state-dir",
            "/tmp/state",
        ])
        .unwrap();
        assert_eq!(config.xdp_mode, XdpMode::Generic);
        assert_eq!(config.endpoint_ifaces, ["a", "b"]);
        assert_eq!(config.socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(
            config.join,
            ["10.0.0.1:8000", "10.0.0.2:9000", "node-c:8000"]
        );
        assert_eq!(config.token.as_deref(), Some("t0k"));
        assert_eq!(config.join_timeout, Duration::from_millis(500));
        assert_eq!(config.advertise_addr, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(config.hostname, "alpha");
        assert_eq!(config.state_dir, PathBuf::from("/tmp/state"));
        assert!(!config.init);

        assert!(
            resolve(&["agent", "--underlay-iface", "e", "--init"])
                .unwrap()
                .init
        );
        assert!(
            !resolve(&["agent", "--underlay-iface", "e", "--init=false"])
                .unwrap()
                .init
        );
    }

    #[test]
    fn bad_arguments_are_errors_naming_the_value() {
        for (args, needle) in [
            (&["agent", "--metrics-addr", "nope"][..], "nope"),
            (&["agent", "--xdp-mode", "fast"], "fast"),
            (&["agent", "--advertise-addr", "fe80::1"], "fe80::1"),
            (&["agent", "--gossip-port", "70000"], "70000"),
            (&["agent", "--join-timeout", "10"], "'10'"),
            (&["agent", "--join", "10.0.0.1,::1"], "::1"),
            (&["agent", "--token", ""], "empty"),
            (&["agent", "--underlay-iface", "a/b"], "a/b"),
            (
                &["network", "create", "web", "--subnet", "10.0.0.0/33"],
                "10.0.0.0/33",
            ),
            (
                &["network", "create", "web", "--subnet", "10.0.0.1/24"],
                "10.0.0.0/24",
            ),
            (&["network", "create", "web", "--vni", "0"], "'0'"),
            (
                &["network", "create", "web", "--vni", "16777216"],
                "16777216",
            ),
            (&["network", "create", ""], "empty"),
            (&["network", "rm", " "], "empty"),
            (&["node", "rm", ""], "empty"),
            (&["node", "ls", "--format", "yaml"], "yaml"),
        ] {
            let error = parse(args).unwrap_err();
            assert!(error.to_string().contains(needle), "{args:?}: {error}");
        }
        assert!(
            parse(&["agent", "--init", "--join", "10.0.0.1", "--token", "t"]).is_err(),
            "--init conflicts with --join"
        );
        let error = resolve(&["agent"]).unwrap_err().to_string();
        assert!(
            error.contains("--underlay-iface"),
            "--underlay-iface is required to run: {error}"
        );
        let error = resolve(&["agent", "--underlay-iface", "e", "--join", "10.0.0.1"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--token"), "--join needs --token: {error}");
    }

    #[test]
    fn cleanup_needs_no_underlay() {
        let Command::Agent(args) = parse(&["agent", "cleanup", "--bpf-dir", "/x"])
            .unwrap()
            .command
        else {
            panic!("not an agent command");
        };
        let Some(AgentAction::Cleanup(pins)) = args.action else {
            panic!("cleanup parsed as {:?}", args.action);
        };
        assert_eq!(pins.bpf_dir, PathBuf::from("/x"));

        let Command::Agent(args) = parse(&["agent", "cleanup"]).unwrap().command else {
            panic!("not an agent command");
        };
        let Some(AgentAction::Cleanup(pins)) = args.action else {
            panic!("cleanup parsed as {:?}", args.action);
        };
        assert_eq!(pins.bpf_dir, PathBuf::from("/sys/fs/bpf/skein"));
        assert!(
            parse(&["agent", "--underlay-iface", "eth0", "cleanup"]).is_err(),
            "daemon flags and subcommands do not mix"
        );
    }

    #[test]
    fn client_commands() {
        let cli = parse(&["--socket", "/s", "node", "ls", "--format", "json"]).unwrap();
        assert_eq!(cli.socket.as_deref(), Some(Path::new("/s")));
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Ls(FormatArg {
                format: Format::Json
            }))
        ));
        let cli = parse(&["node", "rm", "3f2a", "--socket", "/t"]).unwrap();
        assert_eq!(cli.socket.as_deref(), Some(Path::new("/t")));
        assert!(matches!(cli.command, Command::Node(NodeCommand::Rm { id }) if id == "3f2a"));
        assert!(matches!(
            parse(&["join-token"]).unwrap().command,
            Command::JoinToken
        ));
        assert!(matches!(
            parse(&["agent", "leave"]).unwrap().command,
            Command::Agent(AgentCommand {
                action: Some(AgentAction::Leave),
                ..
            })
        ));
        let Command::Network(NetworkCommand::Create(create)) = parse(&[
            "network",
            "create",
            "web",
            "--subnet",
            "10.10.0.0/24",
            "--vni",
            "4097",
        ])
        .unwrap()
        .command
        else {
            panic!("not network create");
        };
        assert_eq!(create.name, "web");
        assert_eq!(create.subnet, Some("10.10.0.0/24".parse().unwrap()));
        assert_eq!(create.vni, Some(4097));
        assert!(matches!(
            parse(&["network", "rm", "web"]).unwrap().command,
            Command::Network(NetworkCommand::Rm { name }) if name == "web"
        ));
    }

    #[test]
    fn client_without_agent_fails_with_one_sentence() {
        let socket =
            std::env::temp_dir().join(format!("skein-cli-test-{}.sock", std::process::id()));
        let cli = parse(&["--socket", socket.to_str().unwrap(), "node", "ls"]).unwrap();
        let error = format!("{:#}", run(cli).unwrap_err());
        assert!(error.starts_with("no agent is listening on"), "{error}");
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
