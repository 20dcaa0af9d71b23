//! Handlers of `service update`, `service rollback`, the rollout status and `node
//! update|inspect`, and the loop that writes rollout state transitions when this node is
//! the rollout writer ([`manager::rollout::writer`]).

use std::time::Duration;

use anyhow::{anyhow, Result};
use manager::{
    driver::wall_ms,
    rollout::{self, Availability, Progress, UpdateConfig, UpdateError},
    state::{service::ReservedPort, HealthCheck, Mode, Service},
    view::ClusterView,
    Manager, NodeId,
};
use tracing::{info, warn};

use crate::{
    api::{
        AvailabilityArg, Body, RolloutStatus, ServiceChange, ServiceEdit, ServiceSpec,
        ServiceUpdateRequest,
    },
    tasks::process::{resolve_command, resolve_user},
};

/// `service update`: the new definition checked (its command and user exist on this
/// node), written with the rollout state; answers the rollout's first status.
pub(super) async fn update(
    manager: &Manager,
    request: ServiceUpdateRequest,
    local_reserved: &[ReservedPort],
) -> Result<Body> {
    let ServiceUpdateRequest {
        name,
        change,
        config,
        rollback,
    } = request;
    let service = manager
        .update_service(
            &name,
            |current, current_config| match change {
                ServiceChange::Edit(edit) => {
                    let mut next = edited(current, edit)?;
                    next.update.rollback = rollback.apply(&current.update.rollback);
                    Ok((next, config.apply(current_config)))
                }
                // A whole definition brings its own controls (a compose file's
                // `update_config`/`rollback_config`, or Swarm's defaults without them).
                ServiceChange::Replace(spec) => {
                    let update = config.apply(&spec.rollout.update);
                    let mut next = replaced(current, spec)?;
                    next.update.rollback = rollback.apply(&next.update.rollback);
                    Ok((next, update))
                }
            },
            local_reserved,
        )
        .await
        .map_err(anyhow::Error::from)?;
    if let Some(argv0) = service.command.first() {
        // Checked after the fact only for the message: a command missing here may exist
        // on the nodes that run it, as with `service create`.
        if let Err(error) = resolve_command(argv0) {
            warn!(%error, "the updated command is not found on this node");
        }
    }
    if let Some(user) = &service.user {
        resolve_user(user)?;
    }
    Ok(Body::Rollout(status(&manager.view(), &service, wall_ms())))
}

/// The current definition with `edit` applied.
fn edited(current: &Service, edit: ServiceEdit) -> Result<Service, UpdateError> {
    let mut next = current.clone();
    if let Some(replicas) = edit.replicas {
        if current.mode == Mode::Global {
            return Err(UpdateError::GlobalReplicas {
                name: current.name.clone(),
            });
        }
        next.mode = Mode::Replicated { replicas };
    }
    next.env.retain(|(key, _)| !edit.env_rm.contains(key));
    for (key, value) in edit.env_add {
        match next.env.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => next.env.push((key, value)),
        }
    }
    next.ports.retain(|p| {
        !edit.publish_rm.iter().any(|rm| {
            rm == &p.published.to_string() || rm == &format!("{}/{}", p.published, p.protocol)
        })
    });
    for port in edit.publish_add {
        next.ports
            .retain(|p| !(p.published == port.published && p.protocol == port.protocol));
        next.ports.push(port);
    }
    if let Some(user) = edit.user {
        next.user = Some(user).filter(|u| !u.is_empty());
    }
    if let Some(cmd) = edit.health_cmd {
        next.health = if cmd.is_empty() {
            None
        } else {
            Some(HealthCheck {
                cmd,
                interval_ms: current.health.as_ref().map_or(1000, |h| h.interval_ms),
            })
        };
    }
    if let (Some(interval), Some(health)) = (edit.health_interval, next.health.as_mut()) {
        health.interval_ms = millis(interval);
    }
    if let Some(delay) = edit.restart_delay {
        next.restart_delay_ms = millis(delay);
    }
    if !edit.command.is_empty() {
        next.command = edit.command;
    }
    let limits = &mut next.limits;
    limits.memory_bytes = edit.limits.memory_bytes.or(limits.memory_bytes);
    limits.cpu_millis = edit.limits.cpu_millis.or(limits.cpu_millis);
    limits.pids = edit.limits.pids.or(limits.pids);
    Ok(next)
}

