//! The agent's settings: every `skein agent` flag, resolved with the precedence
//! command line > environment (`SKEIN_*`) > `--config FILE` (TOML) > defaults.
//!
//! Layout:
//! - [`AgentSettings`]: the settings as given, every one optional. clap fills it from the
//!   command line and the environment (its doc comments are the help text);
//!   [`parse_file`] fills another from the TOML file, whose keys are the flag names.
//! - [`merge`]: the precedence and the checks, a pure function of (given, file,
//!   defaults), so tests need neither the process environment nor the host.
//! - [`resolve`]: all of it for a real `skein agent`: reads the file, takes this host's
//!   defaults, merges, and checks that `--join` names resolve.
//! - [`default_paths`], [`current_netns_name`]: defaults scoped to the network namespace
//!   the process runs in, so several agents (one per host namespace) run side by side
//!   and `ip netns exec H skein node ls` reaches H's agent with no flags.

use std::{
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::ValueEnum;

use crate::dataplane::XdpMode;

/// Gossip between managers runs on this port unless `--gossip-port` says otherwise.
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Where `/metrics` is served by default.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9946));
/// How long `--join` waits for a member to answer by default.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the namespaces and interfaces an agent creates, by default.
pub const DEFAULT_RESOURCE_PREFIX: &str = "skein";
/// Where `ip netns add NAME` pins named network namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";
/// Longest interface name the kernel accepts (IFNAMSIZ less the NUL).
const MAX_IFACE_NAME: usize = 15;

/// Every setting of the daemon, resolved and checked.
///
/// The first six fields are those `daemon.rs` has always had, under the same names.
#[derive(Clone, PartialEq)]
pub struct AgentConfig {
    pub underlay_iface: String,
    pub xdp_mode: XdpMode,
    pub metrics_addr: SocketAddr,
    pub bpf_dir: PathBuf,
    pub endpoint_ifaces: Vec<String>,
    pub resource_prefix: String,
    /// The address other nodes reach this one at; `None`: the daemon takes the
    /// underlay interface's (it also checks that a given one belongs to it).
    pub advertise_addr: Option<Ipv4Addr>,
    pub gossip_port: u16,
    /// The local API's Unix socket.
    pub socket: PathBuf,
    /// Where the agent keeps what must survive a restart (node ID, cluster key).
    pub state_dir: PathBuf,
    /// Create a new cluster.
    pub init: bool,
    /// Members to join through, each `HOST:PORT` (the port filled in from
    /// `gossip_port` where none was given); each resolved once by [`resolve`], so
    /// `ToSocketAddrs` works on them.
    pub join: Vec<String>,
    pub token: Option<String>,
    pub join_timeout: Duration,
    pub hostname: String,
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
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("join_timeout", &self.join_timeout)
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// The daemon's settings as given: `None` where not given. clap reads the command line
/// and the environment into one, [`parse_file`] reads the config file into another, and
/// [`merge`] resolves them.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct AgentSettings {
    /// The host's underlay interface: VXLAN and published ports arrive here. Required.
    #[arg(long, env = "SKEIN_UNDERLAY_IFACE", value_name = "IFACE", value_parser = parse_iface)]
    pub underlay_iface: Option<String>,

    /// How to attach the underlay XDP program: native where the driver supports it
    /// (auto), native only, or generic. [default: auto]
    #[arg(long, env = "SKEIN_XDP_MODE", value_enum)]
    pub xdp_mode: Option<XdpMode>,

    /// Where `/metrics` is served (Prometheus text format). [default: 127.0.0.1:9946]
    #[arg(long, env = "SKEIN_METRICS_ADDR", value_name = "ADDR", value_parser = parse_socket_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// This agent's bpffs directory: maps and links are pinned here so the dataplane
    /// outlives the agent. Mounted if absent. [default: /sys/fs/bpf/skein, or
    /// /sys/fs/bpf/skein/<NETNS> inside the named network namespace NETNS]
    #[arg(long, env = "SKEIN_BPF_DIR", value_name = "DIR")]
    pub bpf_dir: Option<PathBuf>,

