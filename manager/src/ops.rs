//! The cluster operations behind the CLI: they validate against the current view, write
//! through the gossip engine, and — for creates that can collide with a concurrent create
//! elsewhere — wait for the cluster to settle and report whether this node's write won.
//!
//! Conflicts resolve the same way on every node: two creates of one name by
//! last-writer-wins on the name's record; different names claiming one subnet or VNI by
//! the earliest creation stamp ([`crate::state::valid_networks`]). The losing command
//! withdraws its record and reports the conflict.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use ipnet::Ipv4Net;

use crate::{
    driver::ManagerError,
    state::{
        self,
        endpoint::pick_free_ip,
        service::{pick_free_vip, Limits, ReservedPort},
        Endpoint, EndpointMode, HealthCheck, Kind, Mode, Network, NetworkSpecError, NodeInfo,
        PublishMode, PublishedPort, RecordKey, Scope, Service, ServiceSpecError, Stamp, Vtep,
        DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_PREFIX, DEFAULT_VNI_RANGE,
    },
    view::ClusterView,
    Manager, NodeId,
};

/// How many times an endpoint allocation retries after losing its address to a
/// concurrent claim.
const ALLOCATION_ATTEMPTS: usize = 5;

/// How long a create waits for concurrent conflicting writes from other nodes to arrive
/// before it declares success. Dissemination takes well under a second on a LAN
/// (`cargo xtask bench gossip`); creates racing across a partition are resolved, by the
/// same rules, when it heals.
pub const CONFLICT_SETTLE: Duration = Duration::from_millis(1500);

/// Why an operation was refused. Each message is one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Spec(#[from] NetworkSpecError),
    #[error("network {name:?} already exists")]
    NetworkExists { name: String },
    #[error("network {name:?} does not exist")]
    NoSuchNetwork { name: String },
    #[error("{reason}; choose another with --subnet or --vni")]
    Collision { reason: String },
    #[error("the default pool {pool} has no free /{prefix} subnet left; pass --subnet")]
    SubnetPoolExhausted { pool: Ipv4Net, prefix: u8 },
    #[error("no free VNI is left in the default range; pass --vni")]
    VniPoolExhausted,
    #[error("network {name:?} was created concurrently on another node, which won: {reason}")]
    LostConflict { name: String, reason: String },
    #[error("no node matches {query:?}")]
    NoSuchNode { query: String },
    #[error("{query:?} matches several nodes; give more of the ID")]
    AmbiguousNode { query: String },
    #[error("node {id} is ready; only a down node can be removed (stop its agent, or `skein agent leave` on it)")]
    NodeIsReady { id: String },
    #[error("node {id} is this node; run `skein node rm` on another node")]
    NodeIsSelf { id: String },
    #[error(
        "network {name:?} still has {count} endpoints; remove them first (`skein endpoint ls`)"
    )]
    NetworkInUse { name: String, count: usize },
    #[error("network {name:?} has no free address left for an endpoint")]
    NetworkFull { name: String },
    #[error("could not allocate an address on network {name:?}: {attempts} attempts lost to concurrent allocations")]
    AllocationContended { name: String, attempts: usize },
    #[error("an endpoint named {name:?} already exists on this node")]
    EndpointExists { name: String },
    #[error("no endpoint {query:?} on this node")]
    NoSuchEndpoint { query: String },
    #[error("a VTEP for {cidr} on network {network:?} already exists")]
    VtepExists {
        network: String,
        cidr: ipnet::Ipv4Net,
    },
    #[error("no VTEP for {cidr} on network {network:?}")]
    NoSuchVtep {
        network: String,
        cidr: ipnet::Ipv4Net,
    },
    #[error("{cidr} is not inside network {network:?}'s subnet {subnet}")]
    VtepOutsideSubnet {
        network: String,
        cidr: ipnet::Ipv4Net,
        subnet: ipnet::Ipv4Net,
    },
    #[error(transparent)]
    ServiceSpec(#[from] ServiceSpecError),
    #[error("service {name:?} already exists")]
    ServiceExists { name: String },
    #[error("service {name:?} does not exist")]
    NoSuchService { name: String },
    #[error("{reason}")]
    ServiceClaim { reason: String },
    #[error("service {name:?} was created concurrently on another node, which won: {reason}")]
    ServiceLostConflict { name: String, reason: String },
    #[error("service {name:?} is global (one task per node); it cannot be scaled")]
    GlobalNotScalable { name: String },
    #[error(
        "network {network:?} has no free VIP left; use --endpoint-mode dnsrr or another network"
    )]
    VipPoolExhausted { network: String },
    #[error("network {name:?} is used by services {services}; remove them first")]
    NetworkUsedByServices { name: String, services: String },
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitReached),
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// The network services join when created without `--network`; created on first use.
pub const DEFAULT_SERVICE_NETWORK: &str = "skein";

