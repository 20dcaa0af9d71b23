//! Value parsers shared by clap and the config file, so a value means the same wherever it
//! is given. Each error says what is wrong and how to write it; clap and the file prefix
//! it with the value and where it came from. Durations have a module of their own
//! (`duration`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
};

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use crate::{dataplane::XdpMode, netlink};

/// An interface name as the kernel accepts it (the one rule, in `netlink::names`).
pub(crate) fn parse_iface(name: &str) -> Result<String, String> {
    netlink::check_ifname(name)
        .map(|()| name.to_owned())
        .map_err(|reason| format!("not an interface name: {reason}; see `ip link`"))
}

/// `--xdp-mode`: one of [`XdpMode::ALL`] by name, with each mode's help for `--help` and
/// the list of names (and a "similar value" tip) in clap's error.
pub(crate) fn xdp_mode_parser() -> impl TypedValueParser<Value = XdpMode> {
    PossibleValuesParser::new(
        XdpMode::ALL.map(|mode| PossibleValue::new(mode.name()).help(xdp_mode_help(mode))),
    )
    .map(|name| {
        name.parse::<XdpMode>()
            .expect("PossibleValuesParser admits only XdpMode names")
    })
}

/// What each mode means to someone choosing one.
fn xdp_mode_help(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Auto => "Native where the driver supports it, generic otherwise",
        XdpMode::Native => "Native (driver) mode only: fail if the driver cannot",
        XdpMode::Generic => "Generic (skb) mode: works everywhere, slower",
    }
}

/// A non-empty word without spaces or control characters.
pub(crate) fn parse_word(word: &str) -> Result<String, String> {
    if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a non-empty word without spaces".into());
    }
    Ok(word.to_owned())
}

pub(crate) fn parse_socket_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| "not an address and port like 127.0.0.1:9946".into())
}

/// An upstream DNS resolver: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub(crate) fn parse_dns_upstream(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    addr.parse()
        .map_err(|_| "not a resolver address like 10.0.0.2 or 10.0.0.2:53".into())
}

/// A DNS answer's TTL: whole seconds, 0 to 1 hour (answers must follow the view, so a
/// long TTL defeats them; 0 is valid: no caching).
pub(crate) fn parse_dns_ttl(value: &str) -> Result<std::time::Duration, String> {
    let ttl = super::parse_duration(value)?;
    if ttl.subsec_nanos() != 0 {
        return Err("DNS TTLs are whole seconds, like 2s".into());
    }
    if ttl > std::time::Duration::from_secs(3600) {
        return Err("longer than 1h; answers would outlive the state they describe".into());
    }
    Ok(ttl)
}

/// An IPv4 address this node can be reached at.
pub(crate) fn parse_advertise_addr(addr: &str) -> Result<Ipv4Addr, String> {
    let ip =
        match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip,
            Ok(IpAddr::V6(_)) => return Err(
                "an IPv6 address; Skein's underlay is IPv4, give this host's underlay IPv4 address"
                    .into(),
            ),
            Err(_) => {
                return Err(
                    "not an IPv4 address; give this host's underlay address, like 10.0.0.1".into(),
                )
            }
        };
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err("other nodes cannot reach this address; give this host's underlay address, like 10.0.0.1".into());
    }
    Ok(ip)
}

pub(crate) fn parse_port(port: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .map_err(|_| "not a port number; use 1-65535".to_owned())
        .and_then(check_port)
}

pub(crate) fn check_port(port: u16) -> Result<u16, String> {
    if port == 0 {
        return Err("port 0 is not a usable port; use 1-65535".into());
    }
    Ok(port)
}

pub(crate) fn parse_token(token: &str) -> Result<String, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err("the token is empty; `skein join-token` on any member prints it".into());
    }
    Ok(token.to_owned())
}

/// One `--join` entry: an IPv4 address or a host name, and maybe a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JoinEntry {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

