//! What `service ls` and `service ps` report, computed from a cluster snapshot: pure
//! functions, the same on every node that has the same view.

use manager::{
    placement::{self, Layout},
    state::{EndpointMode, Mode, Service, Task, TaskState},
    view::ClusterView,
    NodeId,
};

use crate::api::{ServiceRow, ServiceStatus, TaskRow, TaskRowState};

/// The display name of a task: `web.2` (replicated), `web.<host>` (global), or
/// `web.attached.<id>`.
pub(crate) fn task_name(
    view: &ClusterView,
    node: NodeId,
    task: &Task,
    service: &Service,
) -> String {
    if task.attached {
        return format!("{}.attached.{}", task.service, task.id);
    }
    match service.mode {
        Mode::Replicated { .. } => format!("{}.{}", task.service, task.slot + 1),
        Mode::Global => format!("{}.{}", task.service, hostname(view, node)),
    }
}

/// A node's hostname as the view knows it, else its short ID.
pub(crate) fn hostname(view: &ClusterView, node: NodeId) -> String {
    view.node(&node)
        .and_then(|n| n.info.as_ref())
        .map(|i| i.hostname.clone())
        .unwrap_or_else(|| node.short())
}

/// Live attached tasks of `service`: each counts as one replica.
pub(crate) fn attached_count(view: &ClusterView, service: &Service) -> u32 {
    view.tasks_of(service).live().attached().count() as u32
}

/// The layout placement gives `service` now (attached replicas reduce the placed count).
pub(crate) fn layout(view: &ClusterView, service: &Service, now_ms: u64) -> Layout {
    let mut placed = service.clone();
    if let Mode::Replicated { replicas } = service.mode {
        placed.mode = Mode::Replicated {
            replicas: replicas.saturating_sub(attached_count(view, service)),
        };
    }
    placement::layout(
        &placed,
        &placement::eligible_nodes(view, now_ms),
        &placement::paused_nodes(view),
        view.live_tasks(),
    )
}