/// What `service create` asks for: a [`Service`] without the parts the cluster assigns
/// (VIP, creation stamp).
#[derive(Clone, Debug)]
pub struct ServiceRequest {
    pub name: String,
    pub mode: Mode,
    /// `None`: [`DEFAULT_SERVICE_NETWORK`].
    pub network: Option<String>,
    pub ports: Vec<PublishedPort>,
    pub publish_mode: PublishMode,
    pub endpoint_mode: EndpointMode,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub health: Option<HealthCheck>,
    pub restart_delay_ms: u64,
    pub limits: Limits,
    /// Ports the creating node's agent uses besides the cluster's own (its metrics port):
    /// peers do not know them, so only this create refuses them.
    pub local_reserved: Vec<ReservedPort>,
    /// `--cap-add`, `--cap-drop`, `--allow-new-privileges`.
    pub security: state::service::Security,
    /// The stack deploying it (`stack deploy`), or `None`.
    pub stack: Option<crate::state::service::StackMember>,
    /// `--update-*` and `--rollback-*` (compose `update_config`, `rollback_config`).
    pub rollout: crate::rollout::RolloutConfigs,
}

/// What `endpoint create`/`attach` asks for.
#[derive(Clone, Debug)]
pub struct EndpointRequest {
    pub id: String,
    pub name: String,
    pub network: String,
    pub netns: String,
    pub host_ifname: String,
    pub owns_netns: bool,
    /// Wait for concurrent claims of the address to settle before returning (`endpoint
    /// create`). Tasks do not wait: a task whose address turns out to be taken later is
    /// replaced by a new one, which is faster in the common case of no collision.
    pub settle: bool,
}

impl Manager {
    /// Writes a claim (a create that may collide with a concurrent one elsewhere) whose
    /// payload records its own stamp, then waits [`CONFLICT_SETTLE`] for competing claims to
    /// arrive; returns the claim's stamp and the settled view, in which the caller checks
    /// whether its claim won.
    async fn claim(
        &self,
        key: RecordKey,
        payload: impl FnOnce(Stamp) -> Vec<u8> + Send + 'static,
    ) -> Result<(Stamp, Arc<ClusterView>), ManagerError> {
        let stamp = self
            .write_with(
                key.scope,
                key.kind,
                key.name,
                Box::new(move |stamp| Some(payload(stamp))),
            )
            .await?;
        tokio::time::sleep(CONFLICT_SETTLE).await;
        Ok((stamp, self.view()))
    }

    /// Why a claim on `key` lost, given the settled view: `conflict` is the reason when our
    /// record is listed as conflicted (then it is withdrawn — only then is it still the
    /// current record of the name; a newer write is someone else's and stays), `current` the
    /// `created` stamp of whatever now holds the name.
    async fn lost_claim(
        &self,
        key: RecordKey,
        conflict: Option<&str>,
        current: Option<Stamp>,
    ) -> Result<String, ManagerError> {
        Ok(match (conflict, current) {
            (Some(reason), _) => {
                self.write(key.scope, key.kind, key.name, None).await?;
                reason.to_owned()
            }
            (None, Some(winner)) => format!("it was created by node {}", winner.writer.short()),
            (None, None) => "it was removed meanwhile".to_owned(),
        })
    }

