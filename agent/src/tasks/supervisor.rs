//! The task reconciler: converges this node's tasks to what placement gives it.
//!
//! Every pass reads a cluster snapshot, computes each service's layout
//! ([`manager::placement`]), starts the slots that belong here and have no task, and stops
//! tasks whose slot went elsewhere (once the new holder runs, so a move does not drop a
//! replica), was scaled away, or whose service is gone. A task is an endpoint (namespace +
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

use anyhow::{Context, Result};
use manager::{
    driver::wall_ms,
    ops::EndpointRequest,
    placement::{self, Layout},
    state::{Endpoint, Kind, Mode, Scope, Service, Task, TaskState},
    view::ClusterView,
    Manager,
};
use tokio::sync::{mpsc, Mutex};
use tracing::{info, warn};

use super::process::{health_check, TaskProcess, TaskSpec};
use crate::{
    netlink,
    reconcile::{self, Reconciler},
};

/// How often a pass runs without news (restarts and hand-over deadlines are due on time).
const TICK: Duration = Duration::from_millis(500);
/// After start, tasks are only adopted, not started or stopped, until membership has
/// settled: a restarted node that does not see its peers yet would otherwise take their
/// slots.
const WARMUP: Duration = Duration::from_secs(3);
/// Slots are taken over only once the set of up nodes has been stable this long. A node
/// cut off from the others sees them go down one by one; in between it would still see
/// enough of the cluster to take over, and start tasks it must stop again when it returns.
const STABLE_MEMBERSHIP: Duration = Duration::from_secs(1);
/// How long a task whose slot moved elsewhere keeps running while the new one starts.
const HANDOVER: Duration = Duration::from_secs(10);
/// SIGTERM → SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A failed start is retried no faster than this, whatever the restart delay.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// After a task could not be created (no free address, plumbing failed), its slot waits
/// this long before the next attempt.
const CREATE_BACKOFF: Duration = Duration::from_secs(5);
/// A task endpoint without a task record is removed once it is this old.
const ORPHAN_AGE: Duration = Duration::from_secs(30);
/// Consecutive failed health checks before a running task counts as unhealthy.
const UNHEALTHY_AFTER: u32 = 3;

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
    health_failures: u32,
    /// Attached by `service attach`: no process, never moved.
    attached: bool,
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
    /// Tasks being torn down (their records are still visible meanwhile).
    stopping: Arc<std::sync::Mutex<BTreeSet<String>>>,
    events: mpsc::UnboundedSender<Event>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<Event>>>,
    /// Slots whose task could not be created, and when to try again.
    create_backoff: std::sync::Mutex<BTreeMap<(String, u32), Instant>>,
    /// The up nodes in the last pass, and since when they have been up.
    membership: std::sync::Mutex<(Vec<manager::NodeId>, Instant)>,
}

