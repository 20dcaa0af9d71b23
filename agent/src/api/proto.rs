//! The local API between the `skein` CLI and its agent: one JSON request per line over a
//! Unix socket, one JSON response line back. Only the agent's own host can reach it (the
//! socket is root-only), so it carries no authentication of its own.

use std::{fmt, future::Future, net::Ipv4Addr, pin::Pin, time::Duration};

use ipnet::Ipv4Net;
use manager::state::{EndpointMode, Mode, PublishMode, PublishedPort, TaskState};
use serde::{Deserialize, Serialize};

/// What the CLI asks of its agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `skein node ls`
    NodeLs,
    /// `skein node rm ID`: forget a down node (a full ID or a unique prefix).
    NodeRm { id: String },
    /// `skein agent leave`: announce departure, remove the dataplane, exit.
    Leave,
    /// `skein join-token`
    JoinToken,
    /// `skein network create NAME [--subnet CIDR] [--vni N]`
    NetworkCreate {
        name: String,
        subnet: Option<Ipv4Net>,
        vni: Option<u32>,
    },
    /// `skein network ls`
    NetworkLs,
    /// `skein network rm NAME`
    NetworkRm { name: String },
    /// `skein endpoint create --network NET [--name NAME]`: a fresh namespace.
    EndpointCreate {
        network: String,
        name: Option<String>,
    },
    /// `skein endpoint attach --network NET --netns NAME|PATH [--name NAME]`
    EndpointAttach {
        network: String,
        netns: String,
        name: Option<String>,
    },
    /// `skein endpoint ls`
    EndpointLs,
    /// `skein endpoint rm ID|NAME`
    EndpointRm { id: String },
    /// `skein network vtep add NET --underlay IP --mac MAC --cidr CIDR`
    VtepAdd {
        network: String,
        underlay: Ipv4Addr,
        mac: [u8; 6],
        cidr: Ipv4Net,
    },
    /// `skein network vtep rm NET --cidr CIDR`
    VtepRm { network: String, cidr: Ipv4Net },
    /// `skein network vtep ls [NET]`
    VtepLs { network: Option<String> },
    /// `skein debug maps`: the dataplane's maps, human-readable.
    DebugMaps,
    /// `skein service create ...`
    ServiceCreate(ServiceSpec),
    /// `skein service ls`
    ServiceLs,
    /// `skein service ps NAME`; also what `service create`/`scale` poll for progress.
    ServicePs { name: String },
    /// `skein service inspect NAME`
    ServiceInspect { name: String },
    /// `skein service scale NAME=N`
    ServiceScale { name: String, replicas: u32 },
    /// `skein service rm NAME`
    ServiceRm { name: String },
    /// `skein service attach NAME --netns NAME|PATH`
    ServiceAttach { name: String, netns: String },
    /// `skein service logs NAME`: what the tasks of NAME, on every node, wrote after `from`
    /// (per task ID, a byte offset into its log; absent: from the start). The agent reads
    /// its own tasks' logs and asks the other nodes for theirs (peer RPC). `--follow` asks
    /// again with the offsets returned.
    ServiceLogs {
        name: String,
        from: std::collections::BTreeMap<String, u64>,
    },
}

/// `service create`'s arguments, parsed by the CLI into the manager's types; the agent
/// checks what only it can (the command and user exist on this node, the cluster's rules).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub mode: Mode,
    pub network: Option<String>,
    pub publish: Vec<PublishedPort>,
    pub publish_mode: PublishMode,
    pub endpoint_mode: EndpointMode,
    /// `KEY=VALUE` pairs, split.
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub health_cmd: Option<String>,
    pub health_interval: Duration,
    pub restart_delay: Duration,
    pub command: Vec<String>,
}

/// The agent's answer: a result or one clear sentence saying what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { body: Body },
    Error { message: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Body {
    Nodes(Vec<NodeRow>),
    Networks(Vec<NetworkRow>),
    Network(NetworkRow),
    Token(String),
    /// A short confirmation, e.g. `removed node 3f2a…`.
    Done(String),
    Endpoints(Vec<EndpointRow>),
    Endpoint(EndpointRow),
    Vteps(Vec<VtepRow>),
    /// Preformatted text (debug output).
    Text(String),
    Services(Vec<ServiceRow>),
    ServiceStatus(Box<ServiceStatus>),
    /// `service inspect`: the service as stored, as JSON.
    Json(serde_json::Value),
    Logs(LogChunk),
}

/// One row of `service ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Tasks running (healthy) / tasks wanted, like `3/3`.
    pub replicas: String,
    pub network: String,
    /// `PUBLISHED:TARGET/PROTO` each.
    pub ports: Vec<String>,
    /// The VIP, or empty in dnsrr mode.
    pub vip: String,
    pub command: String,
}

