//! Host-local access to published services (issue 12, parts 1–3): the ABI of the cgroup
//! socket hooks (`sock_connect4`, `sock_sendmsg4`, `sock_recvmsg4`, `sock_getpeername4`)
//! and of the host's own path to tasks on other nodes (`tc_host_egress`).
//!
//! A process in this node's host network namespace that connects (or sends a UDP
//! datagram) to a published port on a loopback address, this node's address or any
//! cluster node's address is given one of the service's serving tasks instead — decided
//! once, when the socket connects (or, for unconnected UDP, once per socket and service
//! address, remembered in [`crate::maps::SOCK_PICKS`]) — from the same rotation (the
//! service's shared cursor) the ingress XDP program uses. [`crate::maps::SOCK_REVERSE`]
//! remembers, per socket, which service address a backend stands for, so `recvmsg` and
//! `getpeername` show the address the client used.
//!
//! The hooks sit at the cgroup v2 root and so see every process on the machine: each agent
//! attaches its own instance, which reads its own [`SockConfig`] and acts only on sockets
//! of the network namespace whose cookie it holds (`bpf_get_netns_cookie`). A cookie of 0
//! (not yet written) means: act on nothing.
//!
//! Byte order as in [`crate::mesh`]: `_be` fields and byte arrays are network order.

/// [`crate::maps::SOCK_CONFIG`] slot 0, written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockConfig {
    /// The agent's host namespace (`SO_NETNS_COOKIE`); 0: the hooks do nothing.
    pub netns_cookie: u64,
}

/// A socket and an address: the key of [`crate::maps::SOCK_REVERSE`] (the address is a
/// backend's) and of [`crate::maps::SOCK_PICKS`] (the address is a service's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    pub ip: [u8; 4],
    pub port_be: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub _pad: u8,
}

/// An IPv4 address and port: the service address a backend stands for
/// ([`crate::maps::SOCK_REVERSE`]) or the backend picked for a service address
/// ([`crate::maps::SOCK_PICKS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockAddr {
    pub ip: [u8; 4],
    pub port_be: [u8; 2],
    pub _pad: [u8; 2],
}

/// [`crate::maps::HOST_FLOWS`] value, keyed by [`crate::mesh::ReplyKey`] (the flow as the
/// task's replies carry it: backend = the task, client = this host's address): a
/// connection this host opened to a task on another node. Only its replies, arriving in
/// VXLAN on the ingress VNI from that node, are handed to the host's stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFlow {
    /// The underlay address of the task's host (the only valid outer source of replies).
    pub host_ip: [u8; 4],
    pub _pad: [u8; 4],
    /// `bpf_ktime_get_ns` when written.
    pub seen_ns: u64,
}

/// The name of the host side of the veth pair the host's own traffic to remote tasks is
/// routed through (its tcx egress runs `tc_host_egress`); the peer is this with `-p`.
pub const HOST_PATH_IFACE: &str = "skein-mesh";

/// Whether `ip` (network order bytes) is in 127.0.0.0/8.
pub const fn is_loopback(ip: [u8; 4]) -> bool {
    ip[0] == 127
}

/// The `user_port` of `struct bpf_sock_addr` (a `__be16` in the low half of a u32, as it
/// lies in memory) as network-order bytes, and back.
pub const fn port_from_ctx(user_port: u32) -> [u8; 2] {
    (user_port as u16).to_ne_bytes()
}

/// See [`port_from_ctx`].
pub const fn port_to_ctx(port_be: [u8; 2]) -> u32 {
    u16::from_ne_bytes(port_be) as u32
}

const _: () = {
    assert!(core::mem::size_of::<SockConfig>() == 8);
    assert!(core::mem::size_of::<SockKey>() == 16);
    assert!(core::mem::size_of::<SockAddr>() == 8);
    assert!(core::mem::size_of::<HostFlow>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all `repr(C)`, integer and byte-array fields only, sizes asserted above with
    // no implicit padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for SockConfig {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for HostFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_keep_network_order_through_the_context_field() {
        let be = 8080u16.to_be_bytes();
        assert_eq!(port_from_ctx(port_to_ctx(be)), be);
        // The kernel stores `sin_port` (network order) in the low 16 bits as it lies in
        // memory: on a little-endian machine 8080 = 0x1f90 reads as 0x901f.
        if cfg!(target_endian = "little") {
            assert_eq!(port_to_ctx(be), 0x901f);
        }
    }

    #[test]
    fn loopback_is_all_of_127_slash_8() {
        assert!(is_loopback([127, 0, 0, 1]));
        assert!(is_loopback([127, 1, 2, 3]));
        assert!(!is_loopback([10, 0, 0, 1]));
    }
}
