//! The `--config FILE`: TOML whose keys are the `skein agent` flag names (`_` may stand
//! for `-`), read into an [`AgentSettings`] with the same value parsers as the flags.
//!
//! ```toml
//! underlay-iface = "eth0"
//! join = ["10.0.0.1", "10.0.0.2:7946"]
//! join-timeout = "30s"
//!
//! [mesh]
//! established-timeout = "8000s"
//! ```
//!
//! The `[mesh]` table holds the `--mesh-*` flags without their prefix (`mesh-syn-timeout`
//! at the top level works too).

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{
    check_port, parse_advertise_addr, parse_dns_ttl, parse_dns_upstream, parse_duration,
    parse_iface, parse_nonzero_duration, parse_socket_addr, parse_token, parse_word, AgentSettings,
    ConfigError, JoinEntry,
};
use crate::dataplane::XdpMode;

/// Reads and parses the config file at `path`.
pub(crate) fn load_file(path: &Path) -> Result<AgentSettings, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text, path)
}

/// The keys a config file may set: the flag names (`_` may stand for `-`).
const FILE_KEYS: &[&str] = &[
    "underlay-iface",
    "xdp-mode",
    "metrics-addr",
    "bpf-dir",
    "endpoint-iface",
    "resource-prefix",
    "advertise-addr",
    "gossip-port",
    "socket",
    "state-dir",
    "init",
    "join",
    "token",
    "token-file",
    "join-timeout",
    "hostname",
    "drain-window",
    "mesh-established-timeout",
    "mesh-syn-timeout",
    "mesh-closing-timeout",
    "mesh-udp-timeout",
    "dns-addr",
    "dns-upstream",
    "dns-ttl",
];

