//! A consistent snapshot of the cluster as one node sees it: who is alive, and the
//! cluster objects that currently count. This is what the agent reconciles into the
//! kernel and DNS and what the CLI lists.

use std::net::SocketAddr;

use crate::{
    gossip::Engine,
    state::{
        self, Endpoint, EndpointSet, Network, NetworkSet, NodeInfo, Service, ServiceSet, Stamp,
        Task, Vtep,
    },
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
    /// `node update --availability`: whether it takes tasks.
    pub availability: crate::rollout::Availability,
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
            let availability = crate::rollout::availabilities(store);
            let mut nodes: Vec<NodeStatus> = state::nodes(store)
                .into_iter()
                .map(|(id, info)| NodeStatus {
                    id,
                    addr: Some(info.addr),
                    info: Some(info),
                    up: engine.is_up(&id),
                    is_self: id == self_id,
                    availability: availability.get(&id).copied().unwrap_or_default(),
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
                        availability: Default::default(),
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

    /// The tasks of this incarnation of `service` (see [`is_task_of`]), of up and down nodes
    /// alike, in the view's order (by node, then ID). Narrow them with
    /// [`ServiceTasks::live`], [`ServiceTasks::serving`], [`ServiceTasks::placed`] or
    /// [`ServiceTasks::attached`]: `view.tasks_of(&service).serving()` is what load
    /// balancers and DNS send traffic to.
    pub fn tasks_of<'a>(&'a self, service: &'a Service) -> ServiceTasks<'a> {
        ServiceTasks {
            view: self,
            name: &service.name,
            created: service.created,
            entries: self.tasks.iter(),
            live_only: false,
            serving_only: false,
            attached: None,
        }
    }

    /// The service `task` belongs to, if that incarnation is still in force (a service
    /// removed, or removed and created again, has none).
    pub fn service_of(&self, task: &Task) -> Option<&Service> {
        self.services
            .get(&task.service)
            .filter(|service| is_task_of(task, service))
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

/// Whether `task` is a task of this incarnation of `service`: the same name, and started for
/// the service created at `service.created`. A task of an earlier service of the same name
/// (removed, then created again) is not this one's, even while it still runs.
pub fn is_task_of(task: &Task, service: &Service) -> bool {
    task.is_of(&service.name, service.created)
}

/// The tasks of one incarnation of a service, with their nodes: [`ClusterView::tasks_of`].
/// Each narrowing method keeps the ones already applied.
#[derive(Clone, Debug)]
pub struct ServiceTasks<'a> {
    view: &'a ClusterView,
    name: &'a str,
    created: Stamp,
    entries: std::slice::Iter<'a, (NodeId, Task)>,
    live_only: bool,
    serving_only: bool,
    /// `Some(true)`: only attached tasks; `Some(false)`: only placed ones.
    attached: Option<bool>,
}

impl<'a> ServiceTasks<'a> {
    /// Only tasks of up nodes (a down node's tasks are still listed, as `down`, by
    /// `service ps`, but count for nothing).
    pub fn live(mut self) -> ServiceTasks<'a> {
        self.live_only = true;
        self
    }

    /// Only healthy running tasks of up nodes ([`Task::serves`]): those load balancers,
    /// the mesh and DNS send new traffic to. Draining tasks are left out (their
    /// established flows go on: their endpoints stay until they are stopped).
    pub fn serving(mut self) -> ServiceTasks<'a> {
        self.live_only = true;
        self.serving_only = true;
        self
    }

    /// Only tasks placement made (attached namespaces left out).
    pub fn placed(mut self) -> ServiceTasks<'a> {
        self.attached = Some(false);
        self
    }

    /// Only namespaces attached by `service attach` (each counts as one replica).
    pub fn attached(mut self) -> ServiceTasks<'a> {
        self.attached = Some(true);
        self
    }

    fn keeps(&self, node: &NodeId, task: &Task) -> bool {
        task.is_of(self.name, self.created)
            && self
                .attached
                .is_none_or(|attached| task.attached == attached)
            && (!self.serving_only || task.serves())
            && (!self.live_only || self.view.node(node).is_some_and(|n| n.up))
    }
}

impl<'a> Iterator for ServiceTasks<'a> {
    type Item = &'a (NodeId, Task);

