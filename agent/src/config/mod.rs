//! The agent's settings: every `skein agent` flag, resolved with the precedence
//! command line > environment (`SKEIN_*`) > `--config FILE` (TOML) > defaults; and the
//! value grammars every command shares (durations, interface names, addresses).
//!
//! Layout:
//! - `settings`: [`AgentSettings`], the settings as given, every one optional (clap fills
//!   one from the command line and the environment; its doc comments are the help text);
//!   [`AgentConfig`], the settings resolved; and [`merge`], the precedence and the checks,
//!   a pure function of (given, file, defaults), so tests need neither the process
//!   environment nor the host.
//! - `file`: `load_file` and `parse_file`, the TOML file, whose keys are the flag names.
//! - `values`: the value parsers clap and the file share ([`parse_iface`],
//!   [`parse_socket_addr`], [`JoinEntry`], the `--xdp-mode` parser, ...).
//! - `token`: [`TokenSource`], `--token` or `--token-file`, and their precedence.
//! - `mesh`: [`MeshTimeouts`], the routing mesh's conntrack timeouts, their defaults
//!   (with why) and their checks.
//! - `duration`: [`parse_duration`], the one duration grammar of every command.
//! - `paths`: [`DefaultPaths`](paths::DefaultPaths), [`default_paths`] and [`Defaults`]: defaults scoped to the
//!   named network namespace the process runs in.
//! - here: [`ConfigError`] and [`resolve`], all of it for a real `skein agent`: reads the
//!   file, takes this host's defaults, merges, and checks that `--join` names resolve.

mod duration;
mod file;
mod mesh;
mod paths;
mod settings;
mod token;
mod values;

use std::{
    io,
    net::ToSocketAddrs,
    path::{Path, PathBuf},
};

pub(crate) use duration::parse_duration;
pub(crate) use duration::parse_nonzero_duration;
use file::load_file;
pub(crate) use mesh::MeshTimeouts;
// Code gets a `DefaultPaths` from `default_paths()` without naming it; tests name it.
#[cfg(test)]
pub(crate) use paths::DefaultPaths;
pub(crate) use paths::{default_paths, Defaults};
pub(crate) use settings::{merge, AgentConfig, AgentSettings};
pub(crate) use token::TokenSource;
pub(crate) use values::{
    check_port, parse_advertise_addr, parse_dns_ttl, parse_dns_upstream, parse_iface, parse_port,
    parse_socket_addr, parse_token, parse_word, xdp_mode_parser, JoinEntry,
};

/// Errors in the settings: each one sentence naming the bad value and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("could not read the config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid TOML (line {line}): {message}", .path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: unknown setting `{key}`; the settings are the `skein agent` flag names: {known}", .path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("{}: `{key}` is set twice (once with `-`, once with `_`); keep one", .path.display())]
    Duplicate { path: PathBuf, key: String },
    #[error("{}: {key} = {value} is invalid: {reason}", .path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        value: String,
        reason: String,
    },
    #[error("no underlay interface: pass --underlay-iface IFACE (or SKEIN_UNDERLAY_IFACE, or underlay-iface in the --config file), the interface VXLAN and published ports arrive on")]
    MissingUnderlay,
    #[error("could not read this host's name; pass --hostname NAME")]
    NoHostname,
    #[error("--init and --join are both set (on the command line, in the environment or in the --config file); a node either creates a cluster or joins one, so drop one")]
    InitAndJoin,
    #[error("--join needs the cluster's token: pass --token-file PATH (or SKEIN_TOKEN_FILE, SKEIN_TOKEN, or token-file in the --config file); `skein join-token` on any member prints it")]
    JoinWithoutToken,
    #[error("the join token is given twice{level}: by --token (or SKEIN_TOKEN) and by --token-file (or SKEIN_TOKEN_FILE); keep one")]
    TokenTwice { level: String },
    #[error("the mesh timeouts do not fit together: {reason}")]
    Mesh { reason: String },
    #[error("--join entry `{entry}` does not resolve to an IPv4 address ({reason}); check the name or give the member's IP address")]
    Unresolvable { entry: String, reason: String },
}

/// Resolves the daemon's settings: `given` (command line and environment) over the
/// `config_file` over this host's defaults; checks that `--join` names resolve.
pub(crate) fn resolve(
    given: &AgentSettings,
    config_file: Option<&Path>,
) -> Result<AgentConfig, ConfigError> {
    let file = match config_file {
        Some(path) => load_file(path)?,
        None => AgentSettings::default(),
    };
    let config = merge(given, &file, &Defaults::of_this_process())?;
    for entry in &config.join {
        check_resolves(entry)?;
    }
    Ok(config)
}

/// That a `HOST:PORT` resolves to at least one IPv4 address.
fn check_resolves(entry: &str) -> Result<(), ConfigError> {
    let unresolvable = |reason: String| ConfigError::Unresolvable {
        entry: entry.to_owned(),
        reason,
    };
    let mut addrs = entry
        .to_socket_addrs()
        .map_err(|e| unresolvable(e.to_string()))?;
    if addrs.any(|a| a.is_ipv4()) {
        Ok(())
    } else {
        Err(unresolvable("it has only IPv6 addresses".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_names_must_resolve() {
        check_resolves("127.0.0.1:7946").unwrap();
        check_resolves("localhost:7946").unwrap();
    }
}
