//! Service VIPs (east-west balancing) ABI: a connection from an endpoint to a service's
//! VIP and one of its target ports — or to any cluster node's address and one of the
//! service's published ports — is balanced round robin **on the sending host**, in
//! `tc_endpoint_ingress`, across the service's serving tasks on the same network, with
//! connection tracking and reverse translation.
//!
//! - [`crate::maps::VIP_PORTS`] `(vni, address, port, protocol)` → the service ([`VipPort`]):
//!   `(network, VIP, ANY_PORT)` for every service in `vip` endpoint mode (the VIP takes
//!   every port and keeps it, as Swarm's do), and `(network, node address, published port)`
//!   → the target port for every node of the cluster and every port the service publishes
//!   in `ingress` mode. The exact key is looked up first, then the VIP's `ANY_PORT`. An
//!   address with neither is not balanced; a VIP without the entry is refused (counted
//!   [`VIP_CLOSED_PORT`]).
//! - [`crate::maps::VIP_SERVICES`] `(vni, VIP)` → how many backends and the shared
//!   round-robin cursor (advanced only by the programs, with an atomic fetch-add).
//! - [`crate::maps::VIP_BACKENDS`] `(vni, VIP, index)` → a serving task's address on the
//!   network (its host is the overlay's business: `OVERLAY_ENDPOINTS`).
//! - [`crate::maps::VIP_FLOWS`] (LRU) — the client's 5-tuple as sent → the backend picked.
//! - [`crate::maps::VIP_REPLIES`] (LRU) — the 5-tuple of the backend's replies → what to
//!   write back (the address and port the client sent to, the client's own address).
//!
//! Hairpin: when the pick is the client itself (a task reaching its own service), the
//! source is rewritten to the VIP as well, so the task sees a connection from the VIP
//! (a packet from its own address would be dropped by its stack as a martian); its reply
//! to the VIP is translated back on the same host.
//!
//! Byte order: fields ending in `_be` or typed `[u8; N]` are network order; the rest are
//! host order.

/// The port of a VIP's [`VipPortKey`] that stands for every port, and the
/// [`VipPort::target_port_be`] that means "the port the client chose".
pub const ANY_PORT: u16 = 0;

/// Key of [`crate::maps::VIP_PORTS`]: a destination an endpoint may balance to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipPortKey {
    /// The sending endpoint's network.
    pub vni: u32,
    /// The service's VIP, or a cluster node's underlay address.
    pub ip: [u8; 4],
    pub port_be: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub _pad: u8,
}

/// The service a [`VipPortKey`] leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipPort {
    /// The service's VIP (with the key's VNI, the [`VipServiceKey`]).
    pub vip: [u8; 4],
    /// The port the tasks listen on.
    pub target_port_be: [u8; 2],
    pub _pad: [u8; 2],
}

/// Key of [`crate::maps::VIP_SERVICES`]: a service by its VIP on its network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipServiceKey {
    pub vni: u32,
    pub vip: [u8; 4],
}

/// One service's rotation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipService {
    /// Entries `0..backends` of `VIP_BACKENDS`; 0: no serving task (new flows refused).
    pub backends: u32,
    /// The next pick; advanced only by the programs (atomic fetch-add). The agent keeps
    /// the kernel's value when it rewrites the element.
    pub cursor: u32,
}

/// Key of [`crate::maps::VIP_BACKENDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipBackendKey {
    pub vni: u32,
    pub vip: [u8; 4],
    pub index: u32,
}

/// A serving task of the service: its address on the service's network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipBackend {
    pub ip: [u8; 4],
}

/// Key of [`crate::maps::VIP_FLOWS`]: a client's packet as it left the client.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipFlowKey {
    pub vni: u32,
    pub client_ip: [u8; 4],
    /// The VIP or node address the client sent to.
    pub dst_ip: [u8; 4],
    pub client_port_be: [u8; 2],
    pub dst_port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// A tracked flow: where its packets go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipFlow {
    pub backend_ip: [u8; 4],
    /// The source the backend sees: the client's address, or the VIP (hairpin).
    pub source_ip: [u8; 4],
    pub target_port_be: [u8; 2],
    pub _pad: [u8; 2],
}