    fn next(&mut self) -> Option<&'a (NodeId, Task)> {
        loop {
            let entry = self.entries.next()?;
            if self.keeps(&entry.0, &entry.1) {
                return Some(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::{Mode, TaskState};

    fn stamp(hlc: u64) -> Stamp {
        Stamp {
            hlc,
            writer: NodeId([9; 16]),
        }
    }

    fn service(name: &str, created: u64) -> Service {
        crate::testing::service(name, Mode::Replicated { replicas: 3 }, stamp(created))
    }

    fn task(id: &str, service: &Service, state: TaskState, attached: bool) -> Task {
        Task {
            id: id.into(),
            service: service.name.clone(),
            service_created: service.created,
            slot: 0,
            endpoint: id.into(),
            ip: Ipv4Addr::new(10, 10, 0, 2),
            state,
            since_ms: 1,
            message: String::new(),
            restarts: 0,
            created: stamp(5),
            attached,
            spec: 0,
        }
    }

    fn node(id: u8, up: bool) -> NodeStatus {
        NodeStatus {
            id: NodeId([id; 16]),
            info: None,
            addr: None,
            up,
            is_self: id == 1,
            availability: Default::default(),
        }
    }

    /// Node 1 and 2 up, node 3 down; `web` (created at 10) with tasks in every state, a
    /// task of an earlier `web` (created at 1) and one of `api`.
    fn view() -> ClusterView {
        let web = service("web", 10);
        let old_web = service("web", 1);
        let api = service("api", 10);
        let (up1, up2, down) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        ClusterView {
            self_id: up1,
            store_version: 1,
            nodes: vec![node(1, true), node(2, true), node(3, false)],
            networks: NetworkSet::default(),
            endpoints: EndpointSet::default(),
            vteps: vec![],
            services: ServiceSet {
                valid: vec![api.clone(), web.clone()],
                conflicted: vec![],
            },
            tasks: vec![
                (up1, task("running", &web, TaskState::Running, false)),
                (up1, task("old", &old_web, TaskState::Running, false)),
                (up1, task("api", &api, TaskState::Running, false)),
                (up2, task("starting", &web, TaskState::Starting, false)),
                (up2, task("unhealthy", &web, TaskState::Unhealthy, false)),
                (up2, task("attached", &web, TaskState::Running, true)),
                (up2, task("draining", &web, TaskState::Draining, false)),
                (down, task("down", &web, TaskState::Running, false)),
            ],
            overlay_mtu: Some(1450),
        }
    }

    fn ids<'a>(tasks: impl Iterator<Item = &'a (NodeId, Task)>) -> Vec<&'a str> {
        tasks.map(|(_, t)| t.id.as_str()).collect()
    }

    #[test]
    fn tasks_of_a_service_are_those_of_its_incarnation() {
        let view = view();
        let web = service("web", 10);
        assert_eq!(
            ids(view.tasks_of(&web)),
            [
                "running",
                "starting",
                "unhealthy",
                "attached",
                "draining",
                "down"
            ]
        );
        assert_eq!(ids(view.tasks_of(&service("web", 1))), ["old"]);
        assert!(view.tasks_of(&service("web", 99)).next().is_none());
        assert!(is_task_of(&view.tasks[0].1, &web));
        assert!(!is_task_of(&view.tasks[1].1, &web), "an earlier web's task");
    }

    #[test]
    fn narrowing_keeps_live_serving_placed_or_attached_tasks() {
        let view = view();
        let web = service("web", 10);
        assert_eq!(
            ids(view.tasks_of(&web).live()),
            ["running", "starting", "unhealthy", "attached", "draining"]
        );
        // Healthy running tasks of up nodes, cluster-wide: not starting, not unhealthy,
        // not draining (on its way out: no new flows), not on a down node.
        assert_eq!(ids(view.tasks_of(&web).serving()), ["running", "attached"]);
        assert_eq!(ids(view.tasks_of(&web).serving().placed()), ["running"]);
        assert_eq!(ids(view.tasks_of(&web).live().attached()), ["attached"]);
        assert_eq!(
            ids(view.tasks_of(&web).placed()),
            ["running", "starting", "unhealthy", "draining", "down"]
        );
    }

    #[test]
    fn a_task_names_its_service_only_while_that_incarnation_is_in_force() {
        let view = view();
        let by_id = |id: &str| &view.tasks.iter().find(|(_, t)| t.id == id).unwrap().1;
        assert_eq!(
            view.service_of(by_id("running")).map(|s| s.created),
            Some(stamp(10))
        );
        assert_eq!(view.service_of(by_id("old")), None, "web was re-created");
        assert_eq!(
            view.service_of(by_id("api")).map(|s| s.name.as_str()),
            Some("api")
        );
        let mut gone = by_id("api").clone();
        gone.service = "removed".into();
        assert_eq!(view.service_of(&gone), None);
    }
}
