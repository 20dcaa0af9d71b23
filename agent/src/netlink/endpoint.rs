//! An endpoint's plumbing: a veth pair whose host side stays in the agent's namespace and
//! whose other side is the endpoint's `eth0`, with the endpoint's address, a default route
//! via a gateway address the host side owns, and a host route back to the endpoint.
//!
//! ```text
//!   agent's namespace                         endpoint namespace
//!   <host_ifname>  gateway/32  ── veth ──    eth0  ip/prefix, MAC, MTU
//!   route ip/32 dev <host_ifname>            default via gateway dev eth0; lo up
//! ```
//!
//! [`ensure_endpoint_link`] is idempotent: it reads what exists and changes only what
//! differs from the spec, so a second run, or a restarted agent's first, changes nothing.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
};

use netlink_packet_route::{
    address::AddressMessage,
    link::{InfoData, InfoKind, InfoVeth, LinkMessage},
    route::{RouteMessage, RouteScope},
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::{debug, info};

use super::{
    link::{
        address_of, check_mtu, link_is_up, link_kind, link_mac, link_mtu, link_peer_index,
        route_destination, route_gateway, route_oif,
    },
    names::validate_ifname,
    netns::{enter_netns, is_current_netns, on_dedicated_thread, open_netns},
    offload::{ensure_feature, Feature},
    Netlink, NetlinkError, Result,
};

/// What an endpoint's link should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLink {
    /// The host side's name in the agent's namespace (at most 15 bytes; see
    /// [`host_ifname`](super::host_ifname)).
    pub host_ifname: String,
    /// The endpoint's network namespace file, e.g. `/run/netns/NAME`.
    pub netns: PathBuf,
    /// The endpoint side's name inside its namespace, normally `eth0`.
    pub ep_ifname: String,
    /// The endpoint side's MAC address.
    pub mac: [u8; 6],
    /// The MTU of both sides.
    pub mtu: u32,
    /// The endpoint's address...
    pub ip: Ipv4Addr,
    /// ...and its prefix length (the overlay subnet's).
    pub prefix_len: u8,
    /// The endpoint's default gateway: an address the host side owns (as a /32).
    pub gateway: Ipv4Addr,
}

/// What [`ensure_endpoint_link`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLinkState {
    /// The host side's index in the agent's namespace (where Skein's programs attach).
    pub host_ifindex: u32,
    /// The endpoint side's index inside the endpoint's namespace.
    pub endpoint_ifindex: u32,
    /// What was changed, in order; empty when everything was already as specified.
    pub changes: Vec<Change>,
}

/// One change [`ensure_endpoint_link`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The veth pair did not exist and was created.
    CreatedPair,
    /// A veth with the host side's name existed whose peer was not the endpoint's
    /// interface (e.g. an endpoint recreated in a new namespace); it was deleted with its
    /// peer before the pair was created.
    ReplacedPair,
    /// An interface with the endpoint side's name existed in the endpoint's namespace but
    /// was not the host side's peer; it was deleted.
    RemovedStrayEndpointLink,
    HostMtu,
    HostUp,
    /// TSO was turned off on the host side, so the endpoint side's GRO takes what it sends.
    HostTso,
    /// The gateway /32 was added to the host side.
    HostGatewayAddress,
    /// An address other than the gateway /32 was removed from the host side.
    HostStaleAddress,
    /// The route to the endpoint's /32 via the host side was added or replaced.
    HostEndpointRoute,
    /// A main-table route via the host side other than the endpoint's /32 was removed.
    HostStaleRoute,
    EndpointMac,
    EndpointMtu,
    EndpointUp,
    /// GRO was turned on on the endpoint side (see `offload`: decapsulated segments are
    /// merged there).
    EndpointGro,
    /// The endpoint's address was added.
    EndpointAddress,
    /// Another IPv4 address was removed from the endpoint side.
    EndpointStaleAddress,
    LoopbackUp,
    /// The default route via the gateway was added or replaced.
    DefaultRoute,
    /// Another default route in the endpoint's main table was removed.
    StaleDefaultRoute,
}

impl EndpointLink {
    fn validate(&self) -> Result<()> {
        validate_ifname(&self.host_ifname)?;
        validate_ifname(&self.ep_ifname)?;
        check_mtu(self.mtu)?;
        if self.prefix_len > 32 {
            return Err(NetlinkError::InvalidPrefixLen {
                prefix_len: self.prefix_len,
            });
        }
        Ok(())
    }

    /// Whether the gateway is inside the endpoint's subnet; if not, the default route is
    /// marked on-link so the kernel accepts it.
    fn gateway_in_subnet(&self) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(self.ip) & mask == u32::from(self.gateway) & mask
    }
}

