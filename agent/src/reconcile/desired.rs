//! The overlay maps' desired content, computed from a cluster snapshot: every network
//! and its subnet, every live endpoint of the cluster (this node's once plumbed), every
//! external VTEP route, and what the guard keeps workloads away from (every cluster
//! host's and external VTEP's address; VXLAN, every node's gossip port, this agent's own
//! listening ports) — keyed by the ABI's own key types.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use dataplane_ebpf::{
    guard::{
        GuardedHostKey, GuardedHostValue, GuardedPort, GuardedPortValue, IPPROTO_TCP, IPPROTO_UDP,
    },
    overlay::{
        EndpointKey, EndpointValue, NetworkValue, PortValue, SubnetKey, VtepKey, VtepValue,
        VXLAN_PORT,
    },
};
use manager::{
    state::{endpoint::gateway, Endpoint, Network},
    view::ClusterView,
};

// What the manager allows at create time stays below what the maps hold, so the desired
// state always fits (`manager::limits`; the table in `dataplane_ebpf::maps`).
const _: () = {
    use dataplane_ebpf::maps;
    use manager::limits;
    assert!(limits::MAX_NETWORKS < maps::OVERLAY_NETWORKS.capacity as usize);
    assert!(limits::MAX_NETWORKS < maps::OVERLAY_SUBNETS.capacity as usize);
    assert!(limits::MAX_ENDPOINTS < maps::OVERLAY_ENDPOINTS.capacity as usize);
    assert!(limits::MAX_NODE_ENDPOINTS < maps::OVERLAY_PORTS.capacity as usize);
    assert!(limits::MAX_VTEP_ROUTES < maps::OVERLAY_VTEPS.capacity as usize);
};

/// The overlay maps' desired content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DesiredMaps {
    pub(crate) endpoints: BTreeMap<EndpointKey, EndpointValue>,
    pub(crate) ports: BTreeMap<u32, PortValue>,
    pub(crate) networks: BTreeMap<u32, NetworkValue>,
    pub(crate) subnets: BTreeMap<SubnetKey, u32>,
    pub(crate) vteps: BTreeMap<VtepKey, VtepValue>,
    pub(crate) guarded_hosts: BTreeMap<GuardedHostKey, GuardedHostValue>,
    pub(crate) guarded_ports: BTreeMap<GuardedPort, GuardedPortValue>,
}

/// The desired maps for `view`. `local_ifindex` gives the host-side veth index of this
/// node's endpoints (None: not plumbed yet, so not served yet); `own_ports` are the ports
/// this agent listens on besides gossip (its metrics), guarded like the cluster's.
pub(crate) fn desired_maps(
    view: &ClusterView,
    local_ifindex: impl Fn(&Endpoint) -> Option<u32>,
    own_ports: &[GuardedPort],
) -> DesiredMaps {
    let mut desired = DesiredMaps::default();
    guard(view, own_ports, &mut desired);
    for network in &view.networks.valid {
        desired.insert_network(network);
    }
    for (node, endpoint) in view.live_endpoints() {
        let Some(host) = view.node(node).and_then(|n| n.info.as_ref()) else {
            continue;
        };
        let ifindex = if *node == view.self_id {
            match local_ifindex(endpoint) {
                Some(ifindex) => ifindex,
                None => continue,
            }
        } else {
            0
        };
        desired.insert_endpoint(endpoint, host.underlay_ip, ifindex);
    }
    for vtep in &view.vteps {
        let Some(network) = view.network(&vtep.network) else {
            continue;
        };
        desired.vteps.insert(
            VtepKey {
                prefix_len: 32 + u32::from(vtep.cidr.prefix_len()),
                vni_be: network.vni.to_be_bytes(),
                ip: vtep.cidr.network().octets(),
            },
            VtepValue {
                underlay_ip: vtep.underlay.octets(),
                mac: vtep.mac,
                _pad: [0; 2],
            },
        );
    }
    desired
}

