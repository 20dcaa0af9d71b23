//! The supervisor's decisions, as pure functions of (cluster view, local tasks, now): what
//! to adopt, start, stop, move away, restart and clean up. No process, netlink or store
//! call happens here; [`Supervisor`](super::supervisor::Supervisor) applies the
//! [`Action`]s. So every rule is unit-tested without root.
//!
//! A pass is two plans: [`adoptions`] first (task records of this node the supervisor does
//! not know yet, e.g. after an agent restart: whether their processes still run is only
//! known once the identity files are read), then [`plan`] over the local tasks including
//! those just adopted.
//!
//! Rules (each has a test below):
//! - **adopt**: an own task record the supervisor does not track and is not tearing down,
//!   whose endpoint and service incarnation still exist, is adopted (its process from its
//!   identity file, or restarted at once if gone); without its endpoint or service it is
//!   cleaned up (process stopped, endpoint and record removed).
//! - **warm-up**: for [`WARMUP`] after start, tasks are only adopted, restarted and
//!   replaced: nothing is started or stopped, no orphan removed, until membership settled.
//! - **orphan endpoint**: an own endpoint named like a task's (`<service>.<slot>.<ID>`,
//!   with a namespace of its own) that no task record, local task or teardown refers to,
//!   older than [`ORPHAN_AGE`], is removed (an agent died between creating it and writing
//!   its task record).
//! - **stop**: a task whose service was removed or re-created; a placed task that is the
//!   newer of two local tasks of one slot, of a slot scaled away, or whose slot moved to
//!   another node once the new holder runs it or [`HANDOVER`] passed. Attached tasks are
//!   never moved nor scaled away.
//! - **drain before stop**: a task to stop whose process runs (or an attached namespace)
//!   first drains ([`Action::Drain`]): it leaves the load balancers (state `draining`, so
//!   no new flows) and keeps its endpoint, so its established flows go on; it is stopped
//!   (SIGTERM, the stop grace, SIGKILL) once the drain window passes, or at once if its
//!   process ends meanwhile. A task whose process is not running has nothing to drain and
//!   stops at once, as does every task with a zero drain window. A draining task counts
//!   for nothing else: not as its slot's task (the replacement starts meanwhile), never
//!   moved, restarted or replaced.
//! - **move away** / **stay**: a placed task whose slot another node holds remembers since
//!   when (the handover clock); if the slot comes back, it forgets.
//! - **start**: a slot placement gives this node, with no local task of this incarnation,
//!   is started, but only once the cluster may take over slots
//!   ([`placement::may_take_over`]), the set of up nodes has been unchanged for
//!   [`STABLE_MEMBERSHIP`], and not while the slot backs off after a failed create
//!   ([`CREATE_BACKOFF`]).
//! - **restart**: a task whose process is not running is restarted when its restart time
//!   is due ([`restart_after_exit`], [`retry_after_failed_spawn`]).
//! - **replace**: a task whose endpoint's address was lost to an earlier claim is removed;
//!   its slot is started again by a later pass.
//! - **health**: [`health_state`] turns health-check results into task states.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::{Duration, Instant},
};

use manager::{
    hlc,
    placement::{self, Layout},
    rollout,
    state::{Endpoint, Service, Task, TaskState},
    view::{is_task_of, ClusterView},
    NodeId,
};

/// After start, tasks are only adopted, not started or stopped, until membership has
/// settled: a restarted node that does not see its peers yet would otherwise take their
/// slots.
pub(crate) const WARMUP: Duration = Duration::from_secs(3);
/// Slots are taken over only once the set of up nodes has been stable this long. A node
/// cut off from the others sees them go down one by one; in between it would still see
/// enough of the cluster to take over, and start tasks it must stop again when it returns.
pub(crate) const STABLE_MEMBERSHIP: Duration = Duration::from_secs(1);
/// How long a task whose slot moved elsewhere keeps running while the new one starts.
pub(crate) const HANDOVER: Duration = Duration::from_secs(10);
/// A failed start is retried no faster than this, whatever the restart delay.
pub(crate) const MIN_RETRY: Duration = Duration::from_secs(1);
/// After a task could not be created (no free address, plumbing failed), its slot waits
/// this long before the next attempt.
pub(crate) const CREATE_BACKOFF: Duration = Duration::from_secs(5);
/// A task endpoint without a task record is removed once it is this old.
pub(crate) const ORPHAN_AGE: Duration = Duration::from_secs(30);
/// How long a task to stop drains by default (`--drain-window`): long enough for
/// in-flight requests and most keep-alive exchanges to finish (whoami finishes them on
/// SIGTERM anyway), short enough that scaling down or moving a slot is not held up
/// noticeably. Docker's default stop grace is 10 s for the same reason.
pub(crate) const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(10);
/// Consecutive failed health checks before a running task counts as unhealthy.
pub(crate) const UNHEALTHY_AFTER: u32 = 3;