/// Makes the endpoint's link match `spec`, creating the veth pair if needed (host side
/// in the calling thread's namespace, endpoint side created directly inside `spec.netns`
/// with its name, MAC and MTU, so it never appears under another name or namespace),
/// and fixing whatever differs: MACs, MTUs, up flags, addresses, routes. Things already
/// as specified are left untouched. Returns the interfaces' indexes and what changed.
///
/// Refuses ([`NetlinkError::NotAVeth`]) to touch a non-veth interface that has the host
/// side's name. A veth with that name whose peer is not `spec.ep_ifname` in `spec.netns`
/// is replaced, as is an interface called `spec.ep_ifname` in the endpoint's namespace
/// that is not its peer: the endpoint's namespace belongs to Skein.
pub async fn ensure_endpoint_link(spec: &EndpointLink) -> Result<EndpointLinkState> {
    prepare_endpoint_link(spec).await?.bring_up().await
}

/// An endpoint's veth pair, created or adopted by [`prepare_endpoint_link`] but not yet
/// brought up: a pair created now carries no packet until [`PreparedLink::bring_up`], so
/// whatever must be in place before the endpoint can send (the endpoint program and its
/// map entries) goes in between.
pub struct PreparedLink {
    spec: EndpointLink,
    ep_ns: OwnedFd,
    host: Netlink,
    ep: Netlink,
    host_link: LinkMessage,
    ep_link: LinkMessage,
    changes: Vec<Change>,
}

impl PreparedLink {
    /// The host side's index in the agent's namespace (where Skein's programs attach).
    pub fn host_ifindex(&self) -> u32 {
        self.host_link.header.index
    }

    /// Whether both sides are already up (an adopted pair): the endpoint may be sending.
    pub fn is_up(&self) -> bool {
        link_is_up(&self.host_link) && link_is_up(&self.ep_link)
    }

    /// Converges everything else — both sides up, MACs, MTUs, addresses, routes,
    /// offloads — and reports what changed in all.
    pub async fn bring_up(self) -> Result<EndpointLinkState> {
        let PreparedLink {
            spec,
            ep_ns,
            host,
            ep,
            host_link,
            ep_link,
            mut changes,
        } = self;
        let host_ifindex = host_link.header.index;
        let endpoint_ifindex = ep_link.header.index;
        converge_endpoint(&ep, &ep_link, &spec, &mut changes).await?;
        converge_offloads(&ep_ns, &spec, &mut changes).await?;
        converge_host(&host, &host_link, &spec, &mut changes).await?;

        if changes.is_empty() {
            debug!(host_ifname = %spec.host_ifname, "endpoint link already as specified");
        } else {
            info!(host_ifname = %spec.host_ifname, host_ifindex, ?changes, "endpoint link converged");
        }
        Ok(EndpointLinkState {
            host_ifindex,
            endpoint_ifindex,
            changes,
        })
    }
}

/// The first half of [`ensure_endpoint_link`]: checks `spec` and creates (down) or adopts
/// the veth pair.
pub async fn prepare_endpoint_link(spec: &EndpointLink) -> Result<PreparedLink> {
    spec.validate()?;
    let ep_ns = open_netns(&spec.netns).await?;
    // Otherwise "eth0" would be the host's own, and replaced as a stray.
    if is_current_netns(&ep_ns)? {
        return Err(NetlinkError::OwnNetns {
            path: spec.netns.clone(),
        });
    }
    let host = Netlink::current()?;
    let ep = Netlink::with_netns_fd(
        ep_ns
            .try_clone()
            .map_err(NetlinkError::io("duplicating a namespace descriptor"))?,
        spec.netns.display().to_string(),
    )
    .await?;
    let mut changes = Vec::new();
    let (host_link, ep_link) = adopt_or_create(&host, &ep, &ep_ns, spec, &mut changes).await?;
    Ok(PreparedLink {
        spec: spec.clone(),
        ep_ns,
        host,
        ep,
        host_link,
        ep_link,
        changes,
    })
}

/// Deletes the endpoint link whose host side (in the calling thread's namespace) is
/// `host_ifname`; its peer goes with it. Returns whether it existed; missing is `Ok`.
/// Refuses ([`NetlinkError::NotAVeth`]) to delete an interface that is not a veth.
pub async fn remove_endpoint_link(host_ifname: &str) -> Result<bool> {
    let host = Netlink::current()?;
    let Some(link) = host.link(host_ifname).await? else {
        return Ok(false);
    };
    ensure_veth(&host, host_ifname, &link)?;
    let removed = host
        .delete_link_index(link.header.index, host_ifname)
        .await?;
    if removed {
        info!(host_ifname, "endpoint link removed");
    }
    Ok(removed)
}

