//! Placement without a leader: every node computes the same assignment of a service's slots
//! to nodes from the same replicated state, so no node has to decide for the others.
//!
//! Replicated services use bounded-load rendezvous hashing. Each (slot, node) pair has a
//! fixed pseudo-random weight ([`placement_weight`]); pairs are taken greedily, heaviest
//! first, and a node accepts a slot while it holds fewer than `⌊N/n⌋` slots, or exactly that
//! many and one of the `N mod n` extra places is still free. So every slot is placed and the
//! per-node counts of a service differ by at most one, which plain rendezvous hashing does
//! not guarantee.
//!
//! Minimal moves come from stickiness: the pair of a slot with the node that already runs
//! its oldest task is taken before all others, so running tasks stay where they are unless
//! the balance bound forces one away. When a node dies, only its slots move; when it returns,
//! the nodes over the bound give up their lightest slots to it and nothing else moves. Of two
//! tasks of one slot (briefly, while a slot moves), only the older is sticky, so the
//! assignment does not flip back once the new task appears.

use std::collections::BTreeMap;

use crate::{
    rollout::Availability,
    state::{placement_weight, Mode, Service, Stamp, Task, TaskState},
    view::ClusterView,
    NodeId,
};

/// How long peers keep the slots of a node that announced a restart (graceful stop) before
/// they place them elsewhere.
pub const RESTART_GRACE_MS: u64 = 15_000;

/// A task holding a slot: where it runs and when it was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: NodeId,
    pub created: Stamp,
}

/// Assigns each slot `0..replicas` of `service` to one of `nodes` (see the module docs);
/// `holders` lists the tasks currently running each slot. Empty when there are no nodes.
pub fn assign_replicated(
    service: &Service,
    replicas: u32,
    nodes: &[NodeId],
    holders: &BTreeMap<u32, Vec<Holder>>,
) -> Vec<NodeId> {
    assign_replicated_pausing(service, replicas, nodes, &[], holders)
}

/// [`assign_replicated`] where the `paused` nodes (`node update --availability pause`, also
/// in `nodes`) keep only the slots they are sticky for: they get no new ones. Slots the
/// balance bound would have given them go to the least loaded other node (so counts may
/// then differ by more than one).
pub fn assign_replicated_pausing(
    service: &Service,
    replicas: u32,
    nodes: &[NodeId],
    paused: &[NodeId],
    holders: &BTreeMap<u32, Vec<Holder>>,
) -> Vec<NodeId> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let n = nodes.len() as u32;
    let floor = replicas / n;
    let mut extras = replicas % n;
    // The sticky node of each slot: the one running its oldest task, if it may run tasks.
    let sticky: BTreeMap<u32, NodeId> = holders
        .iter()
        .filter_map(|(slot, hs)| {
            hs.iter()
                .filter(|h| nodes.contains(&h.node))
                .min_by_key(|h| (h.created, h.node))
                .map(|h| (*slot, h.node))
        })
        .collect();
    let mut pairs: Vec<(bool, u64, u32, usize)> =
        Vec::with_capacity(replicas as usize * nodes.len());
    for slot in 0..replicas {
        for (i, node) in nodes.iter().enumerate() {
            let weight = placement_weight(&service.name, service.created, slot, &node.0);
            let is_sticky = sticky.get(&slot) == Some(node);
            pairs.push((is_sticky, weight, slot, i));
        }
    }
    // Sticky pairs first, then by weight, heaviest first; ties by slot and node.
    pairs.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.cmp(&a.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let mut load = vec![0u32; nodes.len()];
    let mut assigned: Vec<Option<usize>> = vec![None; replicas as usize];
    let mut left = replicas;
    for (_, _, slot, i) in pairs {
        if left == 0 {
            break;
        }
        if assigned[slot as usize].is_some() {
            continue;
        }
        if paused.contains(&nodes[i]) && sticky.get(&slot) != Some(&nodes[i]) {
            continue;
        }
        if load[i] < floor {
        } else if load[i] == floor && extras > 0 {
            extras -= 1;
        } else {
            continue;
        }
        load[i] += 1;
        assigned[slot as usize] = Some(i);
        left -= 1;
    }
    // Without paused nodes every slot is placed (the capacities add up to exactly
    // `replicas`); with them, the rest go to the least loaded active node (any node if
    // all are paused), lowest slot first.
    let active: Vec<usize> = (0..nodes.len())
        .filter(|i| !paused.contains(&nodes[*i]))
        .collect();
    let candidates: Vec<usize> = if active.is_empty() {
        (0..nodes.len()).collect()
    } else {
        active
    };
    for a in assigned.iter_mut().filter(|a| a.is_none()) {
        let i = *candidates
            .iter()
            .min_by_key(|i| (load[**i], **i))
            .expect("nodes is not empty");
        load[i] += 1;
        *a = Some(i);
    }
    assigned
        .into_iter()
        .map(|i| nodes[i.unwrap_or(0)])
        .collect()
}

