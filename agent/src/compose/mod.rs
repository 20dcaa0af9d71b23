//! Compose files for `skein stack deploy`: the subset of the compose format (version 3)
//! that Swarm stacks use, read into the services and networks of one stack.
//!
//! Everything is checked before anything is created: a key Skein does not support
//! (`image`, `volumes`, …) is one error naming the key's path and line, never silently
//! dropped; `depends_on` is ignored with a warning, as `docker stack deploy` does. Names
//! follow Docker: the stack `shop`'s service `redis` is the service `shop_redis`, its
//! network `backend` the network `shop_backend`; a service that names no network joins
//! `shop_default`.
//!
//! Layout:
//! - `yaml`: the document as a tree with line numbers (limits: size, depth, aliases,
//!   duplicate keys);
//! - `read`: walking mappings with "unsupported key" errors, and scalar readers;
//! - `service`: one service's keys into a [`crate::api::ServiceSpec`];
//! - `tests`.

mod read;
mod rollout;
mod service;
#[cfg(test)]
mod tests;
mod yaml;

use manager::state::service::{stack::validate_stack_name, StackMember};

use self::{
    read::{entries, scalar, unsupported},
    yaml::{Node, Value},
};
use crate::api::ServiceSpec;

/// The largest compose file read: far above any real stack's, far below what could hurt.
pub(crate) const MAX_FILE_BYTES: usize = 256 * 1024;

/// A compose file that cannot be deployed: one sentence, with the line it is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub(crate) struct ComposeError {
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl ComposeError {
    pub(crate) fn at(line: usize, message: impl Into<String>) -> ComposeError {
        ComposeError {
            line: Some(line),
            message: message.into(),
        }
    }

    /// The parser's own message, which carries its position.
    fn syntax(message: String) -> ComposeError {
        ComposeError {
            line: None,
            message: format!("not valid YAML: {message}"),
        }
    }
}

/// What deploying a compose file as a stack asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StackPlan {
    /// Networks the stack's services use, full names (`STACK_name`), sorted; each created
    /// unless it exists (external ones are not listed: they must exist).
    pub(crate) networks: Vec<String>,
    /// The services, named `STACK_name`, in the file's order.
    pub(crate) services: Vec<ServiceSpec>,
    /// Keys read but ignored (`depends_on`), one sentence each.
    pub(crate) warnings: Vec<String>,
}

/// A network of the file's top-level `networks`.
struct NetworkDecl {
    /// The cluster's name for it: `STACK_key`, or the key itself when `external`.
    full_name: String,
    external: bool,
}

/// Reads `text` as the compose file of stack `stack`.
pub(crate) fn plan(text: &str, stack: &str) -> Result<StackPlan, ComposeError> {
    validate_stack_name(stack).map_err(|e| ComposeError {
        line: None,
        message: e.to_string(),
    })?;
    if text.len() > MAX_FILE_BYTES {
        return Err(ComposeError {
            line: None,
            message: format!(
                "the file is {} bytes; a compose file may have at most {MAX_FILE_BYTES}",
                text.len()
            ),
        });
    }
    let root = yaml::parse(text)?;
    if root.value == Value::Null {
        return Err(ComposeError::at(root.line, "the file is empty"));
    }
    let mut services = None;
    let mut networks = Vec::new();
    for (key, value) in entries(&root, "the file")? {
        match key.name.as_str() {
            "version" => {
                let version = scalar(value, "version")?;
                if !(version == "3" || version.starts_with("3.")) {
                    return Err(ComposeError::at(
                        value.line,
                        format!("version {version:?} is not supported: use a version 3 file"),
                    ));
                }
            }
            "services" => services = Some(value),
            "networks" => networks = network_decls(value, stack)?,
            // Extension fields hold anchors for `<<` merges; compose ignores them.
            name if name.starts_with("x-") => {}
            _ => return Err(unsupported(key, &key.name)),
        }
    }
    let services = services.ok_or_else(|| ComposeError::at(root.line, "no `services:` key"))?;
    let mut plan = StackPlan {
        networks: Vec::new(),
        services: Vec::new(),
        warnings: Vec::new(),
    };
    let defined = entries(services, "services")?;
    if defined.is_empty() {
        return Err(ComposeError::at(
            services.line,
            "`services:` lists no service",
        ));
    }
    for (key, value) in defined {
        let member = StackMember {
            stack: stack.to_owned(),
            short_name: key.name.clone(),
        };
        if let Err(error) = member.validate(&member.service_name()) {
            return Err(ComposeError::at(key.line, error.to_string()));
        }
        let (mut spec, network_line) = service::read(key, value, member, &mut plan.warnings)?;
        let network = spec.network.take().unwrap_or_else(|| "default".to_owned());
        let full_name = match networks.iter().find(|(name, _)| *name == network) {
            Some((_, decl)) => decl.full_name.clone(),
            None if network == "default" => format!("{stack}_default"),
            None => {
                return Err(ComposeError::at(
                    network_line,
                    format!(
                        "service {:?} uses network {network:?}, which the top-level \
                         `networks:` does not define",
                        key.name
                    ),
                ))
            }
        };
        let external = networks
            .iter()
            .any(|(name, decl)| *name == network && decl.external);
        if !external && !plan.networks.contains(&full_name) {
            plan.networks.push(full_name.clone());
        }
        spec.network = Some(full_name);
        let size = spec_size(&spec);
        if size > manager::state::record::MAX_VALUE_BYTES {
            return Err(ComposeError::at(
                key.line,
                format!(
                    "service {:?} is {size} bytes, more than a record holds; shorten its \
                     command, environment or health check",
                    key.name
                ),
            ));
        }
        plan.services.push(spec);
    }
    plan.networks.sort();
    Ok(plan)
}

/// A rough size of the stored service, so an oversized one is refused before anything
/// is created (the agent checks the exact size again).
fn spec_size(spec: &ServiceSpec) -> usize {
    postcard::to_allocvec(spec).map(|b| b.len()).unwrap_or(0)
}

/// The top-level `networks:`: `driver: overlay` (or none) and `external` accepted.
fn network_decls(node: &Node, stack: &str) -> Result<Vec<(String, NetworkDecl)>, ComposeError> {
    let mut decls = Vec::new();
    for (key, value) in entries(node, "networks")? {
        let path = format!("networks.{}", key.name);
        let mut external = false;
        if value.value != Value::Null {
            for (field, setting) in entries(value, &path)? {
                match field.name.as_str() {
                    "driver" => {
                        let driver = scalar(setting, "driver")?;
                        if driver != "overlay" {
                            return Err(ComposeError::at(
                                setting.line,
                                format!(
                                    "network driver {driver:?} is not supported: Skein's \
                                     networks are overlays (`driver: overlay`)"
                                ),
                            ));
                        }
                    }
                    // Every Skein network is attachable.
                    "attachable" => {
                        read::boolean(setting, "attachable")?;
                    }
                    "external" => external = read::boolean(setting, "external")?,
                    _ => return Err(unsupported(field, &format!("{path}.{}", field.name))),
                }
            }
        }
        let full_name = if external {
            key.name.clone()
        } else {
            format!("{stack}_{}", key.name)
        };
        manager::state::validate_network_name(&full_name)
            .map_err(|e| ComposeError::at(key.line, e.to_string()))?;
        decls.push((
            key.name.clone(),
            NetworkDecl {
                full_name,
                external,
            },
        ));
    }
    Ok(decls)
}