/// `service ps`: the service's tasks and whether it has converged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: ServiceRow,
    pub tasks: Vec<TaskRow>,
    /// Tasks the service wants now.
    pub wanted: usize,
    /// Tasks running and healthy, on the node placement gives them.
    pub running: usize,
    /// `running == wanted` and no task is left over.
    pub converged: bool,
    /// When the last of the running tasks started running (ms since the Unix epoch, its
    /// node's clock): `service create` waits until they have all run for a while.
    pub running_since_ms: u64,
    /// Why tasks are not running, one line each (failed starts, exits).
    pub problems: Vec<String>,
}

/// One row of `service ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// `web.1` (replicated), `web.<node>` (global) or `web.attached-<id>`.
    pub name: String,
    pub id: String,
    /// Full node ID; tables show the hostname.
    pub node: String,
    pub hostname: String,
    pub ip: String,
    pub state: TaskRowState,
    pub since_ms: u64,
    pub message: String,
}

/// A task's state as `service ps` shows it: the state its node reports, or `down` while
/// its node is. Written (tables and JSON alike) as `starting`, `running`, `unhealthy`,
/// `exited`, `failed` or `down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum TaskRowState {
    Reported(TaskState),
    NodeDown,
}

impl fmt::Display for TaskRowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskRowState::Reported(state) => state.fmt(f),
            TaskRowState::NodeDown => f.write_str("down"),
        }
    }
}

impl From<TaskRowState> for String {
    fn from(state: TaskRowState) -> String {
        state.to_string()
    }
}

impl TryFrom<String> for TaskRowState {
    type Error = String;

    fn try_from(text: String) -> Result<TaskRowState, String> {
        Ok(match text.as_str() {
            "starting" => TaskRowState::Reported(TaskState::Starting),
            "running" => TaskRowState::Reported(TaskState::Running),
            "unhealthy" => TaskRowState::Reported(TaskState::Unhealthy),
            "exited" => TaskRowState::Reported(TaskState::Exited),
            "failed" => TaskRowState::Reported(TaskState::Failed),
            "down" => TaskRowState::NodeDown,
            _ => return Err(format!("{text:?} is not a task state")),
        })
    }
}

/// Log bytes of a service's tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// Per task: its name, ID and the new bytes (lossy UTF-8).
    pub entries: Vec<LogEntry>,
    /// Tasks whose output could not be read, with why: `web.2 on host2: node is down`.
    pub elsewhere: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub task: String,
    pub id: String,
    pub text: String,
    /// Where the next read starts.
    pub next: u64,
}

/// One row of `endpoint ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub id: String,
    pub name: String,
    pub network: String,
    pub ip: String,
    /// Short ID of the node it runs on.
    pub node: String,
    /// The namespace on that node.
    pub netns: String,
    /// `ready`, `down` (its node is down) or `collided` (lost its address; reallocating).
    pub status: String,
}

/// One row of `network vtep ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtepRow {
    pub network: String,
    pub cidr: String,
    pub underlay: String,
    pub mac: String,
}

/// One row of `node ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    /// Full node ID (32 hex digits); tables show the first 12.
    pub id: String,
    pub hostname: String,
    /// Gossip address `IP:PORT`.
    pub address: String,
    /// `ready` or `down`.
    pub status: String,
    /// Whether this is the node the CLI talks to.
    pub is_self: bool,
    /// When the node's agent started (ms since the Unix epoch); 0 if unknown.
    pub started_at_ms: u64,
}

/// One row of `network ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRow {
    pub name: String,
    pub subnet: String,
    pub vni: u32,
    /// Short ID of the node that created it.
    pub created_by: String,
    pub created_at_ms: u64,
}

/// What the API server calls for each request; the daemon implements it on top of the
/// manager.
pub trait Backend: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}
