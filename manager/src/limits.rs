//! How many of each object the cluster allows, checked at create time.
//!
//! Every network, endpoint and external VTEP route becomes an entry in a fixed-size map
//! of the eBPF dataplane on every node (`dataplane_ebpf::maps`), and a map that is full
//! cannot take the next entry: the object would exist in the cluster but carry no
//! traffic. So creates stop below the maps' capacities, with room to spare for creates
//! racing on several nodes (each checks its own view before the others' writes arrive).
//! The agent asserts at compile time that each limit stays below its map's capacity.

use crate::view::ClusterView;

/// Networks in the cluster (`OVERLAY_NETWORKS` and `OVERLAY_SUBNETS` hold 4,096).
pub const MAX_NETWORKS: usize = 4_000;
/// Endpoints in the cluster, tasks' included (`OVERLAY_ENDPOINTS` holds 65,536).
pub const MAX_ENDPOINTS: usize = 60_000;
/// Endpoints on one node (`OVERLAY_PORTS`, this node's endpoints, holds 4,096).
pub const MAX_NODE_ENDPOINTS: usize = 4_000;
/// External VTEP routes in the cluster (`OVERLAY_VTEPS` holds 4,096).
pub const MAX_VTEP_ROUTES: usize = 4_000;
/// Services in the cluster. No map holds services yet; the mesh's per-service maps will
/// be sized to this.
pub const MAX_SERVICES: usize = 4_000;

/// A create refused because the cluster (or this node) is at a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{scope} already has {limit} {what}, the most Skein allows; remove one first")]
pub struct LimitReached {
    pub scope: &'static str,
    pub what: &'static str,
    pub limit: usize,
}

fn check(
    count: usize,
    limit: usize,
    scope: &'static str,
    what: &'static str,
) -> Result<(), LimitReached> {
    if count >= limit {
        return Err(LimitReached { scope, what, limit });
    }
    Ok(())
}

/// Room for one more network.
pub fn network(view: &ClusterView) -> Result<(), LimitReached> {
    check(
        view.networks.valid.len(),
        MAX_NETWORKS,
        "the cluster",
        "networks",
    )
}

/// Room for one more endpoint of this node: in the cluster and on the node.
pub fn endpoint(view: &ClusterView) -> Result<(), LimitReached> {
    check(
        view.endpoints.valid.len(),
        MAX_ENDPOINTS,
        "the cluster",
        "endpoints",
    )?;
    check(
        view.own_endpoints().count(),
        MAX_NODE_ENDPOINTS,
        "this node",
        "endpoints",
    )
}

/// Room for one more external VTEP route.
pub fn vtep(view: &ClusterView) -> Result<(), LimitReached> {
    check(
        view.vteps.len(),
        MAX_VTEP_ROUTES,
        "the cluster",
        "VTEP routes",
    )
}

/// Room for one more service.
pub fn service(view: &ClusterView) -> Result<(), LimitReached> {
    check(
        view.services.valid.len(),
        MAX_SERVICES,
        "the cluster",
        "services",
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        state::{Endpoint, Network, Stamp, Vtep},
        NodeId,
    };

    fn empty() -> ClusterView {
        ClusterView {
            self_id: NodeId([1; 16]),
            store_version: 1,
            nodes: Vec::new(),
            networks: Default::default(),
            endpoints: Default::default(),
            vteps: Vec::new(),
            services: Default::default(),
            tasks: Vec::new(),
            overlay_mtu: None,
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            hlc: 1,
            writer: NodeId([1; 16]),
        }
    }

    fn endpoint_on(node: u8, n: usize) -> (NodeId, Endpoint) {
        (
            NodeId([node; 16]),
            Endpoint {
                id: format!("{n}"),
                name: format!("e{n}"),
                network: "web".into(),
                vni: 4096,
                ip: Ipv4Addr::from(0x0a00_0000 + n as u32),
                netns: format!("e{n}"),
                host_ifname: format!("sk{n}"),
                created: stamp(),
                owns_netns: true,
            },
        )
    }

    #[test]
    fn networks_stop_at_the_limit_with_a_sentence() {
        let mut view = empty();
        view.networks.valid = (0..MAX_NETWORKS - 1)
            .map(|n| Network {
                name: format!("n{n}"),
                subnet: "10.0.0.0/24".parse().unwrap(),
                vni: n as u32,
                created: stamp(),
            })
            .collect();
        assert_eq!(network(&view), Ok(()));
        view.networks.valid.push(view.networks.valid[0].clone());
        let error = network(&view).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the cluster already has 4000 networks, the most Skein allows; remove one first"
        );
    }

    #[test]
    fn endpoints_stop_at_the_cluster_and_the_node_limit() {
        let mut view = empty();
        // Other nodes' endpoints count towards the cluster's limit only.
        view.endpoints.valid = (0..MAX_NODE_ENDPOINTS).map(|n| endpoint_on(2, n)).collect();
        assert_eq!(endpoint(&view), Ok(()));
        view.endpoints.valid = (0..MAX_NODE_ENDPOINTS).map(|n| endpoint_on(1, n)).collect();
        assert_eq!(endpoint(&view).unwrap_err().scope, "this node");
        view.endpoints.valid = (0..MAX_ENDPOINTS).map(|n| endpoint_on(2, n)).collect();
        let error = endpoint(&view).unwrap_err();
        assert_eq!((error.scope, error.limit), ("the cluster", MAX_ENDPOINTS));
    }

    #[test]
    fn vtep_routes_and_services_stop_at_their_limits() {
        let mut view = empty();
        let route = Vtep {
            network: "web".into(),
            underlay: Ipv4Addr::new(10, 200, 0, 9),
            mac: [2, 0, 0, 0, 0, 9],
            cidr: "10.0.0.0/29".parse().unwrap(),
        };
        view.vteps = vec![route; MAX_VTEP_ROUTES - 1];
        assert_eq!(vtep(&view), Ok(()));
        view.vteps.push(view.vteps[0].clone());
        assert_eq!(vtep(&view).unwrap_err().what, "VTEP routes");
        assert_eq!(service(&empty()), Ok(()));
    }
}
