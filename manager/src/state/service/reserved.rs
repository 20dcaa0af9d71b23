//! Ports Skein itself uses on a node's underlay address, which no service may publish: the
//! routing mesh would take their packets (issue 11, "only what is published opens").
//!
//! Two kinds: the cluster's own ([`cluster_reserved_ports`]: VXLAN, and every node's gossip
//! port, which peers know from its `NodeInfo`), checked at create time and again on every
//! node when a service record arrives ([`super::valid_services`]); and one node's own (its
//! metrics port), which peers do not know, so only the node where `service create` runs
//! refuses them.

use std::fmt;

use super::{Protocol, PublishedPort, Service, ServiceSpecError};

/// The UDP port of VXLAN between nodes (`dataplane_ebpf::overlay::VXLAN_PORT`; the manager
/// does not depend on the dataplane crate, the agent checks the two agree).
pub const VXLAN_PORT: u16 = 4789;

/// A port no service may publish, and what uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservedPort {
    pub port: u16,
    /// `None`: TCP and UDP alike.
    pub protocol: Option<Protocol>,
    /// What uses it, as the error names it: `"VXLAN between nodes"`.
    pub user: String,
}

impl ReservedPort {
    pub fn new(port: u16, protocol: Option<Protocol>, user: impl Into<String>) -> ReservedPort {
        ReservedPort {
            port,
            protocol,
            user: user.into(),
        }
    }

    /// Whether publishing `published` would take this port.
    pub fn covers(&self, published: &PublishedPort) -> bool {
        published.published == self.port && self.protocol.is_none_or(|p| p == published.protocol)
    }
}

impl fmt::Display for ReservedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Some(protocol) => write!(f, "{}/{protocol}", self.port),
            None => write!(f, "{}/tcp+udp", self.port),
        }
    }
}

/// The ports the cluster uses on every node: VXLAN (UDP), and each node's gossip port (UDP
/// for gossip, TCP for the peer requests on the same port). `gossip_ports` may repeat.
pub fn cluster_reserved_ports(gossip_ports: impl IntoIterator<Item = u16>) -> Vec<ReservedPort> {
    let mut ports = vec![ReservedPort::new(
        VXLAN_PORT,
        Some(Protocol::Udp),
        "VXLAN between nodes",
    )];
    let mut gossip: Vec<u16> = gossip_ports.into_iter().collect();
    gossip.sort_unstable();
    gossip.dedup();
    ports.extend(
        gossip
            .into_iter()
            .map(|port| ReservedPort::new(port, None, "gossip and peer requests between nodes")),
    );
    ports
}

impl Service {
    /// Refuses a published port in `reserved`, naming what uses it.
    pub fn check_reserved(&self, reserved: &[ReservedPort]) -> Result<(), ServiceSpecError> {
        for published in &self.ports {
            if let Some(r) = reserved.iter().find(|r| r.covers(published)) {
                return Err(ServiceSpecError::ReservedPort {
                    port: format!("{}/{}", published.published, published.protocol),
                    user: r.user.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ports(ports: &[&str]) -> Service {
        let mut service =
            super::super::tests::service("web", &[], super::super::tests::stamp(1, 1));
        service.ports = ports.iter().map(|p| p.parse().unwrap()).collect();
        service
    }

    #[test]
    fn skeins_own_ports_are_refused_with_their_user_named() {
        let mut reserved = cluster_reserved_ports([7946, 8000, 7946]);
        reserved.push(ReservedPort::new(
            9946,
            Some(Protocol::Tcp),
            "this node's metrics",
        ));
        assert_eq!(reserved.len(), 4, "gossip ports once each");
        let refused = |p: &str| with_ports(&["8080:80", p]).check_reserved(&reserved);
        assert_eq!(
            refused("4789:80/udp").unwrap_err().to_string(),
            "port 4789/udp is used by Skein itself (VXLAN between nodes); publish another port"
        );
        for gossip in ["7946:80", "7946:80/udp", "8000:80", "8000:80/udp"] {
            let error = refused(gossip).unwrap_err().to_string();
            assert!(error.contains("gossip"), "{gossip}: {error}");
        }
        assert!(refused("9946:80")
            .unwrap_err()
            .to_string()
            .contains("this node's metrics"));
        // Same numbers, other protocol: free.
        assert_eq!(refused("4789:80/tcp"), Ok(()));
        assert_eq!(refused("9946:80/udp"), Ok(()));
        assert_eq!(refused("7947:80"), Ok(()));
        assert_eq!(with_ports(&[]).check_reserved(&reserved), Ok(()));
    }
}
