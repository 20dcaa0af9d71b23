//! The routing mesh's requests: `debug conntrack` (this node's `MESH_FLOWS`), the flow
//! counts per backend a node answers over the peer RPC, and the `mesh` part of `service
//! inspect`, gathered from every node as `service logs` gathers logs.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_ebpf::mesh::{
    expired, Flow, FlowKey, MeshConfig, TCP_CLOSING, TCP_ESTABLISHED, TCP_SYN_SENT, UDP_OPEN,
};
use manager::{
    state::{Service, Stamp},
    view::ClusterView,
    NodeId,
};
use serde_json::{json, Value};

use crate::{
    api::{Body, ConntrackRow},
    dataplane::{protocol_name, MeshMaps},
    peer::{PeerRequest, PeerResponse, Peers},
    reconcile::Reconciler,
    tasks::status::{hostname, task_name},
};

/// `skein debug conntrack`: every flow in this node's conntrack, oldest first.
pub(super) fn conntrack(reconciler: &Reconciler) -> anyhow::Result<Body> {
    let slots = reconciler.mesh_status().slots();
    let now = crate::reconcile::monotonic_ns();
    let (config, mut flows) = reconciler
        .with_mesh_maps(|maps| -> anyhow::Result<_> { Ok((maps.config()?, maps.flows()?)) })?;
    flows.sort_by_key(|(key, flow)| (flow.created_ns, *key));
    let rows = flows
        .iter()
        .map(|(key, flow)| ConntrackRow {
            protocol: protocol_name(key.protocol),
            client: format!(
                "{}:{}",
                Ipv4Addr::from(key.client_ip),
                u16::from_be_bytes(key.client_port_be)
            ),
            ingress: format!(
                "{}:{}",
                Ipv4Addr::from(key.node_ip),
                u16::from_be_bytes(key.published_port_be)
            ),
            backend: format!(
                "{}:{}",
                Ipv4Addr::from(flow.backend_ip),
                u16::from_be_bytes(flow.target_port_be)
            ),
            backend_host: Ipv4Addr::from(flow.backend_host).to_string(),
            service: slots
                .get(&flow.slot)
                .map(|(name, _)| name.clone())
                .unwrap_or_default(),
            state: state_name(&config, key, flow, now).into(),
            age_ms: now.saturating_sub(flow.created_ns) / 1_000_000,
            idle_ms: now.saturating_sub(flow.last_seen_ns) / 1_000_000,
        })
        .collect();
    Ok(Body::Conntrack(rows))
}

fn state_name(config: &MeshConfig, key: &FlowKey, flow: &Flow, now: u64) -> &'static str {
    if expired(config, key.protocol, flow, now) {
        return "expired";
    }
    match flow.state {
        TCP_SYN_SENT => "syn_sent",
        TCP_ESTABLISHED => "established",
        TCP_CLOSING => "closing",
        UDP_OPEN => "udp",
        _ => "unknown",
    }
}

/// This node's live (not expired) flows of the service `name` created at `created`, per
/// backend address. Empty if this node has no slot for it (it does not know it yet).
pub(super) fn flow_counts(
    reconciler: &Reconciler,
    name: &str,
    created: Stamp,
) -> Result<Vec<(Ipv4Addr, u64)>, String> {
    let Some(slot) = reconciler.mesh_status().slot_of(name, created) else {
        return Ok(Vec::new());
    };
    let now = crate::reconcile::monotonic_ns();
    reconciler
        .with_mesh_maps(
            |maps: &MeshMaps| -> Result<_, crate::dataplane::DataplaneError> {
                Ok((maps.config()?, maps.flows()?))
            },
        )
        .map(|(config, flows)| {
            let mut counts: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
            for (key, flow) in flows {
                if flow.slot == slot && !expired(&config, key.protocol, &flow, now) {
                    *counts.entry(Ipv4Addr::from(flow.backend_ip)).or_default() += 1;
                }
            }
            counts.into_iter().collect()
        })
        .map_err(|error| format!("could not read the mesh conntrack: {error}"))
}

/// The `mesh` part of `service inspect` for a service in the routing mesh: each task's
/// flows as tracked on each node (the flows whose ingress node that is), this node's read
/// here, the others' asked over the peer RPC in parallel; nodes that are down or do not
/// answer are listed under `unavailable`, with why. `None` for a service outside the mesh.
pub(super) async fn inspect(
    view: &ClusterView,
    reconciler: &Reconciler,
    peers: &Peers,
    service: &Service,
) -> Option<Value> {
    let slot = reconciler
        .mesh_status()
        .slot_of(&service.name, service.created)?;
    let mut per_node: Vec<(String, BTreeMap<Ipv4Addr, u64>)> = Vec::new();
    let mut unavailable: Vec<String> = Vec::new();
    let mut calls = Vec::new();
    for node in &view.nodes {
        let host = hostname(view, node.id);
        if node.id == view.self_id {
            match flow_counts(reconciler, &service.name, service.created) {
                Ok(counts) => per_node.push((host, counts.into_iter().collect())),
                Err(reason) => unavailable.push(format!("{host}: {reason}")),
            }
            continue;
        }
        if !node.up {
            unavailable.push(format!("{host}: node is down"));
            continue;
        }
        let Some(addr) = node.info.as_ref().map(|i| i.addr).or(node.addr) else {
            unavailable.push(format!("{host}: node address unknown"));
            continue;
        };
        let request = PeerRequest::MeshFlows {
            service: service.name.clone(),
            created: service.created,
        };
        calls.push(async move { (host, peers.call(addr, &request).await) });
    }
    for (host, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok(PeerResponse::MeshFlows(counts)) => {
                per_node.push((host, counts.into_iter().collect()));
            }
            Ok(PeerResponse::Error(message)) => unavailable.push(format!("{host}: {message}")),
            Ok(other) => unavailable.push(format!("{host}: unexpected answer {other:?}")),
            Err(error) => unavailable.push(format!("{host}: {error}")),
        }
    }
    per_node.sort();
    let tasks: Vec<(&NodeId, &manager::state::Task)> = view
        .tasks_of(service)
        .map(|(node, task)| (node, task))
        .collect();
    let backends: Vec<Value> = tasks
        .iter()
        .map(|(node, task)| {
            let flows: BTreeMap<&str, u64> = per_node
                .iter()
                .map(|(host, counts)| (host.as_str(), counts.get(&task.ip).copied().unwrap_or(0)))
                .collect();
            json!({
                "task": task_name(view, **node, task, service),
                "id": task.id,
                "ip": task.ip.to_string(),
                "host": hostname(view, **node),
                "state": task.state.to_string(),
                "flows": flows,
            })
        })
        .collect();
    // Flows to addresses that are no task of the service any more (a task gone, its
    // flows not yet expired).
    let mut other: BTreeMap<&str, u64> = BTreeMap::new();
    for (host, counts) in &per_node {
        let n: u64 = counts
            .iter()
            .filter(|(ip, _)| !tasks.iter().any(|(_, t)| t.ip == **ip))
            .map(|(_, n)| n)
            .sum();
        if n > 0 {
            other.insert(host.as_str(), n);
        }
    }
    Some(json!({
        "slot_on_this_node": slot,
        "backends": backends,
        "flows_to_former_tasks": other,
        "unavailable": unavailable,
    }))
}