    /// Publishes (or refreshes) this node's own record.
    pub async fn publish_self(&self, info: &NodeInfo) -> Result<Stamp, ManagerError> {
        let key = NodeInfo::key(self.node());
        self.write(key.scope, key.kind, key.name, Some(info.encode()))
            .await
    }

    /// `network create`: subnet and VNI from the default pools when not given.
    pub async fn create_network(
        &self,
        name: &str,
        subnet: Option<Ipv4Net>,
        vni: Option<u32>,
    ) -> Result<Network, OpError> {
        state::validate_network_name(name)?;
        let view = self.view();
        let networks = &view.networks;
        if networks.get(name).is_some() {
            return Err(OpError::NetworkExists {
                name: name.to_owned(),
            });
        }
        crate::limits::network(&view)?;
        let subnet = match subnet {
            Some(subnet) => subnet,
            None => networks
                .next_free_subnet(DEFAULT_SUBNET_POOL, DEFAULT_SUBNET_PREFIX)
                .ok_or(OpError::SubnetPoolExhausted {
                    pool: DEFAULT_SUBNET_POOL,
                    prefix: DEFAULT_SUBNET_PREFIX,
                })?,
        };
        let vni = match vni {
            Some(vni) => vni,
            None => networks
                .next_free_vni(DEFAULT_VNI_RANGE)
                .ok_or(OpError::VniPoolExhausted)?,
        };
        let candidate = Network {
            name: name.to_owned(),
            subnet,
            vni,
            created: Stamp {
                hlc: u64::MAX,
                writer: self.node(),
            },
        };
        candidate.validate()?;
        if let Some(reason) = networks.conflicts_with(&candidate) {
            return Err(OpError::Collision { reason });
        }

        let template = candidate.clone();
        let (stamp, view) = self
            .claim(Network::key(name), move |stamp| {
                Network {
                    created: stamp,
                    ..template
                }
                .encode()
            })
            .await?;
        if let Some(network) = view
            .networks
            .valid
            .iter()
            .find(|n| n.name == name && n.created == stamp)
        {
            return Ok(network.clone());
        }
        let reason = self
            .lost_claim(
                Network::key(name),
                view.networks
                    .conflicted
                    .iter()
                    .find(|(n, _)| n.name == name && n.created == stamp)
                    .map(|(_, reason)| reason.as_str()),
                view.networks.get(name).map(|n| n.created),
            )
            .await?;
        Err(OpError::LostConflict {
            name: name.to_owned(),
            reason,
        })
    }

    /// `network rm`: refused while endpoints (of any node, up or down) remain on it.
    pub async fn remove_network(&self, name: &str) -> Result<(), OpError> {
        let view = self.view();
        if view.networks.get(name).is_none() {
            return Err(OpError::NoSuchNetwork {
                name: name.to_owned(),
            });
        }
        let users: Vec<&str> = view
            .services
            .valid
            .iter()
            .chain(view.services.conflicted.iter().map(|(s, _)| s))
            .filter(|s| s.network == name)
            .map(|s| s.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(OpError::NetworkUsedByServices {
                name: name.to_owned(),
                services: users.join(", "),
            });
        }
        let count = view.endpoints.used_ips(name).len();
        if count > 0 {
            return Err(OpError::NetworkInUse {
                name: name.to_owned(),
                count,
            });
        }
        self.write(Scope::Cluster, Kind::Network, name.to_owned(), None)
            .await?;
        Ok(())
    }