/// Whether two veth ends are each other's peer. Each end's IFLA_LINK is its peer's
/// index; both directions must agree, which an unrelated pair elsewhere cannot arrange
/// by accident.
fn are_peers(a: &LinkMessage, b: &LinkMessage) -> bool {
    link_peer_index(a) == Some(b.header.index) && link_peer_index(b) == Some(a.header.index)
}

fn is_veth(link: &LinkMessage) -> bool {
    matches!(link_kind(link), Some(InfoKind::Veth))
}

fn ensure_veth(nl: &Netlink, name: &str, link: &LinkMessage) -> Result<()> {
    if is_veth(link) {
        return Ok(());
    }
    Err(NetlinkError::NotAVeth {
        name: name.to_owned(),
        netns: nl.netns().to_owned(),
        kind: link_kind(link).map_or_else(|| "device of no kind".to_owned(), |k| k.to_string()),
    })
}

/// Finds the pair if both sides exist and point at each other; otherwise clears what is
/// in the way and creates it. Returns (host side, endpoint side) as they are now.
async fn adopt_or_create(
    host: &Netlink,
    ep: &Netlink,
    ep_ns: &OwnedFd,
    spec: &EndpointLink,
    changes: &mut Vec<Change>,
) -> Result<(LinkMessage, LinkMessage)> {
    let host_link = host.link(&spec.host_ifname).await?;
    if let Some(link) = &host_link {
        ensure_veth(host, &spec.host_ifname, link)?;
    }
    let ep_link = ep.link(&spec.ep_ifname).await?;
    let host_link = match (host_link, ep_link) {
        (Some(h), Some(e)) if is_veth(&e) && are_peers(&h, &e) => return Ok((h, e)),
        (host_link, _) => host_link,
    };

    if let Some(h) = &host_link {
        host.delete_link_index(h.header.index, &spec.host_ifname)
            .await?;
        changes.push(Change::ReplacedPair);
    }
    // Looked up again: deleting the host side may have taken it along.
    if let Some(e) = ep.link(&spec.ep_ifname).await? {
        ep.delete_link_index(e.header.index, &spec.ep_ifname)
            .await?;
        changes.push(Change::RemovedStrayEndpointLink);
    }

    // Neither side up here: the endpoint side cannot be (the kernel opens the peer before
    // the two ends are linked, and veth_open then fails with ENOTCONN), and the host side
    // must not be before the caller is ready for what the endpoint sends (see
    // `PreparedLink`). `bring_up` raises both.
    let peer = LinkUnspec::new_with_name(&spec.ep_ifname)
        .setns_by_fd(ep_ns.as_raw_fd())
        .address(spec.mac.to_vec())
        .mtu(spec.mtu)
        .build();
    let pair = LinkVeth::new(&spec.host_ifname, &spec.ep_ifname)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(spec.mtu)
        .build();
    host.handle
        .link()
        .add(pair)
        .execute()
        .await
        .map_err(host.request_error(format!(
            "creating veth {} with peer {} in {}",
            spec.host_ifname,
            spec.ep_ifname,
            spec.netns.display()
        )))?;
    changes.push(Change::CreatedPair);
    Ok((
        host.existing_link(&spec.host_ifname).await?,
        ep.existing_link(&spec.ep_ifname).await?,
    ))
}

/// MAC, MTU and up of one side in a single `RTM_SETLINK`, only for what differs.
async fn converge_link(
    nl: &Netlink,
    name: &str,
    link: &LinkMessage,
    mac: Option<[u8; 6]>,
    mtu: u32,
    [mac_change, mtu_change, up_change]: [Change; 3],
    changes: &mut Vec<Change>,
) -> Result<()> {
    let mut message = LinkUnspec::new_with_index(link.header.index);
    let mut made = Vec::new();
    if let Some(mac) = mac {
        if link_mac(link) != Some(&mac[..]) {
            message = message.address(mac.to_vec());
            made.push(mac_change);
        }
    }
    if link_mtu(link) != Some(mtu) {
        message = message.mtu(mtu);
        made.push(mtu_change);
    }
    if !link_is_up(link) {
        message = message.up();
        made.push(up_change);
    }
    if made.is_empty() {
        return Ok(());
    }
    nl.set_link(message.build(), format!("configuring {name} ({made:?})"))
        .await?;
    changes.extend(made);
    Ok(())
}

