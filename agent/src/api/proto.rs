//! The local API between the `skein` CLI and its agent: one JSON request per line over a
//! Unix socket, one JSON response line back. Only the agent's own host can reach it (the
//! socket is root-only), so it carries no authentication of its own.

use std::{fmt, future::Future, net::Ipv4Addr, pin::Pin, time::Duration};

use ipnet::Ipv4Net;
use manager::state::{
    service::{Security, StackMember},
    EndpointMode, Mode, PublishMode, PublishedPort, TaskState,
};
use serde::{Deserialize, Serialize};

/// What the CLI asks of its agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// `skein node ls`
    NodeLs,
    /// `skein node rm ID`: forget a down node (a full ID or a unique prefix).
    NodeRm { id: String },
    /// `skein agent leave`: announce departure, remove the dataplane, exit.
    Leave,
    /// `skein join-token [--rotate]`
    JoinToken {
        #[serde(default)]
        rotate: bool,
    },
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
    /// `skein debug conntrack`: this node's routing-mesh flows (it being their ingress
    /// node).
    DebugConntrack,
    /// `skein debug dns NAME [--type T] [--netns NS]`: what a client in that endpoint
    /// namespace (or the operator, without one) gets, answered by the DNS server's path.
    DebugDns {
        name: String,
        record_type: String,
        netns: Option<String>,
    },
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
    /// `skein service update NAME …`, and `stack deploy` re-deploying a changed service.
    ServiceUpdate(super::update::ServiceUpdateRequest),
    /// `skein service rollback NAME`: back to the previous definition, as a rollout.
    ServiceRollback { name: String },
    /// Where the rollout of NAME stands (what `service update`/`rollback` poll).
    ServiceRollout { name: String },
    /// `skein node update --availability A NODE` (a full ID, a unique prefix or a hostname).
    NodeUpdate {
        node: String,
        availability: super::update::AvailabilityArg,
    },
    /// `skein node inspect NODE`
    NodeInspect { node: String },
}

/// `service create`'s arguments, parsed by the CLI into the manager's types; the agent
/// checks what only it can (the command and user exist on this node, the cluster's rules).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceSpec {
    pub(crate) name: String,
    pub(crate) mode: Mode,
    pub(crate) network: Option<String>,
    pub(crate) publish: Vec<PublishedPort>,
    pub(crate) publish_mode: PublishMode,
    pub(crate) endpoint_mode: EndpointMode,
    /// `KEY=VALUE` pairs, split.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) user: Option<String>,
    pub(crate) health_cmd: Option<String>,
    pub(crate) health_interval: Duration,
    pub(crate) restart_delay: Duration,
    pub(crate) command: Vec<String>,
    /// `--cap-add`, `--cap-drop` (normalized names), `--allow-new-privileges`.
    pub(crate) security: Security,
    /// `--limit-memory`, `--limit-cpu`, `--limit-pids`.
    #[serde(default)]
    pub(crate) limits: manager::state::service::Limits,
    /// The stack deploying it (`stack deploy`); absent for `service create`.
    #[serde(default)]
    pub(crate) stack: Option<StackMember>,
    /// `--update-*` / `--rollback-*` (compose `update_config` / `rollback_config`).
    #[serde(default)]
    pub(crate) rollout: manager::rollout::RolloutConfigs,
}

impl ServiceSpec {
    /// The health check the spec asks for, as the service record holds it (one place, for
    /// `service create`, `service update` and `stack deploy`'s comparison).
    pub(crate) fn health(&self) -> Option<manager::state::HealthCheck> {
        self.health_cmd
            .as_ref()
            .map(|cmd| manager::state::HealthCheck {
                cmd: cmd.clone(),
                interval_ms: u64::try_from(self.health_interval.as_millis()).unwrap_or(u64::MAX),
            })
    }
}

/// The agent's answer: a result or one clear sentence saying what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum Response {
    Ok { body: Body },
    Error { message: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub(crate) enum Body {
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
    /// `service inspect`: the service as stored, as JSON (with, for a service in the
    /// routing mesh, each backend's flows tracked on every node under `mesh`).
    Json(serde_json::Value),
    Logs(LogChunk),
    /// `debug conntrack`: one row per tracked flow.
    Conntrack(Vec<ConntrackRow>),
    /// A service's rollout (`service update`, `rollback`, `inspect --pretty`).
    Rollout(super::update::RolloutStatus),
}

/// One flow of `debug conntrack`, as this node (its ingress node) tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConntrackRow {
    /// `tcp` or `udp`.
    pub(crate) protocol: String,
    /// The client's `IP:PORT`.
    pub(crate) client: String,
    /// Where the client sent to: this node's underlay `IP:PUBLISHED_PORT`.
    pub(crate) ingress: String,
    /// The task's overlay `IP:TARGET_PORT`.
    pub(crate) backend: String,
    /// The underlay address of the backend's host.
    pub(crate) backend_host: String,
    /// The service whose slot the flow is in; empty if it is gone.
    pub(crate) service: String,
    /// `syn_sent`, `established`, `closing`, `udp`; `expired` once past its timeout.
    pub(crate) state: String,
    pub(crate) age_ms: u64,
    pub(crate) idle_ms: u64,
}

/// One row of `service ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceRow {
    pub(crate) name: String,
    /// `replicated` or `global`.
    pub(crate) mode: String,
    /// Tasks running (healthy) / tasks wanted, like `3/3`.
    pub(crate) replicas: String,
    pub(crate) network: String,
    /// `PUBLISHED:TARGET/PROTO` each.
    pub(crate) ports: Vec<String>,
    /// The VIP, or empty in dnsrr mode.
    pub(crate) vip: String,
    pub(crate) command: String,
    /// The stack that deployed it, or empty.
    #[serde(default)]
    pub(crate) stack: String,
}

