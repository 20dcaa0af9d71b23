//! The settings as given ([`AgentSettings`], every one optional), the settings resolved
//! ([`AgentConfig`]), and [`merge`]: the precedence and the checks between them.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use super::{
    parse_advertise_addr, parse_dns_ttl, parse_dns_upstream, parse_duration, parse_iface,
    parse_nonzero_duration, parse_port, parse_socket_addr, parse_token, parse_word,
    xdp_mode_parser, ConfigError, Defaults, JoinEntry, MeshTimeouts, TokenSource,
};
use crate::{dataplane::XdpMode, dns::DnsConfig};

/// Gossip between managers runs on this port unless `--gossip-port` says otherwise.
const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Where `/metrics` is served by default.
const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9946));
/// Where operators query the service-discovery DNS server on the host.
const DEFAULT_DNS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5353));
/// DNS answers' TTL: short, so a resolver's cache follows the cluster within seconds
/// (Docker's 600 s keeps stale answers alive for ten minutes).
const DEFAULT_DNS_TTL: Duration = Duration::from_secs(2);
/// How long `--join` waits for a member to answer by default.
const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the namespaces and interfaces an agent creates, by default.
const DEFAULT_RESOURCE_PREFIX: &str = "skein";

/// Every setting of the daemon, resolved and checked.
#[derive(Clone, PartialEq)]
pub(crate) struct AgentConfig {
    pub(crate) underlay_iface: String,
    pub(crate) xdp_mode: XdpMode,
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) bpf_dir: PathBuf,
    pub(crate) endpoint_ifaces: Vec<String>,
    pub(crate) resource_prefix: String,
    /// The address other nodes reach this one at; `None`: the daemon takes the
    /// underlay interface's (it also checks that a given one belongs to it).
    pub(crate) advertise_addr: Option<Ipv4Addr>,
    pub(crate) gossip_port: u16,
    /// The local API's Unix socket.
    pub(crate) socket: PathBuf,
    /// Where the agent keeps what must survive a restart (node ID, cluster key).
    pub(crate) state_dir: PathBuf,
    /// Create a new cluster.
    pub(crate) init: bool,
    /// Members to join through, each `HOST:PORT` (the port filled in from
    /// `gossip_port` where none was given); each resolved once by
    /// [`resolve`](super::resolve), so `ToSocketAddrs` works on them.
    pub(crate) join: Vec<String>,
    /// Where the join token comes from (`--token` or `--token-file`), read when the
    /// daemon starts.
    pub(crate) token: Option<TokenSource>,
    pub(crate) join_timeout: Duration,
    pub(crate) hostname: String,
    /// How long a task to stop stays out of the load balancers, its established flows
    /// going on, before it gets SIGTERM; zero: stopped at once.
    pub(crate) drain_window: Duration,
    /// The routing mesh's conntrack timeouts.
    pub(crate) mesh: MeshTimeouts,
    /// The service-discovery DNS server.
    pub(crate) dns: DnsConfig,
}

// By hand, so that logging the config never prints the cluster's join token.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("underlay_iface", &self.underlay_iface)
            .field("xdp_mode", &self.xdp_mode)
            .field("metrics_addr", &self.metrics_addr)
            .field("bpf_dir", &self.bpf_dir)
            .field("endpoint_ifaces", &self.endpoint_ifaces)
            .field("resource_prefix", &self.resource_prefix)
            .field("advertise_addr", &self.advertise_addr)
            .field("gossip_port", &self.gossip_port)
            .field("socket", &self.socket)
            .field("state_dir", &self.state_dir)
            .field("init", &self.init)
            .field("join", &self.join)
            .field("token", &self.token)
            .field("join_timeout", &self.join_timeout)
            .field("hostname", &self.hostname)
            .field("drain_window", &self.drain_window)
            .field("mesh", &self.mesh)
            .field("dns", &self.dns)
            .finish()
    }
}

