//! Services: the object, user-input validation, and the deterministic resolution of
//! conflicting claims (published ports, VIPs).
//!
//! A service is cluster-scoped: any node may create, scale or remove it. Same-name creates
//! settle by last-writer-wins on the key. Different services claiming one published port
//! (protocol and number, cluster-wide: the routing mesh opens it on every node; a
//! host-mode port, opened only where the service's tasks run, is claimed cluster-wide
//! too — simpler than Swarm, which lets services share a host-mode port on disjoint
//! nodes, and a task can then be placed anywhere) or one VIP are settled by
//! [`valid_services`], a pure function of the store: the earliest `created` stamp wins,
//! the others are reported as conflicted, on every node alike.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr, time::Duration};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{
    objects::{decode_payload, encode_payload, PayloadError},
    record::{Kind, Record, RecordKey, Stamp, MAX_VALUE_BYTES},
    store::Store,
};

mod limits;
mod reserved;
mod security;
pub mod stack;
pub use limits::{parse_cpus, parse_memory, parse_pids, Bytes, Limits, LimitsError};
pub use reserved::{cluster_reserved_ports, ReservedPort, VXLAN_PORT};
pub use security::{capability_names, parse_capability, Security, CAPABILITIES, DEFAULT_CAPS};
pub use stack::{StackMember, StackNameError};

/// The most replicas a replicated service may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// `--publish PUBLISHED:TARGET[/tcp|/udp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The port opened on every node (ingress mode) or on nodes running a task (host mode).
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
    pub protocol: Protocol,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.published, self.target, self.protocol)
    }
}

impl FromStr for PublishedPort {
    type Err = ServiceSpecError;

    fn from_str(text: &str) -> Result<PublishedPort, ServiceSpecError> {
        let bad = || ServiceSpecError::BadPublish {
            text: text.to_owned(),
        };
        let (ports, protocol) = match text.split_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (text, Protocol::Tcp),
        };
        let (published, target) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| -> Result<u16, ServiceSpecError> {
            // Digits only: `u16::from_str` accepts a leading '+'.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad()),
                Ok(port) => Ok(port),
            }
        };
        Ok(PublishedPort {
            published: port(published)?,
            target: port(target)?,
            protocol,
        })
    }
}

/// How many tasks a service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// N tasks spread over the live nodes.
    Replicated { replicas: u32 },
    /// One task on every live node.
    Global,
}

/// `--publish-mode`: where published ports are opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishMode {
    /// On every node, balanced across all tasks (the routing mesh).
    Ingress,
    /// Only on nodes running a task, to that node's tasks.
    Host,
}

/// `--endpoint-mode`: how clients inside the overlay reach the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointMode {
    /// A virtual IP balanced on the sending host; DNS answers the VIP.
    Vip,
    /// No VIP; DNS answers the tasks' addresses.
    Dnsrr,
}

/// `--health-cmd`: a command run inside each task; a task counts as running only while it
/// passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Run with `sh -c` in the task's namespaces.
    pub cmd: String,
    pub interval_ms: u64,
}

/// A service: cluster-scoped, kind [`Kind::Service`], named by its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Also the record name and the DNS name.
    pub name: String,
    pub mode: Mode,
    /// The overlay network its tasks attach to.
    pub network: String,
    pub ports: Vec<PublishedPort>,
    pub publish_mode: PublishMode,
    pub endpoint_mode: EndpointMode,
    /// The service's virtual IP on its network (VIP mode), from the network's VIP quarter.
    pub vip: Option<Ipv4Addr>,
    /// argv of each task.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `name`, `uid` or `uid:gid`; `None`: root.
    pub user: Option<String>,
    pub health: Option<HealthCheck>,
    /// How long to wait before restarting a task whose process exited.
    pub restart_delay_ms: u64,
    /// The stamp of the write that created it; scaling keeps it. Decides claims, and tells a
    /// re-created service's tasks from the old one's.
    pub created: Stamp,
    /// Capabilities and `no_new_privs` of its tasks (`--cap-add`, `--cap-drop`,
    /// `--allow-new-privileges`).
    pub security: Security,
    /// Each task's memory, CPU and process limits (its cgroup's).
    pub limits: Limits,
    /// The stack that deployed it (`skein stack deploy`); `None` for `service create`.
    pub stack: Option<StackMember>,
    /// The rollout: update config, its state, the previous definition (`service update`;
    /// see [`crate::rollout`]). Last, as every field added later must be.
    pub update: crate::rollout::ServiceUpdate,
}