    /// `node rm`: forgets a down node everywhere and frees what it held (its node-scoped
    /// entries are purged; if it comes back later with a new boot, it rejoins afresh).
    pub async fn remove_node(&self, query: &str) -> Result<NodeId, OpError> {
        let view = self.view();
        let query_lc = query.to_ascii_lowercase();
        let matches: Vec<_> = view
            .nodes
            .iter()
            .filter(|n| n.id.to_string().starts_with(&query_lc))
            .collect();
        let node = match matches.as_slice() {
            [] => {
                return Err(OpError::NoSuchNode {
                    query: query.to_owned(),
                })
            }
            [one] => *one,
            _ => {
                return Err(OpError::AmbiguousNode {
                    query: query.to_owned(),
                })
            }
        };
        if node.is_self {
            return Err(OpError::NodeIsSelf {
                id: node.id.short(),
            });
        }
        if node.up {
            return Err(OpError::NodeIsReady {
                id: node.id.short(),
            });
        }
        let key = RecordKey::node_removal(node.id);
        self.write(key.scope, key.kind, key.name, Some(Vec::new()))
            .await?;
        Ok(node.id)
    }
}

impl Manager {
    /// Allocates an address on `request.network` and records the endpoint as this node's.
    /// Waits for concurrent claims of the same address to settle and allocates again if an
    /// earlier claim wins; returns the endpoint holding its address.
    pub async fn create_endpoint(&self, request: EndpointRequest) -> Result<Endpoint, OpError> {
        let view = self.view();
        let network =
            view.network(&request.network)
                .cloned()
                .ok_or_else(|| OpError::NoSuchNetwork {
                    name: request.network.clone(),
                })?;
        if view
            .own_endpoints()
            .any(|e| e.name == request.name || e.id == request.id)
        {
            return Err(OpError::EndpointExists { name: request.name });
        }
        crate::limits::endpoint(&view)?;
        for _ in 0..ALLOCATION_ATTEMPTS {
            let used = self.view().endpoints.used_ips(&network.name);
            let ip = pick_free_ip(network.subnet, &used, rand::random::<u32>).ok_or_else(|| {
                OpError::NetworkFull {
                    name: network.name.clone(),
                }
            })?;
            let template = Endpoint {
                id: request.id.clone(),
                name: request.name.clone(),
                network: network.name.clone(),
                vni: network.vni,
                ip,
                netns: request.netns.clone(),
                host_ifname: request.host_ifname.clone(),
                created: Stamp {
                    hlc: 0,
                    writer: self.node(),
                },
                owns_netns: request.owns_netns,
            };
            if !request.settle {
                let key = Endpoint::key(self.node(), &request.id);
                let stamp = self
                    .write_with(
                        key.scope,
                        key.kind,
                        key.name,
                        Box::new({
                            let template = template.clone();
                            move |stamp| {
                                Some(
                                    Endpoint {
                                        created: stamp,
                                        ..template
                                    }
                                    .encode(),
                                )
                            }
                        }),
                    )
                    .await?;
                return Ok(Endpoint {
                    created: stamp,
                    ..template
                });
            }
            let (stamp, view) = self
                .claim(Endpoint::key(self.node(), &request.id), move |stamp| {
                    Endpoint {
                        created: stamp,
                        ..template
                    }
                    .encode()
                })
                .await?;
            if let Some((_, endpoint)) = view
                .endpoints
                .valid
                .iter()
                .find(|(n, e)| *n == self.node() && e.id == request.id && e.created == stamp)
            {
                return Ok(endpoint.clone());
            }
            // Lost the address to an earlier claim: try another one.
        }
        let key = Endpoint::key(self.node(), &request.id);
        self.write(key.scope, key.kind, key.name, None).await?;
        Err(OpError::AllocationContended {
            name: network.name,
            attempts: ALLOCATION_ATTEMPTS,
        })
    }

