//! What keeps the overlay closed (ARCHITECTURE.md, "Fail closed"): the maps and the pure
//! rules the programs apply, shared with the userspace model the differential tests
//! check the programs against.
//!
//! - **No port, no traffic**: a packet from an endpoint veth without its
//!   `OVERLAY_PORTS` entry is dropped ([`Verdict::NO_PORT`](crate::counters::Verdict)).
//! - **Nothing routed into the overlay**: a plain (not VXLAN-for-us) IPv4 packet arriving
//!   on the underlay whose destination lies in an overlay subnet is dropped
//!   ([`Verdict::INTO_OVERLAY`](crate::counters::Verdict)): endpoints are reached only
//!   through VXLAN from cluster hosts or registered VTEPs.
//! - **Workloads do not reach the cluster's own ports**: a packet an endpoint sends to the
//!   host stack whose destination is this host (the gateway, or any address the kernel
//!   delivers locally) or a cluster host ([`GUARDED_HOSTS`](crate::maps::GUARDED_HOSTS):
//!   every node's underlay and gossip address, every external VTEP) is dropped
//!   ([`Verdict::CLUSTER_PORT`](crate::counters::Verdict)) if its protocol and
//!   destination port are in [`GUARDED_PORTS`](crate::maps::GUARDED_PORTS) (VXLAN 4789,
//!   every node's gossip port over UDP and TCP, the agent's metrics port), and so is any
//!   later fragment (no ports to check) of UDP or TCP to such a destination.

/// IP protocol numbers the guard knows.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of [`crate::maps::GUARDED_HOSTS`]: an IPv4 address, network order.
pub type GuardedHostKey = [u8; 4];
/// Value of [`crate::maps::GUARDED_HOSTS`]: unused (0); the key's presence is the fact.
pub type GuardedHostValue = u32;

/// Key of [`crate::maps::GUARDED_PORTS`]: a transport protocol and destination port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuardedPort {
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub protocol: u8,
    pub _pad: u8,
    /// The destination port, network order.
    pub port_be: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<GuardedPort>() == 4);

impl GuardedPort {
    pub const fn new(protocol: u8, port: u16) -> GuardedPort {
        GuardedPort {
            protocol,
            _pad: 0,
            port_be: port.to_be_bytes(),
        }
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port_be)
    }
}

/// Value of [`crate::maps::GUARDED_PORTS`]: unused (0).
pub type GuardedPortValue = u32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, byte fields only, no padding (size asserted); any bit pattern is
    // valid.
    unsafe impl aya::Pod for super::GuardedPort {}
}

/// Where a packet an endpoint sends to the host stack is going, as far as the guard
/// cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToHost {
    /// The destination is this host (its gateway address, or any local address) or a
    /// host of the cluster.
    pub guarded_destination: bool,
    pub protocol: u8,
    /// `Some(port)` for the first (or only) fragment of UDP/TCP whose header is present;
    /// `None` for a later fragment, or a first fragment too short to hold the ports.
    pub dst_port: Option<u16>,
}

/// Whether the guard drops a packet an endpoint sends to the host stack. `is_guarded`
/// answers for one (protocol, port): a lookup in `GUARDED_PORTS`.
pub fn drops(packet: &ToHost, is_guarded: impl Fn(GuardedPort) -> bool) -> bool {
    if !packet.guarded_destination {
        return false;
    }
    if packet.protocol != IPPROTO_TCP && packet.protocol != IPPROTO_UDP {
        return false;
    }
    match packet.dst_port {
        Some(port) => is_guarded(GuardedPort::new(packet.protocol, port)),
        // A later fragment's ports cannot be seen: to a guarded host, it may not pass.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guarded(port: GuardedPort) -> bool {
        port == GuardedPort::new(IPPROTO_UDP, 4789) || port == GuardedPort::new(IPPROTO_TCP, 7946)
    }

    #[test]
    fn only_guarded_ports_of_guarded_destinations_are_dropped() {
        let packet = |guarded_destination, protocol, dst_port| ToHost {
            guarded_destination,
            protocol,
            dst_port,
        };
        assert!(drops(&packet(true, IPPROTO_UDP, Some(4789)), guarded));
        assert!(drops(&packet(true, IPPROTO_TCP, Some(7946)), guarded));
        assert!(!drops(&packet(true, IPPROTO_TCP, Some(4789)), guarded));
        assert!(!drops(&packet(true, IPPROTO_UDP, Some(53)), guarded));
        assert!(!drops(&packet(false, IPPROTO_UDP, Some(4789)), guarded));
        // Later fragments of UDP/TCP to a guarded destination: ports unknown, dropped.
        assert!(drops(&packet(true, IPPROTO_UDP, None), guarded));
        assert!(!drops(&packet(false, IPPROTO_UDP, None), guarded));
        // ICMP and other protocols to hosts are not the guard's business.
        assert!(!drops(&packet(true, 1, None), guarded));
    }

    #[test]
    fn guarded_port_layout() {
        let key = GuardedPort::new(IPPROTO_UDP, 4789);
        assert_eq!(key.port_be, [0x12, 0xb5]);
        assert_eq!(key.port(), 4789);
        assert_eq!(core::mem::align_of::<GuardedPort>(), 1);
    }
}