impl JoinEntry {
    /// Parses `IP`, `IP:PORT`, `HOST` or `HOST:PORT`; the error says what is wrong,
    /// for clap and the file to prefix with the value.
    pub(crate) fn parse(entry: &str) -> Result<JoinEntry, String> {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("an empty address; give IP, IP:PORT, HOST or HOST:PORT".into());
        }
        if let Ok(addr) = entry.parse::<SocketAddrV4>() {
            return Ok(JoinEntry {
                host: addr.ip().to_string(),
                port: Some(check_port(addr.port())?),
            });
        }
        if let Ok(ip) = entry.parse::<Ipv4Addr>() {
            return Ok(JoinEntry {
                host: ip.to_string(),
                port: None,
            });
        }
        if entry.parse::<IpAddr>().is_ok() || entry.parse::<SocketAddr>().is_ok() {
            return Err(
                "an IPv6 address; Skein's underlay is IPv4, give an IPv4 address or a host name"
                    .into(),
            );
        }
        let (host, port) = match entry.rsplit_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (entry, None),
        };
        if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!("`{host}` is not an IPv4 address"));
        }
        let valid_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid_name {
            return Err(format!(
                "`{host}` is neither an IPv4 address nor a host name; give IP, IP:PORT, HOST or HOST:PORT"
            ));
        }
        Ok(JoinEntry {
            host: host.to_owned(),
            port,
        })
    }

    /// `HOST:PORT`, with `default_port` where the entry named none.
    pub(crate) fn with_port(&self, default_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(default_port))
    }
}

impl fmt::Display for JoinEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_entries_parse() {
        let entry = |s: &str| JoinEntry::parse(s).map(|e| e.with_port(7946));
        assert_eq!(entry("10.0.0.1").unwrap(), "10.0.0.1:7946");
        assert_eq!(entry(" 10.0.0.1:8000 ").unwrap(), "10.0.0.1:8000");
        assert_eq!(entry("node-1.example").unwrap(), "node-1.example:7946");
        assert_eq!(entry("node-1:7000").unwrap(), "node-1:7000");
        for (bad, needle) in [
            ("", "empty"),
            ("10.0.0.1:0", "port 0"),
            ("10.0.0.1:99999", "1-65535"),
            ("10.0.0.1:x", "port"),
            ("10.0.0", "not an IPv4 address"),
            ("::1", "IPv6"),
            ("[::1]:7946", "IPv6"),
            ("bad_host!", "neither"),
            ("-leading", "neither"),
        ] {
            let error = entry(bad).unwrap_err();
            assert!(error.contains(needle), "{bad:?}: {error}");
        }
    }

    #[test]
    fn advertise_addr_is_a_reachable_ipv4() {
        assert_eq!(
            parse_advertise_addr("10.0.0.1"),
            Ok(Ipv4Addr::new(10, 0, 0, 1))
        );
        for bad in ["fe80::1", "eth0", "0.0.0.0", "224.0.0.1", "10.0.0.1:7946"] {
            assert!(parse_advertise_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifaces_follow_the_kernel_rule() {
        assert_eq!(parse_iface("eth0"), Ok("eth0".to_owned()));
        for (bad, needle) in [
            ("a/b", "'/'"),
            ("", "empty"),
            ("a-very-long-interface", "15 bytes"),
            ("..", "\"..\""),
        ] {
            let error = parse_iface(bad).unwrap_err();
            assert!(error.starts_with("not an interface name: "), "{error}");
            assert!(error.contains(needle), "{bad:?}: {error}");
        }
    }

    #[test]
    fn xdp_mode_names_round_trip() {
        for mode in XdpMode::ALL {
            assert_eq!(mode.to_string().parse::<XdpMode>(), Ok(mode));
        }
        assert_eq!(
            "fast".parse::<XdpMode>().unwrap_err().to_string(),
            "unknown XDP mode \"fast\"; use one of: auto, native, generic"
        );
        assert!("Native".parse::<XdpMode>().is_err(), "names are lowercase");
    }

    #[test]
    fn xdp_modes_parse_by_name_and_have_help() {
        let command = clap::Command::new("t").arg(
            clap::Arg::new("mode")
                .long("xdp-mode")
                .value_parser(xdp_mode_parser()),
        );
        for mode in XdpMode::ALL {
            let matches = command
                .clone()
                .try_get_matches_from(["t", "--xdp-mode", mode.name()])
                .unwrap();
            assert_eq!(matches.get_one::<XdpMode>("mode"), Some(&mode));
            assert!(!xdp_mode_help(mode).is_empty());
        }
        let error = command
            .try_get_matches_from(["t", "--xdp-mode", "nativ"])
            .unwrap_err()
            .to_string();
        for needle in [
            "'nativ'",
            "[possible values: auto, native, generic]",
            "'native'",
        ] {
            assert!(error.contains(needle), "{error} lacks {needle}");
        }
    }
}