/// What the plan needs to know of one task the supervisor runs.
#[derive(Clone, Debug)]
pub(crate) struct LocalTask<'a> {
    /// Its record as last written.
    pub(crate) task: &'a Task,
    /// When to (re)start its process, if it is not running.
    pub(crate) restart_at: Option<Instant>,
    /// Since when its slot belongs to another node.
    pub(crate) moving_since: Option<Instant>,
    /// Since when it drains (out of the load balancers, waiting to be stopped).
    pub(crate) draining_since: Option<Instant>,
}

impl LocalTask<'_> {
    /// Whether it has flows to drain: its process runs, or it is an attached namespace
    /// (whose processes are not ours to watch).
    fn may_have_flows(&self) -> bool {
        self.task.attached || self.restart_at.is_none()
    }
}

/// What the supervisor has and remembers, as the plan sees it.
#[derive(Clone, Debug)]
pub(crate) struct Local<'a> {
    pub(crate) tasks: Vec<LocalTask<'a>>,
    /// Task and endpoint IDs being torn down in the background (their records are still
    /// in the view meanwhile).
    pub(crate) stopping: &'a BTreeSet<String>,
    /// When the supervisor started ([`WARMUP`]).
    pub(crate) started: Instant,
    /// Since when the set of up nodes has been what the view shows ([`Membership`]).
    pub(crate) membership_since: Instant,
    /// Slots (service name, slot) whose task could not be created, and until when they
    /// wait.
    pub(crate) create_backoff: &'a BTreeMap<(String, u32), Instant>,
    /// How long a task to stop drains first (the agent's `--drain-window`); zero: none.
    pub(crate) drain_window: Duration,
}

/// The time of a pass: monotonic for the supervisor's timers, the wall clock for record
/// stamps (endpoint ages, placement's restart grace).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) instant: Instant,
    pub(crate) wall_ms: u64,
}

impl Now {
    pub(crate) fn current() -> Now {
        Now {
            instant: Instant::now(),
            wall_ms: manager::driver::wall_ms(),
        }
    }
}

/// Why a task is stopped (logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopReason {
    ServiceRemoved,
    ServiceRecreated,
    DuplicateOfSlot,
    ScaledDown,
    SlotMoved,
    /// Drained: its drain window passed.
    Drained,
    /// Drained: its process ended meanwhile, so nothing is left to drain.
    EndedWhileDraining,
    /// A rollout replaces it by a task of the service's new definition.
    Updated,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::ServiceRemoved => "its service was removed",
            StopReason::ServiceRecreated => "its service was re-created",
            StopReason::DuplicateOfSlot => "another task of its slot runs here",
            StopReason::ScaledDown => "the service was scaled down",
            StopReason::SlotMoved => "its slot moved to another node",
            StopReason::Drained => "its drain window passed",
            StopReason::EndedWhileDraining => "its process ended while it drained",
            StopReason::Updated => "its service was updated",
        })
    }
}

/// One decision of a pass, applied by the supervisor in the order given.
#[derive(Clone, Debug, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a handful of actions per pass, each moved once: boxing would buy nothing"
)]
pub(crate) enum Action {
    /// Track an own task record the supervisor does not know: adopt its process from its
    /// identity file, or restart it at once if it is gone (an attached task has none).
    Adopt {
        task: Task,
        endpoint: Endpoint,
        service: Service,
    },
    /// An own task record whose service incarnation or endpoint is gone: stop what is left
    /// of its process, remove its endpoint (if any) and its record, in the background.
    CleanUp {
        task: Task,
        endpoint: Option<Endpoint>,
    },
    /// Remove a task endpoint that no task refers to.
    RemoveOrphanEndpoint { endpoint: Endpoint },
    /// Stop a task and remove it, in the background.
    Stop { task: String, reason: StopReason },
    /// Take a task to stop out of the load balancers (state `draining`) and start its drain
    /// clock; a later pass stops it.
    Drain { task: String, reason: StopReason },
    /// The task's slot now belongs to another node: start its handover clock.
    MoveAway { task: String },
    /// The task's slot is back on this node: stop its handover clock.
    Stay { task: String },
    /// Create a task for `slot` of `service` on this node: endpoint, record, process.
    Start { service: Service, slot: u32 },
    /// Start the task's process again (its restart time is due).
    Restart { task: String },
    /// The task's address was taken by an earlier claim: remove it (its slot is started
    /// again by a later pass).
    Replace { task: String },
}