/// The nodes that may run tasks at `now_ms`, in ID order: up and not leaving, or down but
/// within the grace period of an announced restart; not drained (`node update
/// --availability drain`: their tasks move away).
pub fn eligible_nodes(view: &ClusterView, now_ms: u64) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = view
        .nodes
        .iter()
        .filter(|n| {
            n.availability != Availability::Drain
                && n.info.as_ref().is_some_and(|info| {
                    !info.leaving && (n.up || now_ms < info.restart_grace_until_ms)
                })
        })
        .map(|n| n.id)
        .collect();
    nodes.sort();
    nodes
}

/// The nodes set to `--availability pause`: they keep their tasks and get no new ones.
pub fn paused_nodes(view: &ClusterView) -> Vec<NodeId> {
    view.nodes
        .iter()
        .filter(|n| n.availability == Availability::Pause)
        .map(|n| n.id)
        .collect()
}

/// Whether this node sees enough of the cluster to take over other nodes' slots: at least
/// half of the known nodes up. A node cut off from the rest sees only itself and would
/// otherwise start every slot of every service; it keeps what it runs instead.
pub fn may_take_over(view: &ClusterView) -> bool {
    let known = view.nodes.len();
    2 * view.ready_count() >= known
}

/// Where each slot of a service should run: slot → node. Global services have one slot
/// (0) per eligible node, keyed here by the node's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    Replicated(Vec<NodeId>),
    Global(Vec<NodeId>),
}

impl Layout {
    /// How many tasks the service wants.
    pub fn wanted(&self) -> usize {
        match self {
            Layout::Replicated(slots) => slots.len(),
            Layout::Global(nodes) => nodes.len(),
        }
    }

