//! One service of a compose file into the `service create` request it stands for.

use std::time::Duration;

use manager::state::{
    service::{parse_cpus, parse_memory, parse_pids, Limits, StackMember},
    EndpointMode, Mode, Protocol, PublishMode, PublishedPort,
};

use super::{
    read::{
        boolean, duration, entries, no_substitution, number, scalar, shell_words, strings,
        unescape, unsupported,
    },
    yaml::{Key, Node, Value},
    ComposeError,
};
use crate::api::ServiceSpec;

/// Compose's default health check interval (Docker's).
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// The delay before an exited task is restarted (`service create`'s default).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Reads the service `key` of the file (its settings in `node`). `network` in the answer
/// is the compose file's name for it (`None`: `default`), for the caller to map; the line
/// is where it is named (else the service's).
pub(super) fn read(
    key: &Key,
    node: &Node,
    member: StackMember,
    warnings: &mut Vec<String>,
) -> Result<(ServiceSpec, usize), ComposeError> {
    let mut network_line = key.line;
    let base = format!("services.{}", key.name);
    let mut spec = ServiceSpec {
        name: member.service_name(),
        mode: Mode::Replicated { replicas: 1 },
        network: None,
        publish: Vec::new(),
        publish_mode: PublishMode::Ingress,
        endpoint_mode: EndpointMode::Vip,
        env: Vec::new(),
        user: None,
        health_cmd: None,
        health_interval: HEALTH_INTERVAL,
        restart_delay: RESTART_DELAY,
        command: Vec::new(),
        security: Default::default(),
        limits: Limits::default(),
        stack: Some(member),
        rollout: Default::default(),
    };
    let mut publish_modes = Vec::new();
    for (field, value) in entries(node, &base)? {
        let path = format!("{base}.{}", field.name);
        match field.name.as_str() {
            "command" => spec.command = command(value, &path)?,
            "environment" => spec.env = environment(value, &path)?,
            "ports" => {
                let Value::Seq(items) = &value.value else {
                    return Err(ComposeError::at(
                        value.line,
                        format!("`{path}` must be a list"),
                    ));
                };
                for item in items {
                    let (port, mode) = port(item, &path)?;
                    spec.publish.push(port);
                    publish_modes.push((mode, item.line));
                }
            }
            "networks" => {
                if let Some((name, line)) = network(value, &path)? {
                    spec.network = Some(name);
                    network_line = line;
                }
            }
            "healthcheck" => {
                let (cmd, interval) = health(value, &path)?;
                spec.health_cmd = cmd;
                spec.health_interval = interval;
            }
            "user" => {
                let user = scalar(value, &path)?;
                no_substitution(value, user, &path)?;
                spec.user = Some(unescape(user));
            }
            "deploy" => deploy(value, &path, &mut spec)?,
            "depends_on" => warnings.push(format!(
                "line {}: `{path}` is ignored (as `docker stack deploy` does): services \
                 start together; use a health check or retries",
                field.line
            )),
            _ => return Err(unsupported(field, &path)),
        }
    }
    if spec.command.is_empty() {
        return Err(ComposeError::at(
            key.line,
            format!("service {:?} has no `command:` to run", key.name),
        ));
    }
    if let Some((mode, _)) = publish_modes.first() {
        if let Some((_, line)) = publish_modes.iter().find(|(m, _)| m != mode) {
            return Err(ComposeError::at(
                *line,
                format!(
                    "`{base}.ports` mixes `mode: host` and `mode: ingress`; Skein publishes \
                     all of a service's ports one way"
                ),
            ));
        }
        spec.publish_mode = *mode;
    }
    Ok((spec, network_line))
}