impl Supervisor {
    pub fn new(
        manager: Manager,
        reconciler: Arc<Reconciler>,
        dir: PathBuf,
        resource_prefix: String,
    ) -> Supervisor {
        let (events, events_rx) = mpsc::unbounded_channel();
        Supervisor {
            manager,
            reconciler,
            dir,
            resource_prefix,
            started: Instant::now(),
            tasks: Mutex::new(BTreeMap::new()),
            stopping: Arc::new(std::sync::Mutex::new(BTreeSet::new())),
            events,
            events_rx: Mutex::new(Some(events_rx)),
            create_backoff: std::sync::Mutex::new(BTreeMap::new()),
            membership: std::sync::Mutex::new((Vec::new(), Instant::now())),
        }
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

    /// Stops every task and removes its endpoint (`agent leave`).
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
                let message = match code {
                    Some(code) => format!("exited with code {code}"),
                    None => "exited".to_owned(),
                };
                info!(task = %local.task.id, service = %local.task.service, %message, "task process ended");
                local.restart_at = Some(Instant::now() + local.service.restart_delay());
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
                if local.process.as_ref().map(|p| p.pid()) != Some(pid) {
                    return;
                }
                local.health_failures = if ok { 0 } else { local.health_failures + 1 };
                let state = match (ok, local.task.state) {
                    (true, _) => TaskState::Running,
                    (false, TaskState::Running) if local.health_failures < UNHEALTHY_AFTER => {
                        TaskState::Running
                    }
                    (false, TaskState::Starting) => TaskState::Starting,
                    (false, _) => TaskState::Unhealthy,
                };
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

    /// One pass over all services and this node's tasks.
    async fn pass(&self, view: &ClusterView) {
        let me = view.self_id;
        let mut tasks = self.tasks.lock().await;
        self.adopt(view, &mut tasks).await;
        let settled = self.started.elapsed() >= WARMUP;
        let now_ms = wall_ms();
        let take_over = placement::may_take_over(view) && self.membership_stable(view);
        let layouts: BTreeMap<&str, (&Service, Layout)> = view
            .services
            .valid
            .iter()
            .map(|s| (s.name.as_str(), (s, super::status::layout(view, s, now_ms))))
            .collect();

        if settled {
            self.remove_orphan_endpoints(view, &tasks);
        }

        // Stop what no longer belongs here.
        if settled {
            let mut doomed = Vec::new();
            let mut seen_slots: BTreeSet<(String, u32)> = BTreeSet::new();
            // Oldest first, so that of two local tasks of one slot the newer goes.
            let mut order: Vec<&Local> = tasks.values().collect();
            order.sort_by_key(|l| l.task.created);
            for local in order {
                let reason = match layouts.get(local.task.service.as_str()) {
                    None => Some("its service was removed"),
                    Some((service, _)) if service.created != local.task.service_created => {
                        Some("its service was re-created")
                    }
                    Some(_) if local.attached => None,
                    Some((_, layout)) => {
                        let slot = (local.task.service.clone(), local.task.slot);
                        if !seen_slots.insert(slot) {
                            Some("another task of its slot runs here")
                        } else if local.task.slot as usize >= layout.wanted()
                            && matches!(layout, Layout::Replicated(_))
                        {
                            Some("the service was scaled down")
                        } else if !layout.holds(me, local.task.slot) {
                            match local.moving_since {
                                Some(since)
                                    if since.elapsed() >= HANDOVER
                                        || new_holder_runs(view, layout, local) =>
                                {
                                    Some("its slot moved to another node")
                                }
                                _ => None,
                            }
                        } else {
                            None
                        }
                    }
                };
                if let Some(reason) = reason {
                    doomed.push((local.task.id.clone(), reason));
                }
            }
            for local in tasks.values_mut() {
                let moving = layouts
                    .get(local.task.service.as_str())
                    .is_some_and(|(_, l)| !local.attached && !l.holds(me, local.task.slot));
                match (moving, local.moving_since) {
                    (true, None) => local.moving_since = Some(Instant::now()),
                    (false, Some(_)) => local.moving_since = None,
                    _ => {}
                }
            }
            for (id, reason) in doomed {
                if let Some(local) = tasks.remove(&id) {
                    info!(task = %id, service = %local.task.service, slot = local.task.slot + 1, reason, "stopping a task");
                    self.stopping
                        .lock()
                        .expect("stopping lock")
                        .insert(id.clone());
                    self.teardown_in_background(local);
                }
            }
        }

        // Start the slots that belong here and have no task.
        if settled && take_over {
            for (service, layout) in layouts.values() {
                for slot in layout.slots_of(me) {
                    let present = tasks.values().any(|l| {
                        !l.attached
                            && l.task.service == service.name
                            && l.task.service_created == service.created
                            && l.task.slot == slot
                    });
                    let key = (service.name.clone(), slot);
                    let backing_off = self
                        .create_backoff
                        .lock()
                        .expect("backoff lock")
                        .get(&key)
                        .is_some_and(|until| Instant::now() < *until);
                    if !present && !backing_off {
                        match self.start(view, service, slot).await {
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
                }
            }
        }

        // Restart processes that are due, and replace tasks whose address was lost to an
        // earlier claim.
        let now = Instant::now();
        for local in tasks.values_mut() {
            if local.restart_at.is_some_and(|at| at <= now) {
                self.spawn(local).await;
            }
        }
        let collided: Vec<String> = tasks
            .values()
            .filter(|l| {
                view.endpoints
                    .collided
                    .iter()
                    .any(|(n, e, _)| *n == me && e.id == l.endpoint.id)
            })
            .map(|l| l.task.id.clone())
            .collect();
        for id in collided {
            if let Some(local) = tasks.remove(&id) {
                warn!(task = %id, "the task's address was taken by an earlier claim; replacing it");
                self.stopping.lock().expect("stopping lock").insert(id);
                self.teardown_in_background(local);
            }
        }
    }

    /// Removes task endpoints no task record refers to: an agent that died between creating
    /// a task's endpoint and writing its task record left them. A task endpoint is one whose
    /// name ends in `.<its ID>` (see [`Supervisor::start`]); only those older than
    /// [`ORPHAN_AGE`] count, so a task being created right now is never mistaken for one.
    fn remove_orphan_endpoints(&self, view: &ClusterView, tasks: &BTreeMap<String, Local>) {
        let now = wall_ms();
        let stopping = self.stopping.lock().expect("stopping lock").clone();
        for endpoint in view.own_endpoints() {
            let referenced = view.own_tasks().any(|t| t.endpoint == endpoint.id)
                || tasks.values().any(|l| l.endpoint.id == endpoint.id)
                || stopping.contains(&endpoint.id);
            if referenced || !is_orphan_task_endpoint(endpoint, now) {
                continue;
            }
            warn!(endpoint = %endpoint.name, "removing a task endpoint no task refers to");
            self.stopping
                .lock()
                .expect("stopping lock")
                .insert(endpoint.id.clone());
            let (manager, reconciler, stopping) = (
                self.manager.clone(),
                self.reconciler.clone(),
                self.stopping.clone(),
            );
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let _ = manager.remove_endpoint(&endpoint.id).await;
                if let Err(error) = reconciler.unplumb(&endpoint).await {
                    warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not remove an orphan task endpoint");
                }
                stopping.lock().expect("stopping lock").remove(&endpoint.id);
            });
        }
    }

    /// Whether the set of up nodes has not changed for [`STABLE_MEMBERSHIP`].
    fn membership_stable(&self, view: &ClusterView) -> bool {
        let up: Vec<manager::NodeId> = view.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        let mut last = self.membership.lock().expect("membership lock");
        if last.0 != up {
            *last = (up, Instant::now());
        }
        last.1.elapsed() >= STABLE_MEMBERSHIP
    }

    /// Takes in this node's task records that the supervisor does not know yet: after a
    /// restart, the running process is adopted; if it is gone, it is restarted.
    async fn adopt(&self, view: &ClusterView, tasks: &mut BTreeMap<String, Local>) {
        let stopping = self.stopping.lock().expect("stopping lock").clone();
        for task in view.own_tasks() {
            if tasks.contains_key(&task.id) || stopping.contains(&task.id) {
                continue;
            }
            let endpoint = view
                .own_endpoints()
                .find(|e| e.id == task.endpoint)
                .cloned();
            let service = view
                .services
                .valid
                .iter()
                .find(|s| s.name == task.service && s.created == task.service_created)
                .cloned();
            let attached = task.attached;
            let (Some(endpoint), Some(service)) = (endpoint.clone(), service) else {
                // Its service or endpoint is gone: nothing to adopt, only to clean up.
                let id = task.id.clone();
                self.stopping
                    .lock()
                    .expect("stopping lock")
                    .insert(id.clone());
                let teardown = Teardown {
                    manager: self.manager.clone(),
                    reconciler: self.reconciler.clone(),
                    dir: self.task_dir(&id),
                };
                let (task, stopping) = (task.clone(), self.stopping.clone());
                tokio::spawn(async move {
                    let process = TaskProcess::adopt(&teardown.dir).map(Arc::new);
                    teardown
                        .run(&task, endpoint.as_ref(), process.as_deref())
                        .await;
                    stopping.lock().expect("stopping lock").remove(&id);
                });
                continue;
            };
            let process = if attached {
                None
            } else {
                TaskProcess::adopt(&self.task_dir(&task.id)).map(Arc::new)
            };
            let restart_at = (!attached && process.is_none()).then(Instant::now);
            match &process {
                Some(p) => info!(task = %task.id, pid = p.pid(), "adopted a running task"),
                None if !attached => {
                    info!(task = %task.id, "a task's process is gone; restarting it")
                }
                None => {}
            }
            let local = Local {
                task: task.clone(),
                endpoint,
                service,
                process: process.clone(),
                restart_at,
                moving_since: None,
                health_failures: 0,
                attached,
            };
            if let Some(process) = process {
                self.watch(&local, process);
            }
            tasks.insert(task.id.clone(), local);
        }
    }

    /// Creates a task for `slot` of `service`: endpoint, record, process.
    async fn start(&self, view: &ClusterView, service: &Service, slot: u32) -> Result<Local> {
        let id = crate::random_id();
        let label = match service.mode {
            Mode::Replicated { .. } => (slot + 1).to_string(),
            Mode::Global => view.self_id.short(),
        };
        let name = format!("{}.{label}.{id}", service.name);
        let endpoint = self
            .reconciler
            .add_endpoint(EndpointRequest {
                id: id.clone(),
                name: name.clone(),
                network: service.network.clone(),
                netns: format!("{}-{name}", self.resource_prefix),
                host_ifname: netlink::host_ifname(reconcile::IFNAME_HINT, &id),
                owns_netns: true,
                settle: false,
            })
            .await
            .with_context(|| {
                format!(
                    "creating the task's endpoint on network {}",
                    service.network
                )
            })?;
        let template = Task {
            id: id.clone(),
            service: service.name.clone(),
            service_created: service.created,
            slot,
            endpoint: endpoint.id.clone(),
            ip: endpoint.ip,
            state: TaskState::Starting,
            since_ms: wall_ms(),
            message: String::new(),
            restarts: 0,
            created: endpoint.created,
            attached: false,
        };
        let created = {
            let template = template.clone();
            self.manager
                .write_with(
                    Scope::Node(self.manager.node()),
                    Kind::Task,
                    id.clone(),
                    Box::new(move |stamp| {
                        Some(
                            Task {
                                created: stamp,
                                ..template
                            }
                            .encode(),
                        )
                    }),
                )
                .await?
        };
        info!(task = %id, service = %service.name, slot = slot + 1, ip = %endpoint.ip, "task created");
        let mut local = Local {
            task: Task {
                created,
                ..template
            },
            endpoint,
            service: service.clone(),
            process: None,
            restart_at: None,
            moving_since: None,
            health_failures: 0,
            attached: false,
        };
        self.spawn(&mut local).await;
        Ok(local)
    }

    /// Starts (or restarts) a task's process and publishes its state.
    async fn spawn(&self, local: &mut Local) {
        local.restart_at = None;
        let restarts = local.task.restarts + u32::from(local.task.state != TaskState::Starting);
        let spec = TaskSpec {
            task_id: local.task.id.clone(),
            service: local.service.name.clone(),
            node_id: self.manager.node().to_string(),
            netns_path: reconcile::netns_path(&local.endpoint.netns),
            command: local.service.command.clone(),
            env: local.service.env.clone(),
            user: local.service.user.clone(),
            dir: self.task_dir(&local.task.id),
        };
        let task = match TaskProcess::spawn(&spec) {
            Ok(process) => {
                let process = Arc::new(process);
                local.process = Some(process.clone());
                local.health_failures = 0;
                self.watch(local, process);
                Task {
                    state: if local.service.health.is_some() {
                        TaskState::Starting
                    } else {
                        TaskState::Running
                    },
                    message: String::new(),
                    restarts,
                    ..local.task.clone()
                }
            }
            Err(error) => {
                warn!(task = %local.task.id, error = %error, "could not start a task's process");
                local.restart_at =
                    Some(Instant::now() + local.service.restart_delay().max(MIN_RETRY));
                Task {
                    state: TaskState::Failed,
                    message: error.to_string(),
                    restarts,
                    ..local.task.clone()
                }
            }
        };
        self.publish(local, task).await;
    }

    /// Watches a process: its exit, and its health command if the service has one.
    fn watch(&self, local: &Local, process: Arc<TaskProcess>) {
        let id = local.task.id.clone();
        let pid = process.pid();
        let events = self.events.clone();
        if let Some(health) = local.service.health.clone() {
            let (events, id, process) = (events.clone(), id.clone(), process.clone());
            let interval = Duration::from_millis(health.interval_ms.max(100));
            tokio::spawn(async move {
                loop {
                    let ok =
                        health_check(&process, &health.cmd, interval.max(Duration::from_secs(1)))
                            .await
                            .unwrap_or(false);
                    if events
                        .send(Event::Health {
                            id: id.clone(),
                            pid,
                            ok,
                        })
                        .is_err()
                        || process.has_exited()
                    {
                        return;
                    }
                    tokio::time::sleep(interval).await;
                }
            });
        }
        tokio::spawn(async move {
            let code = process.exited().await;
            let _ = events.send(Event::Exited { id, pid, code });
        });
    }

    /// Writes `task` as this node's record if it differs from the last written.
    async fn publish(&self, local: &mut Local, mut task: Task) {
        if task == local.task {
            return;
        }
        if task.state != local.task.state {
            task.since_ms = wall_ms();
        }
        match self
            .manager
            .write(
                Scope::Node(self.manager.node()),
                Kind::Task,
                task.id.clone(),
                Some(task.encode()),
            )
            .await
        {
            Ok(_) => local.task = task,
            Err(error) => {
                warn!(task = %task.id, error = %error, "could not publish a task's state")
            }
        }
    }

    fn teardown_in_background(&self, local: Local) {
        let teardown = self.teardown_ctx(&local);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let id = local.task.id.clone();
            teardown
                .run(&local.task, Some(&local.endpoint), local.process.as_deref())
                .await;
            stopping.lock().expect("stopping lock").remove(&id);
        });
    }

    async fn teardown(&self, local: Local) {
        self.teardown_ctx(&local)
            .run(&local.task, Some(&local.endpoint), local.process.as_deref())
            .await;
    }

    fn teardown_ctx(&self, local: &Local) -> Teardown {
        Teardown {
            manager: self.manager.clone(),
            reconciler: self.reconciler.clone(),
            dir: self.task_dir(&local.task.id),
        }
    }
}