/// `service ps`: every task of the service (those of down nodes shown as `down`), and
/// whether it has converged.
pub(crate) fn service_status(view: &ClusterView, service: &Service, now_ms: u64) -> ServiceStatus {
    let layout = layout(view, service, now_ms);
    let attached = attached_count(view, service) as usize;
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut running_slots = std::collections::BTreeSet::new();
    let mut running_since_ms = 0;
    let mut running_attached = 0;
    let mut live_placed_tasks = 0;
    for (node, task) in view.tasks_of(service) {
        let up = view.node(node).is_some_and(|n| n.up);
        let name = task_name(view, *node, task, service);
        if up {
            if task.attached {
                running_attached += usize::from(task.serves());
            } else if task.state != TaskState::Draining {
                // A draining task is on its way out: listed, but the service has converged
                // without it.
                live_placed_tasks += 1;
                if task.serves() && layout.holds(*node, task.slot) {
                    running_slots.insert((task.slot, *node));
                    running_since_ms = running_since_ms.max(task.since_ms);
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
                TaskRowState::Reported(task.state)
            } else {
                TaskRowState::NodeDown
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
        service: row(service, running, wanted),
        tasks: rows,
        wanted,
        running,
        converged: running == wanted && live_placed_tasks == placed,
        running_since_ms,
        problems,
    }
}

/// `service ls`: one row, counted as `service ps` counts.
pub(crate) fn service_row(view: &ClusterView, service: &Service, now_ms: u64) -> ServiceRow {
    service_status(view, service, now_ms).service
}

fn row(service: &Service, running: usize, wanted: usize) -> ServiceRow {
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
        stack: service
            .stack
            .as_ref()
            .map(|m| m.stack.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use manager::{
        state::{ServiceSet, Stamp, TaskState},
        view::NodeStatus,
    };

    use super::*;

    fn node(id: u8, up: bool) -> NodeStatus {
        manager::testing::node(id, up, [10, 0, 0, id])
    }

    fn service() -> Service {
        let created = Stamp {
            hlc: 1,
            writer: NodeId([1; 16]),
        };
        manager::testing::service("web", Mode::Replicated { replicas: 3 }, created)
    }

    fn view(up: [bool; 3], tasks: Vec<(NodeId, Task)>) -> ClusterView {
        ClusterView {
            self_id: NodeId([1; 16]),
            store_version: 1,
            nodes: (1..=3).map(|i| node(i, up[i as usize - 1])).collect(),
            networks: Default::default(),
            endpoints: Default::default(),
            vteps: vec![],
            services: ServiceSet {
                valid: vec![service()],
                conflicted: vec![],
            },
            tasks,
            overlay_mtu: Some(1450),
        }
    }

    fn task(slot: u32, state: TaskState) -> Task {
        Task {
            id: format!("t{slot}"),
            service: "web".into(),
            service_created: service().created,
            slot,
            endpoint: format!("e{slot}"),
            ip: Ipv4Addr::new(10, 10, 0, 10 + slot as u8),
            state,
            since_ms: 1,
            message: if state == TaskState::Failed {
                "command \"x\" not found".into()
            } else {
                String::new()
            },
            restarts: 0,
            created: Stamp {
                hlc: 10 + u64::from(slot),
                writer: NodeId([1; 16]),
            },
            attached: false,
            spec: 0,
        }
    }

    /// Tasks where placement puts them, in the given states.
    fn placed(states: [TaskState; 3]) -> Vec<(NodeId, Task)> {
        let empty = view([true; 3], vec![]);
        let Layout::Replicated(slots) = layout(&empty, &service(), 0) else {
            panic!("replicated");
        };
        slots
            .iter()
            .enumerate()
            .map(|(slot, node)| (*node, task(slot as u32, states[slot])))
            .collect()
    }

    #[test]
    fn converged_only_when_every_slot_runs_where_placed() {
        let running = [TaskState::Running; 3];
        let status = service_status(&view([true; 3], placed(running)), &service(), 0);
        assert_eq!(
            (status.running, status.wanted, status.converged),
            (3, 3, true)
        );
        assert_eq!(
            service_row(&view([true; 3], placed(running)), &service(), 0).replicas,
            "3/3"
        );

        let failing = [TaskState::Running, TaskState::Failed, TaskState::Starting];
        let status = service_status(&view([true; 3], placed(failing)), &service(), 0);
        assert_eq!((status.running, status.converged), (1, false));
        assert_eq!(status.problems.len(), 1, "{:?}", status.problems);
        assert!(status.problems[0].contains("web.2") && status.problems[0].contains("not found"));

        // A task left over on a node placement no longer uses: not converged.
        let mut extra = placed(running);
        let mut dup = extra[0].1.clone();
        dup.id = "dup".into();
        let other = [1u8, 2, 3]
            .map(|i| NodeId([i; 16]))
            .into_iter()
            .find(|n| *n != extra[0].0)
            .unwrap();
        extra.push((other, dup));
        let status = service_status(&view([true; 3], extra.clone()), &service(), 0);
        assert!(!status.converged);
        // Unless it drains (on its way out): listed as such, converged without it.
        extra[3].1.state = TaskState::Draining;
        let status = service_status(&view([true; 3], extra), &service(), 0);
        assert!(status.converged);
        assert_eq!(status.running, 3);
        assert!(status
            .tasks
            .iter()
            .any(|r| r.id == "dup" && r.state == TaskRowState::Reported(TaskState::Draining)));
    }

    #[test]
    fn tasks_of_down_nodes_are_listed_down_and_not_counted() {
        let tasks = placed([TaskState::Running; 3]);
        let down = tasks[0].0;
        let up = [1u8, 2, 3].map(|i| NodeId([i; 16]) != down);
        let status = service_status(&view(up, tasks), &service(), 0);
        let row = status
            .tasks
            .iter()
            .find(|r| r.node == down.to_string())
            .unwrap();
        assert_eq!(row.state, TaskRowState::NodeDown);
        assert!(!status.converged);
        assert_eq!(status.running, 2);
    }
}
