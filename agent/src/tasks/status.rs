//! What `service ls` and `service ps` report, computed from a cluster snapshot: pure
//! functions, the same on every node that has the same view.

use manager::{
    placement::{self, Layout},
    state::{EndpointMode, Mode, Service, Task, TaskState},
    view::ClusterView,
    NodeId,
};

use super::supervisor::attached_count;
use crate::api::{ServiceRow, ServiceStatus, TaskRow};

/// The display name of a task: `web.2` (replicated), `web.<host>` (global), or
/// `web.attached.<id>`.
pub fn task_name(view: &ClusterView, node: NodeId, task: &Task, service: &Service) -> String {
    if task.attached {
        return format!("{}.attached.{}", task.service, task.id);
    }
    match service.mode {
        Mode::Replicated { .. } => format!("{}.{}", task.service, task.slot + 1),
        Mode::Global => format!("{}.{}", task.service, hostname(view, node)),
    }
}

fn hostname(view: &ClusterView, node: NodeId) -> String {
    view.node(&node)
        .and_then(|n| n.info.as_ref())
        .map(|i| i.hostname.clone())
        .unwrap_or_else(|| node.short())
}

/// The layout placement gives `service` now (attached replicas reduce the placed count).
pub fn layout(view: &ClusterView, service: &Service, now_ms: u64) -> Layout {
    let mut placed = service.clone();
    if let Mode::Replicated { replicas } = service.mode {
        placed.mode = Mode::Replicated {
            replicas: replicas.saturating_sub(attached_count(view, service)),
        };
    }
    placement::layout(
        &placed,
        &placement::eligible_nodes(view, now_ms),
        view.live_tasks(),
    )
}

/// `service ps`: every task of the service (those of down nodes shown as `down`), and
/// whether it has converged.
pub fn service_status(view: &ClusterView, service: &Service, now_ms: u64) -> ServiceStatus {
    let layout = layout(view, service, now_ms);
    let attached = attached_count(view, service) as usize;
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut running_slots = std::collections::BTreeSet::new();
    let mut running_attached = 0;
    let mut live_placed_tasks = 0;
    for (node, task) in view
        .tasks
        .iter()
        .filter(|(_, t)| t.service == service.name && t.service_created == service.created)
    {
        let up = view.node(node).is_some_and(|n| n.up);
        let name = task_name(view, *node, task, service);
        if up {
            if task.attached {
                running_attached += usize::from(task.serves());
            } else {
                live_placed_tasks += 1;
                if task.serves() && layout.holds(*node, task.slot) {
                    running_slots.insert((task.slot, *node));
                }
            }
            if matches!(task.state, TaskState::Failed | TaskState::Exited) {
                problems.push(format!(
                    "{name} on {}: {}{}",
                    hostname(view, *node),
                    task.state,
                    if task.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", task.message)
                    }
                ));
            }
        }
        rows.push(TaskRow {
            name,
            id: task.id.clone(),
            node: node.to_string(),
            hostname: hostname(view, *node),
            ip: task.ip.to_string(),
            state: if up {
                task.state.to_string()
            } else {
                "down".to_owned()
            },
            since_ms: task.since_ms,
            message: task.message.clone(),
        });
    }
    rows.sort_by(|a, b| (&a.name, &a.hostname).cmp(&(&b.name, &b.hostname)));
    let placed = layout.wanted();
    let wanted = placed + attached;
    let running = running_slots.len() + running_attached.min(attached);
    ServiceStatus {
        service: service_row(view, service, now_ms),
        tasks: rows,
        wanted,
        running,
        converged: running == wanted && live_placed_tasks == placed,
        problems,
    }
}

/// `service ls`: one row.
pub fn service_row(view: &ClusterView, service: &Service, now_ms: u64) -> ServiceRow {
    let layout = layout(view, service, now_ms);
    let running = view
        .live_tasks()
        .filter(|(node, t)| {
            t.service == service.name
                && t.service_created == service.created
                && t.serves()
                && (t.attached || layout.holds(*node, t.slot))
        })
        .count();
    let wanted = layout.wanted() + attached_count(view, service) as usize;
    ServiceRow {
        name: service.name.clone(),
        mode: match service.mode {
            Mode::Replicated { .. } => "replicated",
            Mode::Global => "global",
        }
        .to_owned(),
        replicas: format!("{running}/{wanted}"),
        network: service.network.clone(),
        ports: service.ports.iter().map(|p| p.to_string()).collect(),
        vip: match (service.endpoint_mode, service.vip) {
            (EndpointMode::Vip, Some(vip)) => vip.to_string(),
            _ => String::new(),
        },
        command: service.command.join(" "),
    }
}