/// Parses a config file's text; `path` only names the file in errors.
pub(crate) fn parse_file(text: &str, path: &Path) -> Result<AgentSettings, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        line: e
            .span()
            .map_or(1, |span| text[..span.start].matches('\n').count() + 1),
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    })?;
    let mut settings = AgentSettings::default();
    // `[mesh] x = ...` is `mesh-x = ...`; named `mesh.x` in errors.
    let mut entries: Vec<(String, &toml::Value)> = Vec::new();
    for (raw_key, value) in &table {
        match value {
            toml::Value::Table(inner) if raw_key == "mesh" => {
                entries.extend(inner.iter().map(|(k, v)| (format!("mesh.{k}"), v)));
            }
            _ => entries.push((raw_key.clone(), value)),
        }
    }
    for (raw_key, value) in &entries {
        let key = raw_key.replacen("mesh.", "mesh-", 1).replace('_', "-");
        let bad = |reason: String| ConfigError::BadValue {
            path: path.to_owned(),
            key: raw_key.clone(),
            value: value.to_string(),
            reason,
        };
        let set = match key.as_str() {
            "underlay-iface" => set_once(
                &mut settings.underlay_iface,
                string(value).and_then(parse_iface),
            ),
            "xdp-mode" => set_once(
                &mut settings.xdp_mode,
                string(value).and_then(|s| s.parse::<XdpMode>().map_err(|e| e.to_string())),
            ),
            "metrics-addr" => set_once(
                &mut settings.metrics_addr,
                string(value).and_then(parse_socket_addr),
            ),
            "bpf-dir" => set_once(&mut settings.bpf_dir, path_value(value)),
            "endpoint-iface" => set_once(
                &mut settings.endpoint_ifaces,
                list(value).and_then(|items| items.into_iter().map(parse_iface).collect()),
            ),
            "resource-prefix" => set_once(
                &mut settings.resource_prefix,
                string(value).and_then(parse_word),
            ),
            "advertise-addr" => set_once(
                &mut settings.advertise_addr,
                string(value).and_then(parse_advertise_addr),
            ),
            "gossip-port" => set_once(
                &mut settings.gossip_port,
                match value {
                    toml::Value::Integer(n) => u16::try_from(*n)
                        .map_err(|_| "not a port number; use 1-65535".to_owned())
                        .and_then(check_port),
                    _ => Err("expected a port number without quotes, like 7946".into()),
                },
            ),
            "socket" => set_once(&mut settings.socket, path_value(value)),
            "state-dir" => set_once(&mut settings.state_dir, path_value(value)),
            "init" => set_once(
                &mut settings.init,
                value
                    .as_bool()
                    .ok_or_else(|| "expected true or false, without quotes".to_owned()),
            ),
            "join" => set_once(
                &mut settings.join,
                list(value).and_then(|items| items.into_iter().map(JoinEntry::parse).collect()),
            ),
            "token" => set_once(&mut settings.token, string(value).and_then(parse_token)),
            "token-file" => set_once(&mut settings.token_file, path_value(value)),
            "join-timeout" => set_once(
                &mut settings.join_timeout,
                duration_string(value).and_then(parse_nonzero_duration),
            ),
            "hostname" => set_once(&mut settings.hostname, string(value).and_then(parse_word)),
            "drain-window" => set_once(
                &mut settings.drain_window,
                duration_string(value).and_then(parse_duration),
            ),
            "mesh-established-timeout" => set_once(
                &mut settings.mesh_established_timeout,
                duration_string(value).and_then(parse_nonzero_duration),
            ),
            "mesh-syn-timeout" => set_once(
                &mut settings.mesh_syn_timeout,
                duration_string(value).and_then(parse_nonzero_duration),
            ),
            "mesh-closing-timeout" => set_once(
                &mut settings.mesh_closing_timeout,
                duration_string(value).and_then(parse_nonzero_duration),
            ),
            "mesh-udp-timeout" => set_once(
                &mut settings.mesh_udp_timeout,
                duration_string(value).and_then(parse_nonzero_duration),
            ),
            "dns-addr" => set_once(
                &mut settings.dns_addr,
                string(value).and_then(parse_socket_addr),
            ),
            "dns-upstream" => set_once(
                &mut settings.dns_upstreams,
                list(value).and_then(|items| items.into_iter().map(parse_dns_upstream).collect()),
            ),
            "dns-ttl" => set_once(
                &mut settings.dns_ttl,
                duration_string(value).and_then(parse_dns_ttl),
            ),
            _ => {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: raw_key.clone(),
                    known: FILE_KEYS.join(", "),
                })
            }
        };
        match set {
            Ok(true) => {}
            Ok(false) => {
                return Err(ConfigError::Duplicate {
                    path: path.to_owned(),
                    key,
                })
            }
            Err(reason) => return Err(bad(reason)),
        }
    }
    Ok(settings)
}

/// Stores a parsed value; `Ok(false)` if the key was already set (through its other
/// spelling).
fn set_once<T>(slot: &mut Option<T>, parsed: Result<T, String>) -> Result<bool, String> {
    let value = parsed?;
    if slot.is_some() {
        return Ok(false);
    }
    *slot = Some(value);
    Ok(true)
}

fn string(value: &toml::Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| "expected a string in quotes".to_owned())
}

/// A duration is a string with a unit; a bare TOML number gets the same suggestion as
/// a bare number in a string.
fn duration_string(value: &toml::Value) -> Result<&str, String> {
    match value {
        toml::Value::Integer(n) => Err(format!(
            "a number without a unit; write \"{n}s\" (in quotes) for seconds"
        )),
        _ => string(value),
    }
}

fn path_value(value: &toml::Value) -> Result<PathBuf, String> {
    let path = string(value)?;
    if path.is_empty() {
        return Err("an empty path".into());
    }
    Ok(PathBuf::from(path))
}