/// What removing a task needs, detached from the supervisor so it can run in the
/// background.
struct Teardown {
    manager: Manager,
    reconciler: Arc<Reconciler>,
    dir: PathBuf,
}

impl Teardown {
    /// Stops the process, removes the endpoint (an attached namespace is only detached)
    /// and the records, and deletes the task's directory.
    async fn run(&self, task: &Task, endpoint: Option<&Endpoint>, process: Option<&TaskProcess>) {
        if let Some(process) = process {
            process.stop(STOP_GRACE).await;
        }
        if let Some(endpoint) = endpoint {
            // The record first: while it exists, a sync would plumb the endpoint again.
            let _ = self.manager.remove_endpoint(&endpoint.id).await;
            if let Err(error) = self.reconciler.unplumb(endpoint).await {
                warn!(task = %task.id, error = %format!("{error:#}"), "could not remove a task's endpoint");
            }
        }
        let node = self.manager.node();
        if let Err(error) = self
            .manager
            .write(Scope::Node(node), Kind::Task, task.id.clone(), None)
            .await
        {
            warn!(task = %task.id, error = %error, "could not remove a task's record");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        info!(task = %task.id, service = %task.service, "task removed");
    }
}

/// Whether `endpoint`, which no task refers to, is a task's endpoint (a namespace the agent
/// made, named `<service>.<slot>.<its ID>`) old enough to be an orphan at `now_ms`.
fn is_orphan_task_endpoint(endpoint: &Endpoint, now_ms: u64) -> bool {
    let is_task_endpoint = endpoint.owns_netns
        && endpoint
            .name
            .strip_suffix(endpoint.id.as_str())
            .is_some_and(|rest| rest.ends_with('.'));
    let age = now_ms.saturating_sub(manager::hlc::physical_ms(endpoint.created.hlc));
    is_task_endpoint && age >= ORPHAN_AGE.as_millis() as u64
}

/// Whether the node `layout` now gives `local`'s slot runs a task for it.
fn new_holder_runs(view: &ClusterView, layout: &Layout, local: &Local) -> bool {
    view.live_tasks().any(|(node, t)| {
        t.service == local.task.service
            && t.service_created == local.task.service_created
            && t.slot == local.task.slot
            && t.state == TaskState::Running
            && layout.holds(*node, t.slot)
    })
}

#[cfg(test)]
mod tests {
    use manager::{hlc, state::Stamp, NodeId};

