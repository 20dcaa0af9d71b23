//! A consistent snapshot of the cluster as one node sees it: who is alive, and the
//! cluster objects that currently count. This is what the agent reconciles into the
//! kernel and DNS and what the CLI lists.

use std::net::SocketAddr;

use crate::{
    gossip::Engine,
    state::{self, Endpoint, EndpointSet, Network, NetworkSet, NodeInfo, ServiceSet, Task, Vtep},
    NodeId,
};

/// One node and whether it is up in this node's view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    /// Its self-description, once gossiped (a member may be seen alive just before).
    pub info: Option<NodeInfo>,
    /// The address it gossips from, as membership saw it.
    pub addr: Option<SocketAddr>,
    /// Alive or suspect: `ready`; declared down or left: `down`.
    pub up: bool,
    pub is_self: bool,
}

/// A snapshot of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub self_id: NodeId,
    /// Bumped by the store on every applied change.
    pub store_version: u64,
    /// Every known, not removed node, sorted by hostname then ID.
    pub nodes: Vec<NodeStatus>,
    /// Networks after conflict resolution (the same on every node with the same records).
    pub networks: NetworkSet,
    /// Every endpoint entry (of up and down nodes; see [`ClusterView::live_endpoints`]),
    /// address collisions resolved.
    pub endpoints: EndpointSet,
    pub vteps: Vec<Vtep>,
    /// Services after claim resolution.
    pub services: ServiceSet,
    /// Every task entry (of up and down nodes; see [`ClusterView::live_tasks`]).
    pub tasks: Vec<(NodeId, Task)>,
    /// Smallest underlay MTU among the up nodes minus VXLAN's 50 bytes.
    pub overlay_mtu: Option<u32>,
}

impl ClusterView {
    /// Builds the snapshot from the engine's store and membership.
    pub fn build(engine: &Engine) -> ClusterView {
        let self_id = engine.node();
        engine.with_store(|store| {
            let mut nodes: Vec<NodeStatus> = state::nodes(store)
                .into_iter()
                .map(|(id, info)| NodeStatus {
                    id,
                    addr: Some(info.addr),
                    info: Some(info),
                    up: engine.is_up(&id),
                    is_self: id == self_id,
                })
                .collect();
            // Members alive in SWIM whose self-description has not arrived yet.
            for member in engine.up_members() {
                if !nodes.iter().any(|n| n.id == member.id) && !store.is_removed(&member.id) {
                    nodes.push(NodeStatus {
                        id: member.id,
                        info: None,
                        addr: Some(member.addr),
                        up: true,
                        is_self: false,
                    });
                }
            }
            nodes.sort_by(|a, b| {
                let host = |n: &NodeStatus| {
                    n.info
                        .as_ref()
                        .map(|i| i.hostname.clone())
                        .unwrap_or_default()
                };
                host(a).cmp(&host(b)).then(a.id.cmp(&b.id))
            });
            let overlay_mtu = state::overlay_mtu(
                nodes
                    .iter()
                    .filter(|n| n.up)
                    .filter_map(|n| n.info.as_ref())
                    .map(|i| i.underlay_mtu),
            );
            ClusterView {
                self_id,
                store_version: store.version(),
                nodes,
                networks: state::valid_networks(store),
                endpoints: state::endpoints(store),
                vteps: state::vteps(store),
                services: state::valid_services(store),
                tasks: state::tasks(store),
                overlay_mtu,
            }
        })
    }

    /// Whether publishing `other` would tell subscribers anything new.
    pub fn differs_from(&self, other: &ClusterView) -> bool {
        self != other
    }

    pub fn node(&self, id: &NodeId) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == *id)
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.valid.iter().find(|n| n.name == name)
    }

    /// Endpoints of up nodes on networks that exist: what the datapath serves.
    pub fn live_endpoints(&self) -> impl Iterator<Item = &(NodeId, Endpoint)> {
        self.endpoints.valid.iter().filter(|(node, e)| {
            self.node(node).is_some_and(|n| n.up)
                && self.network(&e.network).is_some_and(|n| n.vni == e.vni)
        })
    }

    /// Tasks of up nodes.
    pub fn live_tasks(&self) -> impl Iterator<Item = &(NodeId, Task)> {
        self.tasks
            .iter()
            .filter(|(node, _)| self.node(node).is_some_and(|n| n.up))
    }

    /// This node's own task entries.
    pub fn own_tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks
            .iter()
            .filter(|(node, _)| *node == self.self_id)
            .map(|(_, t)| t)
    }

    /// This node's own endpoint entries (whatever their address's fate).
    pub fn own_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .valid
            .iter()
            .filter(|(node, _)| *node == self.self_id)
            .map(|(_, e)| e)
            .chain(
                self.endpoints
                    .collided
                    .iter()
                    .filter(|(node, _, _)| *node == self.self_id)
                    .map(|(_, e, _)| e),
            )
    }

    /// How many nodes are up, self included.
    pub fn ready_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.up).count()
    }
}
