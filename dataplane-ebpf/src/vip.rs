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
//! Connection tracking follows the routing mesh's rules and timeouts (`MESH_CONFIG`):
//! see [`VipFlow`], [`flow_carries`].
//!
//! Byte order: fields ending in `_be` or typed `[u8; N]` are network order; the rest are
//! host order.

use crate::mesh::{timeout_ns, MeshConfig, TCP_CLOSING};

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

/// A tracked flow: where its packets go, and how far its connection got. The state
/// follows the routing mesh's conntrack rules ([`crate::mesh::tcp_next`],
/// [`crate::mesh::timeout_ns`] with the mesh's configured timeouts), so a client port
/// reused after a close — or after the entry sat idle past its timeout — opens a new
/// flow instead of riding the old one (whose reply entry may since belong to another).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipFlow {
    pub backend_ip: [u8; 4],
    /// The source the backend sees: the client's address, or the VIP (hairpin).
    pub source_ip: [u8; 4],
    pub target_port_be: [u8; 2],
    /// [`crate::mesh::TCP_SYN_SENT`], `TCP_ESTABLISHED`, `TCP_CLOSING`; `UDP_OPEN`.
    pub state: u8,
    /// [`crate::mesh::FIN_FROM_CLIENT`] | `FIN_FROM_BACKEND`.
    pub flags: u8,
    pub _pad: [u8; 4],
    /// CLOCK_MONOTONIC (coarse) when last written; refreshed at most every
    /// [`crate::mesh::refresh_after_ns`], not per packet.
    pub last_seen_ns: u64,
}

/// Whether a tracked flow may carry the client's next segment (`opens`: it is a SYN
/// without ACK): its backend is alive, it has not been idle past its state's timeout, and
/// it is not a SYN on a closed connection — a reused client port is a new connection,
/// balanced afresh. The routing mesh's rule (`mesh_conntrack::conntrack`).
pub const fn flow_carries(
    config: &MeshConfig,
    protocol: u8,
    flow: &VipFlow,
    opens: bool,
    now_ns: u64,
) -> bool {
    let reused = opens && flow.state == TCP_CLOSING;
    !(reused || flow_expired(config, protocol, flow, now_ns))
}

/// Whether `flow` has been idle past its state's timeout at `now_ns` (the agent sweeps
/// such entries; the programs treat them as gone). A zero timeout is a mesh
/// configuration not written yet: no expiry then.
pub const fn flow_expired(config: &MeshConfig, protocol: u8, flow: &VipFlow, now_ns: u64) -> bool {
    let timeout = timeout_ns(config, protocol, flow.state);
    timeout != 0 && now_ns.saturating_sub(flow.last_seen_ns) > timeout
}

/// The reply entry a flow wrote when it opened (see [`reply_of`]), and whether an entry
/// found there is still that flow's (a later flow of another client port may own it).
pub const fn reply_key_of(key: &VipFlowKey, flow: &VipFlow) -> VipReplyKey {
    VipReplyKey {
        vni: key.vni,
        backend_ip: flow.backend_ip,
        client_ip: flow.source_ip,
        backend_port_be: flow.target_port_be,
        client_port_be: key.client_port_be,
        protocol: key.protocol,
        _pad: [0; 3],
    }
}

/// The flow key of a reply entry's flow (the reverse path tracks the backend's FIN and
/// RST on it): `key` as the backend sent it, `reply` what the client had sent to.
pub const fn flow_of_reply(key: &VipReplyKey, reply: &VipReply) -> VipFlowKey {
    VipFlowKey {
        vni: key.vni,
        client_ip: reply.client_ip,
        dst_ip: reply.dst_ip,
        client_port_be: key.client_port_be,
        dst_port_be: reply.dst_port_be,
        protocol: key.protocol,
        _pad: [0; 3],
    }
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
    assert!(size_of::<VipFlow>() == 24);
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

    fn config() -> MeshConfig {
        MeshConfig {
            syn_timeout_ns: 60,
            established_timeout_ns: 8000,
            closing_timeout_ns: 10,
            udp_timeout_ns: 300,
            ..MeshConfig::default()
        }
    }

    fn tracked(state: u8, last_seen_ns: u64) -> VipFlow {
        VipFlow {
            backend_ip: BACKEND,
            source_ip: CLIENT,
            target_port_be: 80u16.to_be_bytes(),
            state,
            last_seen_ns,
            ..VipFlow::default()
        }
    }

    #[test]
    fn a_syn_on_a_closed_flow_or_any_packet_on_an_idle_one_starts_a_new_flow() {
        use crate::mesh::{TCP_ESTABLISHED, TCP_SYN_SENT};
        let c = config();
        // Live: a retransmitted SYN keeps its pick; data of an established flow.
        assert!(flow_carries(&c, 6, &tracked(TCP_SYN_SENT, 100), true, 150));
        assert!(flow_carries(
            &c,
            6,
            &tracked(TCP_ESTABLISHED, 100),
            false,
            8000
        ));
        // The last ACK of a closing flow still goes through; a SYN reusing its port
        // does not.
        assert!(flow_carries(&c, 6, &tracked(TCP_CLOSING, 100), false, 105));
        assert!(!flow_carries(&c, 6, &tracked(TCP_CLOSING, 100), true, 105));
        // Idle past the state's timeout.
        assert!(!flow_carries(&c, 6, &tracked(TCP_CLOSING, 100), false, 111));
        assert!(!flow_carries(&c, 6, &tracked(TCP_SYN_SENT, 100), true, 161));
        assert!(!flow_carries(
            &c,
            17,
            &tracked(crate::mesh::UDP_OPEN, 100),
            false,
            401
        ));
        // No configuration yet: nothing expires.
        let none = MeshConfig::default();
        assert!(flow_carries(
            &none,
            6,
            &tracked(TCP_SYN_SENT, 0),
            false,
            u64::MAX
        ));
        assert!(!flow_expired(
            &none,
            17,
            &tracked(crate::mesh::UDP_OPEN, 0),
            u64::MAX
        ));
    }

    #[test]
    fn a_flow_is_found_again_from_its_reply_and_its_reply_from_it() {
        for (client, dst) in [(CLIENT, VIP), (BACKEND, VIP), (CLIENT, [192, 168, 0, 1])] {
            let key = flow(client, dst, 8080);
            let (reply_key, reply) = reply_of(&key, BACKEND, 80u16.to_be_bytes(), VIP);
            assert_eq!(flow_of_reply(&reply_key, &reply), key);
            let f = VipFlow {
                backend_ip: BACKEND,
                source_ip: source_seen(client, BACKEND, VIP),
                target_port_be: 80u16.to_be_bytes(),
                ..VipFlow::default()
            };
            assert_eq!(reply_key_of(&key, &f), reply_key);
        }
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
