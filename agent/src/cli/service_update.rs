//! `skein service update|rollback` and `service inspect --pretty`: the flags, and following
//! a rollout as Swarm prints it (`overall progress: …`, `verify: Service converged`,
//! `rollback: …`).

use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::Args;
use manager::{
    rollout::{FailureAction, RolloutConfigs, UpdateOrder},
    state::PublishedPort,
};

use super::{
    args::non_empty,
    client::call,
    output::{self, Format},
};
use crate::api::{
    Body, Request, Response, RolloutStatus, ServiceChange, ServiceEdit, ServiceUpdateRequest,
    UpdateConfigPatch,
};

/// How often a rollout is polled.
const POLL: Duration = Duration::from_millis(200);

#[derive(Args, Debug)]
pub(crate) struct ServiceUpdateArgs {
    #[arg(value_parser = non_empty("a service name"))]
    pub(crate) name: String,
    /// Number of tasks (replicated mode).
    #[arg(long, value_name = "N")]
    pub(crate) replicas: Option<u32>,
    /// Add or replace an environment variable: KEY=VALUE. Repeatable.
    #[arg(long, value_parser = super::service::parse_env_var, value_name = "KEY=VALUE")]
    pub(crate) env_add: Vec<(String, String)>,
    /// Remove an environment variable. Repeatable.
    #[arg(long, value_parser = non_empty("a variable name"), value_name = "KEY")]
    pub(crate) env_rm: Vec<String>,
    /// Publish a port: PUBLISHED:TARGET[/tcp|/udp]. Repeatable.
    #[arg(long, value_parser = super::service::parse_publish, value_name = "PUBLISHED:TARGET[/PROTO]")]
    pub(crate) publish_add: Vec<PublishedPort>,
    /// Stop publishing a port: PUBLISHED[/PROTO]. Repeatable.
    #[arg(long, value_parser = non_empty("a port"), value_name = "PUBLISHED[/PROTO]")]
    pub(crate) publish_rm: Vec<String>,
    /// Run the command as this user: NAME, UID or UID:GID; `root` for root.
    #[arg(long, short, value_parser = non_empty("a user"))]
    pub(crate) user: Option<String>,
    /// A new health command (run with `sh -c` in each task).
    #[arg(long, value_parser = non_empty("a health command"))]
    pub(crate) health_cmd: Option<String>,
    /// Remove the health check.
    #[arg(long, conflicts_with = "health_cmd")]
    pub(crate) no_healthcheck: bool,
    /// Time between health checks.
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub(crate) health_interval: Option<Duration>,
    /// Time to wait before restarting a task whose process exited.
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub(crate) restart_delay: Option<Duration>,
    #[command(flatten)]
    pub(crate) rollout: RolloutFlags,
    /// Go back to the previous definition, as `service rollback` (no other change may be
    /// given with it).
    #[arg(long)]
    pub(crate) rollback: bool,
    #[command(flatten)]
    pub(crate) limits: super::service::LimitArgs,
    #[command(flatten)]
    pub(crate) wait: RolloutWait,
    /// The new command, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// Swarm's `--update-*` and `--rollback-*` flags, on `service create` and `service update`
/// (unset: Swarm's default on create, the service's current value on update).
#[derive(Args, Debug, Default)]
pub(crate) struct RolloutFlags {
    /// Tasks replaced at once (0: all) [default: 1].
    #[arg(long, value_name = "N")]
    pub(crate) update_parallelism: Option<u32>,
    /// Wait between batches [default: 0s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub(crate) update_delay: Option<Duration>,
    /// `stop-first` (the old task drains while the new one starts) or `start-first` (the
    /// old one drains once the new one runs) [default: stop-first].
    #[arg(long, value_parser = parse_order, value_name = "stop-first|start-first")]
    pub(crate) update_order: Option<UpdateOrder>,
    /// What a failing new task does: `pause`, `rollback` or `continue` [default: pause].
    #[arg(long, value_parser = parse_failure_action, value_name = "pause|rollback|continue")]
    pub(crate) update_failure_action: Option<FailureAction>,
    /// How long a new task must run before it counts as updated [default: 5s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub(crate) update_monitor: Option<Duration>,
    /// Tasks rolled back at once (0: all) [default: 1].
    #[arg(long, value_name = "N")]
    pub(crate) rollback_parallelism: Option<u32>,
    /// Wait between rollback batches [default: 0s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub(crate) rollback_delay: Option<Duration>,
    /// `stop-first` or `start-first`, for a rollback [default: stop-first].
    #[arg(long, value_parser = parse_order, value_name = "stop-first|start-first")]
    pub(crate) rollback_order: Option<UpdateOrder>,
    /// What a failing task of a rollback does: `pause` or `continue` [default: pause].
    #[arg(long, value_parser = parse_rollback_failure_action, value_name = "pause|continue")]
    pub(crate) rollback_failure_action: Option<FailureAction>,
    /// How long a rolled-back task must run before it counts [default: 5s].
    #[arg(long, value_parser = crate::config::parse_duration, value_name = "DURATION")]
    pub(crate) rollback_monitor: Option<Duration>,
}

impl RolloutFlags {
    pub(crate) fn update_patch(&self) -> UpdateConfigPatch {
        UpdateConfigPatch {
            parallelism: self.update_parallelism,
            delay: self.update_delay,
            order: self.update_order,
            failure_action: self.update_failure_action,
            monitor: self.update_monitor,
        }
    }