/// The set of up nodes and since when it has not changed.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    up: Vec<NodeId>,
    since: Instant,
}

impl Membership {
    pub(crate) fn new(now: Instant) -> Membership {
        Membership {
            up: Vec::new(),
            since: now,
        }
    }

    /// Records the view's up nodes; returns since when that set has been unchanged.
    pub(crate) fn observe(&mut self, view: &ClusterView, now: Instant) -> Instant {
        let up: Vec<NodeId> = view.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        if self.up != up {
            *self = Membership { up, since: now };
        }
        self.since
    }
}

/// The adoption plan: [`Action::Adopt`] or [`Action::CleanUp`] for each own task record in
/// the view that `local` neither tracks nor is tearing down.
pub(crate) fn adoptions(view: &ClusterView, local: &Local<'_>) -> Vec<Action> {
    view.own_tasks()
        .filter(|task| {
            !local.tasks.iter().any(|l| l.task.id == task.id) && !local.stopping.contains(&task.id)
        })
        .map(|task| {
            let endpoint = view
                .own_endpoints()
                .find(|e| e.id == task.endpoint)
                .cloned();
            match (endpoint, view.service_of(task)) {
                (Some(endpoint), Some(service)) => Action::Adopt {
                    task: task.clone(),
                    endpoint,
                    service: service.clone(),
                },
                (endpoint, _) => Action::CleanUp {
                    task: task.clone(),
                    endpoint,
                },
            }
        })
        .collect()
}