    /// Host-side veth of an endpoint to attach the endpoint program to (repeatable).
    /// Until the overlay creates endpoints itself, this attaches existing veths.
    #[arg(
        long = "endpoint-iface",
        env = "SKEIN_ENDPOINT_IFACES",
        value_name = "IFACE",
        value_delimiter = ',',
        value_parser = parse_iface
    )]
    pub endpoint_ifaces: Option<Vec<String>>,

    /// Prefix of every namespace and interface this agent creates, so a sweep can tell
    /// whose leftovers are whose. [default: skein]
    #[arg(long, env = "SKEIN_RESOURCE_PREFIX", value_name = "PREFIX", value_parser = parse_word)]
    pub resource_prefix: Option<String>,

    /// The IPv4 address other nodes reach this one at. [default: the underlay
    /// interface's address]
    #[arg(long, env = "SKEIN_ADVERTISE_ADDR", value_name = "IP", value_parser = parse_advertise_addr)]
    pub advertise_addr: Option<Ipv4Addr>,

    /// UDP port of the (encrypted) gossip between nodes. [default: 7946]
    #[arg(long, env = "SKEIN_GOSSIP_PORT", value_name = "PORT", value_parser = parse_port)]
    pub gossip_port: Option<u16>,

    /// Set from the global `--socket` (the same flag serves the client commands).
    #[arg(skip)]
    pub socket: Option<PathBuf>,

    /// Where the agent keeps what must survive a restart. [default: /var/lib/skein, or
    /// /var/lib/skein/<NETNS> inside the named network namespace NETNS]
    #[arg(long, env = "SKEIN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

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
    pub init: Option<bool>,

    /// Join the cluster of these members: IP, IP:PORT, HOST or HOST:PORT, comma-separated
    /// or repeated; the port defaults to --gossip-port. Needs --token.
    #[arg(
        long,
        env = "SKEIN_JOIN",
        value_name = "ADDR",
        value_delimiter = ',',
        value_parser = JoinEntry::parse
    )]
    pub join: Option<Vec<JoinEntry>>,

    /// The cluster's join token: `skein join-token` prints it on any member. Prefer
    /// SKEIN_TOKEN or the config file: a command line is visible to every user.
    #[arg(
        long,
        env = "SKEIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = parse_token
    )]
    pub token: Option<String>,

    /// How long --join waits for a member to answer, like 10s, 500ms or 2m.
    /// [default: 10s]
    #[arg(long, env = "SKEIN_JOIN_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub join_timeout: Option<Duration>,

    /// This node's name in `skein node ls`. [default: the system hostname; inside a named
    /// network namespace, its name, since all namespaces share the machine's hostname]
    #[arg(long, env = "SKEIN_HOSTNAME", value_name = "NAME", value_parser = parse_word)]
    pub hostname: Option<String>,
}

/// One `--join` entry: an IPv4 address or a host name, and maybe a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinEntry {
    pub host: String,
    pub port: Option<u16>,
}

impl JoinEntry {
    /// Parses `IP`, `IP:PORT`, `HOST` or `HOST:PORT`; the error says what is wrong,
    /// for clap and the file to prefix with the value.
    pub fn parse(entry: &str) -> Result<JoinEntry, String> {
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
    pub fn with_port(&self, default_port: u16) -> String {
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

/// Errors in the settings: each one sentence naming the bad value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
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
    #[error("--join needs the cluster's token: pass --token (or SKEIN_TOKEN, or token in the --config file); `skein join-token` on any member prints it")]
    JoinWithoutToken,
    #[error("--join entry `{entry}` does not resolve to an IPv4 address ({reason}); check the name or give the member's IP address")]
    Unresolvable { entry: String, reason: String },
}

/// Where an agent's socket, state and pins go by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultPaths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bpf_dir: PathBuf,
}

impl DefaultPaths {
    /// The defaults in the root network namespace (`None`) or in the named one.
    pub fn for_netns(netns: Option<&str>) -> DefaultPaths {
        let (run, state, bpf) = (
            PathBuf::from("/run/skein"),
            PathBuf::from("/var/lib/skein"),
            PathBuf::from("/sys/fs/bpf/skein"),
        );
        match netns {
            None => DefaultPaths {
                socket: run.join("skein.sock"),
                state_dir: state,
                bpf_dir: bpf,
            },
            Some(name) => DefaultPaths {
                socket: run.join(name).join("skein.sock"),
                state_dir: state.join(name),
                bpf_dir: bpf.join(name),
            },
        }
    }
}

/// The defaults for this process: scoped to its named network namespace, if any.
pub fn default_paths() -> DefaultPaths {
    DefaultPaths::for_netns(current_netns_name().as_deref())
}

/// What [`merge`] falls back on where nothing was given and no constant will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub paths: DefaultPaths,
    /// `None` if the host's name could not be read.
    pub hostname: Option<String>,
}

impl Defaults {
    /// This process's defaults: inside a named network namespace, paths under its name
    /// and the name as hostname (every namespace shares the machine's hostname, so
    /// agents side by side would otherwise all be called the same).
    pub fn of_this_process() -> Defaults {
        let netns = current_netns_name();
        Defaults {
            paths: DefaultPaths::for_netns(netns.as_deref()),
            hostname: netns.or_else(system_hostname),
        }
    }
}