fn command(node: &Node, path: &str) -> Result<Vec<String>, ComposeError> {
    let words = match &node.value {
        Value::Scalar(text) => {
            no_substitution(node, text, path)?;
            shell_words(node, text)?
        }
        Value::Seq(_) => {
            let words = strings(node, path)?;
            for word in &words {
                no_substitution(node, word, path)?;
            }
            words.into_iter().map(str::to_owned).collect()
        }
        _ => {
            return Err(ComposeError::at(
                node.line,
                format!("`{path}` must be a string or a list"),
            ))
        }
    };
    if words.first().is_none_or(|w| w.is_empty()) {
        return Err(ComposeError::at(node.line, format!("`{path}` is empty")));
    }
    Ok(words.iter().map(|w| unescape(w)).collect())
}

/// `environment:` as a list of `KEY=VALUE` or a mapping of `KEY: VALUE`.
fn environment(node: &Node, path: &str) -> Result<Vec<(String, String)>, ComposeError> {
    let mut env = Vec::new();
    let from_shell = |line: usize, key: &str| {
        ComposeError::at(
            line,
            format!(
                "`{path}` gives {key:?} without a value (taken from the deploying shell by \
                 Docker); write KEY=VALUE"
            ),
        )
    };
    match &node.value {
        Value::Seq(items) => {
            for item in items {
                let text = scalar(item, path)?;
                let Some((key, value)) = text.split_once('=') else {
                    return Err(from_shell(item.line, text));
                };
                no_substitution(item, value, path)?;
                env.push((key.to_owned(), unescape(value)));
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries {
                let text = match &value.value {
                    Value::Scalar(text) => text,
                    Value::Null => return Err(from_shell(key.line, &key.name)),
                    _ => {
                        return Err(ComposeError::at(
                            value.line,
                            format!("`{path}.{}` must be a single value", key.name),
                        ))
                    }
                };
                no_substitution(value, text, path)?;
                env.push((key.name.clone(), unescape(text)));
            }
        }
        _ => {
            return Err(ComposeError::at(
                node.line,
                format!("`{path}` must be a list or a mapping"),
            ))
        }
    }
    for (key, _) in &env {
        if key.is_empty() || key.contains('=') {
            return Err(ComposeError::at(
                node.line,
                format!("`{path}` has an invalid variable name {key:?}"),
            ));
        }
    }
    Ok(env)
}

/// One entry of `ports:`: `PUBLISHED:TARGET[/PROTO]`, or the long form.
fn port(node: &Node, path: &str) -> Result<(PublishedPort, PublishMode), ComposeError> {
    if let Value::Map(fields) = &node.value {
        let (mut target, mut published, mut protocol, mut mode) =
            (None, None, Protocol::Tcp, PublishMode::Ingress);
        for (field, value) in fields {
            let what = format!("{path}.{}", field.name);
            match field.name.as_str() {
                "target" => target = Some(port_number(value, &what)?),
                "published" => published = Some(port_number(value, &what)?),
                "protocol" => {
                    protocol = match scalar(value, &what)? {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        other => {
                            return Err(ComposeError::at(
                                value.line,
                                format!("`{what}: {other}`: use tcp or udp"),
                            ))
                        }
                    }
                }
                "mode" => {
                    mode = match scalar(value, &what)? {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(ComposeError::at(
                                value.line,
                                format!("`{what}: {other}`: use ingress or host"),
                            ))
                        }
                    }
                }
                _ => return Err(unsupported(field, &what)),
            }
        }
        let (Some(target), Some(published)) = (target, published) else {
            return Err(ComposeError::at(
                node.line,
                format!("`{path}` needs both `target` and `published` (Skein picks no port)"),
            ));
        };
        return Ok((
            PublishedPort {
                published,
                target,
                protocol,
            },
            mode,
        ));
    }
    let text = scalar(node, path)?;
    let ports = text.split('/').next().unwrap_or_default();
    let why = if !ports.contains(':') {
        " (give PUBLISHED:TARGET: Skein picks no published port)"
    } else if ports.matches(':').count() > 1 {
        " (a host address is not supported: ports open on every address)"
    } else if ports.contains('-') {
        " (port ranges are not supported)"
    } else {
        ""
    };
    match text.parse::<PublishedPort>() {
        Ok(port) if why.is_empty() => Ok((port, PublishMode::Ingress)),
        _ => Err(ComposeError::at(
            node.line,
            format!("`{path}` entry {text:?} is invalid{why}; use PUBLISHED:TARGET[/tcp|/udp]"),
        )),
    }
}

