//! Handlers of the endpoint requests: `endpoint create|attach|ls|rm` (and the endpoint of
//! `service attach`).

use std::sync::Arc;

use anyhow::{bail, Result};
use manager::{ops::EndpointRequest, view::ClusterView, Manager};

use crate::{
    api::{Body, EndpointRow},
    netlink,
    reconcile::{self, Reconciler},
};

/// What the endpoint handlers act through: the cluster, and the reconciler that plumbs
/// this node's endpoints.
pub(super) struct Endpoints {
    pub(super) manager: Manager,
    pub(super) reconciler: Arc<Reconciler>,
    /// Prefix of the namespaces this agent creates (`--resource-prefix`).
    pub(super) resource_prefix: String,
}

impl Endpoints {
    /// `endpoint create` (no `netns`: a fresh namespace) or `endpoint attach`.
    pub(super) async fn add(
        &self,
        network: String,
        name: Option<String>,
        netns: Option<String>,
    ) -> Result<EndpointRow> {
        let id = crate::random_id();
        let name = name.unwrap_or_else(|| id.clone());
        let (netns, owns_netns) = match netns {
            Some(netns) => {
                if !reconcile::netns_path(&netns).exists() {
                    bail!("network namespace {netns:?} does not exist (give a name under /run/netns or a path like /proc/PID/ns/net)");
                }
                (netns, false)
            }
            None => (format!("{}-{name}", self.resource_prefix), true),
        };
        let endpoint = self
            .reconciler
            .add_endpoint(EndpointRequest {
                id: id.clone(),
                name,
                network,
                netns,
                host_ifname: netlink::host_ifname(reconcile::IFNAME_HINT, &id),
                owns_netns,
                settle: true,
            })
            .await?;
        Ok(endpoint_rows(&self.manager.view())
            .into_iter()
            .find(|row| row.id == endpoint.id)
            .unwrap_or_else(|| endpoint_row(&endpoint, self.manager.node(), "ready")))
    }

    /// `endpoint rm ID|NAME`.
    pub(super) async fn rm(&self, id: &str) -> Result<Body> {
        let endpoint = self.manager.remove_endpoint(id).await?;
        self.reconciler.unplumb(&endpoint).await?;
        Ok(Body::Done(format!(
            "removed endpoint {} ({})",
            endpoint.name, endpoint.ip
        )))
    }
}

/// `endpoint ls`.
pub(super) fn ls(view: &ClusterView) -> Body {
    Body::Endpoints(endpoint_rows(view))
}

fn endpoint_row(
    endpoint: &manager::state::Endpoint,
    node: manager::NodeId,
    status: &str,
) -> EndpointRow {
    EndpointRow {
        id: endpoint.id.clone(),
        name: endpoint.name.clone(),
        network: endpoint.network.clone(),
        ip: endpoint.ip.to_string(),
        node: node.to_string(),
        netns: endpoint.netns.clone(),
        status: status.to_owned(),
    }
}

/// Every endpoint of the cluster, by network and address; those of down nodes `down`,
/// those that lost their address `collided`.
fn endpoint_rows(view: &ClusterView) -> Vec<EndpointRow> {
    let up = |node: &manager::NodeId| view.node(node).is_some_and(|n| n.up);
    let mut rows: Vec<EndpointRow> = view
        .endpoints
        .valid
        .iter()
        .map(|(node, e)| endpoint_row(e, *node, if up(node) { "ready" } else { "down" }))
        .chain(
            view.endpoints
                .collided
                .iter()
                .map(|(node, e, _)| endpoint_row(e, *node, "collided")),
        )
        .collect();
    rows.sort_by(|a, b| (&a.network, &a.ip).cmp(&(&b.network, &b.ip)));
    rows
}