/// Why a service definition is not acceptable: one sentence naming the bad value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceSpecError {
    #[error(
        "service name {name:?} is invalid: use 1 to 63 lowercase letters, digits, '-' or '_', \
         starting with a letter or digit"
    )]
    BadName { name: String },
    #[error(transparent)]
    Stack(#[from] StackNameError),
    #[error("--publish {text:?} is invalid: use PUBLISHED:TARGET[/tcp|/udp] with ports 1-65535")]
    BadPublish { text: String },
    #[error("port {port} is published twice")]
    DuplicatePort { port: String },
    #[error("port {port} is used by Skein itself ({user}); publish another port")]
    ReservedPort { port: String, user: String },
    #[error("--replicas {replicas} is out of range: use 0 to {MAX_REPLICAS}")]
    ReplicasOutOfRange { replicas: u32 },
    #[error("a command to run is required (after `--`)")]
    NoCommand,
    #[error("--env {text:?} is invalid: use KEY=VALUE with a non-empty KEY without '='")]
    BadEnv { text: String },
    #[error(
        "the service definition is {size} bytes, more than the {max} a record holds; \
         shorten the command, environment or health command"
    )]
    TooLarge { size: usize, max: usize },
    #[error("capability {name:?} is unknown: give a Linux capability such as NET_ADMIN, or ALL")]
    UnknownCapability { name: String },
    #[error(
        "capability {name} is both added and dropped: give it to only one of --cap-add and \
         --cap-drop"
    )]
    CapabilityAddedAndDropped { name: String },
    #[error(transparent)]
    Limits(#[from] LimitsError),
}

/// Checks a service name: one DNS label (1 to 63 lowercase letters, digits, '-' and '_',
/// starting with a letter or digit), so `<service>` and `tasks.<service>` resolve. `_` is
/// allowed because stacks name their services `STACK_service` as Docker does; DNS labels
/// may hold it (RFC 2181 §11; hickory accepts it, as in SRV owner names).
pub fn validate_service_name(name: &str) -> Result<(), ServiceSpecError> {
    let bytes = name.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(ServiceSpecError::BadName {
            name: name.to_owned(),
        })
    }
}

/// Parses `--env KEY=VALUE`.
pub fn parse_env(text: &str) -> Result<(String, String), ServiceSpecError> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(ServiceSpecError::BadEnv {
            text: text.to_owned(),
        }),
    }
}

impl Service {
    pub fn key(name: &str) -> RecordKey {
        RecordKey::cluster(Kind::Service, name)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Service, PayloadError> {
        decode_payload("service", bytes)
    }

    pub fn from_record(record: &Record) -> Result<Service, PayloadError> {
        Service::decode(record.value.as_deref().ok_or(PayloadError::Tombstone)?)
    }

    /// The number of tasks wanted, given how many nodes can run one (global mode).
    pub fn wanted(&self, eligible_nodes: usize) -> u32 {
        match self.mode {
            Mode::Replicated { replicas } => replicas,
            Mode::Global => eligible_nodes as u32,
        }
    }

    /// How long to wait before restarting an exited task.
    pub fn restart_delay(&self) -> Duration {
        Duration::from_millis(self.restart_delay_ms)
    }

    /// Checks everything a user gave against the rules, including that the encoded
    /// definition fits one record.
    pub fn validate(&self) -> Result<(), ServiceSpecError> {
        validate_service_name(&self.name)?;
        if let Some(member) = &self.stack {
            member.validate(&self.name)?;
        }
        if let Mode::Replicated { replicas } = self.mode {
            if replicas > MAX_REPLICAS {
                return Err(ServiceSpecError::ReplicasOutOfRange { replicas });
            }
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(ServiceSpecError::NoCommand);
        }
        for (i, port) in self.ports.iter().enumerate() {
            if self.ports[..i]
                .iter()
                .any(|p| p.published == port.published && p.protocol == port.protocol)
            {
                return Err(ServiceSpecError::DuplicatePort {
                    port: format!("{}/{}", port.published, port.protocol),
                });
            }
        }
        for (key, _) in &self.env {
            if key.is_empty() || key.contains('=') {
                return Err(ServiceSpecError::BadEnv { text: key.clone() });
            }
        }
        self.security.validate()?;
        self.limits.validate()?;
        let size = self.encode().len();
        if size > MAX_VALUE_BYTES {
            return Err(ServiceSpecError::TooLarge {
                size,
                max: MAX_VALUE_BYTES,
            });
        }
        Ok(())
    }

    /// Why `self` cannot coexist with the earlier `other`, naming `other`.
    fn clash_with(&self, other: &Service) -> Option<String> {
        for port in &self.ports {
            if other
                .ports
                .iter()
                .any(|p| p.published == port.published && p.protocol == port.protocol)
            {
                return Some(format!(
                    "port {}/{} is already published by service {:?}",
                    port.published, port.protocol, other.name
                ));
            }
        }
        if self.vip.is_some() && self.vip == other.vip && self.network == other.network {
            return Some(format!(
                "VIP {} is already used by service {:?}",
                self.vip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                other.name
            ));
        }
        None
    }
}

/// The services as every node sees them, given the same records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSet {
    /// Services in force, sorted by name.
    pub valid: Vec<Service>,
    /// Services that lost a claim to an earlier one, with the reason naming the winner.
    pub conflicted: Vec<(Service, String)>,
}

