//! The local API's dispatch: each [`Request`] to the handler of its object (node,
//! network, VTEP, endpoint, service), and the peer RPC's requests to theirs.

use std::{future::Future, pin::Pin, sync::Arc};

use anyhow::Result;
use manager::{secure::JoinToken, state::service::ReservedPort, Manager};
use tokio::sync::watch;

use super::{
    endpoint::Endpoints, mesh, network, node, rollout, rotate::Keys, service, stop::Stop, vtep,
};
use crate::{
    api::{Backend, Body, Request, Response},
    dns::Dns,
    peer::{self, PeerRequest, PeerResponse, Peers},
    reconcile::Reconciler,
    tasks::supervisor::Supervisor,
};

/// The local API, on top of the manager.
pub(super) struct AgentBackend {
    pub(super) manager: Manager,
    pub(super) token: JoinToken,
    /// `join-token --rotate`.
    pub(super) keys: Arc<Keys>,
    /// Raised by `agent leave`.
    pub(super) stop: watch::Sender<Stop>,
    pub(super) endpoints: Endpoints,
    pub(super) supervisor: Arc<Supervisor>,
    pub(super) peers: Arc<Peers>,
    /// `skein debug dns` asks it.
    pub(super) dns: Arc<Dns>,
    /// Ports this agent uses that no service may publish (its metrics port); the
    /// cluster's own are the manager's to check.
    pub(super) reserved_ports: Vec<ReservedPort>,
}

impl Backend for AgentBackend {
    fn handle(&self, request: Request) -> Pin<Box<dyn Future<Output = Response> + Send + '_>> {
        Box::pin(async move {
            match self.serve(request).await {
                Ok(body) => Response::Ok { body },
                Err(error) => Response::Error {
                    message: format!("{error:#}"),
                },
            }
        })
    }
}

impl AgentBackend {
    async fn serve(&self, request: Request) -> Result<Body> {
        let manager = &self.manager;
        let view = || manager.view();
        Ok(match request {
            Request::NodeLs => node::ls(&view()),
            Request::NodeRm { id } => node::rm(manager, &id).await?,
            Request::Leave => node::leave(manager, &self.stop).await?,
            Request::JoinToken { rotate: false } => Body::Token(self.token.to_string()),
            Request::JoinToken { rotate: true } => {
                Body::Token(self.keys.rotate(&view(), &self.peers).await?)
            }
            Request::NetworkCreate { name, subnet, vni } => {
                network::create(manager, &name, subnet, vni).await?
            }
            Request::NetworkLs => network::ls(&view()),
            Request::NetworkRm { name } => network::rm(manager, &name).await?,
            Request::EndpointCreate { network, name } => {
                Body::Endpoint(self.endpoints.add(network, name, None).await?)
            }
            Request::EndpointAttach {
                network,
                netns,
                name,
            } => Body::Endpoint(self.endpoints.add(network, name, Some(netns)).await?),
            Request::EndpointLs => super::endpoint::ls(&view()),
            Request::EndpointRm { id } => self.endpoints.rm(&id).await?,
            Request::VtepAdd {
                network,
                underlay,
                mac,
                cidr,
            } => vtep::add(manager, &network, underlay, mac, cidr).await?,
            Request::VtepRm { network, cidr } => vtep::rm(manager, &network, cidr).await?,
            Request::VtepLs { network } => vtep::ls(&view(), network.as_deref()),
            Request::DebugMaps => Body::Text(self.endpoints.reconciler.dump_maps()?),
            Request::ServiceCreate(spec) => {
                service::create(manager, spec, &self.reserved_ports).await?
            }
            Request::DebugConntrack => mesh::conntrack(&self.endpoints.reconciler)?,
            Request::DebugDns {
                name,
                record_type,
                netns,
            } => Body::Text(
                self.dns
                    .debug(&name, &record_type, netns.as_deref())
                    .await?,
            ),
            Request::ServiceLs => service::ls(&view()),
            Request::ServicePs { name } => service::ps(&view(), &name)?,
            Request::ServiceInspect { name } => {
                service::inspect(&view(), &self.endpoints.reconciler, &self.peers, &name).await?
            }
            Request::ServiceScale { name, replicas } => {
                service::scale(manager, &name, replicas).await?
            }
            Request::ServiceRm { name } => service::rm(manager, &name).await?,
            Request::ServiceLogs { name, from } => {
                service::logs(&view(), &self.supervisor, &self.peers, &name, &from).await?
            }
            Request::ServiceAttach { name, netns } => {
                service::attach(&self.endpoints, &name, netns).await?
            }
            Request::ServiceUpdate(request) => {
                rollout::update(manager, request, &self.reserved_ports).await?
            }
            Request::ServiceRollback { name } => rollout::rollback(manager, &name).await?,
            Request::ServiceRollout { name } => rollout::rollout(&view(), &name)?,
            Request::NodeUpdate { node, availability } => {
                rollout::node_update(manager, &node, availability).await?
            }
            Request::NodeInspect { node } => rollout::node_inspect(&view(), &node)?,
        })
    }
}

/// Answers other agents' peer requests from this node's task log files and mesh
/// conntrack.
pub(super) struct PeerHandler {
    pub(super) manager: Manager,
    pub(super) supervisor: Arc<Supervisor>,
    pub(super) reconciler: Arc<Reconciler>,
    /// Accepts the next key of a rotation.
    pub(super) keys: Arc<Keys>,
}

impl peer::Handler for PeerHandler {
    fn handle(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::Logs {
                service,
                created,
                from,
            } => PeerResponse::Logs(service::answer_peer_logs(
                &self.manager.view(),
                &self.supervisor,
                &service,
                created,
                &from,
            )),
            PeerRequest::MeshFlows { service, created } => {
                match mesh::flow_counts(&self.reconciler, &service, created) {
                    Ok(counts) => PeerResponse::MeshFlows(counts),
                    Err(message) => PeerResponse::Error(message),
                }
            }
            PeerRequest::NextKey { from, offer } => {
                self.keys.accept(&self.manager.view(), from, &offer)
            }
        }
    }
}