    use super::*;

    fn endpoint(name: &str, id: &str, owns_netns: bool, created_ms: u64) -> Endpoint {
        Endpoint {
            id: id.into(),
            name: name.into(),
            network: "net".into(),
            vni: 4096,
            ip: std::net::Ipv4Addr::new(10, 10, 0, 2),
            netns: format!("p-{name}"),
            host_ifname: "skx".into(),
            created: Stamp {
                hlc: hlc::compose(created_ms, 0),
                writer: NodeId([1; 16]),
            },
            owns_netns,
        }
    }

    #[test]
    fn only_old_task_endpoints_are_orphans() {
        let now = 1_000_000;
        let old = now - 60_000;
        let id = "0123456789ab";
        assert!(is_orphan_task_endpoint(
            &endpoint(&format!("web.1.{id}"), id, true, old),
            now
        ));
        assert!(is_orphan_task_endpoint(
            &endpoint(&format!("g.h1.{id}"), id, true, old),
            now
        ));
        // Just created: its task record may not be in the view yet.
        assert!(!is_orphan_task_endpoint(
            &endpoint(&format!("web.1.{id}"), id, true, now - 1000),
            now
        ));
        // A user's endpoint (`endpoint create --name`), or an attached namespace.
        assert!(!is_orphan_task_endpoint(
            &endpoint("app", id, true, old),
            now
        ));
        assert!(!is_orphan_task_endpoint(&endpoint(id, id, true, old), now));
        assert!(!is_orphan_task_endpoint(
            &endpoint(&format!("web.1.{id}"), id, false, old),
            now
        ));
    }
}