/// The pass's plan over the local tasks (adoptions already applied): orphan endpoints,
/// stops, handover clocks, starts, restarts and replacements, in that order.
pub(crate) fn plan(view: &ClusterView, local: &Local<'_>, now: Now) -> Vec<Action> {
    let me = view.self_id;
    let settled = now.instant.saturating_duration_since(local.started) >= WARMUP;
    let take_over = placement::may_take_over(view)
        && now
            .instant
            .saturating_duration_since(local.membership_since)
            >= STABLE_MEMBERSHIP;
    let layouts: BTreeMap<&str, (&Service, Layout)> = view
        .services
        .valid
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                (s, super::status::layout(view, s, now.wall_ms)),
            )
        })
        .collect();
    let rollouts = Rollouts::of(view, &layouts, now.wall_ms);
    let mut actions = Vec::new();

    if settled {
        actions.extend(
            orphan_endpoints(view, local, now.wall_ms)
                .map(|endpoint| Action::RemoveOrphanEndpoint { endpoint }),
        );
    }

    // Draining tasks count for nothing but their own stop: once drained, or at once if
    // their process ended (even during the warm-up: the stop was decided before).
    let mut stopped = BTreeSet::new();
    for l in &local.tasks {
        let Some(since) = l.draining_since else {
            continue;
        };
        stopped.insert(l.task.id.as_str());
        let reason = if !l.may_have_flows() {
            Some(StopReason::EndedWhileDraining)
        } else if now.instant.saturating_duration_since(since) >= local.drain_window {
            Some(StopReason::Drained)
        } else {
            None
        };
        if let Some(reason) = reason {
            actions.push(Action::Stop {
                task: l.task.id.clone(),
                reason,
            });
        }
    }

    // Stop (after draining) what no longer belongs here; move away what belongs elsewhere.
    if settled {
        let mut seen_slots: BTreeMap<(&str, u32), &Task> = BTreeMap::new();
        // Tasks of the service's current definition first, then oldest first: of two local
        // tasks of one slot the outdated one goes (a start-first rollout), else the newer.
        let mut order: Vec<&LocalTask> = local
            .tasks
            .iter()
            .filter(|l| l.draining_since.is_none())
            .collect();
        order.sort_by_key(|l| (rollouts.outdated(l.task), l.task.created));
        for l in order {
            let task = l.task;
            let slot_key = (task.service.as_str(), task.slot);
            let first = seen_slots.get(&slot_key).copied();
            let of_current_incarnation = layouts
                .get(task.service.as_str())
                .is_some_and(|(service, _)| is_task_of(task, service));
            if first.is_none() && of_current_incarnation && !task.attached {
                seen_slots.insert(slot_key, task);
            }
            let reason = match layouts.get(task.service.as_str()) {
                None => Some(StopReason::ServiceRemoved),
                Some((service, _)) if !is_task_of(task, service) => {
                    Some(StopReason::ServiceRecreated)
                }
                Some(_) if task.attached => None,
                Some((service, layout)) => {
                    if let Some(first) = first {
                        // An outdated task beside its replacement (start-first) stays until
                        // the replacement serves.
                        if rollouts.outdated(task) && !rollouts.outdated(first) {
                            first.serves().then_some(StopReason::Updated)
                        } else {
                            Some(StopReason::DuplicateOfSlot)
                        }
                    } else if rollouts.stop_first(task, me) {
                        Some(StopReason::Updated)
                    } else if task.slot as usize >= layout.wanted()
                        && matches!(layout, Layout::Replicated(_))
                    {
                        Some(StopReason::ScaledDown)
                    } else if !layout.holds(me, task.slot) {
                        match l.moving_since {
                            Some(since)
                                if now.instant.saturating_duration_since(since) >= HANDOVER
                                    || new_holder_runs(view, service, layout, task.slot) =>
                            {
                                Some(StopReason::SlotMoved)
                            }
                            _ => None,
                        }
                    } else {
                        None
                    }
                }
            };
            if let Some(reason) = reason {
                stopped.insert(task.id.as_str());
                let task = task.id.clone();
                actions.push(if l.may_have_flows() && !local.drain_window.is_zero() {
                    Action::Drain { task, reason }
                } else {
                    Action::Stop { task, reason }
                });
            }
        }
        for l in local
            .tasks
            .iter()
            .filter(|l| !stopped.contains(l.task.id.as_str()))
        {
            let moving = layouts
                .get(l.task.service.as_str())
                .is_some_and(|(_, layout)| !l.task.attached && !layout.holds(me, l.task.slot));
            let task = l.task.id.clone();
            match (moving, l.moving_since) {
                (true, None) => actions.push(Action::MoveAway { task }),
                (false, Some(_)) => actions.push(Action::Stay { task }),
                _ => {}
            }
        }
    }
    let kept = || {
        local
            .tasks
            .iter()
            .filter(|l| !stopped.contains(l.task.id.as_str()))
    };

    // Start the slots that belong here and have no task.
    if settled && take_over {
        for (service, layout) in layouts.values() {
            for slot in layout.slots_of(me) {
                // An outdated task a start-first rollout replaces now does not count.
                let present = kept().any(|l| {
                    !l.task.attached
                        && is_task_of(l.task, service)
                        && l.task.slot == slot
                        && !rollouts.start_first(l.task, me)
                });
                let backing_off = local
                    .create_backoff
                    .get(&(service.name.clone(), slot))
                    .is_some_and(|until| now.instant < *until);
                if !present && !backing_off {
                    actions.push(Action::Start {
                        service: (*service).clone(),
                        slot,
                    });
                }
            }
        }
    }

    // Replace tasks whose address was lost to an earlier claim; restart due processes of
    // the others.
    for l in kept() {
        let collided = view
            .endpoints
            .collided
            .iter()
            .any(|(node, endpoint, _)| *node == me && endpoint.id == l.task.endpoint);
        if collided {
            actions.push(Action::Replace {
                task: l.task.id.clone(),
            });
        } else if l.restart_at.is_some_and(|at| at <= now.instant) {
            actions.push(Action::Restart {
                task: l.task.id.clone(),
            });
        }
    }
    actions
}

/// Own endpoints that are orphan task endpoints: see [`is_orphan_task_endpoint`]; not
/// referred to by a task record, a local task or a teardown.
fn orphan_endpoints<'a>(
    view: &'a ClusterView,
    local: &'a Local<'_>,
    now_ms: u64,
) -> impl Iterator<Item = Endpoint> + 'a {
    view.own_endpoints()
        .filter(move |endpoint| {
            let referenced = view.own_tasks().any(|t| t.endpoint == endpoint.id)
                || local.tasks.iter().any(|l| l.task.endpoint == endpoint.id)
                || local.stopping.contains(&endpoint.id);
            !referenced && is_orphan_task_endpoint(endpoint, now_ms)
        })
        .cloned()
}