/// The daemon's settings as given: `None` where not given. clap reads the command line
/// and the environment into one (these doc comments are the help text),
/// [`parse_file`](super::file::parse_file) reads the config file into another, and [`merge`]
/// resolves them.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub(crate) struct AgentSettings {
    /// The host's underlay interface: VXLAN and published ports arrive here. Required.
    #[arg(long, env = "SKEIN_UNDERLAY_IFACE", value_name = "IFACE", value_parser = parse_iface)]
    pub(crate) underlay_iface: Option<String>,

    /// How to attach the underlay XDP program: native where the driver supports it
    /// (auto), native only, or generic. [default: auto]
    #[arg(long, env = "SKEIN_XDP_MODE", value_parser = xdp_mode_parser())]
    pub(crate) xdp_mode: Option<XdpMode>,

    /// Where `/metrics` is served (Prometheus text format). [default: 127.0.0.1:9946]
    #[arg(long, env = "SKEIN_METRICS_ADDR", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub(crate) metrics_addr: Option<SocketAddr>,

    /// This agent's bpffs directory: maps and links are pinned here so the dataplane
    /// outlives the agent. Mounted if absent. [default: /sys/fs/bpf/skein, or
    /// /sys/fs/bpf/skein/<NETNS> inside the named network namespace NETNS]
    #[arg(long, env = "SKEIN_BPF_DIR", value_name = "DIR")]
    pub(crate) bpf_dir: Option<PathBuf>,

    /// Host-side veth of an endpoint to attach the endpoint program to (repeatable).
    /// Until the overlay creates endpoints itself, this attaches existing veths.
    #[arg(
        long = "endpoint-iface",
        env = "SKEIN_ENDPOINT_IFACES",
        value_name = "IFACE",
        value_delimiter = ',',
        value_parser = parse_iface
    )]
    pub(crate) endpoint_ifaces: Option<Vec<String>>,

    /// Prefix of every namespace and interface this agent creates, so a sweep can tell
    /// whose leftovers are whose. [default: skein]
    #[arg(long, env = "SKEIN_RESOURCE_PREFIX", value_name = "PREFIX", value_parser = parse_word)]
    pub(crate) resource_prefix: Option<String>,

    /// The IPv4 address other nodes reach this one at. [default: the underlay
    /// interface's address]
    #[arg(long, env = "SKEIN_ADVERTISE_ADDR", value_name = "IP", value_parser = parse_advertise_addr)]
    pub(crate) advertise_addr: Option<Ipv4Addr>,

    /// UDP port of the (encrypted) gossip between nodes. [default: 7946]
    #[arg(long, env = "SKEIN_GOSSIP_PORT", value_name = "PORT", value_parser = parse_port)]
    pub(crate) gossip_port: Option<u16>,

    /// Set from the global `--socket` (the same flag serves the client commands).
    #[arg(skip)]
    pub(crate) socket: Option<PathBuf>,

    /// Where the agent keeps what must survive a restart. [default: /var/lib/skein, or
    /// /var/lib/skein/<NETNS> inside the named network namespace NETNS]
    #[arg(long, env = "SKEIN_STATE_DIR", value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,

    /// Create a new cluster with this node as its first member. `--init=false` overrides
    /// `init = true` in the config file.
    #[arg(
        long,
        env = "SKEIN_INIT",
        value_name = "BOOL",
        hide_possible_values = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
        conflicts_with = "join"
    )]
    pub(crate) init: Option<bool>,

    /// Join the cluster of these members: IP, IP:PORT, HOST or HOST:PORT, comma-separated
    /// or repeated; the port defaults to --gossip-port. Needs --token.
    #[arg(
        long,
        env = "SKEIN_JOIN",
        value_name = "ADDR",
        value_delimiter = ',',
        value_parser = JoinEntry::parse
    )]
    pub(crate) join: Option<Vec<JoinEntry>>,

    /// The cluster's join token: `skein join-token` prints it on any member. Prefer
    /// --token-file or SKEIN_TOKEN: a command line is visible to every local user.
    #[arg(
        long,
        env = "SKEIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub(crate) token: Option<String>,

    /// A file holding the cluster's join token (keep it 0600): the token stays out of
    /// the command line, the environment and shell history.
    #[arg(long, env = "SKEIN_TOKEN_FILE", value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,

    /// How long --join waits for a member to answer, like 10s, 500ms or 1m30s.
    /// [default: 10s]
    #[arg(long, env = "SKEIN_JOIN_TIMEOUT", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub(crate) join_timeout: Option<Duration>,

    /// This node's name in `skein node ls`. [default: the system hostname; inside a named
    /// network namespace, its name, since all namespaces share the machine's hostname]
    #[arg(long, env = "SKEIN_HOSTNAME", value_name = "NAME", value_parser = parse_word)]
    pub(crate) hostname: Option<String>,

    /// How long a task being stopped (removed, scaled away, moved) first gets no new
    /// connections while its open ones go on, before it is sent SIGTERM; like 10s or
    /// 500ms, 0s to stop at once. [default: 10s]
    #[arg(long, env = "SKEIN_DRAIN_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) drain_window: Option<Duration>,
    /// How long an established TCP flow through the routing mesh may be idle before its
    /// conntrack entry goes (its next segment is then reset). Above the kernel's keepalive
    /// horizon (7200 + 9×75 s). [default: 8000s]
    #[arg(long, env = "SKEIN_MESH_ESTABLISHED_TIMEOUT", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub(crate) mesh_established_timeout: Option<Duration>,

    /// How long a mesh TCP flow whose handshake has not completed may be idle. [default: 60s]
    #[arg(long, env = "SKEIN_MESH_SYN_TIMEOUT", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub(crate) mesh_syn_timeout: Option<Duration>,

    /// How long a mesh TCP flow lives after FIN both ways or a RST. [default: 10s]
    #[arg(long, env = "SKEIN_MESH_CLOSING_TIMEOUT", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub(crate) mesh_closing_timeout: Option<Duration>,

    /// How long a mesh UDP flow may be idle. [default: 60s]
    #[arg(long, env = "SKEIN_MESH_UDP_TIMEOUT", value_name = "DURATION", value_parser = parse_nonzero_duration)]
    pub(crate) mesh_udp_timeout: Option<Duration>,

    /// Where operators query the service-discovery DNS server on the host (UDP and TCP);
    /// endpoints query it at 127.0.0.11:53 in their own namespace. [default: 127.0.0.1:5353]
    #[arg(long, env = "SKEIN_DNS_ADDR", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub(crate) dns_addr: Option<SocketAddr>,

    /// An upstream resolver for names that are not Skein's: IP or IP:PORT (repeatable,
    /// or comma-separated; tried in order, at most 3). [default: the nameservers of the
    /// host's /etc/resolv.conf]
    #[arg(
        long = "dns-upstream",
        env = "SKEIN_DNS_UPSTREAMS",
        value_name = "ADDR",
        value_delimiter = ',',
        value_parser = parse_dns_upstream
    )]
    pub(crate) dns_upstreams: Option<Vec<SocketAddr>>,

    /// The TTL of Skein's DNS answers, in whole seconds, like 2s or 0s. [default: 2s]
    #[arg(long, env = "SKEIN_DNS_TTL", value_name = "DURATION", value_parser = parse_dns_ttl)]
    pub(crate) dns_ttl: Option<Duration>,
}

