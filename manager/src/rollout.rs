//! Rolling updates without a leader: `service update` and `service rollback` as a state
//! carried by the replicated service record ([`ServiceUpdate`], the service's last field),
//! advanced by pure functions of the replicated view that every node computes alike.
//!
//! What a task runs is named by the fingerprint of the definition it was started with
//! ([`spec_fingerprint`], kept in `Task::spec`). An update rewrites the service record with
//! the new definition, the update config and the previous definition; every task whose
//! fingerprint differs is *outdated*. Nothing else needs to be written for the rollout to go
//! on: from the view, [`progress`] tells each slot's state (pending, busy, done) and the
//! first failure; [`replaceable`] picks the next batch (the first `parallelism` pending slots,
//! once no slot is busy and `delay` has passed since the last one finished), and only the node
//! running a picked slot's task acts on it, so a node dying mid-rollout stops nothing: its
//! slots move as always, and the others go on from the same view. The state transitions
//! (failure → paused or rolling back, finished → completed) are written by one node, the
//! lowest-ID live one ([`writer`]), computed by [`next_step`]; if it dies the next one takes
//! over, and two writers would write the same value. They go to a record of their own
//! ([`RolloutStep`]) naming the user generation they advance, so a user's update written at
//! the same moment is never overwritten (see `step.rs`).
//!
//! Mixed-version clusters are not supported: the service and task records grew a field.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    state::{Mode, Service, Task, TaskState},
    view::ClusterView,
    NodeId,
};

mod availability;
mod config;
mod ops;
mod step;
pub use availability::{availabilities, Availability, NodeAvailability};
pub use config::{BadWord, FailureAction, RolloutConfigs, UpdateConfig, UpdateOrder};
pub use ops::UpdateError;
pub use step::{effective, effective_in, RolloutStep};

/// Where a service's last update stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// No rollout in progress (never updated, or the last one finished).
    #[default]
    Completed,
    /// Outdated tasks are being replaced by the new definition.
    Updating,
    /// A new task failed and the failure action is `pause` (or a rollback failed): no more
    /// tasks are replaced until the next update or rollback.
    Paused { reason: String },
    /// Going back to the previous definition, after a failure or on request.
    RollingBack { reason: String },
    /// The rollback finished.
    RolledBack { reason: String },
}

impl RolloutState {
    /// Whether tasks are being replaced.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            RolloutState::Updating | RolloutState::RollingBack { .. }
        )
    }

    /// One word for listings: `completed`, `updating`, `paused`, `rolling back`,
    /// `rolled back`.
    pub fn word(&self) -> &'static str {
        match self {
            RolloutState::Completed => "completed",
            RolloutState::Updating => "updating",
            RolloutState::Paused { .. } => "paused",
            RolloutState::RollingBack { .. } => "rolling back",
            RolloutState::RolledBack { .. } => "rolled back",
        }
    }
}

/// The rollout part of a service record (its last field).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    /// How tasks are replaced (`--update-*`), kept for the next update too.
    pub config: UpdateConfig,
    pub state: RolloutState,
    /// When the current rollout started (ms since the Unix epoch, the writer's clock).
    pub started_ms: u64,
    /// The definition before the last update (its own `previous` cleared), for `service
    /// rollback` and the `rollback` failure action.
    pub previous: Option<Box<Service>>,
    /// How a rollback replaces tasks (`--rollback-*`, compose `rollback_config`), kept like
    /// `config`.
    pub rollback: UpdateConfig,
    /// Bumped by every user write of the record (update, rollback); the writer's
    /// [`RolloutStep`]s name the generation they advance.
    pub generation: u64,
    /// Set only in the service in effect, when the writer rolled this generation back
    /// (never written by a user).
    pub automatic_rollback: bool,
}

impl ServiceUpdate {
    /// The controls of the rollout in progress: the rollback's while rolling back.
    pub fn active_config(&self) -> &UpdateConfig {
        match self.state {
            RolloutState::RollingBack { .. } | RolloutState::RolledBack { .. } => &self.rollback,
            _ => &self.config,
        }
    }
}

