//! `skein agent`: run the daemon, or manage its dataplane (`cleanup`, `leave`).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{client, output::Format};
use crate::{
    api::Request,
    config::{self, AgentConfig, AgentSettings},
    daemon,
};

/// `skein agent`: every flag can also be given as an environment variable `SKEIN_*` or
/// in the `--config` file; a flag beats the environment, which beats the file.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AgentCommand {
    #[command(subcommand)]
    pub(crate) action: Option<AgentAction>,

    /// A TOML file of settings, keyed by the flag names: `underlay-iface = "eth0"`.
    #[arg(long, env = "SKEIN_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) settings: AgentSettings,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct PinArgs {
    /// The agent's bpffs directory, as given to `skein agent --bpf-dir`.
    #[arg(
        long,
        env = "SKEIN_BPF_DIR",
        value_name = "DIR",
        default_value_os_t = config::default_paths().bpf_dir
    )]
    pub(crate) bpf_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AgentAction {
    /// Detach and unpin everything this agent owns (under --bpf-dir) and nothing else.
    /// Stop the agent first: a running agent re-creates its attachments on restart only.
    Cleanup(PinArgs),
    /// Tell the cluster this node is leaving, take its dataplane down and stop the agent.
    Leave,
}

impl AgentCommand {
    /// The daemon's settings, resolved: these flags and env over the `--config` file
    /// over the defaults. `socket` is the global `--socket`.
    fn resolve(&self, socket: Option<PathBuf>) -> Result<AgentConfig> {
        let given = AgentSettings {
            socket,
            ..self.settings.clone()
        };
        Ok(config::resolve(&given, self.config.as_deref())?)
    }

    /// Runs the daemon (no action), `cleanup`, or asks the agent on the socket to `leave`.
    /// `socket` is the global `--socket`, unresolved: the daemon resolves it with its
    /// other settings.
    pub(super) fn run(self, socket: Option<PathBuf>) -> Result<ExitCode> {
        match &self.action {
            Some(AgentAction::Cleanup(pins)) => {
                daemon::cleanup(&pins.bpf_dir)?;
                Ok(ExitCode::SUCCESS)
            }
            Some(AgentAction::Leave) => client::request(
                &client::default_socket(socket),
                &Request::Leave,
                Format::Table,
            ),
            None => {
                daemon::run(self.resolve(socket)?)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