/// A list in a file: an array of strings, or one string with comma-separated items
/// (the same as on the command line).
fn list(value: &toml::Value) -> Result<Vec<&str>, String> {
    match value {
        toml::Value::String(s) => Ok(s.split(',').collect()),
        toml::Value::Array(items) => items.iter().map(string).collect(),
        _ => Err("expected a list of strings, like [\"a\", \"b\"]".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<AgentSettings, ConfigError> {
        parse_file(text, Path::new("/etc/skein/agent.toml"))
    }

    #[test]
    fn unknown_and_duplicate_keys_are_named() {
        let error = file("underlay-iface = \"eth0\"\nunderlay-interface = \"eth1\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`underlay-interface`"), "{error}");
        assert!(error.contains("/etc/skein/agent.toml"), "{error}");
        assert!(error.contains("underlay-iface,"), "lists the keys: {error}");

        let error = file("[agent]\nunderlay-iface = \"eth0\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`agent`"), "{error}");

        let error = file("state-dir = \"/a\"\nstate_dir = \"/b\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`state-dir` is set twice"), "{error}");
    }

    #[test]
    fn bad_file_values_name_key_and_value() {
        for (text, needles) in [
            ("gossip-port = \"x\"", &["gossip-port", "\"x\""][..]),
            ("gossip-port = 70000", &["gossip-port", "70000", "1-65535"]),
            (
                "xdp-mode = \"fast\"",
                &["xdp-mode", "fast", "auto, native, generic"],
            ),
            ("init = \"yes\"", &["init", "\"yes\"", "true or false"]),
            (
                "join-timeout = 10",
                &["join-timeout", "10", "\"10s\"", "quotes"],
            ),
            ("join-timeout = \"10\"", &["join-timeout", "write 10s"]),
            (
                "join-timeout = \"0s\"",
                &["join-timeout", "longer than zero"],
            ),
            ("join-timeout = \"-1s\"", &["join-timeout", "negative"]),
            ("join-timeout = true", &["join-timeout", "string"]),
            (
                "[mesh]\nsyn-timeout = \"0s\"",
                &["mesh.syn-timeout", "longer than zero"],
            ),
            ("[mesh]\nudp-timeout = 60", &["mesh.udp-timeout", "\"60s\""]),
            ("[mesh]\nfin-timeout = \"1s\"", &["`mesh.fin-timeout`"]),
            (
                "advertise-addr = \"::1\"",
                &["advertise-addr", "::1", "IPv4"],
            ),
            ("join = [\"10.0.0.1\", 7]", &["join", "string"]),
            ("join = \"300.1.1.1\"", &["join", "300.1.1.1", "IPv4"]),
            (
                "metrics-addr = \"localhost\"",
                &["metrics-addr", "localhost"],
            ),
            ("token = \"  \"", &["token", "empty"]),
            (
                "underlay-iface = \"a-very-long-interface\"",
                &["underlay-iface", "a-very-long-interface", "15 bytes"],
            ),
            (
                "endpoint-iface = [\"ok\", \"..\"]",
                &["endpoint-iface", "\"..\""],
            ),
        ] {
            let error = file(text).unwrap_err().to_string();
            for needle in needles {
                assert!(error.contains(needle), "{text}: {error} lacks {needle}");
            }
        }
        let error = file("underlay-iface = ").unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn file_lists_take_arrays_or_comma_strings() {
        let settings =
            file("join = \"10.0.0.1,10.0.0.2:8000\"\nendpoint_iface = [\"v1\"]").unwrap();
        assert_eq!(
            settings.join,
            Some(vec![
                JoinEntry {
                    host: "10.0.0.1".into(),
                    port: None
                },
                JoinEntry {
                    host: "10.0.0.2".into(),
                    port: Some(8000)
                },
            ])
        );
        assert_eq!(settings.endpoint_ifaces, Some(vec!["v1".to_owned()]));
    }

    #[test]
    fn config_file_is_read_from_disk() {
        let path =
            std::env::temp_dir().join(format!("skein-config-test-{}.toml", std::process::id()));
        fs::write(&path, "underlay-iface = \"eth7\"\n").unwrap();
        let loaded = load_file(&path);
        fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap().underlay_iface.as_deref(), Some("eth7"));

        let error = load_file(Path::new("/nonexistent/skein.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/skein.toml"), "{error}");
    }
}