/// A stable hash of everything a task runs with: the definition with the fields that only
/// placement, the mesh or the rollout read (mode, ports, publish and endpoint mode, VIP,
/// restart delay, update state) set to fixed values. So fields added later take part by
/// themselves, and a change of replicas or published ports replaces no task.
pub fn spec_fingerprint(service: &Service) -> u64 {
    let normalized = Service {
        mode: Mode::Global,
        ports: Vec::new(),
        publish_mode: crate::state::PublishMode::Ingress,
        endpoint_mode: crate::state::EndpointMode::Vip,
        vip: None,
        restart_delay_ms: 0,
        update: ServiceUpdate::default(),
        ..service.clone()
    };
    fnv1a(&normalized.encode())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A unit the rollout replaces: a replicated slot, or a global service's task on one node.
pub type Unit = (u32, Option<NodeId>);

/// The rollout's view of a service's tasks at one time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Units with an outdated task and no task of the current definition: to replace.
    pub pending: Vec<Unit>,
    /// Units being replaced: a current task not yet done, or an outdated one draining.
    pub busy: usize,
    /// Units whose current task has run for the monitor period.
    pub done: usize,
    /// When the last done unit finished (its task's running time plus the monitor).
    pub last_done_ms: u64,
    /// The first failure of a current task: a sentence naming it.
    pub failure: Option<String>,
}

impl Progress {
    /// Whether nothing is left to replace or wait for.
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.busy == 0
    }
}

fn unit(service: &Service, node: NodeId, task: &Task) -> Unit {
    match service.mode {
        Mode::Replicated { .. } => (task.slot, None),
        Mode::Global => (task.slot, Some(node)),
    }
}

/// The rollout's progress over `tasks` (the service's live, placed tasks, attached ones
/// excluded by the caller or here) at `now_ms`.
pub fn progress<'a>(
    service: &Service,
    tasks: impl IntoIterator<Item = &'a (NodeId, Task)>,
    now_ms: u64,
) -> Progress {
    let current = spec_fingerprint(service);
    let monitor = service.update.active_config().monitor_ms;
    let tasks: Vec<&(NodeId, Task)> = tasks.into_iter().filter(|(_, t)| !t.attached).collect();
    let mut units: BTreeSet<Unit> = tasks.iter().map(|(n, t)| unit(service, *n, t)).collect();
    if let Mode::Replicated { replicas } = service.mode {
        units.retain(|(slot, _)| *slot < replicas);
    }
    let mut progress = Progress::default();
    for u in units {
        let of_unit = || tasks.iter().filter(|(n, t)| unit(service, *n, t) == u);
        let news: Vec<&Task> = of_unit()
            .filter(|(_, t)| t.spec == current && t.state != TaskState::Draining)
            .map(|(_, t)| t)
            .collect();
        let done_at = news
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .map(|t| t.since_ms.saturating_add(monitor))
            .filter(|at| *at <= now_ms)
            .min();
        // Only tasks this rollout started can fail it (a rollback's old tasks may have
        // restarted long ago).
        let failed = news.iter().find(|t| {
            crate::hlc::physical_ms(t.created.hlc) >= service.update.started_ms
                && (t.restarts > 0
                    || matches!(
                        t.state,
                        TaskState::Exited | TaskState::Failed | TaskState::Unhealthy
                    ))
        });
        if let Some(t) = failed {
            progress.failure.get_or_insert_with(|| {
                let why = if t.message.is_empty() {
                    t.state.to_string()
                } else {
                    t.message.clone()
                };
                format!("task {} of slot {} failed: {why}", t.id, t.slot + 1)
            });
        }
        let outdated_live =
            of_unit().any(|(_, t)| t.spec != current && t.state != TaskState::Draining);
        let outdated_draining =
            of_unit().any(|(_, t)| t.spec != current && t.state == TaskState::Draining);
        if let Some(at) = done_at {
            progress.done += 1;
            progress.last_done_ms = progress.last_done_ms.max(at);
        } else if !news.is_empty() {
            // A failing new task blocks the rollout, unless failures are ignored.
            if failed.is_none()
                || service.update.active_config().failure_action != FailureAction::Continue
            {
                progress.busy += 1;
            }
        } else if outdated_live {
            progress.pending.push(u);
        } else if outdated_draining {
            progress.busy += 1;
        }
    }
    progress
}