/// Applies the precedence given > file > defaults and checks the combination.
/// Pure: names in `join` are not resolved here (see [`resolve`](super::resolve)).
pub(crate) fn merge(
    given: &AgentSettings,
    file: &AgentSettings,
    defaults: &Defaults,
) -> Result<AgentConfig, ConfigError> {
    fn pick<T: Clone>(given: &Option<T>, file: &Option<T>) -> Option<T> {
        given.as_ref().or(file.as_ref()).cloned()
    }
    let gossip_port = pick(&given.gossip_port, &file.gossip_port).unwrap_or(DEFAULT_GOSSIP_PORT);
    let init = pick(&given.init, &file.init).unwrap_or(false);
    let join = pick(&given.join, &file.join).unwrap_or_default();
    let token = TokenSource::pick(given, file)?;
    if init && !join.is_empty() {
        return Err(ConfigError::InitAndJoin);
    }
    if !join.is_empty() && token.is_none() {
        return Err(ConfigError::JoinWithoutToken);
    }
    let defaults_mesh = MeshTimeouts::default();
    let mesh = MeshTimeouts {
        established: pick(
            &given.mesh_established_timeout,
            &file.mesh_established_timeout,
        )
        .unwrap_or(defaults_mesh.established),
        syn: pick(&given.mesh_syn_timeout, &file.mesh_syn_timeout).unwrap_or(defaults_mesh.syn),
        closing: pick(&given.mesh_closing_timeout, &file.mesh_closing_timeout)
            .unwrap_or(defaults_mesh.closing),
        udp: pick(&given.mesh_udp_timeout, &file.mesh_udp_timeout).unwrap_or(defaults_mesh.udp),
    };
    mesh.check()
        .map_err(|reason| ConfigError::Mesh { reason })?;
    Ok(AgentConfig {
        underlay_iface: pick(&given.underlay_iface, &file.underlay_iface)
            .ok_or(ConfigError::MissingUnderlay)?,
        xdp_mode: pick(&given.xdp_mode, &file.xdp_mode).unwrap_or_default(),
        metrics_addr: pick(&given.metrics_addr, &file.metrics_addr).unwrap_or(DEFAULT_METRICS_ADDR),
        bpf_dir: pick(&given.bpf_dir, &file.bpf_dir)
            .unwrap_or_else(|| defaults.paths.bpf_dir.clone()),
        endpoint_ifaces: pick(&given.endpoint_ifaces, &file.endpoint_ifaces).unwrap_or_default(),
        resource_prefix: pick(&given.resource_prefix, &file.resource_prefix)
            .unwrap_or_else(|| DEFAULT_RESOURCE_PREFIX.to_owned()),
        advertise_addr: pick(&given.advertise_addr, &file.advertise_addr),
        gossip_port,
        socket: pick(&given.socket, &file.socket).unwrap_or_else(|| defaults.paths.socket.clone()),
        state_dir: pick(&given.state_dir, &file.state_dir)
            .unwrap_or_else(|| defaults.paths.state_dir.clone()),
        init,
        join: join.iter().map(|e| e.with_port(gossip_port)).collect(),
        token,
        join_timeout: pick(&given.join_timeout, &file.join_timeout).unwrap_or(DEFAULT_JOIN_TIMEOUT),
        hostname: pick(&given.hostname, &file.hostname)
            .or_else(|| defaults.hostname.clone())
            .ok_or(ConfigError::NoHostname)?,
        drain_window: pick(&given.drain_window, &file.drain_window)
            .unwrap_or(crate::tasks::plan::DEFAULT_DRAIN_WINDOW),
        mesh,
        dns: DnsConfig {
            addr: pick(&given.dns_addr, &file.dns_addr).unwrap_or(DEFAULT_DNS_ADDR),
            upstreams: pick(&given.dns_upstreams, &file.dns_upstreams).unwrap_or_default(),
            ttl: pick(&given.dns_ttl, &file.dns_ttl).unwrap_or(DEFAULT_DNS_TTL),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{file::parse_file, DefaultPaths};

    fn defaults() -> Defaults {
        Defaults {
            paths: DefaultPaths::for_netns(None),
            hostname: Some("host1".into()),
        }
    }

    fn file(text: &str) -> AgentSettings {
        parse_file(text, Path::new("/etc/skein/agent.toml")).unwrap()
    }

    fn with_underlay(iface: &str) -> AgentSettings {
        AgentSettings {
            underlay_iface: Some(iface.into()),
            ..AgentSettings::default()
        }
    }

    #[test]
    fn defaults_fill_what_nothing_sets() {
        let config = merge(
            &with_underlay("eth0"),
            &AgentSettings::default(),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            config,
            AgentConfig {
                underlay_iface: "eth0".into(),
                xdp_mode: XdpMode::Auto,
                metrics_addr: "127.0.0.1:9946".parse().unwrap(),
                bpf_dir: "/sys/fs/bpf/skein".into(),
                endpoint_ifaces: vec![],
                resource_prefix: "skein".into(),
                advertise_addr: None,
                gossip_port: 7946,
                socket: "/run/skein/skein.sock".into(),
                state_dir: "/var/lib/skein".into(),
                init: false,
                join: vec![],
                token: None,
                join_timeout: Duration::from_secs(10),
                hostname: "host1".into(),
                drain_window: Duration::from_secs(10),
                mesh: MeshTimeouts::default(),
                dns: DnsConfig {
                    addr: "127.0.0.1:5353".parse().unwrap(),
                    upstreams: vec![],
                    ttl: Duration::from_secs(2),
                },
            }
        );
    }

    #[test]
    fn given_beats_file_beats_default() {
        let file = file(
            r#"
            underlay-iface = "eth-file"
            gossip_port = 8000
            xdp-mode = "generic"
            join-timeout = "1m30s"
            hostname = "from-file"
            endpoint-iface = ["a", "b"]
            drain-window = "0s"
            "#,
        );
        let given = AgentSettings {
            underlay_iface: Some("eth-flag".into()),
            hostname: Some("from-flag".into()),
            endpoint_ifaces: Some(vec!["c".into()]),
            ..AgentSettings::default()
        };
        let config = merge(&given, &file, &defaults()).unwrap();
        assert_eq!(config.underlay_iface, "eth-flag");
        assert_eq!(config.hostname, "from-flag");
        assert_eq!(
            config.endpoint_ifaces,
            ["c"],
            "a given list replaces the file's"
        );
        assert_eq!(config.gossip_port, 8000);
        assert_eq!(config.xdp_mode, XdpMode::Generic);
        assert_eq!(config.join_timeout, Duration::from_secs(90));
        assert_eq!(config.drain_window, Duration::ZERO, "zero: no drain");
        assert_eq!(config.metrics_addr, DEFAULT_METRICS_ADDR);
        assert_eq!(config.bpf_dir, PathBuf::from("/sys/fs/bpf/skein"));

        // A given `false` still beats the file's `true`.
        let file = self::file("underlay-iface = \"eth0\"\ninit = true");
        let given = AgentSettings {
            init: Some(false),
            ..AgentSettings::default()
        };
        assert!(!merge(&given, &file, &defaults()).unwrap().init);
        assert!(
            merge(&AgentSettings::default(), &file, &defaults())
                .unwrap()
                .init
        );
    }

    #[test]
    fn mesh_timeouts_take_flags_over_the_file_table_and_are_checked() {
        let file = file(
            r#"
            underlay-iface = "eth0"
            [mesh]
            established-timeout = "2h30m"
            syn_timeout = "5s"
            udp-timeout = "90s"
            "#,
        );
        let given = AgentSettings {
            mesh_udp_timeout: Some(Duration::from_secs(20)),
            ..AgentSettings::default()
        };
        let config = merge(&given, &file, &defaults()).unwrap();
        assert_eq!(
            config.mesh,
            MeshTimeouts {
                established: Duration::from_secs(9000),
                syn: Duration::from_secs(5),
                closing: Duration::from_secs(10),
                udp: Duration::from_secs(20),
            }
        );
        let given = AgentSettings {
            mesh_established_timeout: Some(Duration::from_secs(1)),
            ..AgentSettings::default()
        };
        let error = merge(&given, &file, &defaults()).unwrap_err().to_string();
        assert!(error.contains("--mesh-established-timeout"), "{error}");
        assert!(error.contains("--mesh-syn-timeout"), "{error}");
    }

    #[test]
    fn dns_settings_come_from_flags_or_the_file_and_are_checked() {
        let file = file(
            r#"
            underlay-iface = "eth0"
            dns-addr = "127.0.0.1:53"
            dns-upstream = ["10.0.0.2", "10.0.0.3:5353"]
            dns_ttl = "5s"
            "#,
        );
        let config = merge(&AgentSettings::default(), &file, &defaults()).unwrap();
        assert_eq!(
            config.dns,
            DnsConfig {
                addr: "127.0.0.1:53".parse().unwrap(),
                upstreams: vec![
                    "10.0.0.2:53".parse().unwrap(),
                    "10.0.0.3:5353".parse().unwrap()
                ],
                ttl: Duration::from_secs(5),
            }
        );
        let given = AgentSettings {
            dns_ttl: Some(Duration::ZERO),
            dns_upstreams: Some(vec!["10.9.9.9:53".parse().unwrap()]),
            ..AgentSettings::default()
        };
        let config = merge(&given, &file, &defaults()).unwrap();
        assert_eq!(config.dns.ttl, Duration::ZERO, "0s: no caching");
        assert_eq!(config.dns.upstreams, ["10.9.9.9:53".parse().unwrap()]);
        for bad in [
            "dns-ttl = \"1500ms\"",
            "dns-ttl = \"2h\"",
            "dns-upstream = \"nameserver\"",
        ] {
            let text = format!("underlay-iface = \"eth0\"\n{bad}");
            let error = parse_file(&text, Path::new("/etc/skein/agent.toml"))
                .unwrap_err()
                .to_string();
            assert!(error.contains("dns"), "{bad}: {error}");
        }
    }

    #[test]
    fn missing_underlay_says_how_to_give_it() {
        let error = merge(
            &AgentSettings::default(),
            &AgentSettings::default(),
            &defaults(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("--underlay-iface"), "{error}");
    }

    #[test]
    fn join_rules() {
        let join = |entries: &[&str]| {
            Some(
                entries
                    .iter()
                    .map(|e| JoinEntry::parse(e).unwrap())
                    .collect(),
            )
        };
        let given = AgentSettings {
            join: join(&["10.0.0.1", "node-a:9000"]),
            ..with_underlay("eth0")
        };
        let error = merge(&given, &AgentSettings::default(), &defaults())
            .unwrap_err()
            .to_string();
        assert!(error.contains("--token"), "{error}");

        let file = file("token = \"secret\"\ngossip-port = 8000");
        let config = merge(&given, &file, &defaults()).unwrap();
        assert_eq!(config.join, ["10.0.0.1:8000", "node-a:9000"]);
        assert_eq!(config.token, Some(TokenSource::Text("secret".into())));
        assert!(
            !format!("{config:?}").contains("secret"),
            "Debug must not print the token"
        );

        let given = AgentSettings {
            init: Some(true),
            token: Some("t".into()),
            ..given
        };
        let error = merge(&given, &AgentSettings::default(), &defaults())
            .unwrap_err()
            .to_string();
        assert!(error.contains("--init and --join"), "{error}");
    }
}