async fn converge_endpoint(
    ep: &Netlink,
    link: &LinkMessage,
    spec: &EndpointLink,
    changes: &mut Vec<Change>,
) -> Result<()> {
    let name = spec.ep_ifname.as_str();
    let index = link.header.index;
    converge_link(
        ep,
        name,
        link,
        Some(spec.mac),
        spec.mtu,
        [Change::EndpointMac, Change::EndpointMtu, Change::EndpointUp],
        changes,
    )
    .await?;

    let lo = ep.existing_link("lo").await?;
    if !link_is_up(&lo) {
        ep.set_link(
            LinkUnspec::new_with_index(lo.header.index).up().build(),
            "setting lo up".to_owned(),
        )
        .await?;
        changes.push(Change::LoopbackUp);
    }

    // Stale addresses first: removing a primary address takes its secondaries along.
    let mut have = false;
    for address in ep.ipv4_addresses(index).await? {
        if address_of(&address) == Some((spec.ip, spec.prefix_len)) {
            have = true;
        } else {
            ep.delete_address(address, name).await?;
            changes.push(Change::EndpointStaleAddress);
        }
    }
    if !have {
        ep.add_address(index, name, spec.ip, spec.prefix_len)
            .await?;
        changes.push(Change::EndpointAddress);
    }

    let wanted =
        |r: &RouteMessage| route_gateway(r) == Some(spec.gateway) && route_oif(r) == Some(index);
    let defaults: Vec<RouteMessage> = ep
        .ipv4_main_routes()
        .await?
        .into_iter()
        .filter(|r| route_destination(r).is_none() && r.header.destination_prefix_length == 0)
        .collect();
    if !defaults.iter().any(wanted) {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(spec.gateway)
            .output_interface(index);
        if !spec.gateway_in_subnet() {
            route = route.onlink();
        }
        // Replace, so an old default route gives way without a moment of no route.
        ep.replace_route(
            route.build(),
            format!("setting the default route via {} dev {name}", spec.gateway),
        )
        .await?;
        changes.push(Change::DefaultRoute);
    }
    for stale in defaults.into_iter().filter(|r| !wanted(r)) {
        // Already gone if the replacement above took its place.
        let what = format!("removing a stale default route via {name}");
        if ep.delete_route(stale, what).await? {
            changes.push(Change::StaleDefaultRoute);
        }
    }
    Ok(())
}

/// GRO on the endpoint side, TSO off on the host side (see `offload` for why).
async fn converge_offloads(
    ep_ns: &OwnedFd,
    spec: &EndpointLink,
    changes: &mut Vec<Change>,
) -> Result<()> {
    let ns = ep_ns
        .try_clone()
        .map_err(NetlinkError::io("duplicating a namespace descriptor"))?;
    let (label, ep_ifname) = (spec.netns.display().to_string(), spec.ep_ifname.clone());
    let gro = on_dedicated_thread(format!("setting GRO in {label}"), move || {
        enter_netns(&ns, &label)?;
        ensure_feature(&ep_ifname, Feature::Gro, true)
    })
    .await?;
    if gro {
        changes.push(Change::EndpointGro);
    }
    if ensure_feature(&spec.host_ifname, Feature::Tso, false)? {
        changes.push(Change::HostTso);
    }
    Ok(())
}

async fn converge_host(
    host: &Netlink,
    link: &LinkMessage,
    spec: &EndpointLink,
    changes: &mut Vec<Change>,
) -> Result<()> {
    let name = spec.host_ifname.as_str();
    let index = link.header.index;
    converge_link(
        host,
        name,
        link,
        None,
        spec.mtu,
        // The host side keeps the MAC the kernel gave it, so the first is never used.
        [Change::HostMtu, Change::HostMtu, Change::HostUp],
        changes,
    )
    .await?;

    // The new gateway first: removing a device's last IPv4 address flushes every route
    // through it, the endpoint's /32 included. (/32s are all primaries, so removing one
    // never takes another along.)
    let addresses = host.ipv4_addresses(index).await?;
    let is_gateway = |a: &AddressMessage| address_of(a) == Some((spec.gateway, 32));
    if !addresses.iter().any(is_gateway) {
        host.add_address(index, name, spec.gateway, 32).await?;
        changes.push(Change::HostGatewayAddress);
    }
    for stale in addresses.into_iter().filter(|a| !is_gateway(a)) {
        host.delete_address(stale, name).await?;
        changes.push(Change::HostStaleAddress);
    }

    let wanted = |r: &RouteMessage| {
        route_destination(r) == Some((spec.ip, 32))
            && route_oif(r) == Some(index)
            && route_gateway(r).is_none()
    };
    let routes = host.ipv4_main_routes().await?;
    if !routes.iter().any(wanted) {
        // Replace: a route to this /32 via some other interface (a previous pair) goes.
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(spec.ip, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        host.replace_route(route, format!("routing {}/32 via {name}", spec.ip))
            .await?;
        changes.push(Change::HostEndpointRoute);
    }
    for stale in routes
        .into_iter()
        .filter(|r| route_oif(r) == Some(index) && !wanted(r))
    {
        let what = format!("removing a stale route via {name}");
        if host.delete_route(stale, what).await? {
            changes.push(Change::HostStaleRoute);
        }
    }
    Ok(())
}