/// The units whose outdated task may be replaced now: the next batch (the first
/// `parallelism` pending units; all with 0), once no unit is busy and `delay` has passed
/// since the last one finished. None unless the rollout is active.
pub fn replaceable(service: &Service, progress: &Progress, now_ms: u64) -> BTreeSet<Unit> {
    let config = service.update.active_config();
    if !service.update.state.is_active() || progress.busy > 0 {
        return BTreeSet::new();
    }
    let delay_over = progress.done == 0
        || now_ms >= progress.last_done_ms.saturating_add(config.delay_ms)
        || progress.last_done_ms <= service.update.started_ms;
    if !delay_over {
        return BTreeSet::new();
    }
    let batch = match config.parallelism {
        0 => usize::MAX,
        n => n as usize,
    };
    progress.pending.iter().take(batch).copied().collect()
}

/// The one node that writes rollout state transitions: the lowest-ID node that is up and
/// not leaving. Every node computes the same one from the same view.
pub fn writer(view: &ClusterView) -> Option<NodeId> {
    view.nodes
        .iter()
        .filter(|n| n.up && n.info.as_ref().is_some_and(|i| !i.leaving))
        .map(|n| n.id)
        .min()
}

/// The step the writer writes next for `service`'s rollout (the service in effect) at
/// `now_ms`, if its state must change: a failure pauses it, rolls it back, or is ignored (by
/// the failure action; a failing rollback pauses unless its own action is `continue`); a
/// finished rollout completes.
pub fn next_step(service: &Service, progress: &Progress, now_ms: u64) -> Option<RolloutStep> {
    let update = &service.update;
    let step = |state: RolloutState, rolled_back: bool, started_ms: u64| RolloutStep {
        service: service.name.clone(),
        created: service.created,
        generation: update.generation,
        state,
        rolled_back,
        started_ms,
    };
    let same = |state: RolloutState| step(state, update.automatic_rollback, update.started_ms);
    match &update.state {
        RolloutState::Updating => match (&progress.failure, update.config.failure_action) {
            (Some(reason), FailureAction::Pause) => Some(same(RolloutState::Paused {
                reason: format!("update paused due to failure: {reason}"),
            })),
            (Some(reason), FailureAction::Rollback) if update.previous.is_some() => Some(step(
                RolloutState::RollingBack {
                    reason: format!("update rolled back due to failure: {reason}"),
                },
                true,
                now_ms,
            )),
            _ if progress.finished() => Some(same(RolloutState::Completed)),
            _ => None,
        },
        RolloutState::RollingBack { reason } => match &progress.failure {
            Some(failure) if update.rollback.failure_action != FailureAction::Continue => {
                Some(same(RolloutState::Paused {
                    reason: format!("rollback paused due to failure: {failure}"),
                }))
            }
            _ if progress.finished() => Some(same(RolloutState::RolledBack {
                reason: reason.clone(),
            })),
            _ => None,
        },
        _ => None,
    }
}

/// `service` going back to its previous definition (which keeps the current update and
/// rollback configs, and becomes `RollingBack` with `reason`) as the next user generation;
/// `None` without a previous definition.
pub fn rolled_back(service: &Service, reason: String, now_ms: u64) -> Option<Service> {
    let previous = service.update.previous.as_deref()?;
    let mut failed = service.clone();
    failed.update = ServiceUpdate::default();
    Some(Service {
        created: service.created,
        vip: service.vip,
        update: ServiceUpdate {
            config: service.update.config.clone(),
            state: RolloutState::RollingBack { reason },
            started_ms: now_ms,
            previous: Some(Box::new(failed)),
            rollback: service.update.rollback.clone(),
            generation: service.update.generation.wrapping_add(1),
            automatic_rollback: false,
        },
        ..previous.clone()
    })
}

/// `service` with `next`'s definition as an update started at `now_ms` with `config` (and
/// `next`'s rollback config), the next user generation: the current definition becomes
/// the previous one.
pub fn updated(service: &Service, next: Service, config: UpdateConfig, now_ms: u64) -> Service {
    let mut previous = service.clone();
    previous.update = ServiceUpdate::default();
    let changes_tasks = spec_fingerprint(&next) != spec_fingerprint(service);
    Service {
        name: service.name.clone(),
        created: service.created,
        update: ServiceUpdate {
            config,
            state: if changes_tasks {
                RolloutState::Updating
            } else {
                RolloutState::Completed
            },
            started_ms: now_ms,
            previous: Some(Box::new(previous)),
            rollback: next.update.rollback.clone(),
            generation: service.update.generation.wrapping_add(1),
            automatic_rollback: false,
        },
        ..next
    }
}

#[cfg(test)]
mod tests;
