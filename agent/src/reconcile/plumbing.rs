//! Plumbing of this node's endpoints: namespace, veth pair, addresses and the attached
//! endpoint program; and its removal, for endpoints no entry wants any more.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use dataplane_ebpf::overlay::endpoint_mac;
use manager::{
    state::{endpoint::gateway, Endpoint},
    view::ClusterView,
};
use tracing::info;

use crate::netlink::{self, EndpointLink};

use super::{desired::own_endpoint_entries, maps::put_entries, Reconciler};

impl Reconciler {
    /// Creates (or checks) one local endpoint's namespace, veth and attached program;
    /// returns the host-side ifindex. Serialized with syncs, which plumb the same endpoints
    /// as soon as their records appear.
    pub(super) async fn plumb(
        &self,
        view: &ClusterView,
        endpoint: &Endpoint,
        mtu: u32,
    ) -> Result<u32> {
        let _busy = self.busy.lock().await;
        self.plumb_unlocked(view, endpoint, mtu).await
    }

    pub(super) async fn plumb_unlocked(
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
        let link = netlink::prepare_endpoint_link(&EndpointLink {
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
        // Before the veth comes up: the endpoint's first packet meets the endpoint program
        // and finds its port, network and own entries (fail closed: without a port entry
        // the program drops everything). A pair already up had them written when it came
        // up; the map sync keeps them, as it keeps every other entry.
        self.dataplane
            .lock()
            .expect("dataplane lock")
            .attach_endpoint(&endpoint.host_ifname)
            .with_context(|| {
                format!("attaching the endpoint program to {}", endpoint.host_ifname)
            })?;
        if !link.is_up() {
            let entries = own_endpoint_entries(view, endpoint, link.host_ifindex())
                .context("the endpoint's network or this node's underlay is not known yet")?;
            put_entries(&mut self.maps.lock().expect("maps lock"), &entries)
                .context("writing the endpoint's map entries")?;
        }
        let state = link.bring_up().await?;
        if !state.changes.is_empty() {
            info!(endpoint = %endpoint.name, ip = %endpoint.ip, changes = ?state.changes, "endpoint plumbed");
        }
        if let Some(watcher) = self.watcher.get() {
            watcher.plumbed(endpoint);
        }
        Ok(state.host_ifindex)
    }

    /// Removes veths (and namespaces the agent created) of endpoints no entry wants.
    pub(super) async fn remove_unwanted(&self, wanted: &[Endpoint]) -> Result<()> {
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
        if let Some(watcher) = self.watcher.get() {
            watcher.unplumbed(endpoint);
        }
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
}

/// A namespace given as a name under /run/netns, or as a path.
pub fn netns_path(netns: &str) -> std::path::PathBuf {
    if netns.contains('/') {
        std::path::PathBuf::from(netns)
    } else {
        netlink::netns_path(netns)
    }
}