/// The name of the named network namespace (`ip netns add NAME`) this process runs in;
/// `None` in the root namespace or in one without a name.
pub fn current_netns_name() -> Option<String> {
    let own = ns_id(Path::new("/proc/self/ns/net"))?;
    // Someone may have named the root namespace too (`ip netns attach NAME 1`); it
    // still gets the root defaults. PID 1's namespace is unreadable without privileges;
    // then the names decide.
    if ns_id(Path::new("/proc/1/ns/net")) == Some(own) {
        return None;
    }
    netns_name_in(Path::new(NETNS_RUN_DIR), own)
}

/// The (device, inode) identifying the namespace a `/proc/*/ns/*` link or a bind mount
/// of one refers to.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The first name (sorted, so the answer is stable) under `dir` that is a bind mount of
/// the namespace `own`. Leftover files whose mount is gone have tmpfs's device and match
/// nothing.
fn netns_name_in(dir: &Path, own: (u64, u64)) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|entry| ns_id(&entry.path()) == Some(own))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The system hostname (of this UTS namespace).
fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call;
    // gethostname writes at most `len` bytes into it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // POSIX leaves truncated names unterminated; then the whole buffer is the name.
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..len]).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

/// Resolves the daemon's settings: `given` (command line and environment) over the
/// `config_file` over this host's defaults; checks that `--join` names resolve.
pub fn resolve(
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

/// Applies the precedence given > file > defaults and checks the combination.
/// Pure: names in `join` are not resolved here (see [`resolve`]).
pub fn merge(
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
    let token = pick(&given.token, &file.token);
    if init && !join.is_empty() {
        return Err(ConfigError::InitAndJoin);
    }
    if !join.is_empty() && token.is_none() {
        return Err(ConfigError::JoinWithoutToken);
    }
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
    })
}

/// Reads and parses the config file at `path`.
pub fn load_file(path: &Path) -> Result<AgentSettings, ConfigError> {
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
    "join-timeout",
    "hostname",
];

/// Parses a config file's text; `path` only names the file in errors.
///
/// ```toml
/// underlay-iface = "eth0"
/// join = ["10.0.0.1", "10.0.0.2:7946"]
/// join-timeout = "30s"
/// ```
pub fn parse_file(text: &str, path: &Path) -> Result<AgentSettings, ConfigError> {
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
    for (raw_key, value) in &table {
        let key = raw_key.replace('_', "-");
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
                string(value).and_then(|s| {
                    <XdpMode as ValueEnum>::from_str(s, false)
                        .map_err(|_| "expected one of \"auto\", \"native\", \"generic\"".to_owned())
                }),
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
            "join-timeout" => set_once(
                &mut settings.join_timeout,
                string(value).and_then(parse_duration),
            ),
            "hostname" => set_once(&mut settings.hostname, string(value).and_then(parse_word)),
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

// Value parsers shared by clap and the file. Each error says what is wrong; clap and
// the file prefix it with the value and where it came from.

/// An interface name as the kernel accepts it.
pub fn parse_iface(name: &str) -> Result<String, String> {
    if name.is_empty()
        || name.len() > MAX_IFACE_NAME
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "not an interface name (1 to {MAX_IFACE_NAME} characters, no '/', ':' or spaces); see `ip link`"
        ));
    }
    Ok(name.to_owned())
}

/// A non-empty word without spaces or control characters.
pub fn parse_word(word: &str) -> Result<String, String> {
    if word.is_empty() || word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a non-empty word without spaces".into());
    }
    Ok(word.to_owned())
}

pub fn parse_socket_addr(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| "not an address and port like 127.0.0.1:9946".into())
}

