//! Fixtures for unit tests, of this crate and of the agent (feature `testing`, enabled by
//! the agent's dev-dependency only): objects with plausible values in every field a test
//! does not care about, so a new field is added in one place.

use crate::{
    state::{EndpointMode, Mode, NodeInfo, PublishMode, Service, Stamp},
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
    }
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
        }),
        addr: Some((ip, 7946).into()),
        up,
        is_self: id == 1,
    }
}