/// What this node's endpoint behind host-side veth `ifindex` needs before it may send
/// (written by its plumbing, before its veth comes up): its port, its own entry, its
/// network and subnet. `None` if the view lacks its network or this node's underlay.
pub(crate) fn own_endpoint_entries(
    view: &ClusterView,
    endpoint: &Endpoint,
    ifindex: u32,
) -> Option<DesiredMaps> {
    let network = view.network(&endpoint.network)?;
    let host = view.node(&view.self_id)?.info.as_ref()?;
    let mut entries = DesiredMaps::default();
    entries.insert_network(network);
    entries.insert_endpoint(endpoint, host.underlay_ip, ifindex);
    Some(entries)
}

impl DesiredMaps {
    fn insert_network(&mut self, network: &Network) {
        self.networks.insert(
            network.vni,
            NetworkValue {
                subnet: network.subnet.network().octets(),
                prefix_len: u32::from(network.subnet.prefix_len()),
                gateway: gateway(network.subnet).octets(),
            },
        );
        self.subnets.insert(
            SubnetKey {
                prefix_len: u32::from(network.subnet.prefix_len()),
                ip: network.subnet.network().octets(),
            },
            network.vni,
        );
    }

    /// An endpoint on the host at `host_ip`; a local one (`ifindex != 0`) gets its port.
    fn insert_endpoint(&mut self, endpoint: &Endpoint, host_ip: Ipv4Addr, ifindex: u32) {
        self.endpoints.insert(
            EndpointKey {
                vni: endpoint.vni,
                ip: endpoint.ip.octets(),
            },
            EndpointValue {
                host_ip: host_ip.octets(),
                ifindex,
            },
        );
        if ifindex != 0 {
            self.ports.insert(
                ifindex,
                PortValue {
                    vni: endpoint.vni,
                    ip: endpoint.ip.octets(),
                },
            );
        }
    }
}