    /// The slots `node` should run.
    pub fn slots_of(&self, node: NodeId) -> Vec<u32> {
        match self {
            Layout::Replicated(slots) => slots
                .iter()
                .enumerate()
                .filter(|(_, n)| **n == node)
                .map(|(slot, _)| slot as u32)
                .collect(),
            Layout::Global(nodes) => {
                if nodes.contains(&node) {
                    vec![0]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Whether `slot` belongs on `node`.
    pub fn holds(&self, node: NodeId, slot: u32) -> bool {
        match self {
            Layout::Replicated(slots) => slots.get(slot as usize) == Some(&node),
            Layout::Global(nodes) => slot == 0 && nodes.contains(&node),
        }
    }
}

/// The layout of `service` given the eligible `nodes` and the cluster's current tasks
/// (of up nodes). A draining task holds no slot: it is on its way out, and its slot's
/// replacement must be placed (and started) meanwhile.
pub fn layout<'a>(
    service: &Service,
    nodes: &[NodeId],
    paused: &[NodeId],
    tasks: impl IntoIterator<Item = &'a (NodeId, Task)>,
) -> Layout {
    match service.mode {
        Mode::Global => Layout::Global(nodes.to_vec()),
        Mode::Replicated { replicas } => {
            let mut holders: BTreeMap<u32, Vec<Holder>> = BTreeMap::new();
            for (node, task) in tasks {
                if crate::view::is_task_of(task, service) && task.state != TaskState::Draining {
                    holders.entry(task.slot).or_default().push(Holder {
                        node: *node,
                        created: task.created,
                    });
                }
            }
            Layout::Replicated(assign_replicated_pausing(
                service, replicas, nodes, paused, &holders,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn service(name: &str, replicas: u32) -> Service {
        let created = Stamp {
            hlc: 42,
            writer: NodeId([9; 16]),
        };
        crate::testing::service(name, Mode::Replicated { replicas }, created)
    }

    fn node(i: u8) -> NodeId {
        let mut id = [0u8; 16];
        id[0] = i;
        id[15] = i.wrapping_mul(37);
        NodeId(id)
    }

    fn counts(assignment: &[NodeId], nodes: &[NodeId]) -> Vec<usize> {
        nodes
            .iter()
            .map(|n| assignment.iter().filter(|a| *a == n).count())
            .collect()
    }

    /// Runs placement until the tasks match it, the way the cluster does: every node starts
    /// the slots assigned to it (new tasks are newer than every existing one) and stops the
    /// tasks of slots no longer assigned to it once the new holder exists. Returns the final
    /// assignment and how many tasks were started.
    fn settle(
        svc: &Service,
        replicas: u32,
        nodes: &[NodeId],
        running: &mut BTreeMap<u32, Vec<Holder>>,
        clock: &mut u64,
    ) -> (Vec<NodeId>, usize) {
        let mut started = 0;
        for round in 0.. {
            assert!(round < 10, "placement does not settle (flapping)");
            running.retain(|slot, _| *slot < replicas);
            for hs in running.values_mut() {
                hs.retain(|h| nodes.contains(&h.node));
            }
            let assignment = assign_replicated(svc, replicas, nodes, running);
            let mut changed = false;
            for (slot, node) in assignment.iter().enumerate() {
                let hs = running.entry(slot as u32).or_default();
                if !hs.iter().any(|h| h.node == *node) {
                    *clock += 1;
                    hs.push(Holder {
                        node: *node,
                        created: Stamp {
                            hlc: *clock,
                            writer: *node,
                        },
                    });
                    started += 1;
                    changed = true;
                } else if hs.len() > 1 {
                    hs.retain(|h| h.node == *node);
                    changed = true;
                }
            }
            if !changed {
                return (assignment, started);
            }
        }
        unreachable!()
    }

    #[test]
    fn every_slot_is_placed_and_counts_differ_by_at_most_one() {
        let empty = BTreeMap::new();
        for n in 1..=9u8 {
            let nodes: Vec<NodeId> = (0..n).map(node).collect();
            for replicas in 0..=40 {
                for name in ["web", "api", "db"] {
                    let a = assign_replicated(&service(name, replicas), replicas, &nodes, &empty);
                    assert_eq!(a.len(), replicas as usize);
                    let c = counts(&a, &nodes);
                    let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
                    assert!(max - min <= 1, "n={n} replicas={replicas}: {c:?}");
                }
            }
        }
        assert!(assign_replicated(&service("web", 3), 3, &[], &empty).is_empty());
    }

    #[test]
    fn the_same_inputs_give_the_same_assignment_in_any_node_order() {
        let nodes: Vec<NodeId> = (0..5).map(node).collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let svc = service("web", 7);
        let a = assign_replicated(&svc, 7, &nodes, &BTreeMap::new());
        // Callers sort nodes; with sorted input the order of discovery does not matter.
        reversed.sort();
        assert_eq!(a, assign_replicated(&svc, 7, &reversed, &BTreeMap::new()));
    }

    /// A node dies: only its slots move. It returns: only as many slots as it should now
    /// hold move back to it. Checked over many service names (different hash layouts).
    #[test]
    fn deaths_and_returns_move_only_what_they_must() {
        let mut worse = 0;
        let mut cases = 0;
        for n in 2..=6u8 {
            let all: Vec<NodeId> = (0..n).map(node).collect();
            for replicas in [1, 2, 3, 4, 5, 6, 7, 10, 12] {
                for k in 0..20 {
                    let svc = service(&format!("svc{k}"), replicas);
                    let mut clock = 0;
                    let mut running = BTreeMap::new();
                    let (before, _) = settle(&svc, replicas, &all, &mut running, &mut clock);
                    let dead = all[k % all.len()];
                    let on_dead = before.iter().filter(|n| **n == dead).count();
                    let alive: Vec<NodeId> = all.iter().copied().filter(|n| *n != dead).collect();
                    let (after, started) = settle(&svc, replicas, &alive, &mut running, &mut clock);
                    cases += 1;
                    assert_eq!(
                        started, on_dead,
                        "a death moves exactly the dead node's slots"
                    );
                    for (slot, node) in before.iter().enumerate() {
                        if *node != dead {
                            assert_eq!(after[slot], *node, "a surviving task moved");
                        }
                    }
                    let (back, started) = settle(&svc, replicas, &all, &mut running, &mut clock);
                    let due = back.iter().filter(|n| **n == dead).count();
                    let c = counts(&back, &all);
                    assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
                    if started != due {
                        worse += 1;
                    }
                    // Slots that moved went to the returning node and nowhere else.
                    for (slot, node) in back.iter().enumerate() {
                        if *node != dead {
                            assert_eq!(after[slot], *node, "a return moved a slot elsewhere");
                        }
                    }
                }
            }
        }
        assert_eq!(
            worse, 0,
            "{worse} of {cases} returns moved more than needed"
        );
    }

    #[test]
    fn scaling_keeps_running_tasks_where_they_are() {
        let nodes: Vec<NodeId> = (0..3).map(node).collect();
        for k in 0..30 {
            let svc = service(&format!("s{k}"), 0);
            let mut clock = 0;
            let mut running = BTreeMap::new();
            let (three, _) = settle(&svc, 3, &nodes, &mut running, &mut clock);
            assert_eq!(
                three.iter().collect::<BTreeSet<_>>().len(),
                3,
                "3 replicas on 3 nodes: one each"
            );
            let (six, started) = settle(&svc, 6, &nodes, &mut running, &mut clock);
            assert_eq!(started, 3, "scaling 3 → 6 starts 3 and moves none");
            assert_eq!(&six[..3], &three[..]);
            assert_eq!(counts(&six, &nodes), [2, 2, 2]);
            let (two, started) = settle(&svc, 2, &nodes, &mut running, &mut clock);
            assert_eq!(started, 0, "scaling down starts nothing");
            assert_eq!(&two[..], &six[..2]);
        }
    }

    #[test]
    fn layouts_of_global_services_have_one_slot_per_node() {
        let nodes: Vec<NodeId> = (0..3).map(node).collect();
        let mut svc = service("agent", 0);
        svc.mode = Mode::Global;
        let l = layout(&svc, &nodes, &[], &[]);
        assert_eq!(l.wanted(), 3);
        assert_eq!(l.slots_of(nodes[1]), [0]);
        assert!(l.holds(nodes[2], 0));
        assert!(!l.holds(node(9), 0));
    }

    #[test]
    fn a_draining_task_holds_no_slot() {
        let nodes: Vec<NodeId> = (0..2).map(node).collect();
        let svc = service("web", 1);
        let free = layout(&svc, &nodes, &[], &[]).slots_of(nodes[0]).is_empty();
        // The node placement would not pick on its own.
        let other = if free { nodes[0] } else { nodes[1] };
        let task = |state| Task {
            id: "0123456789ab".into(),
            service: svc.name.clone(),
            service_created: svc.created,
            slot: 0,
            endpoint: "ba9876543210".into(),
            ip: std::net::Ipv4Addr::new(10, 0, 0, 2),
            state,
            since_ms: 0,
            message: String::new(),
            restarts: 0,
            created: svc.created,
            attached: false,
            spec: 0,
        };
        let running = [(other, task(TaskState::Running))];
        assert!(
            layout(&svc, &nodes, &[], &running).holds(other, 0),
            "a running task keeps its slot where it is"
        );
        let draining = [(other, task(TaskState::Draining))];
        assert!(
            !layout(&svc, &nodes, &[], &draining).holds(other, 0),
            "a draining one does not: its replacement goes where placement puts it"
        );
    }
}
