//! Handlers of the node requests: `node ls|rm`, `agent leave`.

use anyhow::Result;
use manager::{view::ClusterView, Manager};
use tokio::sync::watch;

use super::stop::Stop;
use crate::api::{Body, NodeRow};

/// `node ls`.
pub(super) fn ls(view: &ClusterView) -> Body {
    Body::Nodes(view.nodes.iter().map(node_row).collect())
}

/// `node rm ID`: forget a down node.
pub(super) async fn rm(manager: &Manager, id: &str) -> Result<Body> {
    let removed = manager.remove_node(id).await?;
    Ok(Body::Done(format!("removed node {}", removed.short())))
}

/// `agent leave`: tells the cluster, then stops the agent, which takes its dataplane down.
pub(super) async fn leave(manager: &Manager, stop: &watch::Sender<Stop>) -> Result<Body> {
    manager.leave().await?;
    let _ = stop.send(Stop::Leave);
    Ok(Body::Done(
        "left the cluster; the agent removes its dataplane and exits".to_owned(),
    ))
}

fn node_row(n: &manager::view::NodeStatus) -> NodeRow {
    NodeRow {
        id: n.id.to_string(),
        hostname: n
            .info
            .as_ref()
            .map(|i| i.hostname.clone())
            .unwrap_or_default(),
        address: n.addr.map(|a| a.to_string()).unwrap_or_default(),
        status: if n.up { "ready" } else { "down" }.to_owned(),
        is_self: n.is_self,
        started_at_ms: n.info.as_ref().map(|i| i.started_at_ms).unwrap_or(0),
        availability: n.availability.to_string(),
    }
}
