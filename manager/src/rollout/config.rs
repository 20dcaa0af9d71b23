//! `--update-*`: how a rollout replaces tasks, with Swarm's defaults.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// `--update-order`: whether a slot's old task stops before its new one starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateOrder {
    /// The old task drains (out of the load balancers) and its replacement starts meanwhile.
    #[default]
    StopFirst,
    /// The new task starts beside the old one, which drains once the new one runs.
    StartFirst,
}

/// `--update-failure-action`: what a new task failing does to the rollout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureAction {
    /// Stop replacing tasks until the next update or rollback.
    #[default]
    Pause,
    /// Go back to the previous definition.
    Rollback,
    /// Go on replacing the others.
    Continue,
}

/// The rollout controls kept in the service record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Units replaced at once; 0: all.
    pub parallelism: u32,
    /// Wait between batches.
    pub delay_ms: u64,
    pub order: UpdateOrder,
    pub failure_action: FailureAction,
    /// How long a new task must run before it counts as updated (failures meanwhile count).
    pub monitor_ms: u64,
}

impl Default for UpdateConfig {
    /// Swarm's: one at a time, no delay, stop-first, pause, 5 s monitor.
    fn default() -> UpdateConfig {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
        }
    }
}

/// The two sets of controls a service is created with: `--update-*` and `--rollback-*`
/// (compose `deploy.update_config` and `deploy.rollback_config`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutConfigs {
    pub update: UpdateConfig,
    /// Swarm's rollback defaults are its update defaults.
    pub rollback: UpdateConfig,
}

impl RolloutConfigs {
    /// A new service's rollout part: no rollout yet, these controls for the first.
    pub fn into_update(self) -> super::ServiceUpdate {
        super::ServiceUpdate {
            config: self.update,
            rollback: self.rollback,
            ..Default::default()
        }
    }
}

/// A value of an `--update-*` flag that is not one of the allowed words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is invalid: use {allowed}")]
pub struct BadWord {
    text: String,
    allowed: &'static str,
}

impl BadWord {
    pub(crate) fn new(text: &str, allowed: &'static str) -> BadWord {
        BadWord {
            text: text.to_owned(),
            allowed,
        }
    }
}

impl FromStr for UpdateOrder {
    type Err = BadWord;

    fn from_str(text: &str) -> Result<UpdateOrder, BadWord> {
        match text {
            "stop-first" => Ok(UpdateOrder::StopFirst),
            "start-first" => Ok(UpdateOrder::StartFirst),
            _ => Err(BadWord {
                text: text.to_owned(),
                allowed: "stop-first or start-first",
            }),
        }
    }
}

impl fmt::Display for UpdateOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        })
    }
}

impl FromStr for FailureAction {
    type Err = BadWord;

    fn from_str(text: &str) -> Result<FailureAction, BadWord> {
        match text {
            "pause" => Ok(FailureAction::Pause),
            "rollback" => Ok(FailureAction::Rollback),
            "continue" => Ok(FailureAction::Continue),
            _ => Err(BadWord {
                text: text.to_owned(),
                allowed: "pause, rollback or continue",
            }),
        }
    }
}

impl fmt::Display for FailureAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureAction::Pause => "pause",
            FailureAction::Rollback => "rollback",
            FailureAction::Continue => "continue",
        })
    }
}
