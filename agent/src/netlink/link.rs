//! Interfaces, addresses and routes through a [`Netlink`] connection, and the free
//! functions that act on the calling thread's namespace.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
    AddressFamily,
};
use rtnetlink::RouteMessageBuilder;

use super::{errno, names::validate_ifname, Netlink, NetlinkError, Result};

/// The index of interface `name` in the calling thread's network namespace, if it exists.
pub async fn link_index(name: &str) -> Result<Option<u32>> {
    Netlink::current()?.link_index(name).await
}

/// Sets the MTU of interface `name` in the calling thread's network namespace.
pub async fn set_mtu(name: &str, mtu: u32) -> Result<()> {
    Netlink::current()?.set_mtu(name, mtu).await
}

/// `(name, ifindex)` of every interface in the calling thread's network namespace whose
/// name starts with `prefix`, sorted by name: what a reconciler finds of an earlier run.
pub async fn links_with_prefix(prefix: &str) -> Result<Vec<(String, u32)>> {
    Netlink::current()?.links_with_prefix(prefix).await
}

impl Netlink {
    /// The index of interface `name`, if it exists.
    pub(super) async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link(name).await?.map(|link| link.header.index))
    }

    /// Sets the MTU of interface `name` (nothing is sent if it already has it).
    pub(super) async fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        check_mtu(mtu)?;
        let link = self.existing_link(name).await?;
        if link_mtu(&link) == Some(mtu) {
            return Ok(());
        }
        self.set_link(
            rtnetlink::LinkUnspec::new_with_index(link.header.index)
                .mtu(mtu)
                .build(),
            format!("setting the MTU of {name} to {mtu}"),
        )
        .await
    }

    /// `(name, ifindex)` of every interface whose name starts with `prefix`, by name.
    pub(super) async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u32)>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.request_error("listing interfaces"))?;
        let mut found: Vec<(String, u32)> = links
            .iter()
            .filter_map(|link| {
                let name = link_name(link)?;
                name.starts_with(prefix)
                    .then(|| (name.to_owned(), link.header.index))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// Deletes the interface with `index` (called `name` in messages); gone already is
    /// fine. Returns whether this call deleted it.
    pub(super) async fn delete_link_index(&self, index: u32, name: &str) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(self.request_error(format!("deleting interface {name}"))(e)),
        }
    }

    /// Interface `name`, if it exists.
    pub(super) async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        validate_ifname(name)?;
        let request = self.handle.link().get().match_name(name).execute();
        futures::pin_mut!(request);
        match request.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.request_error(format!("looking up interface {name}"))(
                e,
            )),
        }
    }

    /// Interface `name`, or [`NetlinkError::NoSuchLink`].
    pub(super) async fn existing_link(&self, name: &str) -> Result<LinkMessage> {
        self.link(name)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink {
                name: name.to_owned(),
                netns: self.netns().to_owned(),
            })
    }

    /// `RTM_SETLINK` with `message` (index plus the attributes and flags to change).
    pub(super) async fn set_link(&self, message: LinkMessage, what: String) -> Result<()> {
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(self.request_error(what))
    }

    /// The IPv4 addresses on interface `index`.
    pub(super) async fn ipv4_addresses(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let all: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(self.request_error("listing addresses"))?;
        Ok(all
            .into_iter()
            .filter(|a| a.header.family == AddressFamily::Inet)
            .collect())
    }

    /// Adds `ip/prefix_len` to interface `index` (called `name` in messages).
    pub(super) async fn add_address(
        &self,
        index: u32,
        name: &str,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix_len)
            .execute()
            .await
            .map_err(self.request_error(format!("adding {ip}/{prefix_len} to {name}")))
    }

    /// Deletes an address as listed by [`Netlink::ipv4_addresses`]; gone already is fine.
    pub(super) async fn delete_address(&self, address: AddressMessage, name: &str) -> Result<()> {
        let what = match address_of(&address) {
            Some((ip, len)) => format!("removing {ip}/{len} from {name}"),
            None => format!("removing an address from {name}"),
        };
        match self.handle.address().del(address).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => Err(self.request_error(what)(e)),
        }
    }

    /// The IPv4 routes of the main table.
    pub(super) async fn ipv4_main_routes(&self) -> Result<Vec<RouteMessage>> {
        let all: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.request_error("listing routes"))?;
        Ok(all
            .into_iter()
            .filter(|r| {
                r.header.address_family == AddressFamily::Inet
                    && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
            })
            .collect())
    }

    /// Adds `route`, replacing one with the same destination, table, TOS and priority.
    pub(super) async fn replace_route(&self, route: RouteMessage, what: String) -> Result<()> {
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(self.request_error(what))
    }

    /// Deletes a route as listed by [`Netlink::ipv4_main_routes`]; gone already is fine.
    /// Returns whether this call deleted it.
    pub(super) async fn delete_route(&self, route: RouteMessage, what: String) -> Result<bool> {
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(self.request_error(what)(e)),
        }
    }
}

/// Fails unless `mtu` is one Linux can give an Ethernet-like interface.
pub(super) fn check_mtu(mtu: u32) -> Result<()> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(NetlinkError::InvalidMtu { mtu })
    }
}

pub(super) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

pub(super) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

pub(super) fn link_mac(link: &LinkMessage) -> Option<&[u8]> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.as_slice()),
        _ => None,
    })
}

/// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
pub(super) fn link_peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

pub(super) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// Administratively up (`IFF_UP`), whatever the carrier.
pub(super) fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

/// The address and prefix length of an IPv4 address message (`IFA_LOCAL`, else
/// `IFA_ADDRESS`).
pub(super) fn address_of(address: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    let find = |want_local: bool| {
        address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) if want_local => Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) if !want_local => Some(*ip),
            _ => None,
        })
    };
    let ip = find(true).or_else(|| find(false))?;
    Some((ip, address.header.prefix_len))
}

pub(super) fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// The destination as (address, prefix length); `None` for a default route.
pub(super) fn route_destination(route: &RouteMessage) -> Option<(Ipv4Addr, u8)> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Some((*ip, route.header.destination_prefix_length))
        }
        _ => None,
    })
}

pub(super) fn route_gateway(route: &RouteMessage) -> Option<Ipv4Addr> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

pub(super) fn route_oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}
