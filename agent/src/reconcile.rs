//! Converges the kernel to the cluster's state: endpoint plumbing (namespaces, veths,
//! attached programs) for this node's endpoints, and the overlay maps for every live
//! endpoint, network and external VTEP of the cluster.
//!
//! Idempotent: a sync computes the desired state from a snapshot and changes only what
//! differs, so running it twice changes nothing and running it after a restart adopts
//! what an earlier run made. It runs on every new snapshot and every 30 s (to repair
//! anything changed behind its back).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use dataplane_ebpf::overlay::{
    endpoint_mac, EndpointKey, EndpointValue, NetworkValue, SubnetKey, VtepKey, VtepValue,
};
use manager::{
    ops::EndpointRequest,
    state::{endpoint::gateway, Endpoint},
    view::ClusterView,
    Manager,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::{
    dataplane::{Dataplane, OverlayMaps},
    netlink::{self, EndpointLink},
};

/// The hint of host-side veth names (`sk` + hash of the endpoint ID).
pub const IFNAME_HINT: &str = "sk";
/// Used until the cluster's MTU is known (every node publishes its underlay MTU).
const FALLBACK_MTU: u32 = 1450;
const RESYNC: Duration = Duration::from_secs(30);

/// The overlay maps' desired content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredMaps {
    pub endpoints: BTreeMap<(u32, [u8; 4]), EndpointValue>,
    pub ports: BTreeMap<u32, (u32, [u8; 4])>,
    pub networks: BTreeMap<u32, NetworkValue>,
    pub subnets: BTreeMap<(u32, [u8; 4]), u32>,
    pub vteps: BTreeMap<(u32, u32, [u8; 4]), VtepValue>,
}

/// The desired maps for `view`. `local_ifindex` gives the host-side veth index of this
/// node's endpoints (None: not plumbed yet, so not served yet).
pub fn desired_maps(
    view: &ClusterView,
    local_ifindex: impl Fn(&Endpoint) -> Option<u32>,
) -> DesiredMaps {
    let mut desired = DesiredMaps::default();
    for network in &view.networks.valid {
        desired.networks.insert(
            network.vni,
            NetworkValue {
                subnet: network.subnet.network().octets(),
                prefix_len: u32::from(network.subnet.prefix_len()),
                gateway: gateway(network.subnet).octets(),
            },
        );
        desired.subnets.insert(
            (
                u32::from(network.subnet.prefix_len()),
                network.subnet.network().octets(),
            ),
            network.vni,
        );
    }
    for (node, endpoint) in view.live_endpoints() {
        let Some(host) = view.node(node).and_then(|n| n.info.as_ref()) else {
            continue;
        };
        let ifindex = if *node == view.self_id {
            match local_ifindex(endpoint) {
                Some(ifindex) => ifindex,
                None => continue,
            }
        } else {
            0
        };
        desired.endpoints.insert(
            (endpoint.vni, endpoint.ip.octets()),
            EndpointValue {
                host_ip: host.underlay_ip.octets(),
                ifindex,
            },
        );
        if ifindex != 0 {
            desired
                .ports
                .insert(ifindex, (endpoint.vni, endpoint.ip.octets()));
        }
    }
    for vtep in &view.vteps {
        let Some(network) = view.network(&vtep.network) else {
            continue;
        };
        desired.vteps.insert(
            (
                32 + u32::from(vtep.cidr.prefix_len()),
                network.vni,
                vtep.cidr.network().octets(),
            ),
            VtepValue {
                underlay_ip: vtep.underlay.octets(),
                mac: vtep.mac,
                _pad: [0; 2],
            },
        );
    }
    desired
}

/// Keeps the kernel in step with the cluster.
pub struct Reconciler {
    manager: Manager,
    /// Host-side veths attached by `--endpoint-iface`: the operator's, never removed.
    static_ifaces: Vec<String>,
    dataplane: Arc<std::sync::Mutex<Dataplane>>,
    maps: std::sync::Mutex<OverlayMaps>,
    /// Serializes syncs with the API's endpoint plumbing.
    busy: Mutex<()>,
    /// Until then, syncs add and update but remove nothing: right after a restart this
    /// node does not know yet which peers are alive, and tearing down their endpoints'
    /// entries (or local plumbing) would drop the traffic the adopted dataplane carries.
    removals_from: std::time::Instant,
    /// The overlay subnets the egress NAT rule was last written for.
    egress: std::sync::Mutex<Option<Vec<ipnet::Ipv4Net>>>,
}