    pub(crate) fn rollback_patch(&self) -> UpdateConfigPatch {
        UpdateConfigPatch {
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay,
            order: self.rollback_order,
            failure_action: self.rollback_failure_action,
            monitor: self.rollback_monitor,
        }
    }

    /// A new service's controls: the flags given over Swarm's defaults.
    pub(crate) fn configs(&self) -> RolloutConfigs {
        let defaults = RolloutConfigs::default();
        RolloutConfigs {
            update: self.update_patch().apply(&defaults.update),
            rollback: self.rollback_patch().apply(&defaults.rollback),
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct RolloutWait {
    /// Give up following the rollout after this long (exit status 1; it goes on).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "300s", value_name = "DURATION")]
    pub(crate) timeout: Duration,
    /// Do not follow the rollout.
    #[arg(long, short)]
    pub(crate) detach: bool,
}

fn parse_order(value: &str) -> Result<UpdateOrder, String> {
    value.parse().map_err(|e| format!("{e}"))
}

fn parse_failure_action(value: &str) -> Result<FailureAction, String> {
    value.parse().map_err(|e| format!("{e}"))
}

/// A rollback that fails cannot roll back again: `pause` or `continue` (as Swarm).
pub(crate) fn parse_rollback_failure_action(value: &str) -> Result<FailureAction, String> {
    match parse_failure_action(value)? {
        FailureAction::Rollback => Err(format!(
            "{value:?} is invalid for a rollback: use pause or continue"
        )),
        action => Ok(action),
    }
}

/// `service update`.
pub(super) async fn update(socket: &Path, args: ServiceUpdateArgs) -> Result<ExitCode> {
    let edit = ServiceEdit {
        replicas: args.replicas,
        env_add: args.env_add,
        env_rm: args.env_rm,
        publish_add: args.publish_add,
        publish_rm: args.publish_rm,
        user: args
            .user
            .map(|u| if u == "root" { String::new() } else { u }),
        health_cmd: if args.no_healthcheck {
            Some(String::new())
        } else {
            args.health_cmd
        },
        health_interval: args.health_interval,
        restart_delay: args.restart_delay,
        command: args.command,
        limits: args.limits.limits(),
    };
    let (config, rollback_config) = (args.rollout.update_patch(), args.rollout.rollback_patch());
    if args.rollback {
        if edit != ServiceEdit::default()
            || config != UpdateConfigPatch::default()
            || rollback_config != UpdateConfigPatch::default()
        {
            bail!("--rollback goes back to the previous definition: give no other change with it");
        }
        return rollback(socket, &args.name, &args.wait).await;
    }
    let request = Request::ServiceUpdate(ServiceUpdateRequest {
        name: args.name.clone(),
        change: ServiceChange::Edit(edit),
        config,
        rollback: rollback_config,
    });
    expect_rollout(call(socket, &request).await?)?;
    println!("{}", args.name);
    follow(socket, &args.name, &args.wait).await
}

/// `service rollback`.
pub(super) async fn rollback(socket: &Path, name: &str, wait: &RolloutWait) -> Result<ExitCode> {
    let request = Request::ServiceRollback {
        name: name.to_owned(),
    };
    expect_rollout(call(socket, &request).await?)?;
    println!("{name}");
    follow(socket, name, wait).await
}

fn expect_rollout(response: Response) -> Result<RolloutStatus> {
    match response {
        Response::Ok {
            body: Body::Rollout(status),
        } => Ok(status),
        Response::Ok { .. } => bail!("the agent answered with something else than a rollout"),
        Response::Error { message } => bail!("{message}"),
    }
}

/// Prints the rollout's progress until it completes (0), rolls back after a failure or
/// pauses (1), or `wait.timeout` passes (1).
async fn follow(socket: &Path, name: &str, wait: &RolloutWait) -> Result<ExitCode> {
    if wait.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + wait.timeout;
    let mut last_line = String::new();
    let mut rollback_said = false;
    loop {
        let status = expect_rollout(
            call(
                socket,
                &Request::ServiceRollout {
                    name: name.to_owned(),
                },
            )
            .await?,
        )?;
        let rolling_back = matches!(status.state.as_str(), "rolling back" | "rolled back");
        if rolling_back && !rollback_said {
            println!("rollback: {}", status.reason);
            rollback_said = true;
        }
        let line = format!(
            "overall progress: {}{} out of {} tasks",
            if rolling_back {
                "rolling back update: "
            } else {
                ""
            },
            status.updated.min(status.wanted),
            status.wanted
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        match status.state.as_str() {
            "completed" => {
                println!("verify: Service converged");
                return Ok(ExitCode::SUCCESS);
            }
            "rolled back" => {
                println!("verify: Service converged");
                return Ok(if status.reason == "manually requested rollback" {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("error: {}", status.reason);
                    ExitCode::FAILURE
                });
            }
            "paused" => {
                eprintln!("error: {}", status.reason);
                return Ok(ExitCode::FAILURE);
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "error: the rollout of {name} is still {} after {:?}; it goes on (see `skein service inspect --pretty {name}`)",
                status.state, wait.timeout
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `service inspect --pretty`: the definition as text, then the update config and the
/// rollout's state.
pub(super) async fn inspect_pretty(socket: &Path, name: &str) -> Result<ExitCode> {
    let definition = match call(
        socket,
        &Request::ServiceInspect {
            name: name.to_owned(),
        },
    )
    .await?
    {
        Response::Ok {
            body: Body::Json(value),
        } => value,
        Response::Ok { .. } => bail!("the agent answered with something else than a service"),
        Response::Error { message } => bail!("{message}"),
    };
    let status = expect_rollout(
        call(
            socket,
            &Request::ServiceRollout {
                name: name.to_owned(),
            },
        )
        .await?,
    )?;
    print!("{}", pretty_definition(&definition));
    print!(
        "{}",
        output::body(&Body::Rollout(status), Format::Table, output::now_ms())
    );
    Ok(ExitCode::SUCCESS)
}

/// The definition's fields, one `Key: value` line each (the rollout's own part and the
/// mesh's flows left out: they follow).
fn pretty_definition(value: &serde_json::Value) -> String {
    let mut text = String::new();
    let Some(object) = value.as_object() else {
        return text;
    };
    for (key, field) in object {
        if key == "update" || key == "mesh" {
            continue;
        }
        let shown = match field {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        text.push_str(&format!("{key}: {}\n", output::printable(&shown)));
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use manager::rollout::UpdateConfig;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        rollout: RolloutFlags,
    }

    fn flags(args: &[&str]) -> Result<RolloutFlags, clap::Error> {
        Flags::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|f| f.rollout)
    }

    #[test]
    fn rollback_flags_set_the_rollback_config_apart_from_the_update_config() {
        let given = flags(&[
            "--update-parallelism",
            "2",
            "--rollback-parallelism",
            "0",
            "--rollback-delay",
            "3s",
            "--rollback-order",
            "start-first",
            "--rollback-failure-action",
            "continue",
            "--rollback-monitor",
            "1s",
        ])
        .unwrap();
        let configs = given.configs();
        assert_eq!(configs.update.parallelism, 2);
        assert_eq!(configs.update.order, UpdateOrder::StopFirst);
        assert_eq!(
            configs.rollback,
            UpdateConfig {
                parallelism: 0,
                delay_ms: 3_000,
                order: UpdateOrder::StartFirst,
                failure_action: FailureAction::Continue,
                monitor_ms: 1_000,
            }
        );
        assert_eq!(given.update_patch().delay, None, "unset: kept on update");
        assert_eq!(
            flags(&[]).unwrap().configs(),
            RolloutConfigs::default(),
            "Swarm's defaults"
        );
        let error = flags(&["--rollback-failure-action", "rollback"]).unwrap_err();
        assert!(
            error.to_string().contains("use pause or continue"),
            "{error}"
        );
    }
}
