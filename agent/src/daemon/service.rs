//! Handlers of the `service` requests: turn them into cluster operations and answer from
//! the cluster view (and, for logs, the task log files of this node and, through the peer
//! RPC, of the others).

use std::{
    collections::BTreeMap,
    io::{Read, Seek, SeekFrom},
};

use anyhow::{anyhow, Context, Result};
use manager::{
    driver::wall_ms,
    ops::ServiceRequest,
    state::{service::ReservedPort, Kind, Scope, Service, Stamp, Task, TaskState},
    view::ClusterView,
    Manager, NodeId,
};

use super::endpoint::Endpoints;
use crate::{
    api::{Body, LogChunk, LogEntry, ServiceSpec},
    peer::{PeerRequest, PeerResponse, Peers},
    tasks::{
        process::{log_path, resolve_command, resolve_user},
        status::{hostname, service_row, service_status, task_name},
        supervisor::Supervisor,
    },
};

/// The most log bytes one `service logs` answer carries per task; `--follow` and repeated
/// calls page through the rest.
const MAX_LOG_CHUNK: u64 = 256 * 1024;
/// The most log bytes a peer's answer carries in all: lossy UTF-8 can triple them (each
/// invalid byte becomes U+FFFD), which still fits in one peer frame.
const MAX_PEER_LOG_BYTES: u64 = 256 * 1024;
const _: () = assert!(3 * MAX_PEER_LOG_BYTES < manager::secure::MAX_FRAME as u64 - 64 * 1024);
// The port `service create` refuses is the one the dataplane runs VXLAN on.
const _: () = assert!(manager::state::service::VXLAN_PORT == dataplane_ebpf::overlay::VXLAN_PORT);

/// `service create`: checks the request (including, on this node, that the command and
/// user exist, and that no published port is one this agent uses: `local_reserved`),
/// creates the service, and answers its first status.
pub(super) async fn create(
    manager: &Manager,
    spec: ServiceSpec,
    local_reserved: &[ReservedPort],
) -> Result<Body> {
    let argv0 = spec
        .command
        .first()
        .ok_or_else(|| anyhow!("a command to run is required (after `--`)"))?;
    resolve_command(argv0)?;
    if let Some(user) = &spec.user {
        resolve_user(user)?;
    }
    let health = spec.health();
    let service = manager
        .create_service(ServiceRequest {
            name: spec.name,
            mode: spec.mode,
            network: spec.network,
            ports: spec.publish,
            publish_mode: spec.publish_mode,
            endpoint_mode: spec.endpoint_mode,
            command: spec.command,
            env: spec.env,
            user: spec.user,
            health,
            restart_delay_ms: millis(spec.restart_delay),
            limits: spec.limits,
            local_reserved: local_reserved.to_vec(),
            security: spec.security,
            stack: spec.stack,
            rollout: spec.rollout,
        })
        .await?;
    Ok(Body::ServiceStatus(Box::new(service_status(
        &manager.view(),
        &service,
        wall_ms(),
    ))))
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The service called `name`, or a clear error.
fn find<'a>(view: &'a ClusterView, name: &str) -> Result<&'a Service> {
    view.services
        .get(name)
        .ok_or_else(|| anyhow!("service {name:?} does not exist (see `skein service ls`)"))
}

pub(super) fn ls(view: &ClusterView) -> Body {
    let now = wall_ms();
    Body::Services(
        view.services
            .valid
            .iter()
            .map(|s| service_row(view, s, now))
            .collect(),
    )
}

pub(super) fn ps(view: &ClusterView, name: &str) -> Result<Body> {
    Ok(Body::ServiceStatus(Box::new(service_status(
        view,
        find(view, name)?,
        wall_ms(),
    ))))
}

/// `service inspect`: the service as stored; for one in the routing mesh, with each
/// backend's flows tracked on every node under `mesh` (see [`super::mesh::inspect`]).
pub(super) async fn inspect(
    view: &ClusterView,
    reconciler: &crate::reconcile::Reconciler,
    peers: &Peers,
    name: &str,
) -> Result<Body> {
    let service = find(view, name)?;
    let mut value = serde_json::to_value(service)?;
    if let Some(mesh) = super::mesh::inspect(view, reconciler, peers, service).await {
        if let Some(object) = value.as_object_mut() {
            object.insert("mesh".into(), mesh);
        }
    }
    Ok(Body::Json(value))
}