    /// Removes one of this node's endpoints (by ID or name) from the cluster's state.
    pub async fn remove_endpoint(&self, query: &str) -> Result<Endpoint, OpError> {
        let endpoint = self
            .view()
            .own_endpoints()
            .find(|e| e.id == query || e.name == query)
            .cloned()
            .ok_or_else(|| OpError::NoSuchEndpoint {
                query: query.to_owned(),
            })?;
        let key = Endpoint::key(self.node(), &endpoint.id);
        self.write(key.scope, key.kind, key.name, None).await?;
        Ok(endpoint)
    }

    /// `network vtep add`.
    pub async fn add_vtep(
        &self,
        network: &str,
        underlay: Ipv4Addr,
        mac: [u8; 6],
        cidr: Ipv4Net,
    ) -> Result<Vtep, OpError> {
        let view = self.view();
        let net = view
            .network(network)
            .ok_or_else(|| OpError::NoSuchNetwork {
                name: network.to_owned(),
            })?;
        let cidr = cidr.trunc();
        if !net.subnet.contains(&cidr) {
            return Err(OpError::VtepOutsideSubnet {
                network: network.to_owned(),
                cidr,
                subnet: net.subnet,
            });
        }
        if view
            .vteps
            .iter()
            .any(|v| v.network == network && v.cidr == cidr)
        {
            return Err(OpError::VtepExists {
                network: network.to_owned(),
                cidr,
            });
        }
        crate::limits::vtep(&view)?;
        let vtep = Vtep {
            network: network.to_owned(),
            underlay,
            mac,
            cidr,
        };
        let key = Vtep::key(network, cidr);
        self.write(key.scope, key.kind, key.name, Some(vtep.encode()))
            .await?;
        Ok(vtep)
    }

    /// `network vtep rm`.
    pub async fn remove_vtep(&self, network: &str, cidr: Ipv4Net) -> Result<(), OpError> {
        let cidr = cidr.trunc();
        if !self
            .view()
            .vteps
            .iter()
            .any(|v| v.network == network && v.cidr == cidr)
        {
            return Err(OpError::NoSuchVtep {
                network: network.to_owned(),
                cidr,
            });
        }
        let key = Vtep::key(network, cidr);
        self.write(key.scope, key.kind, key.name, None).await?;
        Ok(())
    }
}

/// The ports no service may publish, as this node knows them: the cluster's (VXLAN, every
/// known node's gossip port) and `local` (this agent's own).
pub(crate) fn reserved_ports(view: &ClusterView, local: &[ReservedPort]) -> Vec<ReservedPort> {
    let gossip = view.nodes.iter().flat_map(|n| {
        n.info
            .as_ref()
            .map(|i| i.addr.port())
            .into_iter()
            .chain(n.addr.map(|a| a.port()))
    });
    let mut reserved = state::service::cluster_reserved_ports(gossip);
    reserved.extend(local.iter().cloned());
    reserved
}

