//! The host path's interface and routes (see `crate::dataplane` `cgroup`): a veth pair
//! whose first side carries the host's own connections to tasks on other nodes into
//! `tc_host_egress`, and the overlay subnets routed through it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_route::{
    link::{InfoData, InfoVeth},
    route::{RouteMessage, RouteScope},
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::{
    link::{link_is_up, link_mtu, route_destination, route_oif},
    Netlink, Result,
};

/// Makes veth `name` with peer `peer` if missing, then `name` up without ARP at `mtu` and
/// the peer down (nothing ever crosses: the program on `name` redirects or drops first).
pub(crate) async fn ensure_host_path_link(name: &str, peer: &str, mtu: u32) -> Result<()> {
    super::link::check_mtu(mtu)?;
    let nl = Netlink::current()?;
    if nl.link(name).await?.is_none() {
        let pair = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(
                LinkUnspec::new_with_name(peer).build(),
            )))
            .build();
        nl.handle
            .link()
            .add(pair)
            .execute()
            .await
            .map_err(nl.request_error(format!("creating veth {name} with peer {peer}")))?;
    }
    let link = nl.existing_link(name).await?;
    let index = link.header.index;
    if link_mtu(&link) != Some(mtu) || !link_is_up(&link) || !no_arp(&link) {
        nl.set_link(
            LinkUnspec::new_with_index(index)
                .mtu(mtu)
                .arp(false)
                .up()
                .build(),
            format!("configuring {name} (mtu {mtu}, arp off, up)"),
        )
        .await?;
    }
    let peer_link = nl.existing_link(peer).await?;
    if link_is_up(&peer_link) {
        nl.set_link(
            LinkUnspec::new_with_index(peer_link.header.index)
                .down()
                .build(),
            format!("setting {peer} down"),
        )
        .await?;
    }
    Ok(())
}

fn no_arp(link: &netlink_packet_route::link::LinkMessage) -> bool {
    link.header
        .flags
        .contains(netlink_packet_route::link::LinkFlags::Noarp)
}

/// Routes each of `subnets` through interface `name` with `source` as the preferred
/// source, and removes its routes to any other destination. Returns how many routes it
/// changed.
pub(crate) async fn sync_routes_through(
    name: &str,
    subnets: &[Ipv4Net],
    source: Ipv4Addr,
) -> Result<usize> {
    let nl = Netlink::current()?;
    let index = nl.existing_link(name).await?.header.index;
    let present: Vec<RouteMessage> = nl
        .ipv4_main_routes()
        .await?
        .into_iter()
        .filter(|r| route_oif(r) == Some(index))
        .collect();
    let destination =
        |r: &RouteMessage| route_destination(r).and_then(|(ip, len)| Ipv4Net::new(ip, len).ok());
    let mut changes = 0;
    for subnet in subnets {
        if present.iter().any(|r| destination(r) == Some(*subnet)) {
            continue;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(subnet.network(), subnet.prefix_len())
            .output_interface(index)
            .pref_source(source)
            .scope(RouteScope::Link)
            .build();
        nl.replace_route(route, format!("routing {subnet} through {name}"))
            .await?;
        changes += 1;
    }
    for stale in present
        .into_iter()
        .filter(|r| destination(r).is_none_or(|d| !subnets.contains(&d)))
    {
        if nl
            .delete_route(stale, format!("removing a stale route through {name}"))
            .await?
        {
            changes += 1;
        }
    }
    Ok(changes)
}

/// Deletes interface `name` (and so its veth peer and routes); missing is fine. Returns
/// whether this call deleted it.
pub(crate) async fn remove_link(name: &str) -> Result<bool> {
    let nl = Netlink::current()?;
    match nl.link(name).await? {
        Some(link) => nl.delete_link_index(link.header.index, name).await,
        None => Ok(false),
    }
}