fn port_number(node: &Node, what: &str) -> Result<u16, ComposeError> {
    match number(node, what).map(u16::try_from) {
        Ok(Ok(port)) if port != 0 => Ok(port),
        _ => Err(ComposeError::at(
            node.line,
            format!("`{what}` must be a port number from 1 to 65535"),
        )),
    }
}

/// `networks:` of a service: a list of names, or a mapping of names to nothing; Skein
/// services join exactly one network.
fn network(node: &Node, path: &str) -> Result<Option<(String, usize)>, ComposeError> {
    let names: Vec<(String, usize)> = match &node.value {
        Value::Seq(items) => items
            .iter()
            .map(|item| Ok((scalar(item, path)?.to_owned(), item.line)))
            .collect::<Result<_, ComposeError>>()?,
        Value::Map(entries) => {
            let mut names = Vec::new();
            for (key, value) in entries {
                if let Value::Map(settings) = &value.value {
                    if let Some((field, _)) = settings.first() {
                        return Err(unsupported(
                            field,
                            &format!("{path}.{}.{}", key.name, field.name),
                        ));
                    }
                } else if value.value != Value::Null {
                    return Err(ComposeError::at(
                        value.line,
                        format!("`{path}.{}` takes no value here", key.name),
                    ));
                }
                names.push((key.name.clone(), key.line));
            }
            names
        }
        _ => {
            return Err(ComposeError::at(
                node.line,
                format!("`{path}` must be a list of network names"),
            ))
        }
    };
    match names.as_slice() {
        [] => Ok(None),
        [(name, line)] => Ok(Some((name.clone(), *line))),
        [_, (_, line), ..] => Err(ComposeError::at(
            *line,
            format!("`{path}` names more than one network; a Skein service joins one"),
        )),
    }
}

/// `healthcheck:`: `test` and `interval` (or `disable`), as the command and interval of
/// Skein's health check.
fn health(node: &Node, path: &str) -> Result<(Option<String>, Duration), ComposeError> {
    let mut cmd = None;
    let mut interval = HEALTH_INTERVAL;
    let mut disabled = false;
    for (field, value) in entries(node, path)? {
        let what = format!("{path}.{}", field.name);
        match field.name.as_str() {
            "test" => cmd = health_test(value, &what)?,
            "interval" => {
                interval = duration(value, &what)?;
                if interval.is_zero() {
                    return Err(ComposeError::at(
                        value.line,
                        format!("`{what}` must be more than zero"),
                    ));
                }
            }
            "disable" => disabled = boolean(value, &what)?,
            _ => return Err(unsupported(field, &what)),
        }
    }
    if disabled {
        cmd = None;
    }
    Ok((cmd, interval))
}

/// `test: "cmd"` or `["CMD-SHELL", "cmd"]` → `cmd`; `["CMD", a, b]` → `a b`, each word
/// quoted for `sh -c`; `["NONE"]` → no check.
fn health_test(node: &Node, what: &str) -> Result<Option<String>, ComposeError> {
    let words = strings(node, what)?;
    for word in &words {
        no_substitution(node, word, what)?;
    }
    let cmd = match (&node.value, words.as_slice()) {
        (Value::Scalar(_), [text]) => text.to_string(),
        (_, ["NONE"]) => return Ok(None),
        (_, ["CMD-SHELL", text]) => text.to_string(),
        (_, ["CMD", args @ ..]) if !args.is_empty() => args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect::<Vec<_>>()
            .join(" "),
        _ => {
            return Err(ComposeError::at(
                node.line,
                format!(
                    "`{what}` must be a command, [\"CMD\", ARG...], [\"CMD-SHELL\", \
                     COMMAND] or [\"NONE\"]"
                ),
            ))
        }
    };
    if cmd.trim().is_empty() {
        return Err(ComposeError::at(node.line, format!("`{what}` is empty")));
    }
    Ok(Some(unescape(&cmd)))
}