/// Whether `endpoint`, which no task refers to, is a task's endpoint (a namespace the agent
/// made, named `<service>.<slot>.<its ID>`) old enough to be an orphan at `now_ms`.
fn is_orphan_task_endpoint(endpoint: &Endpoint, now_ms: u64) -> bool {
    let is_task_endpoint = endpoint.owns_netns
        && endpoint
            .name
            .strip_suffix(endpoint.id.as_str())
            .is_some_and(|rest| rest.ends_with('.'));
    let age = now_ms.saturating_sub(hlc::physical_ms(endpoint.created.hlc));
    is_task_endpoint && age >= ORPHAN_AGE.as_millis() as u64
}

/// Whether the node `layout` now gives `slot` of `service` runs a task for it. An attached
/// namespace there (recorded as slot 0) is no placed task of the slot.
fn new_holder_runs(view: &ClusterView, service: &Service, layout: &Layout, slot: u32) -> bool {
    view.tasks_of(service)
        .serving()
        .placed()
        .any(|(node, t)| t.slot == slot && layout.holds(*node, t.slot))
}

/// When a task whose process exited is restarted: after its service's restart delay.
pub(crate) fn restart_after_exit(service: &Service, now: Instant) -> Instant {
    now + service.restart_delay()
}

/// When a task whose process could not be started is tried again: after its service's
/// restart delay, but no sooner than [`MIN_RETRY`].
pub(crate) fn retry_after_failed_spawn(service: &Service, now: Instant) -> Instant {
    now + service.restart_delay().max(MIN_RETRY)
}

/// A task's state after a health check: healthy is running; a starting task stays starting
/// until its first success; a running one turns unhealthy after [`UNHEALTHY_AFTER`]
/// consecutive failures (`failures` counts this one).
pub(crate) fn health_state(ok: bool, failures: u32, current: TaskState) -> TaskState {
    match (ok, current) {
        (true, _) => TaskState::Running,
        (false, TaskState::Running) if failures < UNHEALTHY_AFTER => TaskState::Running,
        (false, TaskState::Starting) => TaskState::Starting,
        (false, _) => TaskState::Unhealthy,
    }
}

/// The rollouts in progress, as this pass sees them (see [`manager::rollout`]).
struct Rollouts<'a> {
    /// Per service: its definition's fingerprint, and the units it may replace now.
    services: BTreeMap<&'a str, (&'a Service, u64, BTreeSet<rollout::Unit>)>,
}

impl<'a> Rollouts<'a> {
    fn of(
        view: &'a ClusterView,
        layouts: &BTreeMap<&'a str, (&'a Service, Layout)>,
        now_ms: u64,
    ) -> Rollouts<'a> {
        let services = layouts
            .iter()
            .map(|(name, (service, _))| {
                let progress =
                    rollout::progress(service, view.tasks_of(service).live().placed(), now_ms);
                let replace = rollout::replaceable(service, &progress, now_ms);
                (
                    *name,
                    (*service, rollout::spec_fingerprint(service), replace),
                )
            })
            .collect();
        Rollouts { services }
    }

    /// Whether `task` runs another definition than its service's (attached ones never do).
    fn outdated(&self, task: &Task) -> bool {
        !task.attached
            && self
                .services
                .get(task.service.as_str())
                .is_some_and(|(_, spec, _)| task.spec != *spec)
    }

    /// Whether the rollout replaces `task` (on `node`) now, in `order`.
    fn replaces_now(&self, task: &Task, node: NodeId, order: rollout::UpdateOrder) -> bool {
        let Some((service, _, replace)) = self.services.get(task.service.as_str()) else {
            return false;
        };
        let unit = match service.mode {
            manager::state::Mode::Replicated { .. } => (task.slot, None),
            manager::state::Mode::Global => (task.slot, Some(node)),
        };
        self.outdated(task)
            && task.state != TaskState::Draining
            && service.update.active_config().order == order
            && replace.contains(&unit)
    }

    /// Whether `task` is to drain now, its replacement starting meanwhile.
    fn stop_first(&self, task: &Task, node: NodeId) -> bool {
        self.replaces_now(task, node, rollout::UpdateOrder::StopFirst)
    }

    /// Whether `task`'s replacement starts now beside it.
    fn start_first(&self, task: &Task, node: NodeId) -> bool {
        self.replaces_now(task, node, rollout::UpdateOrder::StartFirst)
    }
}

#[cfg(test)]
mod tests;