/// Key of [`crate::maps::VIP_REPLIES`]: a backend's reply as it left the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipReplyKey {
    pub vni: u32,
    pub backend_ip: [u8; 4],
    /// [`VipFlow::source_ip`]: the client, or the VIP (hairpin).
    pub client_ip: [u8; 4],
    pub backend_port_be: [u8; 2],
    pub client_port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// How a reply is translated back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipReply {
    /// The new source: the address the client sent to (VIP or node address).
    pub dst_ip: [u8; 4],
    /// The new destination: the client's own address (differs from the key's only for a
    /// hairpin flow).
    pub client_ip: [u8; 4],
    /// The new source port: the port the client sent to.
    pub dst_port_be: [u8; 2],
    pub _pad: [u8; 2],
}

// Slots of [`crate::maps::VIP_EVENTS`] (per-CPU `u64`), what the balancer did: the
// detail behind the `vip_refused` verdict and the flows it balanced.
/// A new flow balanced to a backend.
pub const VIP_NEW_FLOW: u32 = 0;
/// A packet of a tracked flow translated to its backend.
pub const VIP_FLOW: u32 = 1;
/// A backend's reply translated back.
pub const VIP_REPLY: u32 = 2;
/// A new flow to a service with no serving task on the network: dropped.
pub const VIP_NO_BACKEND: u32 = 3;
/// To the VIP on a port that is not one of the service's target ports (or not TCP/UDP,
/// or a fragment): dropped.
pub const VIP_CLOSED_PORT: u32 = 4;
/// TCP that is not a SYN for no tracked flow (or one whose backend is gone): dropped.
pub const VIP_NO_FLOW: u32 = 5;
/// Slots in `VIP_EVENTS` (room for more).
pub const VIP_EVENT_SLOTS: u32 = 8;

/// Every event slot with its `event` label.
pub const VIP_EVENT_NAMES: [(u32, &str); 6] = [
    (VIP_NEW_FLOW, "new_flow"),
    (VIP_FLOW, "flow"),
    (VIP_REPLY, "reply"),
    (VIP_NO_BACKEND, "no_backend"),
    (VIP_CLOSED_PORT, "closed_port"),
    (VIP_NO_FLOW, "no_flow"),
];

/// The source the backend must see for a flow from `client` balanced to `backend` of
/// the service with VIP `vip`: the client itself, except when the pick is the client
/// (hairpin), whose stack would drop a packet from its own address: then the VIP.
pub const fn source_seen(client: [u8; 4], backend: [u8; 4], vip: [u8; 4]) -> [u8; 4] {
    if u32::from_ne_bytes(client) == u32::from_ne_bytes(backend) {
        vip
    } else {
        client
    }
}

