//! The plan tests' fixtures: nodes, services, tasks, endpoints, views and clocks built by
//! hand.

use std::net::Ipv4Addr;

use manager::{
    state::{EndpointSet, Mode, ServiceSet, Stamp},
    view::NodeStatus,
};

use super::super::*;

pub(super) const WALL_MS: u64 = 10_000_000;

pub(super) fn id(i: u8) -> NodeId {
    NodeId([i; 16])
}

pub(super) fn stamp(hlc: u64) -> Stamp {
    Stamp { hlc, writer: id(9) }
}

/// Node `i` (1 is this node): up or down, possibly leaving.
pub(super) fn node(i: u8, up: bool, leaving: bool) -> NodeStatus {
    let mut node = manager::testing::node(i, up, [10, 0, 0, i]);
    if let Some(info) = node.info.as_mut() {
        info.leaving = leaving;
    }
    node
}

/// `web` (created at 100), one task per node; `replicas: None` makes it global.
pub(super) fn web(replicas: Option<u32>) -> Service {
    let mode = replicas.map_or(Mode::Global, |replicas| Mode::Replicated { replicas });
    Service {
        restart_delay_ms: 2000,
        ..manager::testing::service("web", mode, stamp(100))
    }
}

pub(super) fn task(id: &str, service: &Service, slot: u32, created: u64) -> Task {
    Task {
        id: id.into(),
        service: service.name.clone(),
        service_created: service.created,
        slot,
        endpoint: id.into(),
        ip: Ipv4Addr::new(10, 10, 0, 2),
        state: TaskState::Running,
        since_ms: 1,
        message: String::new(),
        restarts: 0,
        created: stamp(created),
        attached: false,
        spec: manager::rollout::spec_fingerprint(service),
    }
}

/// A task's endpoint, named as the supervisor names them, created `age_ms` ago.
pub(super) fn endpoint(endpoint_id: &str, age_ms: u64) -> Endpoint {
    Endpoint {
        id: endpoint_id.into(),
        name: format!("web.1.{endpoint_id}"),
        network: "net".into(),
        vni: 4100,
        ip: Ipv4Addr::new(10, 10, 0, 2),
        netns: format!("p-web.1.{endpoint_id}"),
        host_ifname: "skx".into(),
        created: Stamp {
            hlc: hlc::compose(WALL_MS - age_ms, 0),
            writer: id(1),
        },
        owns_netns: true,
    }
}

/// Three nodes, all up, this one (1) not leaving; `services` in force; `tasks` and
/// `endpoints` as given (own ones under node 1).
pub(super) fn view(
    services: Vec<Service>,
    tasks: Vec<(NodeId, Task)>,
    endpoints: Vec<(NodeId, Endpoint)>,
) -> ClusterView {
    ClusterView {
        self_id: id(1),
        store_version: 1,
        nodes: (1..=3).map(|i| node(i, true, false)).collect(),
        networks: Default::default(),
        endpoints: EndpointSet {
            valid: endpoints,
            collided: vec![],
        },
        vteps: vec![],
        services: ServiceSet {
            valid: services,
            conflicted: vec![],
        },
        tasks,
        overlay_mtu: Some(1450),
    }
}

/// A pass long after start, with membership stable for a minute.
pub(super) struct Clock {
    start: Instant,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub(super) fn at(&self, secs: u64) -> Instant {
        self.start + Duration::from_secs(secs)
    }

    pub(super) fn now(&self) -> Now {
        Now {
            instant: self.at(100),
            wall_ms: WALL_MS,
        }
    }
}

pub(super) fn settled<'a>(
    clock: &Clock,
    tasks: Vec<LocalTask<'a>>,
    stopping: &'a BTreeSet<String>,
    backoff: &'a BTreeMap<(String, u32), Instant>,
) -> Local<'a> {
    Local {
        tasks,
        stopping,
        started: clock.at(0),
        membership_since: clock.at(0),
        create_backoff: backoff,
        // No drain: tasks stop at once, as before draining existed (the drain tests set one).
        drain_window: Duration::ZERO,
    }
}

pub(super) fn running(task: &Task) -> LocalTask<'_> {
    LocalTask {
        task,
        restart_at: None,
        moving_since: None,
        draining_since: None,
    }
}

pub(super) fn no_ids() -> BTreeSet<String> {
    BTreeSet::new()
}

pub(super) fn no_backoff() -> BTreeMap<(String, u32), Instant> {
    BTreeMap::new()
}