impl ServiceSet {
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.valid.iter().find(|s| s.name == name)
    }

    /// Why `candidate` could not be created now; `None` if it could.
    pub fn conflicts_with(&self, candidate: &Service) -> Option<String> {
        self.valid.iter().find_map(|s| candidate.clash_with(s))
    }

    /// VIPs in use on `network`.
    pub fn vips_on(&self, network: &str) -> Vec<Ipv4Addr> {
        self.valid
            .iter()
            .chain(self.conflicted.iter().map(|(s, _)| s))
            .filter(|s| s.network == network)
            .filter_map(|s| s.vip)
            .collect()
    }
}

/// Every service in the store, claims resolved: a service publishing a port the cluster
/// itself uses ([`cluster_reserved_ports`]: VXLAN, any node's gossip port) is conflicted —
/// its record may come from a node that did not check; then, in `created` order, a service
/// whose port or VIP is held by an earlier valid service is conflicted.
pub fn valid_services(store: &Store) -> ServiceSet {
    let reserved =
        cluster_reserved_ports(super::nodes(store).iter().map(|(_, info)| info.addr.port()));
    let mut services: Vec<Service> = store
        .cluster_records(Kind::Service)
        .filter_map(|r| match Service::from_record(r) {
            Ok(service) if service.name == r.key.name => {
                Some(crate::rollout::effective_in(store, service))
            }
            Ok(_) => None,
            Err(error) => {
                debug!(%error, name = %r.key.name, "skipping unreadable service");
                None
            }
        })
        .collect();
    services.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    let mut set = ServiceSet::default();
    for service in services {
        if let Err(error) = service.check_reserved(&reserved) {
            set.conflicted.push((service, error.to_string()));
            continue;
        }
        match set.valid.iter().find_map(|s| service.clash_with(s)) {
            Some(reason) => set.conflicted.push((service, reason)),
            None => set.valid.push(service),
        }
    }
    set.valid.sort_by(|a, b| a.name.cmp(&b.name));
    set.conflicted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    set
}

/// The addresses of a network reserved for service VIPs: the upper quarter of its host
/// range (endpoints never get them; see [`super::endpoint::endpoint_range`]).
pub fn vip_range(subnet: Ipv4Net) -> std::ops::RangeInclusive<u32> {
    let endpoints = super::endpoint::endpoint_range(subnet);
    let last_host = u32::from(subnet.broadcast()).saturating_sub(1);
    endpoints.end().saturating_add(1)..=last_host
}

/// A random free VIP of `subnet`, or `None` if the VIP range is full.
pub fn pick_free_vip(
    subnet: Ipv4Net,
    used: &[Ipv4Addr],
    mut random: impl FnMut() -> u32,
) -> Option<Ipv4Addr> {
    let range = vip_range(subnet);
    let (first, last) = (*range.start(), *range.end());
    if first > last {
        return None;
    }
    let size = last - first + 1;
    let start = random() % size;
    (0..size)
        .map(|i| Ipv4Addr::from(first + (start + i) % size))
        .find(|ip| !used.contains(ip))
}