/// `deploy:`: replicas, mode, endpoint mode, resource limits, and the rollout controls
/// (`update_config`, `rollback_config`).
fn deploy(node: &Node, path: &str, spec: &mut ServiceSpec) -> Result<(), ComposeError> {
    let mut replicas = None;
    let mut global = None;
    for (field, value) in entries(node, path)? {
        let what = format!("{path}.{}", field.name);
        match field.name.as_str() {
            "replicas" => {
                let n = number(value, &what)?;
                if n > manager::state::service::MAX_REPLICAS {
                    return Err(ComposeError::at(
                        value.line,
                        format!(
                            "`{what}: {n}` is too many: at most {}",
                            manager::state::service::MAX_REPLICAS
                        ),
                    ));
                }
                replicas = Some((n, value.line));
            }
            "mode" => {
                global = Some(match scalar(value, &what)? {
                    "replicated" => false,
                    "global" => true,
                    other => {
                        return Err(ComposeError::at(
                            value.line,
                            format!("`{what}: {other}`: use replicated or global"),
                        ))
                    }
                })
            }
            "endpoint_mode" => {
                spec.endpoint_mode = match scalar(value, &what)? {
                    "vip" => EndpointMode::Vip,
                    "dnsrr" => EndpointMode::Dnsrr,
                    other => {
                        return Err(ComposeError::at(
                            value.line,
                            format!("`{what}: {other}`: use vip or dnsrr"),
                        ))
                    }
                }
            }
            "update_config" => spec.rollout.update = super::rollout::config(value, &what, false)?,
            "rollback_config" => {
                spec.rollout.rollback = super::rollout::config(value, &what, true)?
            }
            "resources" => spec.limits = resources(value, &what)?,
            _ => return Err(unsupported(field, &what)),
        }
    }
    spec.mode = match (global, replicas) {
        (Some(true), Some((_, line))) => {
            return Err(ComposeError::at(
                line,
                format!("`{path}.replicas` cannot be combined with `mode: global`"),
            ))
        }
        (Some(true), None) => Mode::Global,
        (_, replicas) => Mode::Replicated {
            replicas: replicas.map_or(1, |(n, _)| n),
        },
    };
    Ok(())
}

/// `deploy.resources:` — `limits` (`memory`, `cpus`, `pids`, in Swarm's units, as
/// `service create --limit-*`); `reservations` is refused as `--reserve-memory` is.
fn resources(node: &Node, path: &str) -> Result<Limits, ComposeError> {
    let mut limits = Limits::default();
    for (kind, value) in entries(node, path)? {
        let what = format!("{path}.{}", kind.name);
        match kind.name.as_str() {
            "limits" => {
                for (field, value) in entries(value, &what)? {
                    let what = format!("{what}.{}", field.name);
                    let text = scalar(value, &what)?;
                    let parsed = match field.name.as_str() {
                        "memory" => parse_memory(text).map(|b| limits.memory_bytes = Some(b)),
                        "cpus" => parse_cpus(text).map(|c| limits.cpu_millis = Some(c)),
                        "pids" => parse_pids(text).map(|p| limits.pids = Some(p)),
                        _ => return Err(unsupported(field, &what)),
                    };
                    parsed.map_err(|e| ComposeError::at(value.line, format!("`{what}`: {e}")))?;
                }
            }
            "reservations" => {
                return Err(ComposeError::at(
                    kind.line,
                    format!(
                        "`{what}` is not supported: Skein limits what a task may use but \
                         reserves nothing for it; remove it to deploy; nothing was deployed"
                    ),
                ))
            }
            _ => return Err(unsupported(kind, &what)),
        }
    }
    Ok(limits)
}