/// An IPv4 address this node can be reached at.
pub fn parse_advertise_addr(addr: &str) -> Result<Ipv4Addr, String> {
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

pub fn parse_port(port: &str) -> Result<u16, String> {
    port.parse::<u16>()
        .map_err(|_| "not a port number; use 1-65535".to_owned())
        .and_then(check_port)
}

fn check_port(port: u16) -> Result<u16, String> {
    if port == 0 {
        return Err("port 0 is not a usable port; use 1-65535".into());
    }
    Ok(port)
}

pub fn parse_token(token: &str) -> Result<String, String> {
    let token = token.trim();
    if token.is_empty() {
        return Err("the token is empty; `skein join-token` on any member prints it".into());
    }
    Ok(token.to_owned())
}

/// A duration with a unit: `500ms`, `10s`, `2m`, `1h`. Zero is refused: every
/// duration here is a time to wait.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const FORMS: &str = "like 10s, 500ms or 2m";
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "not a duration; write a number and a unit, {FORMS}"
        ));
    }
    let number: u64 = number
        .parse()
        .map_err(|_| format!("too long; write a duration {FORMS}"))?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("too long; write a duration {FORMS}"))
    };
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => seconds(1)?,
        "m" => seconds(60)?,
        "h" => seconds(3600)?,
        "" => return Err(format!("a number without a unit; add one, {FORMS}")),
        _ => return Err(format!("unknown unit `{unit}`; use ms, s, m or h, {FORMS}")),
    };
    if duration.is_zero() {
        return Err(format!("must be longer than zero, {FORMS}"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            paths: DefaultPaths::for_netns(None),
            hostname: Some("host1".into()),
        }
    }

    fn file(text: &str) -> Result<AgentSettings, ConfigError> {
        parse_file(text, Path::new("/etc/skein/agent.toml"))
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
            join-timeout = "2m"
            hostname = "from-file"
            endpoint-iface = ["a", "b"]
            "#,
        )
        .unwrap();
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
        assert_eq!(config.join_timeout, Duration::from_secs(120));
        assert_eq!(config.metrics_addr, DEFAULT_METRICS_ADDR);
        assert_eq!(config.bpf_dir, PathBuf::from("/sys/fs/bpf/skein"));

        // A given `false` still beats the file's `true`.
        let file = self::file("underlay-iface = \"eth0\"\ninit = true").unwrap();
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
    fn netns_defaults_are_scoped_by_name() {
        let paths = DefaultPaths::for_netns(Some("h2"));
        assert_eq!(paths.socket, PathBuf::from("/run/skein/h2/skein.sock"));
        assert_eq!(paths.state_dir, PathBuf::from("/var/lib/skein/h2"));
        assert_eq!(paths.bpf_dir, PathBuf::from("/sys/fs/bpf/skein/h2"));
        let defaults = Defaults {
            paths,
            hostname: Some("h2".into()),
        };
        let config = merge(&with_underlay("eth0"), &AgentSettings::default(), &defaults).unwrap();
        assert_eq!(config.socket, PathBuf::from("/run/skein/h2/skein.sock"));
        assert_eq!(config.hostname, "h2");

        let no_name = Defaults {
            hostname: None,
            ..self::defaults()
        };
        let error = merge(&with_underlay("eth0"), &AgentSettings::default(), &no_name)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--hostname"), "{error}");
    }

    #[test]
    fn tests_run_in_the_root_netns() {
        assert_eq!(current_netns_name(), None);
        assert_eq!(default_paths(), DefaultPaths::for_netns(None));
    }

    #[test]
    fn netns_names_match_by_device_and_inode() {
        let dir = std::env::temp_dir().join(format!("skein-netns-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Plain files stand in for the bind mounts: what matters is (dev, inode).
        for name in ["blue", "red"] {
            fs::write(dir.join(name), b"").unwrap();
        }
        let red = ns_id(&dir.join("red")).unwrap();
        let found = netns_name_in(&dir, red);
        let missing = netns_name_in(&dir, (u64::MAX, u64::MAX));
        let absent_dir = netns_name_in(&dir.join("absent"), red);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.as_deref(), Some("red"));
        assert_eq!(missing, None);
        assert_eq!(absent_dir, None);
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
            ("xdp-mode = \"fast\"", &["xdp-mode", "fast", "native"]),
            ("init = \"yes\"", &["init", "\"yes\"", "true or false"]),
            ("join-timeout = 10", &["join-timeout", "10", "quotes"]),
            ("join-timeout = \"10\"", &["join-timeout", "unit"]),
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
                &["underlay-iface", "a-very-long-interface"],
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

        let file = file("token = \"secret\"\ngossip-port = 8000").unwrap();
        let config = merge(&given, &file, &defaults()).unwrap();
        assert_eq!(config.join, ["10.0.0.1:8000", "node-a:9000"]);
        assert_eq!(config.token.as_deref(), Some("secret"));
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
    fn join_names_must_resolve() {
        check_resolves("127.0.0.1:7946").unwrap();
        check_resolves("localhost:7946").unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for (bad, needle) in [
            ("10", "without a unit"),
            ("s", "not a duration"),
            ("", "not a duration"),
            ("1.5s", "unknown unit"),
            ("10d", "unknown unit"),
            ("0s", "longer than zero"),
            ("99999999999999999999s", "too long"),
            ("9999999999999999999h", "too long"),
        ] {
            let error = parse_duration(bad).unwrap_err();
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
