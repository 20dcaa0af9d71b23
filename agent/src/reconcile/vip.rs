//! The service VIPs' desired maps, computed from a cluster snapshot ([`desired_vip`]), and
//! their sync ([`sync_vip`]). Rules: `dataplane_ebpf::vip`.
//!
//! For every valid service in `vip` endpoint mode whose network is known, on its network:
//! - `VIP_SERVICES[(vni, VIP)]`: how many backends (the cursor is the programs');
//! - `VIP_BACKENDS[(vni, VIP, i)]`: the serving tasks cluster-wide (running, healthy, not
//!   draining, on an up node, endpoint live on the network), ordered by task slot then ID
//!   as the ingress mesh orders them; a draining task leaves here first and keeps its
//!   endpoint, so its tracked flows go on until it stops;
//! - `VIP_PORTS[(vni, VIP, port 0, TCP and UDP)]`: the VIP takes **every port** and
//!   keeps it (the tasks listen on the port the client chose), as Swarm's VIPs do — a
//!   service that publishes nothing (a database reached by name) is reached on its own
//!   ports; a port no task listens on is refused by the task's own stack;
//! - for every port published in `ingress` mode, `VIP_PORTS[(vni, node address,
//!   published port)]` → the target port, for every known node: an endpoint reaching any
//!   node's published port is balanced on its own host like one reaching the VIP (the
//!   port on its own node included, which the host stack would refuse).
//!
//! A `dnsrr` service has no VIP and no entry. Nothing is written for other networks, so
//! a VIP is unreachable from them (their packets to it find no entry).

use std::collections::{BTreeMap, HashMap};

use dataplane_ebpf::{
    guard::{IPPROTO_TCP, IPPROTO_UDP},
    vip::{VipBackend, VipBackendKey, VipPort, VipPortKey, VipService, VipServiceKey, ANY_PORT},
};
use manager::{
    state::{Endpoint, EndpointMode, Protocol, PublishMode},
    view::ClusterView,
    NodeId,
};

use dataplane_ebpf::{
    mesh::MeshConfig,
    vip::{flow_expired, flow_of_reply, reply_key_of},
};
use tracing::warn;

use super::{
    maps::sync_map,
    mesh::{monotonic_ns, SWEEP_BATCH},
    MapSyncErrors,
};
use crate::dataplane::VipMaps;

// What the manager allows stays below what the maps hold.
const _: () = {
    use dataplane_ebpf::maps;
    use manager::limits;
    assert!(limits::MAX_SERVICES <= maps::VIP_SERVICES.capacity as usize);
    assert!(limits::MAX_ENDPOINTS <= maps::VIP_BACKENDS.capacity as usize);
};

/// The VIP maps' desired content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DesiredVip {
    pub(crate) ports: BTreeMap<VipPortKey, VipPort>,
    pub(crate) services: BTreeMap<VipServiceKey, VipService>,
    pub(crate) backends: BTreeMap<VipBackendKey, VipBackend>,
}

fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// The VIP maps for `view`.
pub(crate) fn desired_vip(view: &ClusterView) -> DesiredVip {
    let mut desired = DesiredVip::default();
    let live: HashMap<(NodeId, &str), &Endpoint> = view
        .live_endpoints()
        .map(|(node, e)| ((*node, e.id.as_str()), e))
        .collect();
    let nodes: Vec<[u8; 4]> = view
        .nodes
        .iter()
        .filter_map(|n| Some(n.info.as_ref()?.underlay_ip.octets()))
        .collect();
    for service in view.services.valid.iter() {
        let (EndpointMode::Vip, Some(vip)) = (service.endpoint_mode, service.vip) else {
            continue;
        };
        let Some(network) = view.network(&service.network) else {
            continue;
        };
        let (vni, vip) = (network.vni, vip.octets());
        let mut backends: Vec<(u32, &str, [u8; 4])> = view
            .tasks_of(service)
            .serving()
            .filter_map(|(node, task)| {
                let endpoint = live
                    .get(&(*node, task.endpoint.as_str()))
                    .filter(|e| e.vni == vni)?;
                Some((task.slot, task.id.as_str(), endpoint.ip.octets()))
            })
            .collect();
        backends.sort();
        for (index, (_, _, ip)) in backends.iter().enumerate() {
            desired.backends.insert(
                VipBackendKey {
                    vni,
                    vip,
                    index: index as u32,
                },
                VipBackend { ip: *ip },
            );
        }
        desired.services.insert(
            VipServiceKey { vni, vip },
            VipService {
                backends: backends.len() as u32,
                cursor: 0,
            },
        );
        let key = |ip: [u8; 4], port: u16, protocol: u8| VipPortKey {
            vni,
            ip,
            port_be: port.to_be_bytes(),
            protocol,
            _pad: 0,
        };
        let to = |target: u16| VipPort {
            vip,
            target_port_be: target.to_be_bytes(),
            _pad: [0; 2],
        };
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            desired
                .ports
                .insert(key(vip, ANY_PORT, protocol), to(ANY_PORT));
        }
        if service.publish_mode == PublishMode::Ingress {
            for port in &service.ports {
                let protocol = protocol_number(port.protocol);
                for node in &nodes {
                    desired
                        .ports
                        .insert(key(*node, port.published, protocol), to(port.target));
                }
            }
        }
    }
    desired
}

/// Converges the VIP maps to `desired`: new backends before the counts that include
/// them, counts before the removal of backends they no longer include, ports last.
pub(crate) fn sync_vip(
    maps: &mut VipMaps,
    desired: &DesiredVip,
    removals: bool,
    errors: &MapSyncErrors,
) -> usize {
    sync_map(&mut maps.backends, &desired.backends, false, errors)
        + sync_map(&mut maps.services, &desired.services, removals, errors)
        + sync_map(&mut maps.backends, &desired.backends, removals, errors)
        + sync_map(&mut maps.ports, &desired.ports, removals, errors)
}

/// Deletes up to [`SWEEP_BATCH`] conntrack entries idle past their timeout (the mesh's,
/// `config`) per pass, going on where the last pass stopped, with their reply entries
/// when those are still theirs. The programs already treat such a flow as gone (a new
/// one replaces it); the sweep gives the LRU its room back before it has to evict live
/// flows. Each entry is re-read just before deletion, so one a packet refreshed stays.
/// Returns how many flows were deleted.
pub(crate) fn sweep_vip(maps: &mut VipMaps, config: &MeshConfig) -> u64 {
    let (page, next) = match maps.flows_page(maps.sweep_after, SWEEP_BATCH) {
        Ok(page) => page,
        Err(error) => {
            maps.sweep_after = None;
            warn!(%error, "could not sweep the VIP conntrack");
            return 0;
        }
    };
    maps.sweep_after = next;
    let mut swept = 0;
    for (key, flow) in page {
        if !flow_expired(config, key.protocol, &flow, monotonic_ns()) {
            continue;
        }
        let still = maps
            .flow(&key)
            .is_some_and(|f| f == flow || flow_expired(config, key.protocol, &f, monotonic_ns()));
        if !(still && maps.remove_flow(&key).unwrap_or(false)) {
            continue;
        }
        swept += 1;
        let reply_key = reply_key_of(&key, &flow);
        if maps
            .reply(&reply_key)
            .is_some_and(|r| flow_of_reply(&reply_key, &r) == key)
        {
            let _ = maps.remove_reply(&reply_key);
        }
    }
    swept
}

#[cfg(test)]
mod tests;