/// The reply key and entry of a new flow: `key` as the client sent it, balanced to
/// `backend` (target port `target_port_be`) through the service with VIP `vip`.
pub const fn reply_of(
    key: &VipFlowKey,
    backend: [u8; 4],
    target_port_be: [u8; 2],
    vip: [u8; 4],
) -> (VipReplyKey, VipReply) {
    (
        VipReplyKey {
            vni: key.vni,
            backend_ip: backend,
            client_ip: source_seen(key.client_ip, backend, vip),
            backend_port_be: target_port_be,
            client_port_be: key.client_port_be,
            protocol: key.protocol,
            _pad: [0; 3],
        },
        VipReply {
            dst_ip: key.dst_ip,
            client_ip: key.client_ip,
            dst_port_be: key.dst_port_be,
            _pad: [0; 2],
        },
    )
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<VipPortKey>() == 12);
    assert!(size_of::<VipPort>() == 8);
    assert!(size_of::<VipServiceKey>() == 8);
    assert!(size_of::<VipService>() == 8);
    assert!(size_of::<VipBackendKey>() == 12);
    assert!(size_of::<VipBackend>() == 4);
    assert!(size_of::<VipFlowKey>() == 20);
    assert!(size_of::<VipFlow>() == 12);
    assert!(size_of::<VipReplyKey>() == 20);
    assert!(size_of::<VipReply>() == 12);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all `repr(C)`, integer and byte-array fields only, sizes asserted above with
    // no implicit padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for VipPortKey {}
    unsafe impl aya::Pod for VipPort {}
    unsafe impl aya::Pod for VipServiceKey {}
    unsafe impl aya::Pod for VipService {}
    unsafe impl aya::Pod for VipBackendKey {}
    unsafe impl aya::Pod for VipBackend {}
    unsafe impl aya::Pod for VipFlowKey {}
    unsafe impl aya::Pod for VipFlow {}
    unsafe impl aya::Pod for VipReplyKey {}
    unsafe impl aya::Pod for VipReply {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: [u8; 4] = [10, 1, 0, 2];
    const BACKEND: [u8; 4] = [10, 1, 0, 3];
    const VIP: [u8; 4] = [10, 1, 0, 200];

    fn flow(client: [u8; 4], dst: [u8; 4], dport: u16) -> VipFlowKey {
        VipFlowKey {
            vni: 4100,
            client_ip: client,
            dst_ip: dst,
            client_port_be: 40000u16.to_be_bytes(),
            dst_port_be: dport.to_be_bytes(),
            protocol: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn the_backend_sees_the_client_unless_it_is_the_client() {
        assert_eq!(source_seen(CLIENT, BACKEND, VIP), CLIENT);
        assert_eq!(source_seen(BACKEND, BACKEND, VIP), VIP);
    }

    #[test]
    fn a_reply_is_keyed_as_the_backend_sends_it_and_restores_what_the_client_sent_to() {
        let (key, reply) = reply_of(&flow(CLIENT, VIP, 80), BACKEND, 80u16.to_be_bytes(), VIP);
        assert_eq!(
            (
                key.backend_ip,
                key.client_ip,
                key.backend_port_be,
                key.client_port_be
            ),
            (BACKEND, CLIENT, 80u16.to_be_bytes(), 40000u16.to_be_bytes())
        );
        assert_eq!((reply.dst_ip, reply.client_ip), (VIP, CLIENT));
        assert_eq!(reply.dst_port_be, 80u16.to_be_bytes());
    }

    #[test]
    fn a_node_address_flow_replies_from_the_node_and_published_port() {
        let node = [192, 168, 0, 1];
        let (key, reply) = reply_of(&flow(CLIENT, node, 8080), BACKEND, 80u16.to_be_bytes(), VIP);
        assert_eq!(key.backend_port_be, 80u16.to_be_bytes());
        assert_eq!(
            (reply.dst_ip, reply.dst_port_be),
            (node, 8080u16.to_be_bytes())
        );
    }

    #[test]
    fn a_hairpin_reply_goes_to_the_vip_and_back_to_the_client_itself() {
        let (key, reply) = reply_of(&flow(BACKEND, VIP, 80), BACKEND, 80u16.to_be_bytes(), VIP);
        assert_eq!((key.backend_ip, key.client_ip), (BACKEND, VIP));
        assert_eq!((reply.dst_ip, reply.client_ip), (VIP, BACKEND));
    }

    #[test]
    fn event_names_are_unique_and_fit() {
        for (i, (slot, name)) in VIP_EVENT_NAMES.iter().enumerate() {
            assert!(*slot < VIP_EVENT_SLOTS);
            assert!(VIP_EVENT_NAMES[..i]
                .iter()
                .all(|(s, n)| s != slot && n != name));
        }
    }
}
