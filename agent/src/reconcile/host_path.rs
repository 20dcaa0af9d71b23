//! The host path's routes (`crate::dataplane` `cgroup`): every overlay network's subnet
//! through the host-path veth, sourced from this node's underlay address, so the host's
//! own connections that the socket hooks gave a task on another node leave through
//! `tc_host_egress`. Local tasks keep their /32 routes to their own veths.

use dataplane_ebpf::sock::HOST_PATH_IFACE;
use manager::view::ClusterView;
use tracing::{debug, warn};

use super::Reconciler;

impl Reconciler {
    /// Converges the host path's routes with the view's networks.
    pub(super) async fn sync_host_path(&self, view: &ClusterView) {
        let Some(own_ip) = view
            .node(&view.self_id)
            .and_then(|n| n.info.as_ref())
            .map(|i| i.underlay_ip)
        else {
            return;
        };
        let mut subnets: Vec<_> = view.networks.valid.iter().map(|n| n.subnet).collect();
        subnets.sort();
        subnets.dedup();
        match crate::netlink::sync_routes_through(HOST_PATH_IFACE, &subnets, own_ip).await {
            Ok(0) => {}
            Ok(changes) => debug!(changes, "host path routes updated"),
            Err(error) => {
                warn!(error = %format!("{error:#}"), "could not route the overlay through the host path")
            }
        }
    }
}