pub(super) async fn scale(manager: &Manager, name: &str, replicas: u32) -> Result<Body> {
    let service = manager.scale_service(name, replicas).await?;
    Ok(Body::ServiceStatus(Box::new(service_status(
        &manager.view(),
        &service,
        wall_ms(),
    ))))
}

pub(super) async fn rm(manager: &Manager, name: &str) -> Result<Body> {
    let service = manager.remove_service(name).await?;
    Ok(Body::Done(format!(
        "removed service {}; its tasks stop on every node",
        service.name
    )))
}

/// `service logs`: new bytes of every task of `name` since `from`, wherever it runs: this
/// node's tasks read here, the others asked of their nodes over the peer RPC, all nodes in
/// parallel. Tasks whose node is down or does not answer are listed in `elsewhere` with
/// the reason; an unreachable node costs at most the peer timeouts, never a hang.
pub(super) async fn logs(
    view: &ClusterView,
    supervisor: &Supervisor,
    peers: &Peers,
    name: &str,
    from: &BTreeMap<String, u64>,
) -> Result<Body> {
    let service = find(view, name)?;
    let tasks: Vec<(usize, NodeId, &Task)> = view
        .tasks_of(service)
        .placed()
        .enumerate()
        .map(|(i, (node, task))| (i, *node, task))
        .collect();
    // The view's order, so the output's is stable.
    let order: BTreeMap<&str, usize> = tasks.iter().map(|(i, _, t)| (t.id.as_str(), *i)).collect();
    let mut chunk = LogChunk {
        entries: own_log_entries(
            view,
            supervisor,
            &service.name,
            service.created,
            from,
            u64::MAX,
        ),
        elsewhere: Vec::new(),
    };

    let mut remote: BTreeMap<NodeId, Vec<&Task>> = BTreeMap::new();
    for (_, node, task) in &tasks {
        if *node != view.self_id {
            remote.entry(*node).or_default().push(task);
        }
    }
    let mut calls = Vec::new();
    for (node, node_tasks) in &remote {
        let status = view.node(node);
        let host = hostname(view, *node);
        let unavailable = |reason: &str| -> Vec<String> {
            node_tasks
                .iter()
                .map(|t| format!("{} on {host}: {reason}", task_name(view, *node, t, service)))
                .collect()
        };
        let addr = match status {
            Some(n) if !n.up => {
                chunk.elsewhere.extend(unavailable("node is down"));
                continue;
            }
            None => {
                chunk.elsewhere.extend(unavailable("node is unknown"));
                continue;
            }
            Some(n) => match n.info.as_ref().map(|i| i.addr).or(n.addr) {
                Some(addr) => addr,
                None => {
                    chunk.elsewhere.extend(unavailable("node address unknown"));
                    continue;
                }
            },
        };
        let request = PeerRequest::Logs {
            service: service.name.clone(),
            created: service.created,
            from: node_tasks
                .iter()
                .filter_map(|t| from.get(&t.id).map(|offset| (t.id.clone(), *offset)))
                .collect(),
        };
        calls.push(async move {
            let answer = peers.call(addr, &request).await;
            (node, node_tasks, host, answer)
        });
    }
    for (node, node_tasks, host, answer) in futures::future::join_all(calls).await {
        let reason = match answer {
            Ok(PeerResponse::Logs(entries)) => {
                for mut entry in entries {
                    // Only the tasks this view gives that node, named as this view names them.
                    let Some(task) = node_tasks.iter().find(|t| t.id == entry.id) else {
                        continue;
                    };
                    entry.task = task_name(view, *node, task, service);
                    chunk.entries.push(entry);
                }
                continue;
            }
            Ok(PeerResponse::Error(message)) => message,
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(error) => error.to_string(),
        };
        chunk.elsewhere.extend(
            node_tasks
                .iter()
                .map(|t| format!("{} on {host}: {reason}", task_name(view, *node, t, service))),
        );
    }
    chunk
        .entries
        .sort_by_key(|e| order.get(e.id.as_str()).copied().unwrap_or(usize::MAX));
    Ok(Body::Logs(chunk))
}

