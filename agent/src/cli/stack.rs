//! `skein stack deploy|ls|services|ps|rm`: a compose file deployed as services and
//! networks named `STACK_name`, as `docker stack` does.
//!
//! Deploy reads and checks the whole file first ([`crate::compose::plan`]), then compares
//! it with what runs: new services are created (their networks first), unchanged ones are
//! left alone, and a changed one is an error before anything is created — this build has
//! no rolling update to change a service with (`service update`, issue 17 part 1).

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use manager::state::Service;

use super::{
    args::{non_empty, FormatArg},
    client::{self, call},
    output::{self, Format},
};
use crate::{
    api::{
        Body, Request, Response, ServiceChange, ServiceRow, ServiceSpec, ServiceStatus,
        ServiceUpdateRequest, UpdateConfigPatch,
    },
    compose::{self, MAX_FILE_BYTES},
};

/// How long `stack rm` waits for a network's last endpoints to go (tasks stopping).
const NETWORK_RM_WAIT: Duration = Duration::from_secs(60);

#[derive(Subcommand, Debug)]
pub(crate) enum StackCommand {
    /// Deploy a compose file (version 3) as the stack NAME: its services become
    /// `NAME_service`, its networks `NAME_network`. Deploying again creates what is new
    /// and leaves what is unchanged.
    Deploy {
        /// The compose file.
        #[arg(long = "compose-file", short = 'c', value_name = "FILE")]
        compose_file: PathBuf,
        /// The stack's name: lowercase letters, digits and '-'.
        #[arg(value_parser = non_empty("a stack name"))]
        name: String,
    },
    /// List stacks and how many services each has.
    Ls(FormatArg),
    /// List a stack's services.
    Services {
        #[arg(value_parser = non_empty("a stack name"))]
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List the tasks of a stack's services.
    Ps {
        #[arg(value_parser = non_empty("a stack name"))]
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Remove a stack: its services, then the networks it created.
    Rm {
        #[arg(value_parser = non_empty("a stack name"))]
        name: String,
    },
}

impl StackCommand {
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        client::runtime()?.block_on(run(self, socket))
    }
}

async fn run(command: StackCommand, socket: &Path) -> Result<ExitCode> {
    match command {
        StackCommand::Deploy { compose_file, name } => deploy(socket, &compose_file, &name).await,
        StackCommand::Ls(format) => {
            let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
            for row in services(socket).await? {
                if !row.stack.is_empty() {
                    *stacks.entry(row.stack).or_default() += 1;
                }
            }
            if format.format == Format::Json {
                let rows: Vec<_> = stacks
                    .iter()
                    .map(|(name, n)| serde_json::json!({"name": name, "services": n}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let width = stacks.keys().map(String::len).max().unwrap_or(0).max(4);
                println!("{:width$}   SERVICES", "NAME");
                for (name, n) in &stacks {
                    println!("{name:width$}   {n}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Services { name, format } => {
            let rows = members(socket, &name).await?;
            print!("{}", output::services(&rows, format.format));
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Ps { name, format } => {
            let mut all: Option<ServiceStatus> = None;
            for row in members(socket, &name).await? {
                let status = status(call(socket, &Request::ServicePs { name: row.name }).await?)?;
                match &mut all {
                    None => all = Some(status),
                    Some(all) => all.tasks.extend(status.tasks),
                }
            }
            if let Some(all) = all {
                print!(
                    "{}",
                    output::service_tasks(&all, format.format, output::now_ms())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Rm { name } => rm(socket, &name).await,
    }
}

/// Every service, with its stack.
async fn services(socket: &Path) -> Result<Vec<ServiceRow>> {
    match call(socket, &Request::ServiceLs).await? {
        Response::Ok {
            body: Body::Services(rows),
        } => Ok(rows),
        other => bail!("{}", unexpected(other)),
    }
}

/// The services of stack `name`; an error if it has none.
async fn members(socket: &Path, name: &str) -> Result<Vec<ServiceRow>> {
    let rows: Vec<ServiceRow> = services(socket)
        .await?
        .into_iter()
        .filter(|r| r.stack == name)
        .collect();
    if rows.is_empty() {
        bail!("stack {name:?} has no services (see `skein stack ls`)");
    }
    Ok(rows)
}

fn unexpected(response: Response) -> String {
    match response {
        Response::Error { message } => message,
        Response::Ok { body } => format!("unexpected answer from the agent: {body:?}"),
    }
}

fn status(response: Response) -> Result<ServiceStatus> {
    match response {
        Response::Ok {
            body: Body::ServiceStatus(status),
        } => Ok(*status),
        other => bail!("{}", unexpected(other)),
    }
}

/// Reads at most [`MAX_FILE_BYTES`] (and one more, to tell a file that is too big).
fn read_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {} (as UTF-8 text)", path.display()))?;
    Ok(text)
}

async fn deploy(socket: &Path, path: &Path, stack: &str) -> Result<ExitCode> {
    let text = read_file(path)?;
    let plan = compose::plan(&text, stack).with_context(|| format!("{}", path.display()))?;
    for warning in &plan.warnings {
        eprintln!("warning: {}: {warning}", path.display());
    }
    let existing = services(socket).await?;
    let in_file: Vec<String> = plan.services.iter().map(|s| s.name.clone()).collect();
    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut unchanged = Vec::new();
    for spec in plan.services {
        let Some(row) = existing.iter().find(|r| r.name == spec.name) else {
            create.push(spec);
            continue;
        };
        if row.stack != stack {
            bail!(
                "service {} exists and is not part of stack {stack:?}; remove it or choose \
                 another stack name; nothing was deployed",
                spec.name
            );
        }
        let current = inspect(socket, &spec.name).await?;
        let differs = differences(&spec, &current);
        if differs.contains(&"networks") {
            // Checked before anything is created, so a refused deploy changes nothing.
            bail!(
                "service {} moves to another network; remove it (`skein service rm {}`) and \
                 deploy again; nothing was deployed",
                spec.name,
                spec.name
            );
        }
        if !differs.is_empty() {
            update.push((spec, differs));
            continue;
        }
        unchanged.push(spec.name);
    }
    let networks = match call(socket, &Request::NetworkLs).await? {
        Response::Ok {
            body: Body::Networks(rows),
        } => rows,
        other => bail!("{}", unexpected(other)),
    };
    for network in &plan.networks {
        if networks.iter().any(|n| &n.name == network) {
            continue;
        }
        println!("Creating network {network}");
        let request = Request::NetworkCreate {
            name: network.clone(),
            subnet: None,
            vni: None,
        };
        if let Response::Error { message } = call(socket, &request).await? {
            bail!("creating network {network}: {message}");
        }
    }
    for spec in create {
        println!("Creating service {}", spec.name);
        let name = spec.name.clone();
        status(call(socket, &Request::ServiceCreate(spec)).await?)
            .with_context(|| format!("creating service {name}"))?;
    }
    // A rolling update each (the service's own update config), as `docker stack deploy`
    // does; not followed here: `skein service ps` shows it.
    for (spec, differs) in update {
        let name = spec.name.clone();
        println!("Updating service {name} ({})", differs.join(", "));
        let request = Request::ServiceUpdate(ServiceUpdateRequest {
            name: name.clone(),
            change: ServiceChange::Replace(spec),
            config: UpdateConfigPatch::default(),
            rollback: UpdateConfigPatch::default(),
        });
        if let Response::Error { message } = call(socket, &request).await? {
            bail!("updating service {name}: {message}");
        }
    }
    for name in unchanged {
        println!("Service {name} is unchanged");
    }
    for row in existing.iter().filter(|r| r.stack == stack) {
        if !in_file.contains(&row.name) {
            eprintln!(
                "note: service {} is no longer in the file and was kept; remove it with \
                 `skein service rm {}`",
                row.name, row.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The service as stored (`service inspect`).
async fn inspect(socket: &Path, name: &str) -> Result<Service> {
    match call(socket, &Request::ServiceInspect { name: name.into() }).await? {
        Response::Ok {
            body: Body::Json(value),
        } => serde_json::from_value(value)
            .with_context(|| format!("reading service {name}'s definition")),
        other => bail!("{}", unexpected(other)),
    }
}

/// The parts of `current` that `spec` would change, by name; empty: nothing to do.
fn differences(spec: &ServiceSpec, current: &Service) -> Vec<&'static str> {
    let health = spec.health();
    let checks = [
        ("mode", spec.mode != current.mode),
        ("networks", spec.network.as_ref() != Some(&current.network)),
        ("ports", spec.publish != current.ports),
        ("ports mode", spec.publish_mode != current.publish_mode),
        ("endpoint_mode", spec.endpoint_mode != current.endpoint_mode),
        ("command", spec.command != current.command),
        ("environment", spec.env != current.env),
        ("user", spec.user != current.user),
        ("healthcheck", health != current.health),
        ("resources.limits", spec.limits != current.limits),
        ("security", spec.security != current.security),
        (
            "update_config",
            spec.rollout.update != current.update.config,
        ),
        (
            "rollback_config",
            spec.rollout.rollback != current.update.rollback,
        ),
        (
            "restart delay",
            millis(spec.restart_delay) != current.restart_delay_ms,
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name)
        .collect()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `stack rm`: the services, then the stack's networks once their endpoints are gone.
async fn rm(socket: &Path, stack: &str) -> Result<ExitCode> {
    let rows = members(socket, stack).await?;
    let mut networks: Vec<String> = Vec::new();
    for row in &rows {
        println!("Removing service {}", row.name);
        if let Response::Error { message } = call(
            socket,
            &Request::ServiceRm {
                name: row.name.clone(),
            },
        )
        .await?
        {
            bail!("removing service {}: {message}", row.name);
        }
        // Only the networks the stack created (`STACK_…`), not external ones.
        if row.network.starts_with(&format!("{stack}_")) && !networks.contains(&row.network) {
            networks.push(row.network.clone());
        }
    }
    let others = services(socket).await?;
    for network in networks {
        if let Some(user) = others.iter().find(|r| r.network == network) {
            eprintln!(
                "note: network {network} is kept: service {} uses it",
                user.name
            );
            continue;
        }
        println!("Removing network {network}");
        // Tasks stop, then their endpoints go: bounded retries until then.
        let deadline = tokio::time::Instant::now() + NETWORK_RM_WAIT;
        loop {
            let request = Request::NetworkRm {
                name: network.clone(),
            };
            match call(socket, &request).await? {
                Response::Ok { .. } => break,
                Response::Error { message } if tokio::time::Instant::now() >= deadline => {
                    bail!("removing network {network}: {message}")
                }
                Response::Error { .. } => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use manager::state::{HealthCheck, Stamp};

    use super::*;

    #[test]
    fn a_changed_variable_is_the_only_difference() {
        let text = "services:\n  web:\n    command: [skein, whoami]\n    environment:\n      \
                    - V=1\n    healthcheck:\n      test: \"true\"\n      interval: 2s\n";
        let spec = compose::plan(text, "s").unwrap().services.remove(0);
        let current = Service {
            name: spec.name.clone(),
            mode: spec.mode,
            network: "s_default".into(),
            ports: spec.publish.clone(),
            publish_mode: spec.publish_mode,
            endpoint_mode: spec.endpoint_mode,
            vip: Some("10.0.0.200".parse().unwrap()),
            command: spec.command.clone(),
            env: spec.env.clone(),
            user: None,
            health: Some(HealthCheck {
                cmd: "true".into(),
                interval_ms: 2000,
            }),
            restart_delay_ms: 1000,
            created: Stamp {
                hlc: 7,
                writer: manager::NodeId([3; 16]),
            },
            security: Default::default(),
            limits: Default::default(),
            stack: spec.stack.clone(),
            update: Default::default(),
        };
        // What `service inspect` sends is what the comparison reads.
        let current: Service =
            serde_json::from_value(serde_json::to_value(&current).unwrap()).unwrap();
        assert_eq!(differences(&spec, &current), Vec::<&str>::new());
        let changed = compose::plan(&text.replace("V=1", "V=2"), "s")
            .unwrap()
            .services
            .remove(0);
        assert_eq!(differences(&changed, &current), ["environment"]);
    }
}