/// The guard's maps: every node's addresses (up or down: a node coming back is still a
/// cluster host) and every external VTEP's; VXLAN, every node's gossip port over UDP
/// (gossip) and TCP (peer RPC), and `own_ports`.
fn guard(view: &ClusterView, own_ports: &[GuardedPort], desired: &mut DesiredMaps) {
    let mut ports = vec![GuardedPort::new(IPPROTO_UDP, VXLAN_PORT)];
    ports.extend_from_slice(own_ports);
    for node in &view.nodes {
        let info = node.info.as_ref();
        let gossip = node.addr.into_iter().chain(info.map(|i| i.addr));
        for addr in gossip {
            if let IpAddr::V4(ip) = addr.ip() {
                desired.guarded_hosts.insert(ip.octets(), 0);
            }
            ports.push(GuardedPort::new(IPPROTO_UDP, addr.port()));
            ports.push(GuardedPort::new(IPPROTO_TCP, addr.port()));
        }
        if let Some(info) = info {
            desired.guarded_hosts.insert(info.underlay_ip.octets(), 0);
        }
    }
    for vtep in &view.vteps {
        desired.guarded_hosts.insert(vtep.underlay.octets(), 0);
    }
    desired
        .guarded_ports
        .extend(ports.into_iter().map(|port| (port, 0)));
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use manager::{
        state::{EndpointSet, Network, NetworkSet, Stamp, Vtep},
        view::{ClusterView, NodeStatus},
        NodeId,
    };

    use super::*;

    fn node(id: u8, up: bool, ip: [u8; 4]) -> NodeStatus {
        manager::testing::node(id, up, ip)
    }

    fn endpoint(id: &str, ip: [u8; 4], vni: u32, network: &str) -> Endpoint {
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

    fn view() -> ClusterView {
        let stamp = Stamp {
            hlc: 1,
            writer: NodeId([1; 16]),
        };
        ClusterView {
            self_id: NodeId([1; 16]),
            store_version: 1,
            nodes: vec![
                node(1, true, [10, 200, 0, 11]),
                node(2, true, [10, 200, 0, 12]),
                node(3, false, [10, 200, 0, 13]),
            ],
            networks: NetworkSet {
                valid: vec![Network {
                    name: "web".into(),
                    subnet: "10.10.0.0/24".parse().unwrap(),
                    vni: 4096,
                    created: stamp,
                }],
                conflicted: Vec::new(),
            },
            services: Default::default(),
            tasks: Vec::new(),
            endpoints: EndpointSet {
                valid: vec![
                    (
                        NodeId([1; 16]),
                        endpoint("local", [10, 10, 0, 2], 4096, "web"),
                    ),
                    (
                        NodeId([1; 16]),
                        endpoint("unplumbed", [10, 10, 0, 3], 4096, "web"),
                    ),
                    (
                        NodeId([2; 16]),
                        endpoint("remote", [10, 10, 0, 4], 4096, "web"),
                    ),
                    (
                        NodeId([3; 16]),
                        endpoint("on-a-down-node", [10, 10, 0, 5], 4096, "web"),
                    ),
                    (
                        NodeId([2; 16]),
                        endpoint("orphan", [10, 20, 0, 2], 7777, "gone"),
                    ),
                ],
                collided: Vec::new(),
            },
            vteps: vec![Vtep {
                network: "web".into(),
                underlay: Ipv4Addr::new(10, 200, 0, 99),
                mac: [2, 0, 0, 0, 0, 9],
                cidr: "10.10.0.248/29".parse().unwrap(),
            }],
            overlay_mtu: Some(1450),
        }
    }

    #[test]
    fn desired_maps_serve_live_plumbed_endpoints_of_existing_networks() {
        let desired = desired_maps(&view(), |e| (e.id == "local").then_some(7), &[]);
        let key = |ip| EndpointKey { vni: 4096, ip };
        let keys: Vec<_> = desired.endpoints.keys().copied().collect();
        // The unplumbed local one, the down node's and the one whose network is gone are out.
        assert_eq!(keys, vec![key([10, 10, 0, 2]), key([10, 10, 0, 4])]);
        assert_eq!(
            desired.endpoints[&key([10, 10, 0, 2])],
            EndpointValue {
                host_ip: [10, 200, 0, 11],
                ifindex: 7
            }
        );
        assert_eq!(
            desired.endpoints[&key([10, 10, 0, 4])],
            EndpointValue {
                host_ip: [10, 200, 0, 12],
                ifindex: 0
            }
        );
        assert_eq!(
            desired.ports,
            BTreeMap::from([(
                7,
                PortValue {
                    vni: 4096,
                    ip: [10, 10, 0, 2]
                }
            )])
        );
        assert_eq!(desired.networks[&4096].gateway, [10, 10, 0, 1]);
        assert_eq!(
            desired.subnets,
            BTreeMap::from([(SubnetKey::new([10, 10, 0, 0], 24), 4096)])
        );
        let (key, vtep) = desired.vteps.iter().next().unwrap();
        assert_eq!(*key, VtepKey::new(4096, [10, 10, 0, 248], 29));
        assert_eq!(vtep.underlay_ip, [10, 200, 0, 99]);
    }

    #[test]
    fn the_guard_covers_every_node_and_vtep_and_the_cluster_ports() {
        let mut view = view();
        // A node gossiping on another port and address than its underlay's.
        if let Some(info) = view.nodes[1].info.as_mut() {
            info.addr = ([192, 168, 5, 12], 8946).into();
        }
        let metrics = GuardedPort::new(IPPROTO_TCP, 9946);
        let desired = desired_maps(&view, |_| None, &[metrics]);
        let hosts: Vec<[u8; 4]> = desired.guarded_hosts.keys().copied().collect();
        assert_eq!(
            hosts,
            vec![
                [10, 200, 0, 11],
                [10, 200, 0, 12],
                [10, 200, 0, 13],
                [10, 200, 0, 99],
                [192, 168, 5, 12]
            ],
            "every node (down ones too), its gossip address, every external VTEP"
        );
        let ports: Vec<(u8, u16)> = desired
            .guarded_ports
            .keys()
            .map(|p| (p.protocol, p.port()))
            .collect();
        assert_eq!(
            ports,
            vec![
                (IPPROTO_TCP, 7946),
                (IPPROTO_TCP, 8946),
                (IPPROTO_TCP, 9946),
                (IPPROTO_UDP, 4789),
                (IPPROTO_UDP, 7946),
                (IPPROTO_UDP, 8946),
            ]
        );
    }
}