/// `service ps`: the service's tasks and whether it has converged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceStatus {
    pub(crate) service: ServiceRow,
    pub(crate) tasks: Vec<TaskRow>,
    /// Tasks the service wants now.
    pub(crate) wanted: usize,
    /// Tasks running and healthy, on the node placement gives them.
    pub(crate) running: usize,
    /// `running == wanted` and no task is left over.
    pub(crate) converged: bool,
    /// When the last of the running tasks started running (ms since the Unix epoch, its
    /// node's clock): `service create` waits until they have all run for a while.
    pub(crate) running_since_ms: u64,
    /// Why tasks are not running, one line each (failed starts, exits).
    pub(crate) problems: Vec<String>,
}

/// One row of `service ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TaskRow {
    /// `web.1` (replicated), `web.<node>` (global) or `web.attached-<id>`.
    pub(crate) name: String,
    pub(crate) id: String,
    /// Full node ID; tables show the hostname.
    pub(crate) node: String,
    pub(crate) hostname: String,
    pub(crate) ip: String,
    pub(crate) state: TaskRowState,
    pub(crate) since_ms: u64,
    pub(crate) message: String,
}

/// A task's state as `service ps` shows it: the state its node reports, or `down` while
/// its node is. Written (tables and JSON alike) as `starting`, `running`, `unhealthy`,
/// `exited`, `failed` or `down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub(crate) enum TaskRowState {
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
            "draining" => TaskRowState::Reported(TaskState::Draining),
            "down" => TaskRowState::NodeDown,
            _ => return Err(format!("{text:?} is not a task state")),
        })
    }
}

/// Log bytes of a service's tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogChunk {
    /// Per task: its name, ID and the new bytes (lossy UTF-8).
    pub(crate) entries: Vec<LogEntry>,
    /// Tasks whose output could not be read, with why: `web.2 on host2: node is down`.
    pub(crate) elsewhere: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogEntry {
    pub(crate) task: String,
    pub(crate) id: String,
    pub(crate) text: String,
    /// Where the next read starts.
    pub(crate) next: u64,
}

/// One row of `endpoint ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndpointRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) network: String,
    pub(crate) ip: String,
    /// Short ID of the node it runs on.
    pub(crate) node: String,
    /// The namespace on that node.
    pub(crate) netns: String,
    /// `ready`, `down` (its node is down) or `collided` (lost its address; reallocating).
    pub(crate) status: String,
}

/// One row of `network vtep ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VtepRow {
    pub(crate) network: String,
    pub(crate) cidr: String,
    pub(crate) underlay: String,
    pub(crate) mac: String,
}

/// One row of `node ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRow {
    /// Full node ID (32 hex digits); tables show the first 12.
    pub(crate) id: String,
    pub(crate) hostname: String,
    /// Gossip address `IP:PORT`.
    pub(crate) address: String,
    /// `ready` or `down`.
    pub(crate) status: String,
    /// Whether this is the node the CLI talks to.
    pub(crate) is_self: bool,
    /// When the node's agent started (ms since the Unix epoch); 0 if unknown.
    pub(crate) started_at_ms: u64,
    /// `active`, `pause` or `drain` (`node update --availability`).
    pub(crate) availability: String,
}

/// One row of `network ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetworkRow {
    pub(crate) name: String,
    pub(crate) subnet: String,
    pub(crate) vni: u32,
    /// Short ID of the node that created it.
    pub(crate) created_by: String,
    pub(crate) created_at_ms: u64,
}

/// What the API server calls for each request; the daemon implements it on top of the
/// manager.
pub(crate) trait Backend: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_are_written_as_the_cli_always_showed_them() {
        for (state, text) in [
            (TaskRowState::Reported(TaskState::Running), "running"),
            (TaskRowState::Reported(TaskState::Failed), "failed"),
            (TaskRowState::NodeDown, "down"),
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<TaskRowState>(&json).unwrap(), state);
            assert_eq!(state.to_string(), text);
        }
        assert!(serde_json::from_str::<TaskRowState>("\"asleep\"").is_err());
    }

    #[test]
    fn typed_requests_survive_the_wire() {
        let requests = [
            Request::ServiceCreate(ServiceSpec {
                name: "web".into(),
                mode: Mode::Replicated { replicas: 3 },
                network: None,
                publish: vec!["8080:80/udp".parse().unwrap()],
                publish_mode: PublishMode::Host,
                endpoint_mode: EndpointMode::Dnsrr,
                env: vec![("A".into(), "b".into())],
                user: None,
                health_cmd: Some("true".into()),
                health_interval: Duration::from_millis(300),
                restart_delay: Duration::from_secs(1),
                command: vec!["sleep".into(), "1".into()],
                security: Security {
                    cap_add: vec!["NET_ADMIN".into()],
                    cap_drop: vec!["ALL".into()],
                    new_privileges: true,
                },
                limits: manager::state::service::Limits {
                    memory_bytes: Some(64 << 20),
                    cpu_millis: Some(1500),
                    pids: Some(20),
                },
                stack: None,
                rollout: Default::default(),
            }),
            Request::VtepAdd {
                network: "n".into(),
                underlay: Ipv4Addr::new(10, 0, 0, 9),
                mac: [2, 0, 0, 0, 0, 1],
                cidr: "10.1.2.0/24".parse().unwrap(),
            },
            Request::NetworkCreate {
                name: "n".into(),
                subnet: Some("10.10.0.0/24".parse().unwrap()),
                vni: None,
            },
        ];
        for request in requests {
            let line = serde_json::to_string(&request).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        }
    }
}
