//! The task reconciler: converges this node's tasks to what placement gives it.
//!
//! Every pass reads a cluster snapshot and asks the [`plan`] what to do: start the slots
//! that belong here and have no task, stop tasks whose slot went elsewhere (once the new
//! holder runs, so a move does not drop a replica), was scaled away, or whose service is
//! gone, and so on (the rules are listed in [`plan`]). This file applies those actions: it
//! owns the effects (endpoints, records, processes, background teardowns) and the memory
//! the plan reads (handover clocks, drain clocks, create backoff, membership).
//!
//! Stopping a task that serves is two steps: [`Action::Drain`] publishes it as
//! `draining` (the load balancers and DNS drop it, its endpoint and established flows
//! stay), and once the drain window passed [`Action::Stop`] tears it down in the
//! background: SIGTERM, the stop grace, SIGKILL, then endpoint record, plumbing, task
//! record. A task is an endpoint (namespace +
//! veth + overlay address, plumbed by the [`Reconciler`]) plus a process
//! ([`TaskProcess`]); its state is published as a node-scoped [`Task`] record, which is
//! what `service ps`, load balancers and DNS read.
//!
//! Tasks outlive the agent. After a restart, this node's task records come back with the
//! saved store and each process is adopted from its identity file (PID + start time), so a
//! restart neither duplicates nor drops a task.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use manager::{
    state::{Endpoint, Service, Task, TaskState},
    view::ClusterView,
    Manager,
};
use tokio::sync::{mpsc, Mutex};
use tracing::{info, warn};

use super::{
    cgroup::{oom_message, Cgroups, TaskCgroup},
    plan::{self, Action, LocalTask, Membership, Now, CREATE_BACKOFF, WARMUP},
    process::TaskProcess,
};
use crate::reconcile::Reconciler;

/// How often a pass runs without news (restarts and hand-over deadlines are due on time).
const TICK: Duration = Duration::from_millis(500);

/// What the supervisor knows of one of its tasks.
struct Local {
    /// The record as last written.
    task: Task,
    endpoint: Endpoint,
    /// The definition it was started from.
    service: Service,
    process: Option<Arc<TaskProcess>>,
    /// When to (re)start the process, if it is not running.
    restart_at: Option<Instant>,
    /// Since when its slot belongs to another node.
    moving_since: Option<Instant>,
    /// Since when it drains: out of the load balancers, stopped once drained.
    draining_since: Option<Instant>,
    health_failures: u32,
}

impl Local {
    /// What the plan sees of it.
    fn planned(&self) -> LocalTask<'_> {
        LocalTask {
            task: &self.task,
            restart_at: self.restart_at,
            moving_since: self.moving_since,
            draining_since: self.draining_since,
        }
    }
}

enum Event {
    Exited {
        id: String,
        pid: u32,
        code: Option<i32>,
    },
    Health {
        id: String,
        pid: u32,
        ok: bool,
    },
}

pub struct Supervisor {
    manager: Manager,
    reconciler: Arc<Reconciler>,
    /// `<state dir>/tasks`: one directory per task (log, identity file).
    dir: PathBuf,
    /// Prefix of the namespaces this agent creates.
    resource_prefix: String,
    started: Instant,
    tasks: Mutex<BTreeMap<String, Local>>,
    /// Tasks (and orphan endpoints) being torn down: their records are still visible
    /// meanwhile.
    stopping: Arc<std::sync::Mutex<BTreeSet<String>>>,
    events: mpsc::UnboundedSender<Event>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Slots whose task could not be created, and when to try again. Only passes use it,
    /// under the `tasks` lock.
    create_backoff: std::sync::Mutex<BTreeMap<(String, u32), Instant>>,
    /// The up nodes in the last pass, and since when they have been up.
    membership: std::sync::Mutex<Membership>,
    /// How long a task to stop drains first (`--drain-window`).
    drain_window: Duration,
    /// This agent's own directories hidden from its tasks (see [`Supervisor::hiding`]).
    hidden: Vec<PathBuf>,
    /// The tasks' cgroups; `None` if this node has no usable hierarchy.
    cgroups: Option<Arc<Cgroups>>,
}

