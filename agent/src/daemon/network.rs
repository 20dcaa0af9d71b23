//! Handlers of the network requests: `network create|ls|rm`.

use anyhow::Result;
use ipnet::Ipv4Net;
use manager::{view::ClusterView, Manager};

use crate::api::{Body, NetworkRow};

/// `network create NAME [--subnet CIDR] [--vni N]`.
pub(super) async fn create(
    manager: &Manager,
    name: &str,
    subnet: Option<Ipv4Net>,
    vni: Option<u32>,
) -> Result<Body> {
    let network = manager.create_network(name, subnet, vni).await?;
    Ok(Body::Network(network_row(&network)))
}

/// `network ls`.
pub(super) fn ls(view: &ClusterView) -> Body {
    Body::Networks(view.networks.valid.iter().map(network_row).collect())
}

/// `network rm NAME`.
pub(super) async fn rm(manager: &Manager, name: &str) -> Result<Body> {
    manager.remove_network(name).await?;
    Ok(Body::Done(format!("removed network {name}")))
}

fn network_row(network: &manager::state::Network) -> NetworkRow {
    NetworkRow {
        name: network.name.clone(),
        subnet: network.subnet.to_string(),
        vni: network.vni,
        created_by: network.created.writer.short(),
        created_at_ms: manager::hlc::physical_ms(network.created.hlc),
    }
}
