//! `deploy.update_config` and `deploy.rollback_config`: the rollout controls a compose
//! file gives a service, as `service create --update-*` / `--rollback-*` would.

use manager::rollout::{FailureAction, UpdateConfig};

use super::{
    read::{duration, entries, number, scalar, unsupported},
    yaml::Node,
    ComposeError,
};

/// One of the two blocks at `path` (`rollback`: the rollback's, whose failure cannot roll
/// back again). Keys not given keep Swarm's defaults, as `docker stack deploy` does.
pub(super) fn config(
    node: &Node,
    path: &str,
    rollback: bool,
) -> Result<UpdateConfig, ComposeError> {
    let mut config = UpdateConfig::default();
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    for (field, value) in entries(node, path)? {
        let what = format!("{path}.{}", field.name);
        let word = || scalar(value, &what);
        let bad =
            |e: &dyn std::fmt::Display| ComposeError::at(value.line, format!("`{what}`: {e}"));
        match field.name.as_str() {
            "parallelism" => config.parallelism = number(value, &what)?,
            "delay" => config.delay_ms = millis(duration(value, &what)?),
            "monitor" => config.monitor_ms = millis(duration(value, &what)?),
            "order" => config.order = word()?.parse().map_err(|e| bad(&e))?,
            "failure_action" => {
                config.failure_action = word()?.parse().map_err(|e| bad(&e))?;
                if rollback && config.failure_action == FailureAction::Rollback {
                    return Err(bad(&"a rollback cannot roll back: use pause or continue"));
                }
            }
            // Skein acts on the first failed task: Swarm's ratio 0 (its default), and
            // nothing else.
            "max_failure_ratio" => {
                let text = word()?;
                if text.parse::<f64>().ok() != Some(0.0) {
                    return Err(bad(&format_args!(
                        "{text} is not supported: Skein applies `failure_action` on the \
                         first failed task (ratio 0); remove it or write 0; nothing was deployed"
                    )));
                }
            }
            _ => return Err(unsupported(field, &what)),
        }
    }
    Ok(config)
}