/// How long after start the reconciler only adds: membership converges in a second or two.
const WARMUP: Duration = Duration::from_secs(10);

impl Reconciler {
    pub fn new(
        manager: Manager,
        dataplane: Arc<std::sync::Mutex<Dataplane>>,
        maps: OverlayMaps,
        static_ifaces: Vec<String>,
    ) -> Reconciler {
        Reconciler {
            manager,
            static_ifaces,
            dataplane,
            maps: std::sync::Mutex::new(maps),
            busy: Mutex::new(()),
            removals_from: std::time::Instant::now() + WARMUP,
            egress: std::sync::Mutex::new(None),
        }
    }

    /// Syncs on every snapshot and every 30 s, until the manager stops.
    pub async fn run(self: Arc<Self>) {
        let mut views = self.manager.subscribe();
        loop {
            let view = views.borrow_and_update().clone();
            if let Err(error) = self.sync(&view).await {
                warn!(error = %format!("{error:#}"), "reconcile failed; retrying on the next change");
            }
            // Resync periodically, and once right after the warm-up so removals held back
            // during it happen at once.
            let now = std::time::Instant::now();
            let next = if now < self.removals_from {
                self.removals_from - now
            } else {
                RESYNC
            };
            tokio::select! {
                changed = views.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// One pass: plumb this node's endpoints, remove what no entry wants, fill the maps.
    pub async fn sync(&self, view: &ClusterView) -> Result<()> {
        let _busy = self.busy.lock().await;
        let mtu = view.overlay_mtu.unwrap_or(FALLBACK_MTU);
        let mut local: BTreeMap<String, u32> = BTreeMap::new();
        let wanted: Vec<Endpoint> = view
            .own_endpoints()
            .filter(|e| view.network(&e.network).is_some_and(|n| n.vni == e.vni))
            .filter(|e| !view.endpoints.collided.iter().any(|(_, c, _)| c.id == e.id))
            .cloned()
            .collect();
        for endpoint in &wanted {
            match self.plumb_unlocked(view, endpoint, mtu).await {
                Ok(ifindex) => {
                    local.insert(endpoint.id.clone(), ifindex);
                }
                Err(error) => {
                    warn!(endpoint = %endpoint.name, error = %format!("{error:#}"), "could not plumb an endpoint")
                }
            }
        }
        let removals = std::time::Instant::now() >= self.removals_from;
        if removals {
            self.remove_unwanted(&wanted).await?;
        }
        self.sync_egress(view);
        let desired = desired_maps(view, |e| local.get(&e.id).copied());
        let changes = self.apply_maps(&desired, removals)?;
        if changes > 0 {
            debug!(changes, "overlay maps updated");
        }
        Ok(())
    }

    /// Records an endpoint of this node ([`Manager::create_endpoint`]) and plumbs it at once
    /// (`endpoint create|attach`, tasks); if the plumbing fails, the record and whatever was
    /// made go again, so nothing is left half-made.
    pub async fn add_endpoint(&self, request: EndpointRequest) -> Result<Endpoint> {
        let endpoint = self.manager.create_endpoint(request).await?;
        let view = self.manager.view();
        let mtu = view.overlay_mtu.unwrap_or(FALLBACK_MTU);
        if let Err(error) = self.plumb(&view, &endpoint, mtu).await {
            let _ = self.manager.remove_endpoint(&endpoint.id).await;
            let _ = self.unplumb(&endpoint).await;
            return Err(error.context("plumbing the endpoint"));
        }
        Ok(endpoint)
    }

    /// Creates (or checks) one local endpoint's namespace, veth and attached program;
    /// returns the host-side ifindex. Serialized with syncs, which plumb the same endpoints
    /// as soon as their records appear.
    async fn plumb(&self, view: &ClusterView, endpoint: &Endpoint, mtu: u32) -> Result<u32> {
        let _busy = self.busy.lock().await;
        self.plumb_unlocked(view, endpoint, mtu).await
    }

    async fn plumb_unlocked(
        &self,
        view: &ClusterView,
        endpoint: &Endpoint,
        mtu: u32,
    ) -> Result<u32> {
        let network = view
            .network(&endpoint.network)
            .context("the endpoint's network is gone")?;
        let netns = if endpoint.owns_netns {
            netlink::create_netns(&endpoint.netns).await?
        } else {
            netns_path(&endpoint.netns)
        };
        let state = netlink::ensure_endpoint_link(&EndpointLink {
            host_ifname: endpoint.host_ifname.clone(),
            netns,
            ep_ifname: "eth0".to_owned(),
            mac: endpoint_mac(endpoint.ip.octets()),
            mtu,
            ip: endpoint.ip,
            prefix_len: network.subnet.prefix_len(),
            gateway: gateway(network.subnet),
        })
        .await?;
        if !state.changes.is_empty() {
            info!(endpoint = %endpoint.name, ip = %endpoint.ip, changes = ?state.changes, "endpoint plumbed");
        }
        self.dataplane
            .lock()
            .expect("dataplane lock")
            .attach_endpoint(&endpoint.host_ifname)
            .with_context(|| {
                format!("attaching the endpoint program to {}", endpoint.host_ifname)
            })?;
        Ok(state.host_ifindex)
    }

    /// Removes veths (and namespaces the agent created) of endpoints no entry wants.
    async fn remove_unwanted(&self, wanted: &[Endpoint]) -> Result<()> {
        let keep: BTreeSet<&str> = wanted
            .iter()
            .map(|e| e.host_ifname.as_str())
            .chain(self.static_ifaces.iter().map(String::as_str))
            .collect();
        let attached = self
            .dataplane
            .lock()
            .expect("dataplane lock")
            .attached_endpoints();
        for ifname in attached.iter().filter(|i| !keep.contains(i.as_str())) {
            // Only links this agent attached a program to are its to remove.
            info!(iface = %ifname, "removing an endpoint no entry wants");
            self.dataplane
                .lock()
                .expect("dataplane lock")
                .detach_endpoint(ifname)?;
            netlink::remove_endpoint_link(ifname).await?;
        }
        Ok(())
    }

    /// Takes down a removed endpoint's plumbing at once (the next sync would too).
    /// Every step is tried even if an earlier one fails (half-made plumbing is removed
    /// too); the first error is returned.
    pub async fn unplumb(&self, endpoint: &Endpoint) -> Result<()> {
        let _busy = self.busy.lock().await;
        let detached = self
            .dataplane
            .lock()
            .expect("dataplane lock")
            .detach_endpoint(&endpoint.host_ifname);
        let link = netlink::remove_endpoint_link(&endpoint.host_ifname).await;
        let netns = if endpoint.owns_netns {
            netlink::delete_netns(&endpoint.netns).await
        } else {
            Ok(())
        };
        detached?;
        link?;
        netns?;
        Ok(())
    }

    /// Keeps the egress NAT rule in step with the overlay subnets (only when they change).
    fn sync_egress(&self, view: &ClusterView) {
        let mut subnets: Vec<ipnet::Ipv4Net> =
            view.networks.valid.iter().map(|n| n.subnet).collect();
        subnets.sort();
        let mut applied = self.egress.lock().expect("egress lock");
        if applied.as_ref() == Some(&subnets) {
            return;
        }
        match crate::egress::apply(&subnets) {
            Ok(()) => {
                debug!(subnets = subnets.len(), "egress NAT updated");
                *applied = Some(subnets);
            }
            Err(error) => warn!(error = %format!("{error:#}"), "endpoints have no egress"),
        }
    }

    /// `skein debug maps`.
    pub fn dump_maps(&self) -> Result<String> {
        Ok(self.maps.lock().expect("maps lock").dump())
    }

    /// Writes the difference between the maps and `desired`; returns how many entries
    /// changed.
    fn apply_maps(&self, desired: &DesiredMaps, removals: bool) -> Result<usize> {
        let mut maps = self.maps.lock().expect("maps lock");
        let mut changes = 0;

        let current: BTreeMap<(u32, [u8; 4]), EndpointValue> = maps
            .endpoints()?
            .into_iter()
            .map(|(k, v)| ((k.vni, k.ip), v))
            .collect();
        for (&(vni, ip), value) in &desired.endpoints {
            if current.get(&(vni, ip)) != Some(value) {
                maps.put_endpoint(EndpointKey { vni, ip }, *value)?;
                changes += 1;
            }
        }
        for &(vni, ip) in current
            .keys()
            .filter(|k| removals && !desired.endpoints.contains_key(k))
        {
            maps.remove_endpoint(EndpointKey { vni, ip })?;
            changes += 1;
        }

        let current: BTreeMap<u32, (u32, [u8; 4])> = maps
            .ports()?
            .into_iter()
            .map(|(k, v)| (k, (v.vni, v.ip)))
            .collect();
        for (&ifindex, &(vni, ip)) in &desired.ports {
            if current.get(&ifindex) != Some(&(vni, ip)) {
                maps.put_port(ifindex, dataplane_ebpf::overlay::PortValue { vni, ip })?;
                changes += 1;
            }
        }
        for &ifindex in current
            .keys()
            .filter(|k| removals && !desired.ports.contains_key(k))
        {
            maps.remove_port(ifindex)?;
            changes += 1;
        }

        let current: BTreeMap<u32, NetworkValue> = maps.networks()?.into_iter().collect();
        for (&vni, value) in &desired.networks {
            if current.get(&vni) != Some(value) {
                maps.put_network(vni, *value)?;
                changes += 1;
            }
        }
        for &vni in current
            .keys()
            .filter(|k| removals && !desired.networks.contains_key(k))
        {
            maps.remove_network(vni)?;
            changes += 1;
        }

        let current: BTreeMap<(u32, [u8; 4]), u32> = maps
            .subnets()?
            .into_iter()
            .map(|(k, v)| ((k.prefix_len, k.ip), v))
            .collect();
        for (&(prefix_len, ip), &vni) in &desired.subnets {
            if current.get(&(prefix_len, ip)) != Some(&vni) {
                maps.put_subnet(SubnetKey { prefix_len, ip }, vni)?;
                changes += 1;
            }
        }
        for &(prefix_len, ip) in current
            .keys()
            .filter(|k| removals && !desired.subnets.contains_key(k))
        {
            maps.remove_subnet(SubnetKey { prefix_len, ip })?;
            changes += 1;
        }

        let current: BTreeMap<(u32, u32, [u8; 4]), VtepValue> = maps
            .vteps()?
            .into_iter()
            .map(|(k, v)| ((k.prefix_len, u32::from_be_bytes(k.vni_be), k.ip), v))
            .collect();
        for (&(prefix_len, vni, ip), value) in &desired.vteps {
            if current.get(&(prefix_len, vni, ip)) != Some(value) {
                maps.put_vtep(vtep_key(prefix_len, vni, ip), *value)?;
                changes += 1;
            }
        }
        for &(prefix_len, vni, ip) in current
            .keys()
            .filter(|k| removals && !desired.vteps.contains_key(k))
        {
            maps.remove_vtep(vtep_key(prefix_len, vni, ip))?;
            changes += 1;
        }
        Ok(changes)
    }
}

fn vtep_key(prefix_len: u32, vni: u32, ip: [u8; 4]) -> VtepKey {
    VtepKey {
        prefix_len,
        vni_be: vni.to_be_bytes(),
        ip,
    }
}

/// A namespace given as a name under /run/netns, or as a path.
pub fn netns_path(netns: &str) -> std::path::PathBuf {
    if netns.contains('/') {
        std::path::PathBuf::from(netns)
    } else {
        netlink::netns_path(netns)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use manager::{
        state::{EndpointSet, Network, NetworkSet, NodeInfo, Stamp, Vtep},
        view::{ClusterView, NodeStatus},
        NodeId,
    };

    use super::*;

    fn node(id: u8, up: bool, ip: [u8; 4]) -> NodeStatus {
        NodeStatus {
            id: NodeId([id; 16]),
            info: Some(NodeInfo {
                hostname: format!("h{id}"),
                addr: (ip, 7946).into(),
                underlay_ip: Ipv4Addr::from(ip),
                underlay_mtu: 1500,
                boot_epoch: 1,
                started_at_ms: 1,
                version: "t".into(),
                leaving: false,
                restart_grace_until_ms: 0,
            }),
            addr: Some((ip, 7946).into()),
            up,
            is_self: id == 1,
        }
    }

    fn endpoint(id: &str, ip: [u8; 4], vni: u32, network: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            name: id.into(),
            network: network.into(),
            vni,
            ip: Ipv4Addr::from(ip),
            netns: id.into(),
            host_ifname: format!("sk{id}"),
            created: Stamp {
                hlc: 1,
                writer: NodeId([1; 16]),
            },
            owns_netns: true,
        }
    }

    fn view() -> ClusterView {
        let stamp = Stamp {
            hlc: 1,
            writer: NodeId([1; 16]),
        };
        ClusterView {
            self_id: NodeId([1; 16]),
            store_version: 1,
            nodes: vec![
                node(1, true, [10, 200, 0, 11]),
                node(2, true, [10, 200, 0, 12]),
                node(3, false, [10, 200, 0, 13]),
            ],
            networks: NetworkSet {
                valid: vec![Network {
                    name: "web".into(),
                    subnet: "10.10.0.0/24".parse().unwrap(),
                    vni: 4096,
                    created: stamp,
                }],
                conflicted: Vec::new(),
            },
            services: Default::default(),
            tasks: Vec::new(),
            endpoints: EndpointSet {
                valid: vec![
                    (
                        NodeId([1; 16]),
                        endpoint("local", [10, 10, 0, 2], 4096, "web"),
                    ),
                    (
                        NodeId([1; 16]),
                        endpoint("unplumbed", [10, 10, 0, 3], 4096, "web"),
                    ),
                    (
                        NodeId([2; 16]),
                        endpoint("remote", [10, 10, 0, 4], 4096, "web"),
                    ),
                    (
                        NodeId([3; 16]),
                        endpoint("on-a-down-node", [10, 10, 0, 5], 4096, "web"),
                    ),
                    (
                        NodeId([2; 16]),
                        endpoint("orphan", [10, 20, 0, 2], 7777, "gone"),
                    ),
                ],
                collided: Vec::new(),
            },
            vteps: vec![Vtep {
                network: "web".into(),
                underlay: Ipv4Addr::new(10, 200, 0, 99),
                mac: [2, 0, 0, 0, 0, 9],
                cidr: "10.10.0.248/29".parse().unwrap(),
            }],
            overlay_mtu: Some(1450),
        }
    }

    #[test]
    fn desired_maps_serve_live_plumbed_endpoints_of_existing_networks() {
        let desired = desired_maps(&view(), |e| (e.id == "local").then_some(7));
        let keys: Vec<_> = desired.endpoints.keys().copied().collect();
        // The unplumbed local one, the down node's and the one whose network is gone are out.
        assert_eq!(keys, vec![(4096, [10, 10, 0, 2]), (4096, [10, 10, 0, 4])]);
        assert_eq!(
            desired.endpoints[&(4096, [10, 10, 0, 2])],
            EndpointValue {
                host_ip: [10, 200, 0, 11],
                ifindex: 7
            }
        );
        assert_eq!(
            desired.endpoints[&(4096, [10, 10, 0, 4])],
            EndpointValue {
                host_ip: [10, 200, 0, 12],
                ifindex: 0
            }
        );
        assert_eq!(desired.ports, BTreeMap::from([(7, (4096, [10, 10, 0, 2]))]));
        assert_eq!(desired.networks[&4096].gateway, [10, 10, 0, 1]);
        assert_eq!(
            desired.subnets,
            BTreeMap::from([((24, [10, 10, 0, 0]), 4096)])
        );
        let (&(prefix_len, vni, ip), vtep) = desired.vteps.iter().next().unwrap();
        assert_eq!((prefix_len, vni, ip), (32 + 29, 4096, [10, 10, 0, 248]));
        assert_eq!(vtep.underlay_ip, [10, 200, 0, 99]);
    }
}
