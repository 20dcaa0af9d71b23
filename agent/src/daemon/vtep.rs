//! Handlers of the external-VTEP requests: `network vtep add|rm|ls`.

use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;
use manager::{view::ClusterView, Manager};

use crate::{
    api::{Body, VtepRow},
    netif,
};

/// `network vtep add NET --underlay IP --mac MAC --cidr CIDR`.
pub(super) async fn add(
    manager: &Manager,
    network: &str,
    underlay: Ipv4Addr,
    mac: [u8; 6],
    cidr: Ipv4Net,
) -> Result<Body> {
    let vtep = manager.add_vtep(network, underlay, mac, cidr).await?;
    Ok(Body::Vteps(vec![vtep_row(&vtep)]))
}

/// `network vtep rm NET --cidr CIDR`.
pub(super) async fn rm(manager: &Manager, network: &str, cidr: Ipv4Net) -> Result<Body> {
    manager.remove_vtep(network, cidr).await?;
    Ok(Body::Done(format!(
        "removed the VTEP for {cidr} from network {network}"
    )))
}

/// `network vtep ls [NET]`.
pub(super) fn ls(view: &ClusterView, network: Option<&str>) -> Body {
    Body::Vteps(
        view.vteps
            .iter()
            .filter(|v| network.is_none_or(|n| n == v.network))
            .map(vtep_row)
            .collect(),
    )
}

fn vtep_row(vtep: &manager::state::Vtep) -> VtepRow {
    VtepRow {
        network: vtep.network.clone(),
        cidr: vtep.cidr.to_string(),
        underlay: vtep.underlay.to_string(),
        mac: netif::format_mac(vtep.mac),
    }
}