impl Manager {
    /// `service create`: validates, claims the name, its published ports and its VIP, and
    /// waits for concurrent claims to settle; the losing create withdraws and says why.
    pub async fn create_service(&self, request: ServiceRequest) -> Result<Service, OpError> {
        state::service::validate_service_name(&request.name)?;
        if self.view().services.get(&request.name).is_some() {
            return Err(OpError::ServiceExists { name: request.name });
        }
        crate::limits::service(&self.view())?;
        let network = match &request.network {
            Some(name) => self
                .view()
                .network(name)
                .cloned()
                .ok_or_else(|| OpError::NoSuchNetwork { name: name.clone() })?,
            None => self.default_service_network().await?,
        };
        let view = self.view();
        let vip = match request.endpoint_mode {
            EndpointMode::Dnsrr => None,
            EndpointMode::Vip => Some(
                pick_free_vip(
                    network.subnet,
                    &view.services.vips_on(&network.name),
                    rand::random::<u32>,
                )
                .ok_or_else(|| OpError::VipPoolExhausted {
                    network: network.name.clone(),
                })?,
            ),
        };
        let candidate = Service {
            name: request.name.clone(),
            mode: request.mode,
            network: network.name.clone(),
            ports: request.ports,
            publish_mode: request.publish_mode,
            endpoint_mode: request.endpoint_mode,
            vip,
            command: request.command,
            env: request.env,
            user: request.user,
            health: request.health,
            restart_delay_ms: request.restart_delay_ms,
            created: Stamp {
                hlc: u64::MAX,
                writer: self.node(),
            },
            security: request.security,
            limits: request.limits,
            stack: request.stack,
            update: request.rollout.into_update(),
        };
        candidate.validate()?;
        candidate.check_reserved(&reserved_ports(&view, &request.local_reserved))?;
        if let Some(reason) = view.services.conflicts_with(&candidate) {
            return Err(OpError::ServiceClaim { reason });
        }
        let name = request.name;
        let template = candidate;
        let (stamp, view) = self
            .claim(Service::key(&name), move |stamp| {
                Service {
                    created: stamp,
                    ..template
                }
                .encode()
            })
            .await?;
        if let Some(service) = view.services.get(&name).filter(|s| s.created == stamp) {
            return Ok(service.clone());
        }
        let reason = self
            .lost_claim(
                Service::key(&name),
                view.services
                    .conflicted
                    .iter()
                    .find(|(s, _)| s.name == name && s.created == stamp)
                    .map(|(_, reason)| reason.as_str()),
                view.services.get(&name).map(|s| s.created),
            )
            .await?;
        Err(OpError::ServiceLostConflict { name, reason })
    }

    /// The network of services created without `--network`, created on first use (by
    /// whichever node gets there first; a concurrent create of it elsewhere is just as good).
    async fn default_service_network(&self) -> Result<Network, OpError> {
        if let Some(network) = self.view().network(DEFAULT_SERVICE_NETWORK) {
            return Ok(network.clone());
        }
        match self
            .create_network(DEFAULT_SERVICE_NETWORK, None, None)
            .await
        {
            Ok(network) => Ok(network),
            Err(OpError::NetworkExists { .. } | OpError::LostConflict { .. }) => self
                .view()
                .network(DEFAULT_SERVICE_NETWORK)
                .cloned()
                .ok_or_else(|| OpError::NoSuchNetwork {
                    name: DEFAULT_SERVICE_NETWORK.to_owned(),
                }),
            Err(error) => Err(error),
        }
    }

    /// `service scale NAME=N`: rewrites the service with the new count, keeping its
    /// identity (`created`), so running tasks stay.
    pub async fn scale_service(&self, name: &str, replicas: u32) -> Result<Service, OpError> {
        let mut service =
            self.view()
                .services
                .get(name)
                .cloned()
                .ok_or_else(|| OpError::NoSuchService {
                    name: name.to_owned(),
                })?;
        if service.mode == Mode::Global {
            return Err(OpError::GlobalNotScalable {
                name: name.to_owned(),
            });
        }
        service.mode = Mode::Replicated { replicas };
        service.validate()?;
        self.write(
            Scope::Cluster,
            Kind::Service,
            name.to_owned(),
            Some(service.encode()),
        )
        .await?;
        Ok(service)
    }

    /// `service rm`: every node stops the service's tasks when the removal reaches it.
    pub async fn remove_service(&self, name: &str) -> Result<Service, OpError> {
        let view = self.view();
        let service = view
            .services
            .get(name)
            .or_else(|| {
                view.services
                    .conflicted
                    .iter()
                    .map(|(s, _)| s)
                    .find(|s| s.name == name)
            })
            .cloned()
            .ok_or_else(|| OpError::NoSuchService {
                name: name.to_owned(),
            })?;
        self.write(Scope::Cluster, Kind::Service, name.to_owned(), None)
            .await?;
        Ok(service)
    }
}