/// The state of a task, as its node reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Its process runs; its health command (if any) has not passed yet.
    Starting,
    /// Its process runs and is healthy: load balancers and DNS serve it.
    Running,
    /// Its process runs but its health command fails.
    Unhealthy,
    /// Its process exited; it is restarted after the service's restart delay.
    Exited,
    /// It could not be started (see the message); retried after the restart delay.
    Failed,
    /// It is being stopped (removed, scaled away, moved or replaced): out of the load
    /// balancers, so it gets no new flows, while its established ones finish; SIGTERM
    /// follows after the node's drain window. Not a slot's holder for placement. Last, so
    /// older nodes still decode the states before it (postcard numbers variants).
    Draining,
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Unhealthy => "unhealthy",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
            TaskState::Draining => "draining",
        })
    }
}

/// A task (one replica of a service) on one node: node-scoped, kind [`Kind::Task`], named
/// by its ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// 12 hex digits; also the task's hostname.
    pub id: String,
    pub service: String,
    /// The `created` stamp of the service it belongs to: a task of an earlier service of the
    /// same name is not this service's.
    pub service_created: Stamp,
    /// Its slot: `0..replicas` in replicated mode, 0 in global mode.
    pub slot: u32,
    /// Its endpoint (same node): the namespace and overlay address.
    pub endpoint: String,
    pub ip: Ipv4Addr,
    pub state: TaskState,
    /// When `state` last changed, ms since the Unix epoch.
    pub since_ms: u64,
    /// Why it exited or failed, or empty.
    pub message: String,
    /// How many times its process was restarted.
    pub restarts: u32,
    /// The stamp of the write that created it: of two tasks of one slot, the older keeps it
    /// while the newer starts.
    pub created: Stamp,
    /// An existing namespace attached by `service attach`: no process, never moved; it
    /// counts as one of the replicas.
    pub attached: bool,
    /// The fingerprint of the definition it was started with
    /// ([`crate::rollout::spec_fingerprint`]): a rollout replaces the tasks whose
    /// fingerprint differs from the service's.
    pub spec: u64,
}

