//! The agent's side of the `service` commands: turns requests into cluster operations and
//! answers from the cluster view (and, for logs, this node's task directories).

use std::{
    collections::BTreeMap,
    io::{Read, Seek, SeekFrom},
};

use anyhow::{anyhow, bail, Result};
use manager::{
    driver::wall_ms,
    ops::ServiceRequest,
    state::{
        service::parse_env, EndpointMode, HealthCheck, Mode, PublishMode, PublishedPort, Service,
    },
    view::ClusterView,
    Manager,
};

use super::{
    process::{log_path, resolve_command, resolve_user},
    status::{service_row, service_status, task_name},
    supervisor::Supervisor,
};
use crate::api::{Body, LogChunk, LogEntry, ServiceSpec};

/// The most log bytes one `service logs` answer carries per task; `--follow` and repeated
/// calls page through the rest.
const MAX_LOG_CHUNK: u64 = 256 * 1024;

/// `service create`: checks the request (including, on this node, that the command and
/// user exist), creates the service, and answers its first status.
pub async fn create(manager: &Manager, spec: ServiceSpec) -> Result<Body> {
    let mode = match spec.replicas {
        Some(replicas) => Mode::Replicated { replicas },
        None => Mode::Global,
    };
    let ports = spec
        .publish
        .iter()
        .map(|p| p.parse::<PublishedPort>())
        .collect::<Result<Vec<_>, _>>()?;
    let publish_mode = match spec.publish_mode.as_str() {
        "ingress" => PublishMode::Ingress,
        "host" => PublishMode::Host,
        other => bail!("--publish-mode {other:?} is invalid: use ingress or host"),
    };
    let endpoint_mode = match spec.endpoint_mode.as_str() {
        "vip" => EndpointMode::Vip,
        "dnsrr" => EndpointMode::Dnsrr,
        other => bail!("--endpoint-mode {other:?} is invalid: use vip or dnsrr"),
    };
    let env = spec
        .env
        .iter()
        .map(|e| parse_env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let argv0 = spec
        .command
        .first()
        .ok_or_else(|| anyhow!("a command to run is required (after `--`)"))?;
    resolve_command(argv0)?;
    if let Some(user) = &spec.user {
        resolve_user(user)?;
    }
    let service = manager
        .create_service(ServiceRequest {
            name: spec.name,
            mode,
            network: spec.network,
            ports,
            publish_mode,
            endpoint_mode,
            command: spec.command,
            env,
            user: spec.user,
            health: spec.health_cmd.map(|cmd| HealthCheck {
                cmd,
                interval_ms: spec.health_interval_ms,
            }),
            restart_delay_ms: spec.restart_delay_ms,
        })
        .await?;
    Ok(Body::ServiceStatus(Box::new(service_status(
        &manager.view(),
        &service,
        wall_ms(),
    ))))
}

/// The service called `name`, or a clear error.
pub fn find<'a>(view: &'a ClusterView, name: &str) -> Result<&'a Service> {
    view.services
        .get(name)
        .ok_or_else(|| anyhow!("service {name:?} does not exist (see `skein service ls`)"))
}

pub fn ls(view: &ClusterView) -> Body {
    let now = wall_ms();
    Body::Services(
        view.services
            .valid
            .iter()
            .map(|s| service_row(view, s, now))
            .collect(),
    )
}

pub fn ps(view: &ClusterView, name: &str) -> Result<Body> {
    Ok(Body::ServiceStatus(Box::new(service_status(
        view,
        find(view, name)?,
        wall_ms(),
    ))))
}

pub fn inspect(view: &ClusterView, name: &str) -> Result<Body> {
    Ok(Body::Json(serde_json::to_value(find(view, name)?)?))
}

pub async fn scale(manager: &Manager, name: &str, replicas: u32) -> Result<Body> {
    let service = manager.scale_service(name, replicas).await?;
    Ok(Body::ServiceStatus(Box::new(service_status(
        &manager.view(),
        &service,
        wall_ms(),
    ))))
}

pub async fn rm(manager: &Manager, name: &str) -> Result<Body> {
    let service = manager.remove_service(name).await?;
    Ok(Body::Done(format!(
        "removed service {}; its tasks stop on every node",
        service.name
    )))
}

/// `service logs`: new bytes of this node's tasks of `name` since `from`, and the names of
/// its tasks elsewhere.
pub fn logs(
    view: &ClusterView,
    supervisor: &Supervisor,
    name: &str,
    from: &BTreeMap<String, u64>,
) -> Result<Body> {
    let service = find(view, name)?;
    let mut chunk = LogChunk {
        entries: Vec::new(),
        elsewhere: Vec::new(),
    };
    for (node, task) in view
        .tasks
        .iter()
        .filter(|(_, t)| t.service == service.name && t.service_created == service.created)
    {
        let label = task_name(view, *node, task, service);
        if *node != view.self_id {
            chunk.elsewhere.push(label);
            continue;
        }
        if task.attached {
            continue;
        }
        let start = from.get(&task.id).copied().unwrap_or(0);
        let (text, next) = read_from(&log_path(&supervisor.task_dir(&task.id)), start);
        chunk.entries.push(LogEntry {
            task: label,
            id: task.id.clone(),
            text,
            next,
        });
    }
    Ok(Body::Logs(chunk))
}

/// Up to [`MAX_LOG_CHUNK`] bytes of `path` from `start`, and the offset after them. A
/// missing file reads as empty; a file that shrank (replaced) is read from its start.
fn read_from(path: &std::path::Path, start: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), start);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = if start > len { 0 } else { start };
    if file.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), start);
    }
    let mut bytes = Vec::new();
    let read = file
        .take(MAX_LOG_CHUNK)
        .read_to_end(&mut bytes)
        .unwrap_or(0);
    (
        String::from_utf8_lossy(&bytes).into_owned(),
        start + read as u64,
    )
}
