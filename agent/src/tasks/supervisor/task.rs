//! The effects on one task: create it (endpoint, record, process), (re)start and watch its
//! process, publish its state, and tear it down.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use manager::{
    driver::wall_ms,
    ops::EndpointRequest,
    state::{Endpoint, Kind, Mode, Scope, Service, Task, TaskState},
    view::ClusterView,
    Manager,
};
use tracing::{info, warn};

use super::{Event, Local, Supervisor};
use crate::{
    netlink,
    reconcile::{self, Reconciler},
    tasks::{
        cgroup::TaskCgroup,
        plan,
        process::{health_check, TaskProcess, TaskSpec},
    },
};

/// SIGTERM → SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Creates a task for `slot` of `service`: endpoint, record, process.
    pub(super) async fn start(
        &self,
        view: &ClusterView,
        service: &Service,
        slot: u32,
    ) -> Result<Local> {
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
            spec: manager::rollout::spec_fingerprint(service),
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
            draining_since: None,
            health_failures: 0,
        };
        self.spawn(&mut local).await;
        Ok(local)
    }

    /// Starts (or restarts) a task's process and publishes its state.
    pub(super) async fn spawn(&self, local: &mut Local) {
        local.restart_at = None;
        let restarts = local.task.restarts + u32::from(local.task.state != TaskState::Starting);
        let spec = self.task_spec(local);
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
                local.restart_at = Some(plan::retry_after_failed_spawn(
                    &local.service,
                    Instant::now(),
                ));
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

    /// What a task's process (and its health checks) run as: from the service definition.
    fn task_spec(&self, local: &Local) -> TaskSpec {
        TaskSpec {
            task_id: local.task.id.clone(),
            service: local.service.name.clone(),
            node_id: self.manager.node().to_string(),
            netns_path: reconcile::netns_path(&local.endpoint.netns),
            command: local.service.command.clone(),
            env: local.service.env.clone(),
            user: local.service.user.clone(),
            dir: self.task_dir(&local.task.id),
            security: local.service.security.clone(),
            hidden: self.hidden.clone(),
            cgroup: self.cgroup(&local.task.id),
            limits: local.service.limits,
        }
    }

    /// Watches a process: its exit, and its health command if the service has one.
    pub(super) fn watch(&self, local: &Local, process: Arc<TaskProcess>) {
        let id = local.task.id.clone();
        let pid = process.pid();
        let events = self.events.clone();
        if let Some(health) = local.service.health.clone() {
            let (events, id, process) = (events.clone(), id.clone(), process.clone());
            let spec = self.task_spec(local);
            let interval = Duration::from_millis(health.interval_ms.max(100));
            tokio::spawn(async move {
                loop {
                    let ok = health_check(
                        &process,
                        &spec,
                        &health.cmd,
                        interval.max(Duration::from_secs(1)),
                    )
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
    pub(super) async fn publish(&self, local: &mut Local, mut task: Task) {
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

    /// Stops a task in the background; it counts as stopping until it is gone.
    pub(super) fn stop_in_background(&self, local: Local) {
        let teardown = self.teardown_ctx(&local.task.id);
        self.while_stopping(local.task.id.clone(), async move {
            teardown
                .run(&local.task, Some(&local.endpoint), local.process.as_deref())
                .await;
        });
    }

    /// Runs `removal` in the background, with `id` (a task's or an endpoint's) counted as
    /// stopping until it is done, so no pass acts on it meanwhile.
    pub(super) fn while_stopping(
        &self,
        id: String,
        removal: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.stopping
            .lock()
            .expect("stopping lock")
            .insert(id.clone());
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            removal.await;
            stopping.lock().expect("stopping lock").remove(&id);
        });
    }

    pub(super) async fn teardown(&self, local: Local) {
        self.teardown_ctx(&local.task.id)
            .run(&local.task, Some(&local.endpoint), local.process.as_deref())
            .await;
    }

    pub(super) fn teardown_ctx(&self, id: &str) -> Teardown {
        Teardown {
            manager: self.manager.clone(),
            reconciler: self.reconciler.clone(),
            dir: self.task_dir(id),
            cgroup: self.cgroup(id),
        }
    }
}

/// What removing a task needs, detached from the supervisor so it can run in the
/// background.
pub(super) struct Teardown {
    manager: Manager,
    reconciler: Arc<Reconciler>,
    pub(super) dir: PathBuf,
    pub(super) cgroup: Option<TaskCgroup>,
}

impl Teardown {
    /// Stops the process, removes the endpoint (an attached namespace is only detached)
    /// and the records, and deletes the task's directory.
    pub(super) async fn run(
        &self,
        task: &Task,
        endpoint: Option<&Endpoint>,
        process: Option<&TaskProcess>,
    ) {
        if let Some(process) = process {
            process.stop(STOP_GRACE).await;
        }
        // Whatever the task started, in any session, and its group.
        if let Some(cgroup) = self.cgroup.clone() {
            let removed = tokio::task::spawn_blocking(move || cgroup.remove()).await;
            if let Ok(Err(error)) = removed {
                warn!(task = %task.id, error = %format!("{error:#}"), "could not remove a task's cgroup");
            }
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
