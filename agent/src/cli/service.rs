//! `skein service ...`: the arguments, and the client side of the commands that do more
//! than one request (create and scale follow progress until the service converges; logs
//! can follow).

use std::{collections::BTreeMap, io::Write, path::Path, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use manager::state::{
    service::{
        parse_capability, parse_cpus, parse_env, parse_memory, parse_pids, Limits, Security,
    },
    EndpointMode, Mode, PublishMode, PublishedPort,
};

use super::{
    args::{non_empty, FormatArg},
    client::{self, call, print_response},
    output::{self, Format},
};
use crate::api::{Body, Request, Response, ServiceSpec, ServiceStatus};

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(100);
/// How long every task must have been running before a service counts as converged.
const STABLE: Duration = Duration::from_secs(1);

// Parsed once per process: the size of `create`'s variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCommand {
    /// Create a service: N replicas (or one per node) of a command, each in its own
    /// network namespace on the service's overlay network.
    Create(Box<ServiceCreate>),
    /// List services.
    Ls(FormatArg),
    /// List a service's tasks: node, overlay IP, state.
    Ps {
        #[arg(value_parser = non_empty("a service name"))]
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Print a service's definition as JSON (`--pretty`: as text, with the update config
    /// and the rollout's state).
    Inspect {
        #[arg(value_parser = non_empty("a service name"))]
        name: String,
        #[arg(long)]
        pretty: bool,
    },
    /// Change a service's definition; its tasks are replaced by a rolling update.
    Update(super::service_update::ServiceUpdateArgs),
    /// Go back to the service's previous definition, by a rolling update.
    Rollback {
        #[arg(value_parser = non_empty("a service name"))]
        name: String,
        #[command(flatten)]
        wait: super::service_update::RolloutWait,
    },
    /// Print the output of a service's tasks, on every node (gathered by this node's agent).
    Logs {
        #[arg(value_parser = non_empty("a service name"))]
        name: String,
        /// Keep printing new output until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Change the number of replicas: `skein service scale web=5`.
    Scale {
        /// NAME=REPLICAS
        #[arg(value_parser = parse_scale, value_name = "NAME=N")]
        target: (String, u32),
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a service; its tasks stop on every node.
    Rm {
        #[arg(value_parser = non_empty("a service name"))]
        name: String,
    },
    /// Attach an existing network namespace (e.g. a container's) as one replica.
    Attach {
        #[arg(value_parser = non_empty("a service name"))]
        name: String,
        /// A name under /run/netns, or a path such as /proc/PID/ns/net.
        #[arg(long, value_name = "NAME|PATH", value_parser = non_empty("a namespace"))]
        netns: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    Replicated,
    Global,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum PublishModeArg {
    Ingress,
    Host,
}

impl From<PublishModeArg> for PublishMode {
    fn from(arg: PublishModeArg) -> PublishMode {
        match arg {
            PublishModeArg::Ingress => PublishMode::Ingress,
            PublishModeArg::Host => PublishMode::Host,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum EndpointModeArg {
    Vip,
    Dnsrr,
}

impl From<EndpointModeArg> for EndpointMode {
    fn from(arg: EndpointModeArg) -> EndpointMode {
        match arg {
            EndpointModeArg::Vip => EndpointMode::Vip,
            EndpointModeArg::Dnsrr => EndpointMode::Dnsrr,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct WaitArgs {
    /// Give up waiting for the service to converge after this long (exit status 1).
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "60s", value_name = "DURATION")]
    pub(crate) timeout: Duration,
    /// Do not wait for the service to converge.
    #[arg(long, short)]
    pub(crate) detach: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ServiceCreate {
    /// The service's name (a DNS label: lowercase letters, digits, '-').
    #[arg(value_parser = non_empty("a service name"))]
    pub(crate) name: String,
    /// Number of tasks (replicated mode).
    #[arg(long, value_parser = parse_replicas, allow_hyphen_values = true, value_name = "N")]
    pub(crate) replicas: Option<u32>,
    /// `replicated` (--replicas tasks, default 1) or `global` (one task per node).
    #[arg(long, value_enum, default_value_t = ModeArg::Replicated)]
    pub(crate) mode: ModeArg,
    /// The overlay network of its tasks [default: `skein`, created on first use].
    #[arg(long, value_parser = non_empty("a network name"))]
    pub(crate) network: Option<String>,
    /// Publish a port: PUBLISHED:TARGET[/tcp|/udp]. Repeatable.
    #[arg(long, short, value_parser = parse_publish, value_name = "PUBLISHED:TARGET[/PROTO]")]
    pub(crate) publish: Vec<PublishedPort>,
    /// Where published ports open: on every node, balanced over all tasks (`ingress`), or
    /// only on nodes running a task, to that node's tasks (`host`). Either way a port is
    /// the service's cluster-wide: no other service may publish it.
    #[arg(long, value_enum, default_value_t = PublishModeArg::Ingress)]
    pub(crate) publish_mode: PublishModeArg,
    /// `vip`: a virtual IP balanced across the tasks; `dnsrr`: DNS answers task IPs.
    #[arg(long, value_enum, default_value_t = EndpointModeArg::Vip)]
    pub(crate) endpoint_mode: EndpointModeArg,
    /// Set an environment variable in the tasks: KEY=VALUE. Repeatable.
    #[arg(long, short, value_parser = parse_env_var, value_name = "KEY=VALUE")]
    pub(crate) env: Vec<(String, String)>,
    /// Run the command as this user: NAME, UID or UID:GID [default: root].
    #[arg(long, short, value_parser = non_empty("a user"))]
    pub(crate) user: Option<String>,
    /// A command run in each task (with `sh -c`); the task counts as running only while it
    /// succeeds.
    #[arg(long, value_parser = non_empty("a health command"))]
    pub(crate) health_cmd: Option<String>,
    /// Time between health checks.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "5s", value_name = "DURATION")]
    pub(crate) health_interval: Duration,
    /// Time to wait before restarting a task whose process exited.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "1s", value_name = "DURATION")]
    pub(crate) restart_delay: Duration,
    /// Give the tasks a capability beyond the default set (Docker's), e.g. NET_ADMIN, or
    /// ALL. Repeatable.
    #[arg(long, value_parser = parse_cap, value_name = "CAPABILITY")]
    pub(crate) cap_add: Vec<String>,
    /// Take a capability from the tasks' default set, or ALL. Repeatable.
    #[arg(long, value_parser = parse_cap, value_name = "CAPABILITY")]
    pub(crate) cap_drop: Vec<String>,
    /// Let setuid programs and file capabilities raise the tasks' privileges (by default
    /// tasks run with no_new_privs, like Docker's `--security-opt no-new-privileges`).
    #[arg(long)]
    pub(crate) allow_new_privileges: bool,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
    #[command(flatten)]
    pub(crate) rollout: super::service_update::RolloutFlags,
    #[command(flatten)]
    pub(crate) wait: WaitArgs,
    /// The command each task runs, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// Resource limits of each task, held by its cgroup (Swarm's flags and units).
#[derive(Args, Debug)]
pub(crate) struct LimitArgs {
    /// Memory limit of each task, e.g. 64M or 1.5G; a task exceeding it is killed by the
    /// kernel and restarted.
    #[arg(long, value_parser = |v: &str| parse_memory(v).map_err(|e| e.to_string()), value_name = "BYTES")]
    pub(crate) limit_memory: Option<u64>,
    /// CPU limit of each task in CPUs, e.g. 0.5 or 1.5.
    #[arg(long, value_parser = |v: &str| parse_cpus(v).map_err(|e| e.to_string()), value_name = "CPUS")]
    pub(crate) limit_cpu: Option<u32>,
    /// Most processes and threads each task may have at once, e.g. 100.
    #[arg(long, value_parser = |v: &str| parse_pids(v).map_err(|e| e.to_string()), value_name = "N")]
    pub(crate) limit_pids: Option<u32>,
    /// Not supported: refused with an explanation (Skein does not reserve resources).
    #[arg(long, value_name = "BYTES", hide = true, value_parser = refuse_reserve_memory)]
    pub(crate) reserve_memory: Option<bool>,
}

/// `--reserve-memory` is refused whatever its value.
fn refuse_reserve_memory(_: &str) -> Result<bool, String> {
    Err(
        "Skein does not reserve memory for tasks when placing them; \
         use --limit-memory to cap what each task may use"
            .to_owned(),
    )
}

impl LimitArgs {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.limit_memory,
            cpu_millis: self.limit_cpu,
            pids: self.limit_pids,
        }
    }
}

fn parse_replicas(value: &str) -> Result<u32, String> {
    match value.parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("{n} is negative; give 0 or more replicas")),
        Ok(n) => u32::try_from(n).map_err(|_| format!("{n} is too many replicas")),
        Err(_) => Err(format!("{value:?} is not a number of replicas")),
    }
}

pub(super) fn parse_publish(value: &str) -> Result<PublishedPort, String> {
    value.parse().map_err(|e| format!("{e}"))
}

fn parse_cap(value: &str) -> Result<String, String> {
    parse_capability(value).map_err(|e| format!("{e}"))
}

pub(super) fn parse_env_var(value: &str) -> Result<(String, String), String> {
    parse_env(value).map_err(|e| format!("{e}"))
}

fn parse_scale(value: &str) -> Result<(String, u32), String> {
    let (name, replicas) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=REPLICAS, e.g. web=5"))?;
    if name.is_empty() {
        return Err(format!("{value:?} has no service name"));
    }
    Ok((name.to_owned(), parse_replicas(replicas)?))
}

impl ServiceCommand {
    /// Runs a `service` command against the agent on `socket`.
    pub(super) fn run(self, socket: &Path) -> Result<ExitCode> {
        client::runtime()?.block_on(run(self, socket))
    }
}

async fn run(command: ServiceCommand, socket: &Path) -> Result<ExitCode> {
    match command {
        ServiceCommand::Create(create) => {
            if create.replicas.is_some() && create.mode == ModeArg::Global {
                bail!("--replicas cannot be combined with --mode global");
            }
            let spec = ServiceSpec {
                name: create.name.clone(),
                mode: match create.mode {
                    ModeArg::Replicated => Mode::Replicated {
                        replicas: create.replicas.unwrap_or(1),
                    },
                    ModeArg::Global => Mode::Global,
                },
                network: create.network,
                publish: create.publish,
                publish_mode: create.publish_mode.into(),
                endpoint_mode: create.endpoint_mode.into(),
                env: create.env,
                user: create.user,
                health_cmd: create.health_cmd,
                health_interval: create.health_interval,
                restart_delay: create.restart_delay,
                command: create.command,
                security: Security {
                    cap_add: create.cap_add,
                    cap_drop: create.cap_drop,
                    new_privileges: create.allow_new_privileges,
                },
                limits: create.limits.limits(),
                stack: None,
                rollout: create.rollout.configs(),
            };
            let status = expect_status(call(socket, &Request::ServiceCreate(spec)).await?)?;
            println!("{}", status.service.name);
            follow_progress(socket, &create.name, &create.wait).await
        }
        ServiceCommand::Scale {
            target: (name, replicas),
            wait,
        } => {
            expect_status(
                call(
                    socket,
                    &Request::ServiceScale {
                        name: name.clone(),
                        replicas,
                    },
                )
                .await?,
            )?;
            println!("{name} scaled to {replicas}");
            follow_progress(socket, &name, &wait).await
        }
        ServiceCommand::Logs { name, follow } => logs(socket, &name, follow).await,
        ServiceCommand::Ls(f) => print_response(call(socket, &Request::ServiceLs).await?, f.format),
        ServiceCommand::Ps { name, format } => print_response(
            call(socket, &Request::ServicePs { name }).await?,
            format.format,
        ),
        ServiceCommand::Inspect { name, pretty: true } => {
            super::service_update::inspect_pretty(socket, &name).await
        }
        ServiceCommand::Update(args) => super::service_update::update(socket, args).await,
        ServiceCommand::Rollback { name, wait } => {
            super::service_update::rollback(socket, &name, &wait).await
        }
        ServiceCommand::Inspect {
            name,
            pretty: false,
        } => print_response(
            call(socket, &Request::ServiceInspect { name }).await?,
            Format::Table,
        ),
        ServiceCommand::Rm { name } => print_response(
            call(socket, &Request::ServiceRm { name }).await?,
            Format::Table,
        ),
        ServiceCommand::Attach { name, netns } => print_response(
            call(socket, &Request::ServiceAttach { name, netns }).await?,
            Format::Table,
        ),
    }
}

fn expect_status(response: Response) -> Result<ServiceStatus> {
    match response {
        Response::Ok {
            body: Body::ServiceStatus(status),
        } => Ok(*status),
        Response::Ok { body } => bail!("unexpected answer from the agent: {body:?}"),
        Response::Error { message } => bail!("{message}"),
    }
}

/// Prints `overall progress: N out of M tasks` as it changes, then `verify: Service
/// converged`; fails with the reasons if the service does not converge within the timeout.
async fn follow_progress(socket: &Path, name: &str, wait: &WaitArgs) -> Result<ExitCode> {
    if wait.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + wait.timeout;
    let mut shown = None;
    let mut verifying = false;
    // A task that crashes and restarts may be `running` at the deadline: the last
    // problems seen still say why the service is not stable.
    let mut last_problems = Vec::new();
    loop {
        let status = expect_status(
            call(
                socket,
                &Request::ServicePs {
                    name: name.to_owned(),
                },
            )
            .await?,
        )?;
        if !status.problems.is_empty() {
            last_problems.clone_from(&status.problems);
        }
        if shown != Some((status.running, status.wanted)) {
            println!(
                "overall progress: {} out of {} tasks",
                status.running, status.wanted
            );
            shown = Some((status.running, status.wanted));
        }
        if status.converged {
            // Like `docker service create`: a task that crashes right after starting must
            // not count, so every task must have run for a while.
            let stable_for =
                Duration::from_millis(output::now_ms().saturating_sub(status.running_since_ms));
            if stable_for >= STABLE {
                println!("verify: Service converged");
                return Ok(ExitCode::SUCCESS);
            }
            if !verifying {
                println!(
                    "verify: Waiting {} seconds to verify that tasks are stable...",
                    STABLE.as_secs()
                );
                verifying = true;
            }
        } else {
            verifying = false;
        }
        if tokio::time::Instant::now() >= deadline {
            let mut reason = format!(
                "service {name} did not converge within {:?}: {} out of {} tasks running",
                wait.timeout, status.running, status.wanted
            );
            for problem in &last_problems {
                reason.push_str("; ");
                reason.push_str(problem);
            }
            eprintln!("error: {reason}");
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `service logs [--follow]`.
async fn logs(socket: &Path, name: &str, follow: bool) -> Result<ExitCode> {
    let mut from: BTreeMap<String, u64> = BTreeMap::new();
    let mut noted = std::collections::BTreeSet::new();
    loop {
        let response = call(
            socket,
            &Request::ServiceLogs {
                name: name.to_owned(),
                from: from.clone(),
            },
        )
        .await?;
        let chunk = match response {
            Response::Ok {
                body: Body::Logs(chunk),
            } => chunk,
            Response::Ok { body } => bail!("unexpected answer from the agent: {body:?}"),
            Response::Error { message } => {
                eprintln!("error: {message}");
                return Ok(ExitCode::FAILURE);
            }
        };
        // Once per task and reason, so --follow says when a node goes away, not every poll.
        for unavailable in &chunk.elsewhere {
            if noted.insert(unavailable.clone()) {
                eprintln!("note: no output from {unavailable}");
            }
        }
        let text = output::logs(&chunk);
        let _ = std::io::stdout().write_all(text.as_bytes());
        let _ = std::io::stdout().flush();
        let more = chunk
            .entries
            .iter()
            .any(|e| e.next > from.get(&e.id).copied().unwrap_or(0) && !e.text.is_empty());
        for entry in chunk.entries {
            from.insert(entry.id, entry.next);
        }
        if !more && !follow {
            return Ok(ExitCode::SUCCESS);
        }
        if !more {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_scale() {
        assert_eq!(parse_replicas("3"), Ok(3));
        assert!(parse_replicas("-1").unwrap_err().contains("negative"));
        assert!(parse_replicas("x").is_err());
        assert_eq!(parse_scale("web=6"), Ok(("web".into(), 6)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("=3").is_err());
        assert!(parse_scale("web=-2").is_err());
    }
}