impl Task {
    pub fn key(node: crate::NodeId, id: &str) -> RecordKey {
        RecordKey::node(node, Kind::Task, id)
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Task, PayloadError> {
        decode_payload("task", bytes)
    }

    /// Whether this task was started for the service named `service` created at `created`
    /// (one incarnation of it: a service removed and created again is another).
    pub fn is_of(&self, service: &str, created: Stamp) -> bool {
        self.service == service && self.service_created == created
    }

    /// Whether load balancers and DNS should send it traffic (a draining task keeps its
    /// endpoint, and its established flows, but gets no new ones).
    pub fn serves(&self) -> bool {
        self.state == TaskState::Running
    }
}

/// Every task entry with its node (of live and down nodes alike; callers filter by
/// liveness), by node then ID.
pub fn tasks(store: &Store) -> Vec<(crate::NodeId, Task)> {
    let mut tasks: BTreeMap<(crate::NodeId, String), Task> = BTreeMap::new();
    for record in store.iter_kind(Kind::Task) {
        let (super::Scope::Node(node), Some(value)) = (record.key.scope, record.value.as_deref())
        else {
            continue;
        };
        match Task::decode(value) {
            Ok(task) if task.id == record.key.name => {
                tasks.insert((node, task.id.clone()), task);
            }
            _ => debug!(name = %record.key.name, "skipping unreadable task"),
        }
    }
    tasks.into_iter().map(|((node, _), t)| (node, t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeId;

    pub(super) fn stamp(hlc: u64, writer: u8) -> Stamp {
        Stamp {
            hlc,
            writer: NodeId([writer; 16]),
        }
    }

    pub(super) fn service(name: &str, ports: &[&str], created: Stamp) -> Service {
        Service {
            name: name.into(),
            mode: Mode::Replicated { replicas: 3 },
            network: "net".into(),
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            publish_mode: PublishMode::Ingress,
            endpoint_mode: EndpointMode::Vip,
            vip: None,
            command: vec!["skein".into(), "whoami".into()],
            env: vec![],
            user: None,
            health: None,
            restart_delay_ms: 1000,
            created,
            security: Security::default(),
            limits: Limits::default(),
            stack: None,
            update: Default::default(),
        }
    }

    #[test]
    fn publish_syntax() {
        let p: PublishedPort = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            PublishedPort {
                published: 8080,
                target: 80,
                protocol: Protocol::Tcp
            }
        );
        assert_eq!(
            "53:5353/udp".parse::<PublishedPort>().unwrap().protocol,
            Protocol::Udp
        );
        assert_eq!(p.to_string(), "8080:80/tcp");
        for bad in [
            "",
            "8080",
            "8080:",
            ":80",
            "0:80",
            "80:0",
            "65536:80",
            "+80:80",
            "80:80/sctp",
            "80:80/",
            "a:b",
            "80:80:80",
            " 80:80",
        ] {
            assert!(bad.parse::<PublishedPort>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = service("web", &["8080:80"], stamp(1, 1));
        assert_eq!(ok.validate(), Ok(()));
        let mut bad = ok.clone();
        bad.name = "Web".into();
        assert!(matches!(
            bad.validate(),
            Err(ServiceSpecError::BadName { .. })
        ));
        let mut bad = ok.clone();
        bad.ports = vec!["80:80".parse().unwrap(), "80:81".parse().unwrap()];
        assert!(matches!(
            bad.validate(),
            Err(ServiceSpecError::DuplicatePort { .. })
        ));
        let mut fine = ok.clone();
        fine.ports = vec!["80:80".parse().unwrap(), "80:80/udp".parse().unwrap()];
        assert_eq!(fine.validate(), Ok(()), "tcp and udp are different ports");
        let mut bad = ok.clone();
        bad.command.clear();
        assert_eq!(bad.validate(), Err(ServiceSpecError::NoCommand));
        let mut bad = ok.clone();
        bad.mode = Mode::Replicated { replicas: 100_000 };
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.command = vec!["x".repeat(2000)];
        assert!(matches!(
            bad.validate(),
            Err(ServiceSpecError::TooLarge { .. })
        ));
        let mut fine = ok;
        fine.name = "shop_redis".into();
        assert_eq!(
            fine.validate(),
            Ok(()),
            "stacks name services STACK_service"
        );
        fine.stack = Some(StackMember {
            stack: "shop".into(),
            short_name: "web".into(),
        });
        assert!(
            matches!(fine.validate(), Err(ServiceSpecError::Stack(_))),
            "a member must be named STACK_short"
        );
        assert!(parse_env("=x").is_err());
        assert!(parse_env("novalue").is_err());
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
    }

    #[test]
    fn the_earliest_claim_of_a_port_wins() {
        let mut store = Store::new();
        let later = service("b", &["8080:80"], stamp(20, 2));
        let earlier = service("a", &["9090:90", "8080:81"], stamp(10, 1));
        let other = service("c", &["8080:80/udp"], stamp(30, 3));
        for (s, hlc) in [(&later, 21), (&earlier, 11), (&other, 31)] {
            store.merge(Record {
                key: Service::key(&s.name),
                stamp: stamp(hlc, 1),
                value: Some(s.encode()),
            });
        }
        let set = valid_services(&store);
        let names: Vec<_> = set.valid.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(set.conflicted.len(), 1);
        assert!(
            set.conflicted[0].1.contains("\"a\""),
            "{}",
            set.conflicted[0].1
        );
    }

    #[test]
    fn host_mode_ports_are_claimed_cluster_wide_like_ingress_ones() {
        let host = |name: &str, ports: &[&str], created| Service {
            publish_mode: PublishMode::Host,
            ..service(name, ports, created)
        };
        let mut store = Store::new();
        let services = [
            host("edge", &["9090:80"], stamp(10, 1)),
            // Host mode against host mode, and ingress against host mode, both ways.
            host("edge2", &["9090:81"], stamp(11, 2)),
            service("web", &["9090:82"], stamp(12, 3)),
            service("api", &["7070:80"], stamp(13, 1)),
            host("late", &["7070:80"], stamp(14, 2)),
            host("dns", &["9090:53/udp"], stamp(15, 3)),
        ];
        for s in &services {
            store.merge(Record {
                key: Service::key(&s.name),
                stamp: s.created,
                value: Some(s.encode()),
            });
        }
        let set = valid_services(&store);
        let names: Vec<_> = set.valid.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api", "dns", "edge"]);
        let reasons: Vec<_> = set
            .conflicted
            .iter()
            .map(|(s, r)| (s.name.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "edge2",
                    "port 9090/tcp is already published by service \"edge\""
                ),
                (
                    "late",
                    "port 7070/tcp is already published by service \"api\""
                ),
                (
                    "web",
                    "port 9090/tcp is already published by service \"edge\""
                ),
            ]
        );
        assert!(set
            .conflicts_with(&host("new", &["9090:80"], stamp(20, 1)))
            .is_some());
    }

    #[test]
    fn a_peers_service_on_skeins_own_ports_is_not_in_force() {
        let mut store = Store::new();
        // A node whose gossip runs on 8000: nobody may publish 8000, TCP or UDP.
        let info = crate::state::NodeInfo {
            hostname: "h2".into(),
            addr: "10.0.0.2:8000".parse().unwrap(),
            underlay_ip: Ipv4Addr::new(10, 0, 0, 2),
            underlay_mtu: 1500,
            boot_epoch: 1,
            started_at_ms: 1,
            version: "x".into(),
            leaving: false,
            restart_grace_until_ms: 0,
            key_share: [0; 32],
        };
        store.merge(Record {
            key: crate::state::NodeInfo::key(NodeId([2; 16])),
            stamp: stamp(1, 2),
            value: Some(info.encode()),
        });
        let services = [
            service("vxlan", &["4789:80/udp"], stamp(10, 1)),
            service("gossip", &["8000:80/udp"], stamp(11, 1)),
            service("peer", &["8000:80"], stamp(12, 1)),
            // Another number, or VXLAN's number over TCP: fine.
            service("web", &["8080:80", "4789:80"], stamp(13, 1)),
        ];
        for s in &services {
            store.merge(Record {
                key: Service::key(&s.name),
                stamp: s.created,
                value: Some(s.encode()),
            });
        }
        let set = valid_services(&store);
        let names: Vec<_> = set.valid.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web"]);
        let reasons: Vec<_> = set
            .conflicted
            .iter()
            .map(|(s, r)| (s.name.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "gossip",
                    "port 8000/udp is used by Skein itself (gossip and peer requests between \
                     nodes); publish another port"
                ),
                (
                    "peer",
                    "port 8000/tcp is used by Skein itself (gossip and peer requests between \
                     nodes); publish another port"
                ),
                (
                    "vxlan",
                    "port 4789/udp is used by Skein itself (VXLAN between nodes); publish \
                     another port"
                ),
            ]
        );
    }

    #[test]
    fn vips_come_from_the_reserved_quarter() {
        let subnet: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let range = vip_range(subnet);
        assert_eq!(Ipv4Addr::from(*range.end()), Ipv4Addr::new(10, 0, 0, 254));
        assert!(!super::super::endpoint::endpoint_range(subnet).contains(range.start()));
        let mut n = 0;
        let vip = pick_free_vip(subnet, &[], || {
            n += 1;
            n
        })
        .unwrap();
        assert!(range.contains(&u32::from(vip)));
        let all: Vec<Ipv4Addr> = range.clone().map(Ipv4Addr::from).collect();
        assert_eq!(pick_free_vip(subnet, &all, || 0), None);
        let tiny: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        assert!(vip_range(tiny).start() <= vip_range(tiny).end());
    }

    #[test]
    fn tasks_round_trip() {
        let task = Task {
            id: "0123456789ab".into(),
            service: "web".into(),
            service_created: stamp(1, 1),
            slot: 2,
            endpoint: "ba9876543210".into(),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            state: TaskState::Running,
            since_ms: 5,
            message: String::new(),
            restarts: 0,
            created: stamp(2, 2),
            attached: false,
            spec: 0,
        };
        assert_eq!(Task::decode(&task.encode()).unwrap(), task);
        let mut store = Store::new();
        store.merge(Record {
            key: Task::key(NodeId([2; 16]), &task.id),
            stamp: stamp(3, 2),
            value: Some(task.encode()),
        });
        assert_eq!(tasks(&store), vec![(NodeId([2; 16]), task)]);
    }
}