impl Supervisor {
    pub fn new(
        manager: Manager,
        reconciler: Arc<Reconciler>,
        dir: PathBuf,
        resource_prefix: String,
        drain_window: Duration,
    ) -> Supervisor {
        let (events, events_rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        // The state directory holds `tasks/`.
        let state_dir = dir.parent().unwrap_or(&dir).to_owned();
        let cgroups = match Cgroups::prepare(&state_dir, &manager.node().to_string()) {
            Ok(cgroups) => Some(Arc::new(cgroups)),
            Err(error) => {
                warn!(error = %format!("{error:#}"), "tasks run without cgroups: stopping a task may leave processes it daemonized, and limits are refused");
                None
            }
        };
        Supervisor {
            manager,
            reconciler,
            dir,
            resource_prefix,
            started,
            tasks: Mutex::new(BTreeMap::new()),
            stopping: Arc::new(std::sync::Mutex::new(BTreeSet::new())),
            events,
            events_rx: Mutex::new(Some(events_rx)),
            create_backoff: std::sync::Mutex::new(BTreeMap::new()),
            membership: std::sync::Mutex::new(Membership::new(started)),
            drain_window,
            hidden: Vec::new(),
            cgroups,
        }
    }

    /// The cgroup of task `id`, if this node has cgroups.
    fn cgroup(&self, id: &str) -> Option<TaskCgroup> {
        self.cgroups.as_ref().map(|c| c.task(id))
    }

    /// Removes (in the background) the groups under this node's group that belong to no
    /// task this agent runs or is stopping: left by a task whose record is gone, or by an
    /// agent killed between making a group and recording its task. Only after the warm-up,
    /// once the saved tasks were adopted.
    fn remove_stray_groups(&self, tasks: &BTreeMap<String, Local>) {
        let Some(cgroups) = &self.cgroups else {
            return;
        };
        if self.started.elapsed() < WARMUP {
            return;
        }
        let stopping = self.stopping.lock().expect("stopping lock").clone();
        for id in cgroups.task_ids() {
            if tasks.contains_key(&id) || stopping.contains(&id) {
                continue;
            }
            warn!(task = %id, "removing the cgroup of a task this agent does not run");
            let cgroup = cgroups.task(&id);
            self.while_stopping(id, async move {
                let removed = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                if let Ok(Err(error)) = removed {
                    warn!(error = %format!("{error:#}"), "could not remove a stray task cgroup");
                }
            });
        }
    }

    /// Hides `paths` (the agent's state directory, socket directory, bpffs) from its
    /// tasks, besides every agent's default places (`tasks::confine`).
    pub fn hiding(mut self, paths: Vec<PathBuf>) -> Supervisor {
        self.hidden = paths;
        self
    }

    /// The per-task directory of `id` (its log is in there).
    pub fn task_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Runs passes on every snapshot, event and tick until the manager stops.
    pub async fn run(self: Arc<Self>) {
        let Some(mut events) = self.events_rx.lock().await.take() else {
            return;
        };
        let mut views = self.manager.subscribe();
        loop {
            let view = views.borrow_and_update().clone();
            self.pass(&view).await;
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                Some(event) = events.recv() => self.handle(event).await,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Stops every task and removes its endpoint (`agent leave`), without draining: the
    /// node's dataplane, which carries the tasks' flows, is removed right after.
    pub async fn stop_all(&self) {
        let locals: Vec<Local> = std::mem::take(&mut *self.tasks.lock().await)
            .into_values()
            .collect();
        for local in locals {
            self.teardown(local).await;
        }
    }

    async fn handle(&self, event: Event) {
        let mut tasks = self.tasks.lock().await;
        match event {
            Event::Exited { id, pid, code } => {
                let Some(local) = tasks.get_mut(&id) else {
                    return;
                };
                if local.process.as_ref().map(|p| p.pid()) != Some(pid) {
                    return;
                }
                local.process = None;
                local.restart_at = Some(plan::restart_after_exit(&local.service, Instant::now()));
                if local.draining_since.is_some() {
                    // Nothing left to drain; the next pass stops it. Its record stays
                    // `draining`, so placement does not count it as its slot's again.
                    info!(task = %local.task.id, "a draining task's process ended");
                    return;
                }
                let mut message = match code {
                    Some(code) => format!("exited with code {code}"),
                    None => "exited".to_owned(),
                };
                // Read before the restart makes the group fresh.
                let oom_kills = self.cgroup(&id).and_then(|c| c.oom_kills()).unwrap_or(0);
                if oom_kills > 0 {
                    message = format!("{} ({message})", oom_message(&local.service.limits));
                }
                info!(task = %local.task.id, service = %local.task.service, %message, "task process ended");
                let task = Task {
                    state: TaskState::Exited,
                    message,
                    ..local.task.clone()
                };
                self.publish(local, task).await;
            }
            Event::Health { id, pid, ok } => {
                let Some(local) = tasks.get_mut(&id) else {
                    return;
                };
                if local.process.as_ref().map(|p| p.pid()) != Some(pid)
                    || local.draining_since.is_some()
                {
                    return;
                }
                local.health_failures = if ok { 0 } else { local.health_failures + 1 };
                let state = plan::health_state(ok, local.health_failures, local.task.state);
                if state != local.task.state {
                    let message = if ok {
                        String::new()
                    } else {
                        "health command failing".to_owned()
                    };
                    let task = Task {
                        state,
                        message,
                        ..local.task.clone()
                    };
                    self.publish(local, task).await;
                }
            }
        }
    }

    /// One pass: the adoption plan, then the plan over this node's tasks (see
    /// [`plan`]), each applied in order.
    async fn pass(&self, view: &ClusterView) {
        let now = Now::current();
        let mut tasks = self.tasks.lock().await;
        let membership_since = self
            .membership
            .lock()
            .expect("membership lock")
            .observe(view, now.instant);
        for round in [Round::Adoptions, Round::Plan] {
            let stopping = self.stopping.lock().expect("stopping lock").clone();
            let create_backoff = self.create_backoff.lock().expect("backoff lock").clone();
            let local = plan::Local {
                tasks: tasks.values().map(Local::planned).collect(),
                stopping: &stopping,
                started: self.started,
                membership_since,
                create_backoff: &create_backoff,
                drain_window: self.drain_window,
            };
            let actions = match round {
                Round::Adoptions => plan::adoptions(view, &local),
                Round::Plan => plan::plan(view, &local, now),
            };
            for action in actions {
                self.apply(view, &mut tasks, action, now).await;
            }
        }
        self.remove_stray_groups(&tasks);
    }

    /// Carries out one decision of the plan.
    async fn apply(
        &self,
        view: &ClusterView,
        tasks: &mut BTreeMap<String, Local>,
        action: Action,
        now: Now,
    ) {
        match action {
            Action::Adopt {
                task,
                endpoint,
                service,
            } => {
                let local = self.adopt(task, endpoint, service, now.instant);
                tasks.insert(local.task.id.clone(), local);
            }
            Action::CleanUp { task, endpoint } => self.clean_up(task, endpoint),
            Action::RemoveOrphanEndpoint { endpoint } => self.remove_orphan_endpoint(endpoint),
            Action::Stop { task, reason } => {
                if let Some(local) = tasks.remove(&task) {
                    info!(task = %task, service = %local.task.service, slot = local.task.slot + 1, %reason, "stopping a task");
                    self.stop_in_background(local);
                }
            }
            Action::Drain { task, reason } => {
                if let Some(local) = tasks.get_mut(&task) {
                    info!(task = %task, service = %local.task.service, slot = local.task.slot + 1, %reason, window = ?self.drain_window, "draining a task before stopping it");
                    local.draining_since = Some(now.instant);
                    let draining = Task {
                        state: TaskState::Draining,
                        message: format!("stopping: {reason}"),
                        ..local.task.clone()
                    };
                    self.publish(local, draining).await;
                }
            }
            Action::MoveAway { task } => {
                if let Some(local) = tasks.get_mut(&task) {
                    local.moving_since = Some(now.instant);
                }
            }
            Action::Stay { task } => {
                if let Some(local) = tasks.get_mut(&task) {
                    local.moving_since = None;
                }
            }
            Action::Start { service, slot } => {
                let key = (service.name.clone(), slot);
                match self.start(view, &service, slot).await {
                    Ok(local) => {
                        tasks.insert(local.task.id.clone(), local);
                        self.create_backoff
                            .lock()
                            .expect("backoff lock")
                            .remove(&key);
                    }
                    Err(error) => {
                        warn!(service = %service.name, slot = slot + 1, error = %format!("{error:#}"), "could not create a task; retrying in 5 s");
                        self.create_backoff
                            .lock()
                            .expect("backoff lock")
                            .insert(key, Instant::now() + CREATE_BACKOFF);
                    }
                }
            }
            Action::Restart { task } => {
                if let Some(local) = tasks.get_mut(&task) {
                    self.spawn(local).await;
                }
            }
            Action::Replace { task } => {
                if let Some(local) = tasks.remove(&task) {
                    warn!(task = %task, "the task's address was taken by an earlier claim; replacing it");
                    self.stop_in_background(local);
                }
            }
        }
    }

    /// Takes in a task record of this node: after a restart, its running process is
    /// adopted; if it is gone, it is restarted at once (`restart_at` is `now`).
    fn adopt(&self, task: Task, endpoint: Endpoint, service: Service, now: Instant) -> Local {
        let (attached, task_state) = (task.attached, task.state);
        let process = if attached {
            None
        } else {
            TaskProcess::adopt(&self.task_dir(&task.id), self.cgroup(&task.id)).map(Arc::new)
        };
        match &process {
            Some(p) => info!(task = %task.id, pid = p.pid(), "adopted a running task"),
            None if !attached => {
                info!(task = %task.id, "a task's process is gone; restarting it")
            }
            None => {}
        }
        let local = Local {
            restart_at: (!attached && process.is_none()).then_some(now),
            task,
            endpoint,
            service,
            process: process.clone(),
            moving_since: None,
            // Drained again for a whole window: when it began is not recorded.
            draining_since: (task_state == TaskState::Draining).then_some(now),
            health_failures: 0,
        };
        if let Some(process) = process {
            self.watch(&local, process);
        }
        local
    }

    /// Removes, in the background, an own task record whose service or endpoint is gone:
    /// nothing to adopt, only its process (if it still runs) and endpoint to stop.
    fn clean_up(&self, task: Task, endpoint: Option<Endpoint>) {
        let teardown = self.teardown_ctx(&task.id);
        self.while_stopping(task.id.clone(), async move {
            let process = TaskProcess::adopt(&teardown.dir, teardown.cgroup.clone()).map(Arc::new);
            teardown
                .run(&task, endpoint.as_ref(), process.as_deref())
                .await;
        });
    }

    /// Removes a task endpoint no task record refers to, in the background: an agent that
    /// died between creating a task's endpoint and writing its task record left it.
    fn remove_orphan_endpoint(&self, endpoint: Endpoint) {
        warn!(endpoint = %endpoint.name, "removing a task endpoint no task refers to");
        let (manager, reconciler) = (self.manager.clone(), self.reconciler.clone());
        self.while_stopping(endpoint.id.clone(), async move {
            let _ = manager.remove_endpoint(&endpoint.id).await;
            if let Err(error) = reconciler.unplumb(&endpoint).await {
                warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not remove an orphan task endpoint");
            }
        });
    }
}

/// The two plans of a pass.
#[derive(Clone, Copy)]
enum Round {
    Adoptions,
    Plan,
}

mod task;