/// The definition `spec` gives (as `service create` would build it), keeping what only
/// the cluster assigned: the VIP (if the endpoint mode stays) and the identity.
fn replaced(current: &Service, spec: ServiceSpec) -> Result<Service, UpdateError> {
    let health = spec.health();
    Ok(Service {
        name: current.name.clone(),
        mode: spec.mode,
        network: spec.network.unwrap_or_else(|| current.network.clone()),
        ports: spec.publish,
        publish_mode: spec.publish_mode,
        endpoint_mode: spec.endpoint_mode,
        vip: if spec.endpoint_mode == current.endpoint_mode {
            current.vip
        } else {
            None
        },
        command: spec.command,
        env: spec.env,
        user: spec.user,
        health,
        restart_delay_ms: millis(spec.restart_delay),
        created: current.created,
        security: spec.security,
        limits: spec.limits,
        // Stack membership is the deploying stack's, never changed by an update.
        stack: current.stack.clone(),
        update: rollout::ServiceUpdate {
            rollback: spec.rollout.rollback,
            ..current.update.clone()
        },
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `service rollback`.
pub(super) async fn rollback(manager: &Manager, name: &str) -> Result<Body> {
    let service = manager.rollback_service(name).await?;
    Ok(Body::Rollout(status(&manager.view(), &service, wall_ms())))
}

/// Where the rollout of `name` stands.
pub(super) fn rollout(view: &ClusterView, name: &str) -> Result<Body> {
    let service = view
        .services
        .get(name)
        .ok_or_else(|| anyhow!("service {name:?} does not exist (see `skein service ls`)"))?;
    Ok(Body::Rollout(status(view, service, wall_ms())))
}

/// The rollout's progress over the service's live tasks as this node sees them.
pub(crate) fn progress_of(view: &ClusterView, service: &Service, now_ms: u64) -> Progress {
    rollout::progress(service, view.tasks_of(service).live().placed(), now_ms)
}

pub(super) fn status(view: &ClusterView, service: &Service, now_ms: u64) -> RolloutStatus {
    let progress = progress_of(view, service, now_ms);
    let update = &service.update;
    let reason = match &update.state {
        rollout::RolloutState::Paused { reason }
        | rollout::RolloutState::RollingBack { reason }
        | rollout::RolloutState::RolledBack { reason } => reason.clone(),
        _ => String::new(),
    };
    let rows = |config: &UpdateConfig| {
        vec![
            ("Parallelism".into(), config.parallelism.to_string()),
            ("Delay".into(), format!("{}ms", config.delay_ms)),
            ("On failure".into(), config.failure_action.to_string()),
            (
                "Monitoring Period".into(),
                format!("{}ms", config.monitor_ms),
            ),
            ("Order".into(), config.order.to_string()),
        ]
    };
    RolloutStatus {
        service: service.name.clone(),
        state: update.state.word().to_owned(),
        reason,
        started_ms: update.started_ms,
        updated: progress.done,
        wanted: crate::tasks::status::layout(view, service, now_ms).wanted(),
        config: rows(&update.config),
        rollback_config: rows(&update.rollback),
        has_previous: update.previous.is_some(),
    }
}

/// Writes each active rollout's next state when this node is the writer, on every view
/// and at least every `period` (the monitor and delay are times, not events).
pub(super) async fn advance(manager: Manager, period: Duration) {
    let mut views = manager.subscribe();
    let mut last_written: Option<rollout::RolloutStep> = None;
    loop {
        let view = manager.view();
        if rollout::writer(&view) == Some(view.self_id) {
            let now = wall_ms();
            for service in view
                .services
                .valid
                .iter()
                .filter(|s| s.update.state.is_active())
            {
                let progress = progress_of(&view, service, now);
                let Some(next) = rollout::next_step(service, &progress, now) else {
                    continue;
                };
                if last_written.as_ref() == Some(&next) {
                    continue;
                }
                info!(
                    service = %next.service,
                    generation = next.generation,
                    state = next.state.word(),
                    "rollout advances"
                );
                match manager.write_step(&next).await {
                    Ok(()) => last_written = Some(next),
                    Err(error) => warn!(%error, "could not write a rollout step"),
                }
            }
        }
        let _ = tokio::time::timeout(period, views.changed()).await;
    }
}

/// `node update --availability`: `query` is a full ID, a unique prefix or a hostname.
pub(super) async fn node_update(
    manager: &Manager,
    query: &str,
    availability: AvailabilityArg,
) -> Result<Body> {
    let node = find_node(&manager.view(), query)?;
    let availability = match availability {
        AvailabilityArg::Active => Availability::Active,
        AvailabilityArg::Pause => Availability::Pause,
        AvailabilityArg::Drain => Availability::Drain,
    };
    manager.set_availability(node, availability).await?;
    Ok(Body::Done(format!(
        "node {} is now {availability}",
        node.short()
    )))
}

/// `node inspect`: the node's record, status, availability and tasks, as JSON.
pub(super) fn node_inspect(view: &ClusterView, query: &str) -> Result<Body> {
    let id = find_node(view, query)?;
    let node = view
        .node(&id)
        .ok_or_else(|| anyhow!("no node matches {query:?}"))?;
    let tasks: Vec<serde_json::Value> = view
        .tasks
        .iter()
        .filter(|(n, _)| *n == id)
        .map(|(_, t)| {
            serde_json::json!({
                "id": t.id, "service": t.service, "slot": t.slot + 1,
                "state": t.state.to_string(), "ip": t.ip.to_string(),
            })
        })
        .collect();
    Ok(Body::Json(serde_json::json!({
        "id": id.to_string(),
        "hostname": node.info.as_ref().map(|i| i.hostname.clone()),
        "address": node.addr.map(|a| a.to_string()),
        "status": if node.up { "ready" } else { "down" },
        "availability": node.availability.to_string(),
        "self": node.is_self,
        "info": node.info,
        "tasks": tasks,
    })))
}

fn find_node(view: &ClusterView, query: &str) -> Result<NodeId> {
    let matches: Vec<NodeId> = view
        .nodes
        .iter()
        .filter(|n| {
            n.id.to_string().starts_with(query)
                || n.info.as_ref().is_some_and(|i| i.hostname == query)
        })
        .map(|n| n.id)
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(anyhow!("no node matches {query:?} (see `skein node ls`)")),
        _ => Err(anyhow!(
            "{query:?} matches several nodes; give more of the ID"
        )),
    }
}
