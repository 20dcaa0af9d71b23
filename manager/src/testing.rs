//! Fixtures for unit tests, of this crate and of the agent (feature `testing`, enabled by
//! the agent's dev-dependency only): objects with plausible values in every field a test
//! does not care about, so a new field is added in one place.

use std::net::Ipv4Addr;

use crate::{
    state::{Endpoint, EndpointMode, Mode, NodeInfo, PublishMode, Service, Stamp, Task, TaskState},
    view::NodeStatus,
    NodeId,
};

/// Service `name` on network `net` running `true`, with no ports, VIP, health check or
/// restart delay.
pub fn service(name: &str, mode: Mode, created: Stamp) -> Service {
    Service {
        name: name.into(),
        mode,
        network: "net".into(),
        ports: vec![],
        publish_mode: PublishMode::Ingress,
        endpoint_mode: EndpointMode::Vip,
        vip: None,
        command: vec!["true".into()],
        env: vec![],
        user: None,
        health: None,
        restart_delay_ms: 0,
        created,
        security: Default::default(),
        limits: Default::default(),
        stack: None,
        update: Default::default(),
    }
}

/// Three nodes at 10.200.0.1–3: 1 (this node) and 2 up, 3 down.
pub fn three_nodes_third_down() -> Vec<NodeStatus> {
    vec![
        node(1, true, [10, 200, 0, 1]),
        node(2, true, [10, 200, 0, 2]),
        node(3, false, [10, 200, 0, 3]),
    ]
}

/// Node `id` (`NodeId([id; 16])`, host `h<id>`; node 1 is this node), up or down, with its
/// gossip and underlay address at `ip`.
pub fn node(id: u8, up: bool, ip: [u8; 4]) -> NodeStatus {
    NodeStatus {
        id: NodeId([id; 16]),
        info: Some(NodeInfo {
            hostname: format!("h{id}"),
            addr: (ip, 7946).into(),
            underlay_ip: ip.into(),
            underlay_mtu: 1500,
            boot_epoch: 1,
            started_at_ms: 1,
            version: "t".into(),
            leaving: false,
            restart_grace_until_ms: 0,
            key_share: [0; 32],
        }),
        addr: Some((ip, 7946).into()),
        up,
        is_self: id == 1,
        availability: Default::default(),
    }
}

/// Task `id` of `service` in `slot`, running, at `ip`, its endpoint's ID its own.
pub fn task(id: &str, service: &Service, slot: u32, ip: [u8; 4]) -> Task {
    Task {
        id: id.into(),
        service: service.name.clone(),
        service_created: service.created,
        slot,
        endpoint: id.into(),
        ip: ip.into(),
        state: TaskState::Running,
        since_ms: 1,
        message: String::new(),
        restarts: 0,
        created: service.created,
        attached: false,
        spec: crate::rollout::spec_fingerprint(service),
    }
}

/// Endpoint `id` on `network` (VNI `vni`) at `ip`, in a namespace of its own.
pub fn endpoint(id: &str, network: &str, vni: u32, ip: [u8; 4]) -> Endpoint {
    Endpoint {
        id: id.into(),
        name: id.into(),
        network: network.into(),
        vni,
        ip: Ipv4Addr::from(ip),
        netns: id.into(),
        host_ifname: format!("sk{id}"),
        created: Stamp {
            hlc: 1,
            writer: NodeId([1; 16]),
        },
        owns_netns: true,
    }
}
