//! Printing a rollout's status (`service inspect --pretty`, and what `service update`
//! answers first).

use super::output::{json_pretty, printable, Format};
use crate::api::RolloutStatus;

/// `UpdateStatus` and `UpdateConfig` blocks, as `docker service inspect --pretty` shows
/// them.
pub(crate) fn rollout(status: &RolloutStatus, format: Format) -> String {
    if format == Format::Json {
        return json_pretty(status);
    }
    let mut text = String::from("UpdateStatus:\n");
    text.push_str(&format!(" State: {}\n", printable(&status.state)));
    if !status.reason.is_empty() {
        text.push_str(&format!(" Message: {}\n", printable(&status.reason)));
    }
    text.push_str(&format!(
        " Progress: {} out of {} tasks updated\n",
        status.updated.min(status.wanted),
        status.wanted
    ));
    text.push_str(&format!(
        " Previous definition: {}\n",
        if status.has_previous { "kept" } else { "none" }
    ));
    text.push_str("UpdateConfig:\n");
    for (key, value) in &status.config {
        text.push_str(&format!(" {}: {}\n", printable(key), printable(value)));
    }
    if !status.rollback_config.is_empty() {
        text.push_str("RollbackConfig:\n");
    }
    for (key, value) in &status.rollback_config {
        text.push_str(&format!(" {}: {}\n", printable(key), printable(value)));
    }
    text
}
