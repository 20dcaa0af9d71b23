//! The local API between the `skein` CLI and its agent: one JSON request per line over a
//! Unix socket, one JSON response line back. Only the agent's own host can reach it (the
//! socket is root-only), so it carries no authentication of its own.

use std::{future::Future, pin::Pin};

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
        subnet: Option<String>,
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
        underlay: String,
        mac: String,
        cidr: String,
    },
    /// `skein network vtep rm NET --cidr CIDR`
    VtepRm { network: String, cidr: String },
    /// `skein network vtep ls [NET]`
    VtepLs { network: Option<String> },
    /// `skein debug maps`: the dataplane's maps, human-readable.
    DebugMaps,
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
