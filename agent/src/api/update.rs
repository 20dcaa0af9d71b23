//! The rollout requests: `service update`, `service rollback`, the rollout's status, and
//! `node update` / `node inspect`. Kept apart from `proto` so that file only names them.

use std::time::Duration;

use manager::{
    rollout::{FailureAction, UpdateConfig, UpdateOrder},
    state::PublishedPort,
};
use serde::{Deserialize, Serialize};

use super::ServiceSpec;

/// `service update NAME …` and `stack deploy`'s re-deploy of a changed service: the new
/// definition (whole, or as edits of the current one) and the rollout controls. The agent
/// writes the service record with the new definition and the update state; every node
/// then replaces the outdated tasks as the rollout allows (see `manager::rollout`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceUpdateRequest {
    pub(crate) name: String,
    pub(crate) change: ServiceChange,
    /// Rollout controls given; unset ones keep the service's current values (Swarm's
    /// defaults on its first update).
    pub(crate) config: UpdateConfigPatch,
    /// `--rollback-*` given; unset ones keep the service's current values. (A `Replace`
    /// takes both from its spec, with `config` over it.)
    #[serde(default)]
    pub(crate) rollback: UpdateConfigPatch,
}

/// What a [`ServiceUpdateRequest`] changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServiceChange {
    /// The whole new definition, as `service create` takes it (`stack deploy`). Its name
    /// must be the service's; its network must stay (a network change needs `rm` and
    /// `create`). Fields not in it are those of a fresh create.
    Replace(ServiceSpec),
    /// Edits of the current definition (`service update`'s flags); unset ones keep it.
    Edit(ServiceEdit),
}

/// `service update`'s definition flags. `None` / empty: unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServiceEdit {
    /// `--replicas N` (replicated services only).
    pub(crate) replicas: Option<u32>,
    /// `--env-add KEY=VALUE`: set or replace.
    pub(crate) env_add: Vec<(String, String)>,
    /// `--env-rm KEY`.
    pub(crate) env_rm: Vec<String>,
    /// `--publish-add PUBLISHED:TARGET[/PROTO]`.
    pub(crate) publish_add: Vec<PublishedPort>,
    /// `--publish-rm PUBLISHED[/PROTO]`: (port, protocol; `None`: both).
    pub(crate) publish_rm: Vec<String>,
    /// `--user USER`; `Some("")` (`--user ''`): back to root.
    pub(crate) user: Option<String>,
    /// `--health-cmd CMD`; `Some("")`: no health check (`--no-healthcheck`).
    pub(crate) health_cmd: Option<String>,
    pub(crate) health_interval: Option<Duration>,
    pub(crate) restart_delay: Option<Duration>,
    /// The new command (`-- CMD ARGS…`); empty: unchanged.
    pub(crate) command: Vec<String>,
    /// `--limit-memory|--limit-cpu|--limit-pids`: each given one replaces the current.
    #[serde(default)]
    pub(crate) limits: manager::state::service::Limits,
}

/// `--update-*`: `None` keeps the service's current value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UpdateConfigPatch {
    pub(crate) parallelism: Option<u32>,
    pub(crate) delay: Option<Duration>,
    pub(crate) order: Option<UpdateOrder>,
    pub(crate) failure_action: Option<FailureAction>,
    pub(crate) monitor: Option<Duration>,
}

impl UpdateConfigPatch {
    /// `current` with the values given here.
    pub(crate) fn apply(&self, current: &UpdateConfig) -> UpdateConfig {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UpdateConfig {
            parallelism: self.parallelism.unwrap_or(current.parallelism),
            delay_ms: self.delay.map_or(current.delay_ms, millis),
            order: self.order.unwrap_or(current.order),
            failure_action: self.failure_action.unwrap_or(current.failure_action),
            monitor_ms: self.monitor.map_or(current.monitor_ms, millis),
        }
    }
}

/// A service's rollout as `service update`/`rollback` follow it and `service inspect
/// --pretty` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RolloutStatus {
    pub(crate) service: String,
    /// `completed`, `updating`, `paused`, `rolling back`, `rolled back`.
    pub(crate) state: String,
    /// Why it paused or rolled back; empty otherwise.
    pub(crate) reason: String,
    pub(crate) started_ms: u64,
    /// Units (slots) running the current definition for the monitor period.
    pub(crate) updated: usize,
    /// Units the service wants.
    pub(crate) wanted: usize,
    /// `parallelism`, `delay`, `order`, `failure_action`, `monitor`, as text.
    pub(crate) config: Vec<(String, String)>,
    /// The same for a rollback (`--rollback-*`).
    #[serde(default)]
    pub(crate) rollback_config: Vec<(String, String)>,
    /// Whether a previous definition is kept (`service rollback` can go back).
    pub(crate) has_previous: bool,
}

/// `node update --availability`: whether a node takes tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}
