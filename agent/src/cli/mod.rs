//! The `skein` command line. Doc comments are the help text.
//!
//! `skein agent` runs the daemon; every other command is a client of the local agent,
//! reached over its Unix socket (`--socket`, whose default is scoped to the network
//! namespace, so `ip netns exec H skein node ls` reaches H's agent).
//!
//! Layout (one file per command group; each parses its values once, into the types the
//! local API carries, and depends only on the shared leaves `args`, `client`, `output`):
//! - `agent`: `skein agent` (the daemon), `agent cleanup`, `agent leave`.
//! - `node`: `node ls|rm`, `join-token`.
//! - `network`: `network create|ls|rm`, `network vtep add|rm|ls`.
//! - `endpoint`: `endpoint create|attach|ls|rm`.
//! - `service`: `service ...`, with progress following and log paging.
//! - `stack`: `stack deploy|ls|services|ps|rm` (compose files, `crate::compose`).
//! - `debug`: `debug maps`.
//! - `version`: `skein version` (this binary's version, commit and eBPF object hash).
//! - `args`: shared value parsers and `--format`; `client`: one request and printing its
//!   answer; `output`: tables and JSON.

mod agent;
mod args;
mod client;
mod debug;
mod endpoint;
mod network;
mod node;
mod output;
mod rollout_output;
mod service;
mod service_update;
mod stack;
mod version;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use self::{
    agent::AgentCommand, debug::DebugCommand, endpoint::EndpointCommand, network::NetworkCommand,
    node::NodeCommand, service::ServiceCommand, stack::StackCommand, version::VersionArgs,
};

/// Skein: Swarm-style service networking — VXLAN overlay, routing mesh, service
/// discovery — with the packet path in eBPF/XDP.
#[derive(Parser, Debug)]
#[command(name = "skein", version)]
pub(crate) struct Cli {
    /// The agent's API socket: client commands connect to it, `skein agent` listens on
    /// it. [default: /run/skein/skein.sock, or /run/skein/<NETNS>/skein.sock inside the
    /// named network namespace NETNS]
    #[arg(long, global = true, env = "SKEIN_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size of the agent's variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the agent daemon on this host (privileged), or manage its dataplane.
    Agent(AgentCommand),
    /// List or remove the cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print the token other hosts need to join this cluster (save it in a 0600 file and
    /// pass `skein agent --join ... --token-file FILE`), or replace it.
    JoinToken {
        /// Give the cluster a new key and print its token: afterwards the old token can
        /// neither join nor read or forge anything. Every live member must take the new
        /// key (nothing changes otherwise); a member that was down rejoins with
        /// `--join ADDR --token-file NEW`.
        #[arg(long)]
        rotate: bool,
    },
    /// Create, list or remove overlay networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Attach network namespaces to overlay networks.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Create and manage services: replicated or global tasks across the cluster.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Deploy a compose file as a stack of services; list, inspect and remove stacks.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Look inside the agent.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Serve HTTP (and UDP) answers saying which task, service and node answered; a
    /// diagnostic to run as a service.
    Whoami(crate::whoami::WhoamiArgs),
    /// Print this binary's version, the git commit it was built from and the SHA-256 of
    /// the eBPF object it embeds (a running agent exports the same as `skein_build_info`
    /// in its /metrics).
    Version(VersionArgs),
    /// PID 1 of a task's PID namespace, started by the agent (`tasks::confine::init`).
    #[command(hide = true)]
    TaskInit(crate::tasks::confine::init::TaskInitArgs),
}

/// Entry point of the `skein` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // hickory-server logs every DNS request at info; its warnings are enough unless a
    // `RUST_LOG` directive names it.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("hickory")) {
        filter = filter.add_directive("hickory_server=warn".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
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
fn run(cli: Cli) -> Result<ExitCode> {
    let socket = || client::default_socket(cli.socket.clone());
    match cli.command {
        // The daemon resolves `--socket` with its other settings.
        Command::Agent(agent) => agent.run(cli.socket),
        Command::Node(command) => command.run(&socket()),
        Command::JoinToken { rotate } => node::join_token(&socket(), rotate),
        Command::Network(command) => command.run(&socket()),
        Command::Endpoint(command) => command.run(&socket()),
        Command::Service(command) => command.run(&socket()),
        Command::Stack(command) => command.run(&socket()),
        Command::Debug(command) => command.run(&socket()),
        Command::Whoami(args) => {
            crate::whoami::main(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version(args) => args.run(),
        Command::TaskInit(args) => Ok(crate::tasks::confine::init::run(args)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::time::Duration;

    use super::{agent::AgentAction, args::FormatArg, output::Format, *};
    use crate::config::{self, merge, AgentConfig, AgentSettings, DefaultPaths, Defaults};
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
        assert_eq!(
            config.token,
            Some(crate::config::TokenSource::Text("t0k".into()))
        );
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
            // One duration grammar: a unit is required everywhere.
            (
                &["service", "create", "web", "--timeout", "10", "--", "true"],
                "'10'",
            ),
            (
                &[
                    "service",
                    "create",
                    "web",
                    "--health-interval",
                    "5x",
                    "--",
                    "true",
                ],
                "'5x'",
            ),
            (
                &["service", "create", "web", "-p", "80", "--", "true"],
                "80",
            ),
            (
                &["service", "create", "web", "-e", "=x", "--", "true"],
                "=x",
            ),
            (
                &[
                    "service",
                    "create",
                    "w",
                    "--limit-memory",
                    "64X",
                    "--",
                    "true",
                ],
                "64X",
            ),
            (
                &[
                    "service",
                    "create",
                    "w",
                    "--limit-cpu",
                    "1.2345",
                    "--",
                    "true",
                ],
                "1.2345",
            ),
            (
                &["service", "create", "w", "--limit-pids", "0", "--", "true"],
                "between 1 and",
            ),
            (
                &[
                    "service",
                    "create",
                    "w",
                    "--reserve-memory",
                    "64M",
                    "--",
                    "true",
                ],
                "does not reserve memory",
            ),
            (
                &[
                    "network",
                    "vtep",
                    "add",
                    "n",
                    "--underlay",
                    "10.0.0.1",
                    "--mac",
                    "zz",
                    "--cidr",
                    "10.1.0.0/24",
                ],
                "zz",
            ),
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
            Command::JoinToken { rotate: false }
        ));
        assert!(matches!(
            parse(&["join-token", "--rotate"]).unwrap().command,
            Command::JoinToken { rotate: true }
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
    fn service_create_parses_into_the_manager_types() {
        use manager::state::{Protocol, PublishedPort};
        let Command::Service(ServiceCommand::Create(create)) = parse(&[
            "service",
            "create",
            "web",
            "-p",
            "8080:80/udp",
            "-e",
            "A=b=c",
            "--health-interval",
            "300ms",
            "--restart-delay",
            "2s",
            "--",
            "sleep",
            "1",
        ])
        .unwrap()
        .command
        else {
            panic!("not service create");
        };
        assert_eq!(
            create.publish,
            [PublishedPort {
                published: 8080,
                target: 80,
                protocol: Protocol::Udp
            }]
        );
        assert_eq!(create.env, [("A".to_owned(), "b=c".to_owned())]);
        assert_eq!(create.health_interval, Duration::from_millis(300));
        assert_eq!(create.restart_delay, Duration::from_secs(2));
        assert_eq!(create.wait.timeout, Duration::from_secs(60));
        assert_eq!(create.command, ["sleep", "1"]);
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