/// `service attach`: an existing namespace becomes an endpoint on the service's network
/// and a task of the service (counted as one replica, never moved).
pub(super) async fn attach(endpoints: &Endpoints, name: &str, netns: String) -> Result<Body> {
    let manager = &endpoints.manager;
    let service = find(&manager.view(), name)?.clone();
    let row = endpoints
        .add(service.network.clone(), None, Some(netns))
        .await?;
    let endpoint = manager
        .view()
        .own_endpoints()
        .find(|e| e.id == row.id)
        .cloned()
        .context("the endpoint vanished while attaching")?;
    let task = Task {
        id: endpoint.id.clone(),
        service: service.name.clone(),
        service_created: service.created,
        slot: 0,
        endpoint: endpoint.id.clone(),
        ip: endpoint.ip,
        state: TaskState::Running,
        since_ms: wall_ms(),
        message: String::new(),
        restarts: 0,
        created: endpoint.created,
        attached: true,
        spec: 0,
    };
    manager
        .write(
            Scope::Node(manager.node()),
            Kind::Task,
            task.id.clone(),
            Some(task.encode()),
        )
        .await?;
    Ok(Body::Done(format!(
        "attached {} to service {} as task {} ({})",
        endpoint.netns, service.name, task.id, endpoint.ip
    )))
}

/// The peer RPC's side of `service logs`: new bytes of this node's tasks of the service
/// `name` created at `created`.
pub(super) fn answer_peer_logs(
    view: &ClusterView,
    supervisor: &Supervisor,
    name: &str,
    created: Stamp,
    from: &BTreeMap<String, u64>,
) -> Vec<LogEntry> {
    own_log_entries(view, supervisor, name, created, from, MAX_PEER_LOG_BYTES)
}

/// New bytes of this node's (started, not attached) tasks of the service `name` created at
/// `created`, from the offsets in `from`: at most [`MAX_LOG_CHUNK`] per task and `budget`
/// in all. A task left out by the budget gets an entry with no text at its offset, so the
/// next call reads it.
fn own_log_entries(
    view: &ClusterView,
    supervisor: &Supervisor,
    name: &str,
    created: Stamp,
    from: &BTreeMap<String, u64>,
    budget: u64,
) -> Vec<LogEntry> {
    // Named as the service names them, if this node knows it yet; by ID otherwise (the
    // asking node renames them anyway).
    let service = view.services.get(name).filter(|s| s.created == created);
    let mut left = budget;
    view.own_tasks()
        .filter(|t| t.is_of(name, created) && !t.attached)
        .map(|task| {
            let label = match service {
                Some(service) => task_name(view, view.self_id, task, service),
                None => task.id.clone(),
            };
            let start = from.get(&task.id).copied().unwrap_or(0);
            let (text, next) = read_from(
                &log_path(&supervisor.task_dir(&task.id)),
                start,
                left.min(MAX_LOG_CHUNK),
            );
            left = left.saturating_sub(next - start);
            LogEntry {
                task: label,
                id: task.id.clone(),
                text,
                next,
            }
        })
        .collect()
}

/// Up to `limit` bytes of `path` from `start`, and the offset after them. A missing file
/// reads as empty; a file that shrank (replaced) is read from its start. A UTF-8 character
/// cut by the limit (or still being written) is left for the next read.
fn read_from(path: &std::path::Path, start: u64, limit: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), start);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if start > len { 0 } else { start };
    if limit == 0 || file.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), start);
    }
    let mut bytes = Vec::new();
    let _ = file.take(limit).read_to_end(&mut bytes);
    if let Err(error) = std::str::from_utf8(&bytes) {
        if error.error_len().is_none() && error.valid_up_to() > 0 {
            bytes.truncate(error.valid_up_to());
        }
    }
    let read = bytes.len() as u64;
    (String::from_utf8_lossy(&bytes).into_owned(), start + read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_offsets_within_limits_and_keeps_characters_whole() {
        let dir = std::env::temp_dir().join(format!("skein-logs-{}", crate::random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("task.log");
        std::fs::write(&path, "héllo\nwörld\n").unwrap();
        assert_eq!(read_from(&path, 0, 100), ("héllo\nwörld\n".into(), 14));
        assert_eq!(read_from(&path, 7, 100), ("wörld\n".into(), 14));
        // "hé" is 3 bytes; a limit of 2 cuts the é: only "h" is read.
        assert_eq!(read_from(&path, 0, 2), ("h".into(), 1));
        assert_eq!(read_from(&path, 1, 2), ("é".into(), 3));
        assert_eq!(read_from(&path, 3, 0), (String::new(), 3));
        // Shrunk (replaced): from the start.
        assert_eq!(read_from(&path, 99, 5), ("héll".into(), 5));
        // Invalid bytes are replaced, not stuck on.
        std::fs::write(&path, b"a\xffb").unwrap();
        assert_eq!(read_from(&path, 0, 10), ("a\u{fffd}b".into(), 3));
        assert_eq!(read_from(&dir.join("missing"), 4, 10), (String::new(), 4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
